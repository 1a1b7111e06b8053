"""``minify image``: the plan written as an OCI image, with no container engine.

The same plan as ``minify rootfs``, materialised and verified the same way, then
written as one compressed layer (gzip on every core, or zstd), an OCI config, a manifest and an index, in one
of the forms skopeo, podman and buildah name by transport:

- ``oci:DIR[:REF]``: an OCI image layout folder;
- ``oci-archive:FILE[:REF]`` (or a bare ``FILE.tar``): the same layout as a tar, with a
  ``manifest.json`` beside it so that ``docker load`` (25 and later) and ``podman
  load`` read it too;
- ``docker-archive:FILE[:NAME:TAG]``: the same tar, named for ``docker load``.

Byte for byte reproducible: entries sorted, owners 0 (or the plan's), no user or group
names, every mtime and ``created`` from ``SOURCE_DATE_EPOCH`` (0 when unset), gzip at
a fixed level in fixed blocks with no name and mtime 0, JSON with sorted keys. Written beside DEST
and renamed into place; a DEST that minify did not write is refused unless forced.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from minify.errors import OutputError, PlanError
from minify.loader.arch import PLATFORMS
from minify.plan.image import Entry, EntryType, ImagePlan
from minify.root import remove_tree
from minify.text import is_number
from minify.version import __version__
from minify.write import output
from minify.write.compress import BLOCK as COMPRESS_BLOCK
from minify.write.compress import Compression, Writable, compressor

if TYPE_CHECKING:
    from collections.abc import Iterator


MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"  # + "+gzip" or "+zstd"
REF_NAME = "org.opencontainers.image.ref.name"
OWNER_ANNOTATION = "io.github.minify.version"  # marks an image minify wrote
GZIP_LEVEL = 6
CHUNK = 1 << 20


# A reference: [domain[:port]/]path[:tag], the grammar of distribution/reference.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*(?::[0-9]+)?)"
_REFERENCE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")


class Transport(StrEnum):
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"


@dataclass(frozen=True)
class ImageDest:
    """Where the image goes, and the name it carries there."""

    transport: Transport
    path: str
    ref: str | None = None  # oci/oci-archive: a tag or a full reference; docker-archive: NAME:TAG
    compression: Compression = Compression.GZIP  # how the layer is stored (--compression)

    def __str__(self) -> str:
        return f"{self.transport.value}:{self.path}" + (f":{self.ref}" if self.ref else "")


def parse_dest(text: str, tag: str | None = None, compression: Compression = Compression.GZIP) -> ImageDest:
    """``TRANSPORT:PATH[:REF]`` or ``FILE.tar``; ``--tag`` names the image where the
    destination does not."""
    transport_name, sep, rest = text.partition(":")
    if not sep:
        if not text.endswith(".tar"):
            raise PlanError(f"-o {text!r}: expected oci:DIR, oci-archive:FILE, docker-archive:FILE or FILE.tar")
        transport, rest = Transport.OCI_ARCHIVE, text
    else:
        try:
            transport = Transport(transport_name)
        except ValueError:
            known = ", ".join(t.value for t in Transport)
            raise PlanError(f"-o {text!r}: unknown transport {transport_name!r} (known: {known})") from None
    path, _, ref = rest.partition(":")
    if not path:
        raise PlanError(f"-o {text!r}: no path")
    name = ref or tag
    if name is not None:
        check_reference(name, transport)
    return ImageDest(transport, path, name or None, compression)


def check_reference(name: str, transport: Transport) -> str:
    """A tag (``oci:`` only) or a full reference NAME:TAG, as registries spell them."""
    good = _REFERENCE.fullmatch(name) is not None and len(name) <= 255
    if transport is Transport.DOCKER_ARCHIVE:
        good = good and ":" in name.rsplit("/", 1)[-1]
    elif not good:
        good = _TAG.fullmatch(name) is not None
    if not good:
        raise PlanError(f"{name!r}: not a valid image reference (NAME:TAG, e.g. localhost/app:1.0)")
    return name


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` (reproducible-builds.org), 0 when unset."""
    text = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not text:
        return 0
    if not is_number(text) or int(text) > 253402300799:
        raise PlanError(f"SOURCE_DATE_EPOCH={text!r}: expected a number of seconds since 1970")
    return int(text)


