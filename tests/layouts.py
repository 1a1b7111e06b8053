"""OCI image layouts written by the tests themselves, layer by layer with tarfile, so
that every case of the image spec (and every hostile one) can be made exactly."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from minify.loader.arch import host_arch
from minify.write.oci import PLATFORMS

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"

#: This machine's OCI architecture: the images are for the machine the tests run on.
HOST_ARCH = PLATFORMS[host_arch()][0]

Member = Callable[[tarfile.TarFile], None]


def file(
    name: str, data: bytes = b"", mode: int = 0o644, size: int | None = None, owner: tuple[int, int] = (0, 0)
) -> Member:
    """A regular member; ``size`` may declare more than ``data`` holds (a lie)."""

    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data) if size is None else size
        info.mode = mode
        info.uid, info.gid = owner
        tar.addfile(info, io.BytesIO(data))

    return add


def host_file(name: str, path: Path, mode: int = 0o755) -> Member:
    return file(name, path.read_bytes(), mode)


def folder(name: str, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = mode
        info.uid, info.gid = owner
        tar.addfile(info)

    return add


def link(name: str, target: str, *, hard: bool = False) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)

    return add


def fifo(name: str) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)

    return add


def layer_tar(members: list[Member]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for add in members:
            add(tar)
    return raw.getvalue()


def blob(folder_: Path, data: bytes) -> dict[str, Any]:
    """``data`` stored in the layout at ``folder_``; its descriptor's digest and size."""
    digest = hashlib.sha256(data).hexdigest()
    blobs = folder_ / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_layout(
    dest: Path,
    layers: list[bytes],
    run: dict[str, Any],
    *,
    compress: bool = True,
    ref: str | None = None,
    architecture: str | None = None,
) -> dict[str, str]:
    """An OCI layout at ``dest`` with these layer tars (gzip-compressed unless not
    ``compress``) and ``run`` as the config's ``config``; returns the blobs' digests
    by role ("config", "manifest", "layer1", ...)."""
    digests: dict[str, str] = {}
    described = []
    for number, tar in enumerate(layers, 1):
        stored = gzip.compress(tar, mtime=0) if compress else tar
        digest = blob(dest, stored)["digest"]
        digests[f"layer{number}"] = digest
        media = MEDIA_LAYER + ("+gzip" if compress else "")
        described.append({"mediaType": media, "digest": digest, "size": len(stored)})
    config = {
        "architecture": architecture or HOST_ARCH,
        "os": "linux",
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in layers]},
    }
    config_data = json.dumps(config).encode()
    digests["config"] = blob(dest, config_data)["digest"]
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": digests["config"], "size": len(config_data)},
        "layers": described,
    }
    manifest_data = json.dumps(manifest).encode()
    digests["manifest"] = blob(dest, manifest_data)["digest"]
    entry: dict[str, Any] = {"mediaType": MEDIA_MANIFEST, "digest": digests["manifest"], "size": len(manifest_data)}
    if ref:
        entry["annotations"] = {"org.opencontainers.image.ref.name": ref}
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry]}
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return digests
