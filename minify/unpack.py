"""The layers of an image applied in order into a private root, as the OCI image
spec describes, and nothing written anywhere else.

Each layer is first unpacked to a plain tar beside the root (checking the blob's
digest as stored and its ``diff_id`` as unpacked, and the ``--max-unpacked-size``
budget), then read twice: once to check every member and apply its whiteouts to the
layers below (``.wh.NAME`` deletes NAME, ``.wh..wh..opq`` empties its folder), once
to write its files. Every path is opened one component at a time from the root's
own descriptor with ``O_NOFOLLOW``; a symlink met on the way is followed inside the
root (as a chroot would), never out of it.

Refused with one line (``HostileLayer``): an absolute member name, a ``..``
component, a symlink whose relative target climbs above the root, a hard link to a
name not yet seen, and a layer that unpacks (or declares members) past the budget.
Device nodes, FIFOs and sockets are skipped with a note.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import IO, cast

from minify.errors import HostileLayer, ImageSourceError
from minify.root import remove_tree
from minify.source import Blobs, Compression, LayerRef, SourceImage
from minify.text import some

#: Members one layer may hold.
MAX_MEMBERS = 2_000_000
#: Symlinks followed while resolving one path.
MAX_HOPS = 40
#: The largest single read tarfile may ask for (a PAX header): more is hostile.
MAX_READ = 64 << 20
CHUNK = 1 << 20
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Unpacked:
    """The flattened root, and what was skipped on the way."""

    root: str
    layers: int = 0
    notes: list[str] = field(default_factory=list)
    # path -> (uid, gid, mode) as the image names it: every folder, and the files whose
    # owner is not root or whose mode the unpacked copy does not hold (``Root.owners``)
    owners: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # kinds of members not written, and how many
    xattrs: list[str] = field(default_factory=list)  # "path (name)" of extended attributes not kept


def flatten(image: SourceImage, blobs: Blobs, root: str, *, limit: int) -> Unpacked:
    """Apply the layers of ``image`` into ``root`` (a new, empty, private folder),
    refusing more than ``limit`` bytes unpacked (``--max-unpacked-size``)."""
    os.makedirs(root, mode=0o755)
    done = Unpacked(root)
    budget = [limit]  # bytes of the layers as plain tars
    declared = [limit]  # bytes their files hold, sparse or not, across all layers
    for number, layer in enumerate(image.layers, 1):
        plain = os.path.join(os.path.dirname(root), f"layer-{number}.tar")
        what = f"{image.source}: layer {number} ({layer.diff_id[:19]})"
        try:
            _decompress(blobs, layer, plain, budget, what, limit)
            _apply(plain, root, what, (declared, limit), done)
        except OSError as exc:  # no space left, a name too long for this file system, ...
            name = f" {exc.filename}:" if exc.filename else ""
            raise ImageSourceError(f"{what}:{name} cannot be unpacked here ({exc.strerror or exc})") from None
        finally:
            if os.path.lexists(plain):
                os.unlink(plain)
        done.layers = number
    if done.skipped:
        done.notes.append(
            "note: not copied from the image (a container gets these from its runtime): "
            + ", ".join(f"{n} {kind}" for kind, n in sorted(done.skipped.items()))
        )
    if done.xattrs:
        shown = some(done.xattrs, 8)
        done.notes.append(f"extended attributes of the image not kept: {shown}")
    return done


def _apply(
    plain: str,
    root: str,
    what: str,
    budget: tuple[list[int], int],
    done: Unpacked,
) -> None:
    """One layer's plain tar: checked whole, its whiteouts applied, then its files."""
    try:
        with _Tree(root) as tree, open(plain, "rb") as raw:
            capped = _Capped(raw, what)
            with tarfile.open(fileobj=cast("IO[bytes]", capped), mode="r:") as tar:
                members = _check(tar, what, budget)
                tree.whiteouts(members)
                tree.write(tar, members, done)
    except tarfile.TarError as exc:
        raise ImageSourceError(f"{what}: not a readable tar ({exc})") from None


