"""``--from SOURCE``: an existing image, read without a container engine.

SOURCE is named as skopeo and podman name it: ``oci:DIR[:REF]``,
``oci-archive:FILE[:REF]``, ``docker-archive:FILE[:NAME:TAG]`` (what ``docker save``
and ``podman save`` write) and ``containers-storage:NAME`` (exported with ``podman
save`` into a private folder first). Every JSON document and every blob is checked
against the digest that names it before it is used: the index, the manifest, the
config, and each layer both as stored and as unpacked (the config's ``diff_ids``).
This module only reads; ``minify.unpack`` applies the layers.
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
from minify.loader.arch import host_arch
from minify.oci import PLATFORMS

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
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise ImageSourceError(f"{blobs.where}: index.json lists no image")
    platformed = ref is None and len(manifests) > 1 and all(isinstance(m, dict) and "platform" in m for m in manifests)
    # (skopeo copy --all writes each platform's manifest straight into index.json)
    chosen = _by_platform(blobs.where, manifests, platform) if platformed else _by_ref(blobs.where, manifests, ref)
    for _ in range(MAX_INDEX_DEPTH):
        digest = _field(chosen, "digest", str, blobs.where)
        doc = blobs.document(blob_name(digest), digest)
        if not isinstance(doc, dict):
            raise ImageSourceError(f"{blobs.where}: {digest} is not a manifest")
        kind = doc.get("mediaType") or chosen.get("mediaType")
        if kind in INDEX_TYPES or (kind is None and "manifests" in doc):
            chosen = _by_platform(blobs.where, doc.get("manifests"), platform)
            continue
        return digest, *_manifest(blobs, doc)
    raise ImageSourceError(f"{blobs.where}: indexes nested more than {MAX_INDEX_DEPTH} deep")


def _ref_name(where: str, manifest: dict[str, Any]) -> str | None:
    """A manifest descriptor's ``org.opencontainers.image.ref.name``, checked."""
    annotations = manifest.get("annotations")
    if annotations is None:
        return None
    if not isinstance(annotations, dict):
        raise ImageSourceError(f"{where}: index.json: a manifest's annotations are not a JSON object")
    name = annotations.get(REF_NAME)
    if name is not None and not isinstance(name, str):
        raise ImageSourceError(f"{where}: index.json: a manifest's {REF_NAME} is not a string")
    return name


def _by_ref(where: str, manifests: list[Any], ref: str | None) -> dict[str, Any]:
    described = [m for m in manifests if isinstance(m, dict)]
    if ref is not None:
        named = [m for m in described if _ref_name(where, m) == ref]
        if not named:
            names = sorted({str(_ref_name(where, m)) for m in described})
            raise ImageSourceError(f"{where}: no image named {ref!r} (it has: {', '.join(names)})")
        return named[0]
    if len(described) != 1:
        names = sorted({str(_ref_name(where, m)) for m in described})
        raise ImageSourceError(f"{where}: holds {len(described)} images; name one with :REF ({', '.join(names)})")
    return described[0]


def _by_platform(where: str, manifests: object, want: Platform) -> dict[str, Any]:
    if not isinstance(manifests, list):
        raise ImageSourceError(f"{where}: an image index without manifests")
    offered: list[str] = []
    for item in manifests:
        p = item.get("platform") if isinstance(item, dict) else None
        if not isinstance(p, dict):
            continue
        variant = p.get("variant")
        if variant is not None and not isinstance(variant, str):
            raise ImageSourceError(f"{where}: a manifest's platform.variant is not a string ({variant!r})")
        found = Platform(str(p.get("os")), str(p.get("architecture")), variant)
        offered.append(str(found))
        if found.matches(want):
            return item  # type: ignore[no-any-return]
    raise ImageSourceError(f"{where}: no image for {want} (it has: {', '.join(offered) or 'none'}); use --platform")


def _field(doc: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise ImageSourceError(f"{where}: a descriptor without a valid {key!r}")
    return value


def _manifest(blobs: Blobs, doc: dict[str, Any]) -> tuple[dict[str, Any], tuple[LayerRef, ...]]:
    where = blobs.where
    config_desc = doc.get("config")
    layers = doc.get("layers")
    if not isinstance(config_desc, dict) or not isinstance(layers, list):
        raise ImageSourceError(f"{where}: a manifest without a config and layers")
    config_digest = _field(config_desc, "digest", str, where)
    config = blobs.document(blob_name(config_digest), config_digest)
    if not isinstance(config, dict):
        raise ImageSourceError(f"{where}: the config is not a JSON object")
    diff_ids = _diff_ids(config, len(layers), where)
    refs = []
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        if not isinstance(layer, dict):
            raise ImageSourceError(f"{where}: a layer descriptor is not an object")
        digest = _field(layer, "digest", str, where)
        name = blob_name(digest)
        if not blobs.has(name):
            raise ImageSourceError(f"{where}: the layer blob {digest} is missing")
        refs.append(LayerRef(name, digest, diff_id, _compression(str(layer.get("mediaType", "")))))
    return config, tuple(refs)


def _diff_ids(config: dict[str, Any], count: int, where: str) -> list[str]:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != count or not all(isinstance(d, str) for d in diff_ids):
        raise ImageSourceError(f"{where}: the config's rootfs.diff_ids do not match the manifest's {count} layer(s)")
    for d in diff_ids:
        blob_name(d)  # a sha256 digest
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
    config_name = _field(entry, "Config", str, where)
    layer_names = entry.get("Layers")
    if not isinstance(layer_names, list) or not all(isinstance(n, str) for n in layer_names):
        raise ImageSourceError(f"{where}: manifest.json has no list of layers")
    data = blobs.small(config_name)
    stem = os.path.basename(config_name).removesuffix(".json")  # docker names it by its digest
    config = blobs.parse(config_name, data, f"sha256:{stem}" if re.fullmatch(r"[0-9a-f]{64}", stem) else None)
    if not isinstance(config, dict):
        raise ImageSourceError(f"{where}: {config_name} is not a JSON object")
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
    images = [m for m in manifest if isinstance(m, dict)] if isinstance(manifest, list) else []
    if not images:
        raise ImageSourceError(f"{where}: manifest.json lists no image")
    if ref is not None:
        images = [m for m in images if {ref, f"localhost/{ref}"} & set(_repo_tags(where, m))]
        if not images:
            raise ImageSourceError(f"{where}: no image tagged {ref!r}")
    if len(images) != 1:
        raise ImageSourceError(f"{where}: holds {len(images)} images; name one as docker-archive:FILE:NAME:TAG")
    return images[0]


def _repo_tags(where: str, image: dict[str, Any]) -> list[str]:
    tags = image.get("RepoTags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ImageSourceError(f"{where}: manifest.json: RepoTags is not a list of strings")
    return tags


def _platform_of(config: dict[str, Any]) -> Platform:
    """The config's platform; a field that is not a string is refused (it would be
    written into the new image's config as it reads, ``{'x': 1}``)."""
    values = {key: config.get(key) for key in ("os", "architecture", "variant")}
    for key, value in values.items():
        if value is not None and not isinstance(value, str):
            raise ImageSourceError(f"the image's config: {key} is not a string ({value!r})")
    return Platform(values["os"] or "linux", values["architecture"] or "unknown", values["variant"] or None)