def platform_of(plan: ImagePlan) -> dict[str, str]:
    """The OCI platform of the programs' ELF machine; one architecture per image."""
    if len(plan.machines) > 1:
        raise PlanError(f"inputs of different architectures ({', '.join(plan.machines)}): one image holds one")
    machine = plan.machines[0] if plan.machines else None
    if machine not in PLATFORMS:
        raise PlanError(f"no OCI platform for the architecture {machine or 'of the inputs'}")
    architecture, variant = PLATFORMS[machine]
    out = {"architecture": architecture, "os": "linux"}
    if variant:
        out["variant"] = variant
    kept = dict(plan.config.platform)  # a source image's (--from), kept as it says it
    if kept and kept.get("architecture") != architecture:
        raise PlanError(f"the source image says {kept.get('architecture')}, its programs are {architecture}")
    return kept or out


@dataclass(frozen=True)
class ImageResult:
    dest: ImageDest
    digest: str  # of the manifest
    compressed: int  # the layer as stored
    uncompressed: int  # the layer tar
    platform: dict[str, str]
    plan: ImagePlan
    warnings: tuple[str, ...] = ()
    report: dict[str, Any] | None = None  # --from: the source, what was kept and dropped

    def as_data(self) -> dict[str, Any]:
        source = {"source": self.report} if self.report is not None else {}
        hints = [w.removeprefix("hint: ") for w in self.warnings if w.startswith("hint: ")]
        return {
            "dest": str(self.dest),
            "digest": self.digest,
            "size": {"compressed": self.compressed, "uncompressed": self.uncompressed},
            "platform": "/".join(self.platform[k] for k in ("os", "architecture", "variant") if k in self.platform),
            "hints": hints,  # what the image may still lack, with the flag that brings it
            "warnings": [w for w in self.warnings if not w.startswith("hint: ")],
            **source,
        }


# -- the layer ------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through it."""

    def __init__(self, sink: Writable) -> None:
        self.sink = sink
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.sink.write(view)
        self.size += len(view)
        return len(view)


def layer_media(compression: Compression) -> str:
    return MEDIA_LAYER + compression.media_suffix


def write_layer(
    plan: ImagePlan,
    rootfs: str,
    path: str,
    epoch: int,
    capabilities: dict[str, bytes],
    compression: Compression = Compression.GZIP,
) -> tuple[str, str, int, int]:
    """The layer of ``rootfs`` (the materialised, verified plan) as ``path``: a sorted
    tar, compressed on every core (``minify.write.compress``). Returns (diff_id,
    digest, uncompressed size, compressed size)."""
    with open(path, "wb") as raw:
        stored = _Hashing(raw)
        zipped, finish = compressor(compression, stored, GZIP_LEVEL)
        tarred = _Hashing(zipped)
        with tarfile.open(fileobj=tarred, mode="w|", format=tarfile.PAX_FORMAT, bufsize=COMPRESS_BLOCK) as tar:
            for entry in sorted(plan.entries, key=lambda e: e.path):
                if entry.path != "/":
                    _add(tar, entry, rootfs, epoch, capabilities.get(entry.path))
        finish()
    return (
        f"sha256:{tarred.digest.hexdigest()}",
        f"sha256:{stored.digest.hexdigest()}",
        tarred.size,
        stored.size,
    )


def _member(name: str, mode: int, epoch: int, owner: tuple[int, int] = (0, 0)) -> tarfile.TarInfo:
    """A tar member with every field that could vary between runs fixed: the owner by
    number only (no user or group names), the mtime ``epoch``."""
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.uid, info.gid = owner
    info.uname = info.gname = ""
    info.mtime = epoch
    return info