# -- unpacking a blob to a plain tar ---------------------------------------------------


def _decompress(blobs: Blobs, layer: LayerRef, dest: str, budget: list[int], what: str, limit: int) -> None:
    """The layer as a plain tar at ``dest``, its digests checked, within the budget."""
    stored = hashlib.sha256()
    plain = hashlib.sha256()
    with blobs.open(layer.blob) as src:
        head = src.read(4)
        compression = _sniff(head, layer.compression)
        if compression is Compression.ZSTD:
            raise ImageSourceError(
                f"{what}: zstd layers cannot be read yet; convert the image with "
                "skopeo copy --dest-compress-format gzip"
            )
        hashed = _Hashing(head, src, stored)
        readable = cast("IO[bytes]", hashed)
        stream = gzip.GzipFile(fileobj=readable, mode="rb") if compression is Compression.GZIP else readable
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            try:
                while chunk := stream.read(CHUNK):
                    budget[0] -= len(chunk)
                    if budget[0] < 0:
                        raise HostileLayer(f"{what}: unpacks to more than {_size(limit)} (--max-unpacked-size)")
                    plain.update(chunk)
                    out.write(chunk)
            except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise
                raise ImageSourceError(f"{what}: truncated or corrupt ({exc})") from None
        while hashed.read(CHUNK):  # whatever gzip left unread still counts for the digest
            pass
    if layer.digest is not None and f"sha256:{stored.hexdigest()}" != layer.digest:
        raise ImageSourceError(f"{what}: the blob's sha256 is not the digest {layer.digest} that names it; refused")
    if f"sha256:{plain.hexdigest()}" != layer.diff_id:
        raise ImageSourceError(f"{what}: the unpacked layer's sha256 is not the config's diff_id; refused")


