"""``--from SOURCE``: an existing image, read without a container engine.

SOURCE is named as skopeo and podman name it: ``oci:DIR[:REF]``,
``oci-archive:FILE[:REF]``, ``docker-archive:FILE[:NAME:TAG]`` (what ``docker save``
and ``podman save`` write) and ``containers-storage:NAME`` (exported with ``podman
save`` into a private folder first). Every JSON document and every blob is checked
against the digest that names it before it is used: the index, the manifest, the
config, and each layer both as stored and as unpacked (the config's ``diff_ids``).
This module only reads; ``minify.sources.unpack`` applies the layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from enum import StrEnum
from typing import IO, Any

from minify.errors import ImageSourceError
from minify.loader.arch import PLATFORMS, host_arch
from minify.shapes import CONFIG, DOCKER_MANIFEST, INDEX, MANIFEST, OBJECT, check

#: JSON documents (index, manifest, config) are small; a bigger one is not an image.
MAX_DOCUMENT = 8 << 20
#: Members an image archive may hold (blobs and a few documents).
MAX_ARCHIVE_MEMBERS = 100_000
#: Nested indexes followed at most.
MAX_INDEX_DEPTH = 4

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
REF_NAME = "org.opencontainers.image.ref.name"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


class SourceTransport(StrEnum):
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    CONTAINERS_STORAGE = "containers-storage"


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


@dataclass(frozen=True)
class ImageSource:
    transport: SourceTransport
    path: str  # a folder or file; for containers-storage the image's name
    ref: str | None = None

    def __str__(self) -> str:
        return f"{self.transport.value}:{self.path}" + (f":{self.ref}" if self.ref else "")


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, want: Platform) -> bool:
        return (self.os, self.architecture) == (want.os, want.architecture) and (
            want.variant is None or self.variant in (None, want.variant)
        )


@dataclass(frozen=True)
class LayerRef:
    """One layer: its blob (by digest, or by member name in a docker archive), and the
    digest its unpacked tar must have."""

    blob: str  # "sha256:..." or a docker-archive member name
    digest: str | None  # of the blob as stored (None: a docker-archive member, checked by diff_id)
    diff_id: str  # of the uncompressed tar
    compression: Compression


@dataclass(frozen=True)
class SourceImage:
    source: ImageSource
    digest: str  # the manifest's (or, for docker-archive, the config's) digest
    config: dict[str, Any]  # the whole config document
    platform: Platform
    layers: tuple[LayerRef, ...]

    @property
    def run(self) -> dict[str, Any]:
        """The config's ``config`` object: Entrypoint, Cmd, Env, User, ..."""
        run = self.config.get("config")
        return run if isinstance(run, dict) else {}


def parse_source(text: str) -> ImageSource:
    """``TRANSPORT:PATH[:REF]``; a bare ``FILE.tar`` is an archive podman or docker
    saved (docker-archive and oci-archive are told apart when it is read)."""
    transport_name, sep, rest = text.partition(":")
    if not sep:
        if not text.endswith(".tar"):
            raise ImageSourceError(
                f"--from {text!r}: expected oci:DIR, oci-archive:FILE, docker-archive:FILE, containers-storage:NAME"
                " or FILE.tar"
            )
        return ImageSource(SourceTransport.DOCKER_ARCHIVE, text)
    try:
        transport = SourceTransport(transport_name)
    except ValueError:
        known = ", ".join(t.value for t in SourceTransport)
        raise ImageSourceError(f"--from {text!r}: unknown transport {transport_name!r} (known: {known})") from None
    if transport is SourceTransport.CONTAINERS_STORAGE:
        path, ref = rest, None
    else:
        path, _, ref_text = rest.partition(":")
        ref = ref_text or None
    if not path or "\0" in text:
        raise ImageSourceError(f"--from {text!r}: no path")
    return ImageSource(transport, path, ref)


def host_platform() -> Platform:
    arch, variant = PLATFORMS.get(host_arch(), (host_arch(), None))
    return Platform("linux", arch, None if arch == "arm64" else variant)


def parse_platform(text: str | None) -> Platform | None:
    """``--platform OS/ARCH[/VARIANT]``, or None (an index gives this machine's)."""
    if text is None:
        return None
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_]+", p) for p in parts):
        raise ImageSourceError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


# -- where blobs are read from --------------------------------------------------------