def _add(tar: tarfile.TarFile, entry: Entry, rootfs: str, epoch: int, capability: bytes | None) -> None:
    info = _member(entry.path.lstrip("/"), entry.mode & 0o7777, epoch, entry.owner)
    if capability:
        # the PAX record GNU tar and containers/storage read file capabilities from
        # (tarfile writes a value that is not UTF-8 back as the same bytes)
        info.pax_headers = {"SCHILY.xattr.security.capability": capability.decode("utf-8", "surrogateescape")}
    if entry.type is EntryType.DIR:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.type is EntryType.SYMLINK:
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.target or "", 0o777
        tar.addfile(info)
    elif entry.type is EntryType.HARDLINK:
        info.type, info.linkname = tarfile.LNKTYPE, (entry.target or "").lstrip("/")
        tar.addfile(info)
    else:
        fd = os.open(rootfs + entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            info.size = os.fstat(fh.fileno()).st_size
            tar.addfile(info, fh)


# -- the JSON documents ------------------------------------------------------------


def _json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _created(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def config_document(plan: ImagePlan, platform: dict[str, str], diff_id: str, epoch: int) -> dict[str, Any]:
    """The image config: what the Dockerfile says, as the OCI config spells it."""
    config = plan.config
    labels = dict(config.labels)
    labels["org.opencontainers.image.created"] = _created(epoch)
    run: dict[str, Any] = {"Labels": labels, "WorkingDir": config.working_dir or "/"}
    if config.exposed_ports:
        run["ExposedPorts"] = {port: {} for port in config.exposed_ports}
    if config.volumes:
        run["Volumes"] = {volume: {} for volume in config.volumes}
    if config.stop_signal:
        run["StopSignal"] = config.stop_signal
    if config.entrypoint:
        run["Entrypoint"] = list(config.entrypoint)
    if config.cmd:
        run["Cmd"] = list(config.cmd)
    if config.env:
        run["Env"] = [f"{k}={v}" for k, v in config.env]
    if config.user:
        run["User"] = config.user
    return {
        **platform,
        "created": _created(epoch),
        "config": run,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": _created(epoch), "created_by": f"minify image (minify {__version__})"}],
    }


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data)}


# -- the layout and its tar ----------------------------------------------------------


@dataclass(frozen=True)
class _Written:
    digest: str
    compressed: int
    uncompressed: int


def write_layout(
    plan: ImagePlan,
    rootfs: str,
    folder: str,
    dest: ImageDest,
    *,
    epoch: int,
    capabilities: dict[str, bytes],
) -> _Written:
    """An OCI image layout in ``folder`` (which must not exist), plus ``manifest.json``
    for ``docker load`` and ``podman load``."""
    platform = platform_of(plan)
    blobs = os.path.join(folder, "blobs", "sha256")
    os.makedirs(blobs)
    layer_tmp = os.path.join(folder, "layer.tmp")
    diff_id, layer_digest, size, stored = write_layer(plan, rootfs, layer_tmp, epoch, capabilities, dest.compression)
    os.rename(layer_tmp, os.path.join(blobs, layer_digest.split(":", 1)[1]))
    config = _json(config_document(plan, platform, diff_id, epoch))
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": _descriptor(MEDIA_CONFIG, config),
            "layers": [
                {"mediaType": MEDIA_LAYER + dest.compression.media_suffix, "digest": layer_digest, "size": stored}
            ],
        }
    )
    for blob in (config, manifest):
        _write(os.path.join(blobs, hashlib.sha256(blob).hexdigest()), blob)
    described = {**_descriptor(MEDIA_MANIFEST, manifest), "platform": platform}
    if dest.ref:
        described["annotations"] = {REF_NAME: dest.ref}
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [described],
        "annotations": {OWNER_ANNOTATION: __version__},
    }
    _write(os.path.join(folder, "index.json"), _json(index))
    _write(os.path.join(folder, "oci-layout"), _json({"imageLayoutVersion": "1.0.0"}))
    tags = [dest.ref] if dest.ref and ":" in dest.ref.rsplit("/", 1)[-1] else []
    docker = [
        {
            "Config": f"blobs/sha256/{hashlib.sha256(config).hexdigest()}",
            "RepoTags": tags,
            "Layers": [f"blobs/sha256/{layer_digest.split(':', 1)[1]}"],
        }
    ]
    _write(os.path.join(folder, "manifest.json"), _json(docker))
    return _Written(described["digest"], stored, size)


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def tar_layout(folder: str, path: str, epoch: int) -> None:
    """The layout folder as one tar: sorted, owner 0, mtime ``epoch``."""
    names: list[str] = []
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        rel = os.path.relpath(top, folder)
        if rel != ".":
            names.append(rel)
        names.extend(os.path.normpath(os.path.join(rel, f)) for f in sorted(files))
    with open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(names):
            full = os.path.join(folder, name)
            if os.path.isdir(full):
                info = _member(name, 0o755, epoch)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info = _member(name, 0o644, epoch)
                info.size = os.path.getsize(full)
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)


