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
from minify.plan.layers import split
from minify.root import remove_tree
from minify.text import human_size, is_number
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
    layers: int = 2  # a base layer two programs of one root share, then the app (--layers 1: one)

    def __str__(self) -> str:
        return f"{self.transport.value}:{self.path}" + (f":{self.ref}" if self.ref else "")


def parse_dest(
    text: str, tag: str | None = None, compression: Compression = Compression.GZIP, layers: int = 2
) -> ImageDest:
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
    if layers not in (1, 2):
        raise PlanError(f"--layers {layers}: give 1 (one layer) or 2 (a shared base, then the app)")
    return ImageDest(transport, path, name or None, compression, layers)


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
    compressed: int  # the layers as stored
    uncompressed: int  # the layer tars
    platform: dict[str, str]
    plan: ImagePlan
    warnings: tuple[str, ...] = ()
    report: dict[str, Any] | None = None  # --from: the source, what was kept and dropped
    layers: tuple[LayerWritten, ...] = ()
    platforms: tuple[str, ...] = ()  # --platform-root: every platform of the index

    @property
    def sizes_text(self) -> str:
        """The report's line: each layer (name, size, short digest), the totals, the platforms."""
        layers = ", ".join(f"{w.name} {human_size(w.compressed)} ({w.digest[7:19]})" for w in self.layers)
        sizes = f"{human_size(self.compressed)} compressed, {human_size(self.uncompressed)} as files"
        return f"layers: {layers}; {sizes}; {self.platform_text}"

    @property
    def platform_text(self) -> str:
        if self.platforms:
            return ", ".join(self.platforms)
        return "/".join(self.platform[k] for k in ("os", "architecture", "variant") if k in self.platform)

    def as_data(self) -> dict[str, Any]:
        source = {"source": self.report} if self.report is not None else {}
        hints = [w.removeprefix("hint: ") for w in self.warnings if w.startswith("hint: ")]
        return {
            "dest": str(self.dest),
            "digest": self.digest,
            "size": {"compressed": self.compressed, "uncompressed": self.uncompressed},
            "layers": [layer.as_data() for layer in self.layers],
            "platform": self.platform_text,
            **({"platforms": list(self.platforms)} if self.platforms else {}),
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
    entries: tuple[Entry, ...],
    rootfs: str,
    path: str,
    epoch: int,
    capabilities: dict[str, bytes],
    compression: Compression = Compression.GZIP,
) -> tuple[str, str, int, int]:
    """A layer of ``rootfs`` (the materialised, verified plan) as ``path``: the tar of
    ``entries`` (sorted), compressed on every core (``minify.write.compress``). Returns
    (diff_id, digest, uncompressed size, compressed size)."""
    with open(path, "wb") as raw:
        stored = _Hashing(raw)
        zipped, finish = compressor(compression, stored, GZIP_LEVEL)
        tarred = _Hashing(zipped)
        with tarfile.open(fileobj=tarred, mode="w|", format=tarfile.PAX_FORMAT, bufsize=COMPRESS_BLOCK) as tar:
            for entry in entries:
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


def config_document(
    plan: ImagePlan, platform: dict[str, str], diff_ids: list[str], epoch: int, names: list[str] | None = None
) -> dict[str, Any]:
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
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {
                "created": _created(epoch),
                "created_by": f"minify image (minify {__version__})",
                **({"comment": f"the {names[i]} layer"} if names else {}),
            }
            for i in range(len(diff_ids))
        ],
    }


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data)}


# -- the layout and its tar ----------------------------------------------------------


@dataclass(frozen=True)
class LayerWritten:
    """One layer as written: what the report and the lock say of it."""

    name: str
    digest: str
    compressed: int
    uncompressed: int
    entries: int

    def as_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "digest": self.digest,
            "size": {"compressed": self.compressed, "uncompressed": self.uncompressed},
            "entries": self.entries,
        }


@dataclass(frozen=True)
class _Written:
    digest: str
    layers: tuple[LayerWritten, ...]