class Blobs:
    """Named files of an image: in a folder, or members of an uncompressed tar."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._links: dict[str, str] = {}  # docker save's older format links repeated layers
        try:
            st = os.stat(where)
        except OSError as exc:
            raise ImageSourceError(f"{where}: {exc.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            self._open_tar(where)
        elif not stat.S_ISDIR(st.st_mode):
            raise ImageSourceError(f"{where}: not a folder or an image archive")

    def _open_tar(self, where: str) -> None:
        try:
            self._tar = tarfile.open(where, "r:")  # closed by close()
            for _ in range(MAX_ARCHIVE_MEMBERS + 1):
                member = self._tar.next()
                if member is None:
                    break
                if member.isfile():
                    self._members[_clean(member.name)] = member
                elif member.issym():
                    self._links[_clean(member.name)] = member.linkname
            else:
                raise ImageSourceError(f"{where}: more than {MAX_ARCHIVE_MEMBERS} members; not an image archive")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ImageSourceError(f"{where}: not a readable tar archive ({exc})") from None

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def _follow(self, name: str) -> str:
        """A member name with the archive's own symlinks followed (a few, relative)."""
        for _ in range(8):
            target = self._links.get(name)
            if target is None or target.startswith("/"):
                return name
            name = _clean(posixpath.join(posixpath.dirname(name), target))
        return name

    def has(self, name: str) -> bool:
        if self._tar is not None:
            return self._follow(_clean(name)) in self._members
        return _regular(os.path.join(self.where, self._inside(name)))

    def _inside(self, name: str) -> str:
        """A name of a file of the image folder: an absolute one or one with ``..``
        (a docker manifest.json's ``Config: /etc/passwd``) would read outside it."""
        if name.startswith("/") or ".." in name.split("/") or "\0" in name:
            raise ImageSourceError(f"{self.where}: {name!r} names a file outside the image; refused")
        return name

    def open(self, name: str) -> IO[bytes]:
        """A member or file for reading: regular files only, never through a symlink."""
        if self._tar is not None:
            member = self._members.get(self._follow(_clean(name)))
            handle = self._tar.extractfile(member) if member is not None else None
            if handle is None:
                raise ImageSourceError(f"{self.where}: {name} is missing from the archive")
            return handle
        path = os.path.join(self.where, self._inside(name))
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageSourceError(f"{self.where}: {name} is missing: the image is incomplete") from None
        except OSError as exc:
            raise ImageSourceError(f"{path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ImageSourceError(f"{path}: not a regular file")
        return os.fdopen(fd, "rb")

    def document(self, name: str, digest: str | None = None) -> dict[str, Any] | list[Any]:
        """A JSON document, checked against ``digest`` when one names it."""
        return self.parse(name, self.small(name), digest)

    def small(self, name: str) -> bytes:
        """The bytes of a JSON document: a bigger one is not an image's."""
        with self.open(name) as fh:
            data = fh.read(MAX_DOCUMENT + 1)
        if len(data) > MAX_DOCUMENT:
            raise ImageSourceError(f"{self.where}: {name} is larger than {MAX_DOCUMENT >> 20} MiB; not an image")
        return data

    def parse(self, name: str, data: bytes, digest: str | None = None) -> dict[str, Any] | list[Any]:
        """``data`` (the document ``name``) as JSON, checked against ``digest`` first."""
        if digest is not None:
            check_digest(data, digest, f"{self.where}: {name}")
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise ImageSourceError(f"{self.where}: {name} is not JSON ({exc})") from None
        except RecursionError:
            raise ImageSourceError(f"{self.where}: {name} is JSON nested deeper than minify reads") from None
        if not isinstance(value, dict | list):
            raise ImageSourceError(f"{self.where}: {name} is not a JSON object")
        return value


def _clean(name: str) -> str:
    return os.path.normpath(name.lstrip("/")).removeprefix("./")


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def blob_name(digest: str) -> str:
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise ImageSourceError(f"{digest!r}: not a sha256 digest")
    return f"blobs/sha256/{match.group(1)}"


def check_digest(data: bytes, digest: str, what: str) -> None:
    if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
        raise ImageSourceError(f"{what}: its sha256 is not the digest {digest} that names it; refused")


# -- reading an image ------------------------------------------------------------------


def read_image(source: ImageSource, platform: Platform | None, work: str) -> tuple[SourceImage, Blobs]:
    """The image SOURCE names, checked: from an index, the one for ``platform`` (this
    machine's when None); a single image must be for ``platform`` when one is named.
    ``work`` is a private folder for a containers-storage export. The caller closes
    the Blobs."""
    exported = source.transport is SourceTransport.CONTAINERS_STORAGE
    blobs = Blobs(_export(source.path, work) if exported else source.path)
    try:
        # a bare FILE.tar is a docker archive when it has docker's manifest.json
        if source.transport is SourceTransport.DOCKER_ARCHIVE and blobs.has("manifest.json"):
            digest, config, layers = _docker_archive(blobs, source.ref)
        else:
            digest, config, layers = _oci_layout(blobs, source.ref, platform or host_platform())
        found = _platform_of(config)
        if platform is not None and (found.os, found.architecture) != (platform.os, platform.architecture):
            raise ImageSourceError(f"{source}: the image is for {found}, not {platform} (--platform)")
    except BaseException:
        blobs.close()
        raise
    return SourceImage(source, digest, config, found, layers), blobs


def source_platforms(source: ImageSource, work: str) -> list[Platform]:
    """Every platform an index of SOURCE offers (``--platform all``), in its order; a
    single image's own platform."""
    exported = source.transport is SourceTransport.CONTAINERS_STORAGE
    blobs = Blobs(_export(source.path, work) if exported else source.path)
    try:
        if source.transport is SourceTransport.DOCKER_ARCHIVE and blobs.has("manifest.json"):
            return [_platform_of(_docker_archive(blobs, source.ref)[1])]
        index = blobs.document("index.json")
        check(f"{blobs.where}: index.json", index, INDEX)
        assert isinstance(index, dict)
        manifests: list[dict[str, Any]] = index["manifests"]
        if source.ref is None and len(manifests) > 1 and all("platform" in m for m in manifests):
            return [_offered(m) for m in manifests]
        return _nested_platforms(blobs, _by_ref(blobs.where, manifests, source.ref))
    finally:
        blobs.close()


def _offered(descriptor: dict[str, Any]) -> Platform:
    p = descriptor["platform"]
    return Platform(p["os"], p["architecture"], p.get("variant"))


def _nested_platforms(blobs: Blobs, chosen: dict[str, Any]) -> list[Platform]:
    """The platforms of the index (or the one image) a descriptor names."""
    for _ in range(MAX_INDEX_DEPTH):
        where = f"{blobs.where}: the manifest {chosen['digest']}"
        doc = blobs.document(blob_name(chosen["digest"]), chosen["digest"])
        check(where, doc, OBJECT)
        assert isinstance(doc, dict)
        if (doc.get("mediaType") or chosen.get("mediaType")) not in INDEX_TYPES and "manifests" not in doc:
            check(where, doc, MANIFEST)
            return [_platform_of(_manifest(blobs, doc)[0])]
        check(where, doc, INDEX)
        if not doc["manifests"]:
            raise ImageSourceError(f"{where}: lists no image")
        if all("platform" in m for m in doc["manifests"]):
            return [_offered(m) for m in doc["manifests"]]
        chosen = doc["manifests"][0]
    raise ImageSourceError(f"{blobs.where}: indexes nested more than {MAX_INDEX_DEPTH} deep")


def _export(name: str, work: str) -> str:
    """``containers-storage:NAME`` saved by podman as an OCI archive in ``work``."""
    podman = shutil.which("podman")
    if podman is None:
        raise ImageSourceError(
            f"containers-storage:{name}: podman is not installed; save the image (podman save) and use docker-archive:"
        )
    archive = os.path.join(work, "export.tar")
    try:
        done = subprocess.run(
            [podman, "image", "save", "--format", "oci-archive", "-o", archive, name],
            capture_output=True,
            text=True,
            timeout=1800,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImageSourceError(f"containers-storage:{name}: podman save failed ({exc})") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ImageSourceError(f"containers-storage:{name}: podman save failed: {why}")
    return archive


def _oci_layout(blobs: Blobs, ref: str | None, platform: Platform) -> tuple[str, dict[str, Any], tuple[LayerRef, ...]]:
    index = blobs.document("index.json")
    check(f"{blobs.where}: index.json", index, INDEX)
    assert isinstance(index, dict)
    manifests: list[dict[str, Any]] = index["manifests"]
    if not manifests:
        raise ImageSourceError(f"{blobs.where}: index.json lists no image")
    platformed = ref is None and len(manifests) > 1 and all("platform" in m for m in manifests)
    # (skopeo copy --all writes each platform's manifest straight into index.json)
    chosen = _by_platform(blobs.where, manifests, platform) if platformed else _by_ref(blobs.where, manifests, ref)
    for _ in range(MAX_INDEX_DEPTH):
        digest: str = chosen["digest"]
        doc = blobs.document(blob_name(digest), digest)
        where = f"{blobs.where}: the manifest {digest}"
        check(where, doc, OBJECT)
        assert isinstance(doc, dict)
        kind = doc.get("mediaType") or chosen.get("mediaType")
        if kind in INDEX_TYPES or (kind is None and "manifests" in doc):
            check(where, doc, INDEX)
            chosen = _by_platform(blobs.where, doc["manifests"], platform)
            continue
        check(where, doc, MANIFEST)
        return digest, *_manifest(blobs, doc)
    raise ImageSourceError(f"{blobs.where}: indexes nested more than {MAX_INDEX_DEPTH} deep")


def _ref_name(manifest: dict[str, Any]) -> str | None:
    """A manifest descriptor's ``org.opencontainers.image.ref.name`` (its shape checked)."""
    return (manifest.get("annotations") or {}).get(REF_NAME)


def _by_ref(where: str, manifests: list[dict[str, Any]], ref: str | None) -> dict[str, Any]:
    if ref is not None:
        named = [m for m in manifests if _ref_name(m) == ref]
        if not named:
            names = sorted({str(_ref_name(m)) for m in manifests})
            raise ImageSourceError(f"{where}: no image named {ref!r} (it has: {', '.join(names)})")
        return named[0]
    if len(manifests) != 1:
        names = sorted({str(_ref_name(m)) for m in manifests})
        raise ImageSourceError(f"{where}: holds {len(manifests)} images; name one with :REF ({', '.join(names)})")
    return manifests[0]


def _by_platform(where: str, manifests: list[dict[str, Any]], want: Platform) -> dict[str, Any]:
    offered: list[str] = []
    for item in manifests:
        p = item.get("platform")
        if p is None:
            continue
        found = Platform(p["os"], p["architecture"], p.get("variant"))
        offered.append(str(found))
        if found.matches(want):
            return item
    raise ImageSourceError(f"{where}: no image for {want} (it has: {', '.join(offered) or 'none'}); use --platform")


def _manifest(blobs: Blobs, doc: dict[str, Any]) -> tuple[dict[str, Any], tuple[LayerRef, ...]]:
    """The config and layers of a manifest whose shape is checked."""
    where = blobs.where
    config_digest: str = doc["config"]["digest"]
    config = blobs.document(blob_name(config_digest), config_digest)
    check(f"{where}: the config {config_digest}", config, CONFIG)
    assert isinstance(config, dict)
    layers: list[dict[str, Any]] = doc["layers"]
    diff_ids = _diff_ids(config, len(layers), where)
    refs = []
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        name = blob_name(layer["digest"])
        if not blobs.has(name):
            raise ImageSourceError(f"{where}: the layer blob {layer['digest']} is missing")
        refs.append(LayerRef(name, layer["digest"], diff_id, _compression(layer.get("mediaType") or "")))
    return config, tuple(refs)


def _diff_ids(config: dict[str, Any], count: int, where: str) -> list[str]:
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    if len(diff_ids) != count:
        raise ImageSourceError(f"{where}: the config's rootfs.diff_ids do not match the manifest's {count} layer(s)")
    return diff_ids


def _compression(media_type: str) -> Compression:
    if media_type.endswith("+zstd") or media_type.endswith(".zstd"):
        return Compression.ZSTD
    if media_type.endswith("gzip"):
        return Compression.GZIP
    return Compression.NONE  # sniffed again when read: docker archives do not say


def _docker_archive(blobs: Blobs, ref: str | None) -> tuple[str, dict[str, Any], tuple[LayerRef, ...]]:
    where = blobs.where
    entry = _docker_entry(blobs, ref)
    config_name: str = entry["Config"]
    layer_names: list[str] = entry["Layers"]
    data = blobs.small(config_name)
    stem = os.path.basename(config_name).removesuffix(".json")  # docker names it by its digest
    config = blobs.parse(config_name, data, f"sha256:{stem}" if re.fullmatch(r"[0-9a-f]{64}", stem) else None)
    check(f"{where}: {config_name}", config, CONFIG)
    assert isinstance(config, dict)
    diff_ids = _diff_ids(config, len(layer_names), where)
    for name in layer_names:
        if not blobs.has(name):
            raise ImageSourceError(f"{where}: the layer {name} is missing from the archive")
    layers = tuple(LayerRef(n, None, d, Compression.NONE) for n, d in zip(layer_names, diff_ids, strict=True))
    return f"sha256:{hashlib.sha256(data).hexdigest()}", config, layers


def _docker_entry(blobs: Blobs, ref: str | None) -> dict[str, Any]:
    """The one image of manifest.json, or the one tagged ``ref``."""
    where = blobs.where
    manifest = blobs.document("manifest.json")
    check(f"{where}: manifest.json", manifest, DOCKER_MANIFEST)
    images: list[dict[str, Any]] = manifest  # type: ignore[assignment]
    if not images:
        raise ImageSourceError(f"{where}: manifest.json lists no image")
    if ref is not None:
        images = [m for m in images if {ref, f"localhost/{ref}"} & set(m.get("RepoTags") or ())]
        if not images:
            raise ImageSourceError(f"{where}: no image tagged {ref!r}")
    if len(images) != 1:
        raise ImageSourceError(f"{where}: holds {len(images)} images; name one as docker-archive:FILE:NAME:TAG")
    return images[0]


def _platform_of(config: dict[str, Any]) -> Platform:
    """The config's platform (its fields' shape checked: each is written into the new
    image's config as it reads)."""
    return Platform(config.get("os") or "linux", config.get("architecture") or "unknown", config.get("variant") or None)
