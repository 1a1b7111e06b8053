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

import errno
import os
import stat
import tarfile
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any, cast

from minify.errors import HostileLayer, ImageSourceError
from minify.root import remove_tree
from minify.sources.layer import CHUNK, Capped, decompress, limit_text
from minify.sources.reader import Blobs, SourceImage
from minify.text import some

#: Members one layer may hold.
MAX_MEMBERS = 2_000_000
#: Symlinks followed while resolving one path.
MAX_HOPS = 40
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
            decompress(blobs, layer, plain, budget, what, limit)
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
            capped = Capped(raw, what)
            with tarfile.open(fileobj=cast("IO[bytes]", capped), mode="r:") as tar:
                members = _check(tar, what, budget)
                tree.whiteouts(members)
                tree.write(tar, members, done)
    except tarfile.TarError as exc:
        raise ImageSourceError(f"{what}: not a readable tar ({exc})") from None


def _swap(old: int, new: int) -> int:
    """``new`` in place of the descriptor ``old``, which is closed."""
    os.close(old)
    return new


@dataclass(frozen=True, slots=True)
class _Member:
    """What writing a member needs, and no more: a layer may hold two million
    members, and tarfile's TarInfo (kept by its TarFile too) is several times bigger."""

    name: str  # the clean name, components joined by "/"
    kind: str  # "file", "dir", "symlink", "hardlink", or what is skipped ("FIFOs", ...)
    mode: int
    uid: int
    gid: int
    size: int
    offset: int  # of its data in the plain tar
    linkname: str
    info: tarfile.TarInfo | None  # kept for a sparse member, and one with extended attributes

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.name.split("/"))


def _kind(info: tarfile.TarInfo) -> str:
    if info.isfile():
        return "file"
    for test, kind in ((info.isdir, "dir"), (info.issym, "symlink"), (info.islnk, "hardlink")):
        if test():
            return kind
    return "device nodes" if info.ischr() or info.isblk() else "FIFOs" if info.isfifo() else "others"


def _member(info: tarfile.TarInfo, parts: tuple[str, ...]) -> _Member:
    special = info.sparse is not None or any(k.startswith("SCHILY.xattr.") for k in info.pax_headers)
    return _Member(
        "/".join(parts),
        _kind(info),
        info.mode & 0o7777,
        info.uid,
        info.gid,
        info.size,
        info.offset_data,
        info.linkname,
        info if special else None,
    )


def _check(tar: tarfile.TarFile, what: str, budget: tuple[list[int], int]) -> list[_Member]:
    """Every member of a layer, checked before anything of it is written. What the
    files hold counts against one budget for all layers: a sparse member declares
    its whole size in a few bytes of tar, so four small layers could otherwise each
    stay under the limit and together write far past it."""
    members: list[_Member] = []
    left, limit = budget
    for _ in range(MAX_MEMBERS + 1):
        info = tar.next()
        cast(Any, tar).members.clear()  # tarfile keeps every TarInfo it reads; only _Member is kept
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
                raise HostileLayer(
                    f"{what}: the layers' files hold more than {limit_text(limit)} (--max-unpacked-size)"
                )
        if parts:
            members.append(_member(info, parts))
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


class _Tree:
    """The root being built, reached only through descriptors opened from its own."""

    def __init__(self, root: str) -> None:
        self.fd = os.open(root, _DIR)
        self.umask = os.umask(0o077)  # read (it cannot be read without being set) ...
        os.umask(self.umask)  # ... and given back at once
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
            parts = member.parts
            if parts[-1].startswith(WHITEOUT):
                continue
            if member.kind not in ("file", "dir", "symlink", "hardlink"):
                skipped[member.kind] = skipped.get(member.kind, 0) + 1
                continue
            path = "/" + member.name
            owner = (member.uid, member.gid)
            if not (0 <= member.uid < 1 << 32 and 0 <= member.gid < 1 << 32):  # no file system holds it
                raise HostileLayer(f"{path}: an owner id beyond 32 bits ({member.uid}:{member.gid}); refused")
            at = self._made(parts[:-1])
            name = parts[-1]
            if member.kind == "dir":
                self._make_dir(at, name, member.mode, owner)
                owners[path] = (*owner, member.mode)
                continue
            owners.pop(path, None)
            self._replacing(tar, member, at, name, done.xattrs)
            if owner != (0, 0) or not member.mode & 0o400:
                owners[path] = (*owner, member.mode)

    def _replacing(self, tar: tarfile.TarFile, member: _Member, at: int, name: str, dropped: list[str]) -> None:
        """Make the entry ``name``; what a lower layer left there is removed first,
        only when there is one (most members are new: no look-up for them)."""
        try:
            self._put(tar, member, at, name, dropped)
        except FileExistsError:
            self._remove(at, name)
            self._put(tar, member, at, name, dropped)

    def _put(self, tar: tarfile.TarFile, member: _Member, at: int, name: str, dropped: list[str]) -> None:
        if member.kind == "symlink":
            os.symlink(member.linkname, name, dir_fd=at)
        elif member.kind == "hardlink":
            self._link(member.linkname, at, name)
        else:
            self._file(tar, member, at, name, dropped)

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

    def _file(self, tar: tarfile.TarFile, member: _Member, at: int, name: str, dropped: list[str]) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        mode = member.mode | 0o400  # minify must still read it; the plan keeps its own modes
        info = member.info
        # A root-owned file of a plain mode the umask leaves whole is made with its mode
        # (one system call less per file: a layer may hold two million)
        plain = info is None and (member.uid, member.gid) == (0, 0) and not mode & (0o7000 | self.umask)
        fd = os.open(name, flags, mode if plain else 0o600, dir_fd=at)
        try:
            if info is not None and info.sparse is not None:
                src = tar.extractfile(info)
                if src is not None:
                    _write_sparse(src, fd, info)
            elif member.size:
                _copy(tar.fileobj, fd, member)  # type: ignore[arg-type]
            if not plain:
                _own(fd, member.uid, member.gid)  # before the mode: chown clears setuid
                os.fchmod(fd, mode)
            if info is not None:
                _xattrs(fd, info, dropped)  # last: the kernel clears a capability on every write
        finally:
            os.close(fd)


def _copy(plain: Capped, fd: int, member: _Member) -> None:
    """A member's bytes from the plain tar into ``fd``: in the kernel where it can
    (copy_file_range), else read and written in pieces."""
    src = plain.fileno()
    offset, left = member.offset, member.size
    while left > 0:
        try:
            done = os.copy_file_range(src, fd, min(left, 1 << 30), offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            done = os.write(fd, os.pread(src, min(left, CHUNK), offset))
        if done <= 0:
            raise ImageSourceError(f"{member.name}: the layer ends inside this file")
        offset += done
        left -= done


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