def _sniff(head: bytes, declared: Compression) -> Compression:
    if head[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if head == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    return Compression.NONE if declared is not Compression.ZSTD else declared


class _Hashing:
    """A read-only stream that hashes what is read (``head`` already read first)."""

    def __init__(self, head: bytes, src: IO[bytes], digest: hashlib._Hash) -> None:
        self._head = head
        self._src = src
        self._digest = digest
        digest.update(head)

    def read(self, size: int = -1) -> bytes:
        if self._head:
            cut = len(self._head) if size < 0 else size
            data, self._head = self._head[:cut], self._head[cut:]
            return data
        data = self._src.read(size if size >= 0 else CHUNK)
        self._digest.update(data)
        return data

    def readable(self) -> bool:
        return True


class _Capped:
    """A file for tarfile that refuses a single huge read (a PAX header declaring
    gigabytes would otherwise be read into memory whole)."""

    def __init__(self, raw: IO[bytes], what: str) -> None:
        self._raw = raw
        self._what = what

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_READ:
            raise HostileLayer(f"{self._what}: a tar header declares {size} bytes of metadata; refused")
        return self._raw.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def seekable(self) -> bool:
        return True  # the plain tar on disk: a sparse member's extents are read where they lie

    def tell(self) -> int:
        return self._raw.tell()


def _swap(old: int, new: int) -> int:
    """``new`` in place of the descriptor ``old``, which is closed."""
    os.close(old)
    return new


def _size(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB" if n >= 1 << 30 else f"{n >> 20} MiB"


# -- checking the members ----------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    info: tarfile.TarInfo
    parts: tuple[str, ...]  # the clean name, as components


def _check(tar: tarfile.TarFile, what: str, budget: tuple[list[int], int]) -> list[_Member]:
    """Every member of a layer, checked before anything of it is written. What the
    files hold counts against one budget for all layers: a sparse member declares
    its whole size in a few bytes of tar, so four small layers could otherwise each
    stay under the limit and together write far past it."""
    members: list[_Member] = []
    left, limit = budget
    for _ in range(MAX_MEMBERS + 1):
        info = tar.next()
        if info is None:
            return members
        parts = _parts(info.name, what)
        if info.issym():
            _check_symlink(parts, info.linkname, what)
        elif info.islnk():
            _parts(info.linkname, what, link=True)
        if info.isfile():
            left[0] -= info.size
            if left[0] < 0:
                raise HostileLayer(f"{what}: the layers' files hold more than {_size(limit)} (--max-unpacked-size)")
        if parts:
            members.append(_Member(info, parts))
    raise HostileLayer(f"{what}: more than {MAX_MEMBERS} members")


def _parts(name: str, what: str, *, link: bool = False) -> tuple[str, ...]:
    kind = "a hard link to" if link else "a member named"
    if "\0" in name:
        raise HostileLayer(f"{what}: {kind} {name!r}, with a NUL byte; refused")
    if name.startswith("/"):
        raise HostileLayer(f"{what}: {kind} the absolute path {name!r}; refused")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise HostileLayer(f"{what}: {kind} {name!r}, with '..'; refused")
    return parts


def _check_symlink(parts: tuple[str, ...], target: str, what: str) -> None:
    """A relative target may not climb above the root from where the link is (an
    absolute one is a path inside the image: it is resolved there)."""
    if "\0" in target or not target:
        raise HostileLayer(f"{what}: the symlink {'/'.join(parts)!r} has an empty or NUL target")
    if target.startswith("/"):
        return
    depth = len(parts) - 1
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                raise HostileLayer(f"{what}: the symlink {'/'.join(parts)} -> {target} leaves the root; refused")
        elif part not in ("", "."):
            depth += 1


# -- writing into the root -----------------------------------------------------------------


class _Tree:
    """The root being built, reached only through descriptors opened from its own."""

    def __init__(self, root: str) -> None:
        self.fd = os.open(root, _DIR)
        self._last: tuple[tuple[str, ...], int] | None = None
        self._stale = False  # a folder was removed: the cached one may be gone

    def __enter__(self) -> _Tree:
        return self

    def __exit__(self, *_: object) -> None:
        self._forget()
        os.close(self.fd)

    def _forget(self) -> None:
        if self._last is not None:
            os.close(self._last[1])
            self._last = None

    def folder(self, parts: tuple[str, ...], *, create: bool) -> int | None:
        """A descriptor of the folder ``parts`` names, symlinks followed inside the
        root; missing folders made (``create``) or None. The last one is kept open
        (members come folder by folder); the caller does not close it."""
        if self._stale:
            self._forget()
            self._stale = False
        if self._last is not None and self._last[0] == parts:
            return self._last[1]
        found = self._resolve(parts, create=create)
        if found is None:
            return None
        self._forget()
        self._last = (parts, found[1])
        return found[1]

    def _made(self, parts: tuple[str, ...]) -> int:
        """The folder ``parts`` names, made where missing."""
        fd = self.folder(parts, create=True)
        if fd is None:  # (folder never gives None when it may create)
            raise ImageSourceError(f"/{'/'.join(parts)}: cannot be made")
        return fd

    def _resolve(self, parts: tuple[str, ...], *, create: bool) -> tuple[tuple[str, ...], int] | None:
        """The path of folders ``parts`` leads to and a descriptor of it (the caller
        closes it), walked one component at a time with each symlink followed inside
        the root (an absolute target starts again from it, ``..`` stops at it)."""
        todo = deque(parts)
        current: list[str] = []
        hops = 0
        at = os.dup(self.fd)
        try:
            while todo:
                name = todo.popleft()
                if name in ("", ".", ".."):
                    if name == ".." and current:
                        current.pop()
                        at = _swap(at, self._open_real(current))
                    continue
                target = self._step(at, name, parts, create=create)
                if target is None:
                    os.close(at)
                    return None
                if isinstance(target, bool):
                    current.append(name)
                    at = _swap(at, os.open(name, _DIR, dir_fd=at))
                    continue
                hops += 1
                if hops > MAX_HOPS:
                    raise HostileLayer(f"/{'/'.join(parts)}: too many levels of symlinks")
                if target.startswith("/"):
                    current = []
                    at = _swap(at, os.dup(self.fd))
                todo.extendleft(reversed(target.split("/")))
        except BaseException:
            os.close(at)
            raise
        return tuple(current), at

    def _step(self, at: int, name: str, parts: tuple[str, ...], *, create: bool) -> str | bool | None:
        """One component in the folder ``at``: a folder (True; made first when missing
        and ``create``), a symlink (its target), or nothing usable (None)."""
        try:
            st = os.lstat(name, dir_fd=at)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o755, dir_fd=at)
            return True
        if stat.S_ISLNK(st.st_mode):
            return os.readlink(name, dir_fd=at)
        if stat.S_ISDIR(st.st_mode):
            return True
        if create:
            raise ImageSourceError(f"/{'/'.join(parts)}: a layer writes inside {name}, which is not a folder")
        return None

    def _open_real(self, real: list[str]) -> int:
        """A descriptor of a folder whose path has no symlink (``_resolve`` made it)."""
        opened = os.dup(self.fd)
        try:
            for name in real:
                fd = os.open(name, _DIR, dir_fd=opened)
                os.close(opened)
                opened = fd
        except OSError:
            os.close(opened)
            raise
        return opened

    def _remove(self, at: int, name: str) -> None:
        try:
            st = os.lstat(name, dir_fd=at)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            remove_tree(name, dir_fd=at)
            self._stale = True  # the cached folder may have been inside it
        else:
            os.unlink(name, dir_fd=at)

    def whiteouts(self, members: list[_Member]) -> None:
        """Delete what this layer's whiteouts hide in the layers below."""
        for member in members:
            base = member.parts[-1]
            if not base.startswith(WHITEOUT):
                continue
            at = self.folder(member.parts[:-1], create=False)
            if at is None:
                continue
            if base == OPAQUE:
                for name in os.listdir(at):
                    self._remove(at, name)
            elif base[len(WHITEOUT) :] not in ("", ".", ".."):
                self._remove(at, base[len(WHITEOUT) :])
        self._forget()

    def write(self, tar: tarfile.TarFile, members: list[_Member], done: Unpacked) -> None:
        skipped, owners = done.skipped, done.owners
        for member in members:
            info, parts = member.info, member.parts
            if parts[-1].startswith(WHITEOUT):
                continue
            if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
                kind = "device nodes" if info.ischr() or info.isblk() else "FIFOs" if info.isfifo() else "others"
                skipped[kind] = skipped.get(kind, 0) + 1
                continue
            path = "/" + "/".join(parts)
            if not (0 <= info.uid < 1 << 32 and 0 <= info.gid < 1 << 32):  # no file system holds it
                raise HostileLayer(f"{path}: an owner id beyond 32 bits ({info.uid}:{info.gid}); refused")
            at = self._made(parts[:-1])
            name = parts[-1]
            mode = info.mode & 0o7777
            if info.isdir():
                self._make_dir(at, name, mode, (info.uid, info.gid))
                owners[path] = (info.uid, info.gid, mode)
                continue
            self._remove(at, name)
            owners.pop(path, None)
            if info.issym():
                os.symlink(info.linkname, name, dir_fd=at)
            else:
                if info.islnk():
                    self._link(info.linkname, at, name)
                else:
                    self._file(tar, info, at, name, mode, done.xattrs)
                if (info.uid, info.gid) != (0, 0) or not mode & 0o400:
                    owners[path] = (info.uid, info.gid, mode)

    def _make_dir(self, at: int, name: str, mode: int, owner: tuple[int, int]) -> None:
        try:
            st = os.lstat(name, dir_fd=at)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=at)
            st = None
        if st is None:
            os.mkdir(name, 0o700, dir_fd=at)
        fd = os.open(name, _DIR, dir_fd=at)
        try:
            _own(fd, *owner, again=st is not None)
            os.fchmod(fd, mode | 0o700)  # minify must still read it; the plan keeps its own modes
        finally:
            os.close(fd)

    def _link(self, target: str, at: int, name: str) -> None:
        """A hard link to a file the layers have already written (never a folder)."""
        parts = _parts(target, "hard link")
        found = self._resolve(parts[:-1], create=False) if parts else None
        src = found[1] if found is not None else None
        try:
            try:
                st = os.lstat(parts[-1], dir_fd=src) if src is not None else None
            except FileNotFoundError:
                st = None
            if src is not None and st is not None and stat.S_ISDIR(st.st_mode):
                raise HostileLayer(f"/{'/'.join(parts)}: a hard link to a folder, which no file system allows; refused")
            if src is None or st is None:
                raise HostileLayer(f"/{'/'.join(parts)}: a hard link to a name the layers have not written; refused")
            os.link(parts[-1], name, src_dir_fd=src, dst_dir_fd=at, follow_symlinks=False)
        finally:
            if src is not None:
                os.close(src)

    def _file(
        self, tar: tarfile.TarFile, info: tarfile.TarInfo, at: int, name: str, mode: int, dropped: list[str]
    ) -> None:
        src = tar.extractfile(info)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=at)
        if info.sparse is not None and src is not None:
            try:
                _write_sparse(src, fd, info)
                _own(fd, info.uid, info.gid)
                os.fchmod(fd, mode | 0o400)
                _xattrs(fd, info, dropped)
            finally:
                os.close(fd)
            return
        with os.fdopen(fd, "wb") as out:
            left = info.size
            while left > 0 and src is not None:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise ImageSourceError(f"{info.name}: the layer ends inside this file")
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            _own(out.fileno(), info.uid, info.gid)  # before the mode: chown clears setuid
            os.fchmod(out.fileno(), mode | 0o400)
            _xattrs(out.fileno(), info, dropped)  # last: the kernel clears a capability on every write


