"""Read: an existing image (an OCI layout or archive, a docker archive), checked and flattened into a root."""