@dataclass(frozen=True)
class Built:
    """One platform's image, materialised and verified, ready to be written."""

    plan: ImagePlan
    rootfs: str
    capabilities: dict[str, bytes]


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
    for ``docker load`` and ``podman load``; the layers as ``minify.plan.layers``
    splits the plan (``dest.layers``: 1, or 2 for a shared base)."""
    blobs = _blobs(folder)
    described, written, config = _write_image(Built(plan, rootfs, capabilities), blobs, dest, epoch)
    if dest.ref:
        described["annotations"] = {REF_NAME: dest.ref}
    _write_index(folder, [described])
    tags = [dest.ref] if dest.ref and ":" in dest.ref.rsplit("/", 1)[-1] else []
    docker = [
        {
            "Config": f"blobs/sha256/{config}",
            "RepoTags": tags,
            "Layers": [f"blobs/sha256/{w.digest.split(':', 1)[1]}" for w in written],
        }
    ]
    _write(os.path.join(folder, "manifest.json"), _json(docker))
    return _Written(described["digest"], written)


def write_index_layout(images: list[Built], folder: str, dest: ImageDest, *, epoch: int) -> _Written:
    """An OCI image layout whose one entry is an image index of every platform's image
    (sorted by platform, so the order the roots were given does not matter); no
    ``manifest.json``: ``docker load`` takes one platform."""
    blobs = _blobs(folder)
    described: list[dict[str, Any]] = []
    layers: list[LayerWritten] = []
    for built in images:
        one, written, _ = _write_image(built, blobs, dest, epoch)
        described.append(one)
        layers.extend(written)
    described.sort(key=lambda d: json.dumps(d["platform"], sort_keys=True))
    index = _json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": described})
    _write(os.path.join(blobs, hashlib.sha256(index).hexdigest()), index)
    top = _descriptor(MEDIA_INDEX, index)
    if dest.ref:
        top["annotations"] = {REF_NAME: dest.ref}
    _write_index(folder, [top])
    return _Written(top["digest"], tuple(layers))


def _blobs(folder: str) -> str:
    blobs = os.path.join(folder, "blobs", "sha256")
    os.makedirs(blobs)
    return blobs


def _write_index(folder: str, described: list[dict[str, Any]]) -> None:
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": described,
        "annotations": {OWNER_ANNOTATION: __version__},
    }
    _write(os.path.join(folder, "index.json"), _json(index))
    _write(os.path.join(folder, "oci-layout"), _json({"imageLayoutVersion": "1.0.0"}))


def _write_image(
    built: Built, blobs: str, dest: ImageDest, epoch: int
) -> tuple[dict[str, Any], tuple[LayerWritten, ...], str]:
    """The layers, config and manifest of one platform's image into ``blobs``: the
    manifest's descriptor (with its platform), the layers, and the config's digest."""
    plan = built.plan
    platform = platform_of(plan)
    layer_tmp = os.path.join(blobs, ".layer.tmp")
    diff_ids: list[str] = []
    written: list[LayerWritten] = []
    for layer in split(plan, dest.layers):
        diff_id, digest, size, stored = write_layer(
            layer.entries, built.rootfs, layer_tmp, epoch, built.capabilities, dest.compression
        )
        os.replace(layer_tmp, os.path.join(blobs, digest.split(":", 1)[1]))  # equal layers are one blob
        diff_ids.append(diff_id)
        written.append(LayerWritten(layer.name, digest, stored, size, len(layer.entries)))
    names = [w.name for w in written] if len(written) > 1 else None
    config = _json(config_document(plan, platform, diff_ids, epoch, names))
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": _descriptor(MEDIA_CONFIG, config),
            "layers": [
                {"mediaType": layer_media(dest.compression), "digest": w.digest, "size": w.compressed} for w in written
            ],
        }
    )
    for blob in (config, manifest):
        path = os.path.join(blobs, hashlib.sha256(blob).hexdigest())
        if not os.path.exists(path):
            _write(path, blob)
    described = {**_descriptor(MEDIA_MANIFEST, manifest), "platform": platform}
    return described, tuple(written), hashlib.sha256(config).hexdigest()


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