def _own(fd: int, uid: int, gid: int, *, again: bool = False) -> None:
    """The image's owner on the unpacked copy, when this process may set it (root): a
    command traced as the image's user then finds its own files as in the image.
    Otherwise the copy stays this user's, and ``Unpacked.owners`` still names them.
    A new file is root's already; a folder a layer declares ``again`` may change hands."""
    if ((uid, gid) != (0, 0) or again) and os.geteuid() == 0:
        try:
            os.fchown(fd, uid, gid)
        except OSError:
            pass  # ids this file system cannot hold: the owners table still has them


def _write_sparse(src: IO[bytes], fd: int, info: tarfile.TarInfo) -> None:
    """A sparse member as a sparse file: its data extents where the map puts them, the
    holes left as holes (written out, a 10 KB member can fill a disk)."""
    extents = cast("list[tuple[int, int]]", info.sparse or [])  # typeshed says bytes; tarfile gives pairs
    for offset, size in extents:
        src.seek(offset)
        left, at = size, offset
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise ImageSourceError(f"{info.name}: the layer ends inside this file")
            os.pwrite(fd, chunk, at)
            at += len(chunk)
            left -= len(chunk)
    os.ftruncate(fd, info.size)


#: The one extended attribute minify keeps: an image writer carries file capabilities
#: (``ping``'s cap_net_raw) as PAX records, so they are set on the unpacked file.
CAPABILITY = "security.capability"


def _xattrs(fd: int, info: tarfile.TarInfo, dropped: list[str]) -> None:
    """Set a member's file capability on the unpacked file; name the other extended
    attributes (and a capability this process may not set), which are not kept."""
    for key, value in sorted(info.pax_headers.items()):
        if not key.startswith("SCHILY.xattr."):
            continue
        attr = key[len("SCHILY.xattr.") :]
        if attr == CAPABILITY:
            try:
                os.setxattr(fd, attr, value.encode("utf-8", "surrogateescape"))
                continue
            except OSError:
                pass  # not root, or a file system without them: named below
        dropped.append(f"/{info.name.lstrip('/')} ({attr})")
