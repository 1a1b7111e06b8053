"""Write: the outputs a plan becomes (the rootfs folder, the OCI image, the Dockerfile, the SBOM, OUT)."""
