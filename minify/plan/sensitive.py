"""Known places of secrets: files that only get into an image when a user names them.

A traced run reads what it reads (an ssh key, /etc/shadow through getspnam, a
service's private TLS key); a saved trace can be edited. Neither may put such a file
into an image: only ``--add`` of that very path does.
"""

from __future__ import annotations

import fnmatch
import posixpath

from minify.root import within

#: Exact paths.
SECRET_FILES = frozenset(
    {
        "/etc/shadow",
        "/etc/shadow-",
        "/etc/gshadow",
        "/etc/gshadow-",
        "/etc/sudoers",
        "/etc/ssh/ssh_host_rsa_key",
        "/etc/ssh/ssh_host_ecdsa_key",
        "/etc/ssh/ssh_host_ed25519_key",
        "/etc/ssh/ssh_host_dsa_key",
    }
)
#: Folders whose whole content is secret.
SECRET_DIRS = ("/etc/sudoers.d", "/etc/ssl/private", "/root")
#: A path component that makes everything below it secret (a home's key stores).
SECRET_COMPONENTS = frozenset(
    {".ssh", ".gnupg", ".aws", ".docker", ".kube", ".azure", ".password-store", ".config/gcloud"}
)
#: File names that are secret wherever they are.
SECRET_NAMES = (".netrc", ".git-credentials", ".pgpass", ".my.cnf", "id_rsa*", "id_ecdsa*", "id_ed25519*", "*.p12")
#: Key and certificate files are secret outside the certificate stores.
KEY_NAMES = ("*.pem", "*.key", "*.pfx", "*.jks", "*.keystore")
CERT_STORES = (
    "/etc/ssl/certs",
    "/usr/share/ca-certificates",
    "/usr/local/share/ca-certificates",
    "/etc/pki/ca-trust",
    "/etc/pki/tls/certs",
    "/usr/lib/ssl/certs",
    "/etc/ca-certificates",
)


def why_secret(path: str) -> str | None:
    """Why ``path`` (absolute, normalised) is a known secret location, or None."""
    if path in SECRET_FILES:
        return "a password or host key file"
    if any(within(path, d) for d in SECRET_DIRS):
        return "in a folder of secrets"
    parts = path.split("/")
    joined = ["/".join(parts[i : i + 2]) for i in range(len(parts) - 1)]
    if SECRET_COMPONENTS & (set(parts) | set(joined)):
        return "in a key or credential store"
    name = posixpath.basename(path)
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_NAMES):
        return "a credential file"
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in KEY_NAMES) and not any(
        path.startswith(store + "/") for store in CERT_STORES
    ):
        return "a key or certificate outside the certificate store"
    return None