# -- ownership of an existing DEST ---------------------------------------------------


def _own_index(path: str) -> dict[str, Any] | None:
    """The index.json of a DEST minify wrote (in the folder or the tar), with its mark."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            with open(os.path.join(path, "index.json"), "rb") as fh:
                index = json.loads(fh.read(1 << 20))
        elif os.path.isfile(path) and not os.path.islink(path):
            with tarfile.open(path, "r:") as tar:
                member = tar.extractfile("index.json")
                if member is None:
                    return None
                index = json.loads(member.read(1 << 20))
        else:
            return None
    except (OSError, ValueError, RecursionError, KeyError, tarfile.TarError):
        return None
    if isinstance(index, dict) and OWNER_ANNOTATION in (index.get("annotations") or {}):
        return index
    return None


def _ours(path: str) -> bool:
    return _own_index(path) is not None


def digest_of(path: str) -> str | None:
    """The manifest digest of the image minify wrote at DEST, if it did."""
    index = _own_index(path)
    manifests = index.get("manifests") if index else None
    if isinstance(manifests, list) and len(manifests) == 1 and isinstance(manifests[0], dict):
        digest = manifests[0].get("digest")
        return digest if isinstance(digest, str) else None
    return None


def refuse_foreign(dest: ImageDest, *, force: bool) -> None:
    if os.path.lexists(dest.path) and not _ours(dest.path) and not force:
        raise OutputError(
            f"{dest.path}: exists and is not an image minify wrote; move it away, or use --force to replace it"
        )


# -- placing the image at DEST ---------------------------------------------------------


def make_parent(parent: str) -> None:
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot create the folder that holds DEST ({exc.strerror})") from None


@contextlib.contextmanager
def temporary(out: output.Destination) -> Iterator[str]:
    """A folder beside DEST, removed whatever happens; an OS error becomes one line."""
    tmp = output.make_temporary(out)
    try:
        yield tmp
    except OSError as exc:
        raise OutputError(f"{exc.filename or out.path}: {exc.strerror or exc}; {out.path} left as it was") from None
    finally:
        remove_tree(tmp, quiet=True)


def place(layout: str, dest: ImageDest, out: output.Destination, epoch: int) -> None:
    """The layout folder as DEST (``oci:``), or its tar renamed over DEST."""
    if dest.transport is Transport.OCI:  # (an existing DEST is a folder: output.destination checked)
        old = output.swap_into_place(layout, out)
        if old is not None:
            remove_tree(old, quiet=True)
        return
    archive = layout + ".tar"
    tar_layout(layout, archive, epoch)
    os.chmod(archive, 0o644)
    if os.path.isdir(out.path) and not os.path.islink(out.path):
        remove_tree(out.path)  # a layout folder of ours where an archive is wanted
    os.rename(archive, out.path)
