"""A target root filesystem seen the way a chrooted kernel would see it.

Every path is walked one component at a time from an open descriptor of the root
(``lstat``/``readlink``/``open`` with ``dir_fd`` and ``O_NOFOLLOW``); symlinks are
followed by hand, absolute targets restart at the root, and ``..`` at the root stays at
the root. So no path, however hostile its symlinks, names a file outside the root, and
``..`` is applied after a symlink is followed, as the kernel does (never textually).

A resolution is a claim about the root at one moment. Every read goes through
``open_file``: the resolved path (which has no symlinks and no ``..``) is opened again
component by component with ``O_NOFOLLOW``, and the opened file must be the one the
resolution saw (device and inode). A root that changes during the run (a folder
swapped for a symlink to a host folder) gives an error, never a host file.
"""

from __future__ import annotations

import functools
import os
import posixpath
import stat
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from minify.errors import NotRegularFile, PathError, RootChanged

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

#: Linux gives up after 40 symlinks in one lookup (ELOOP); so do we.
MAX_SYMLINKS = 40
#: Open folder descriptors kept for lookups (the soft limit is usually 1024).
DIR_FDS = 64
#: Entries walked below one folder (``walk``) before giving up: a bound on hostile trees.
MAX_WALK_ENTRIES = 1_000_000
#: Folder levels a walk enters below its top: far more than any real tree has, and
#: few enough that the descriptors held along the chain stay under any open-file limit.
MAX_WALK_DEPTH = 256

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Link:
    """A symlink met on the way to a file: its path inside the root and its text."""

    path: str
    target: str


@dataclass(frozen=True)
class Resolved:
    """A path inside the root with every symlink resolved.

    ``path`` is absolute inside the root; ``links`` are the symlinks followed, in order;
    ``mode`` is the final object's st_mode (None when it does not exist).
    """

    path: str
    links: tuple[Link, ...]
    mode: int | None
    ident: tuple[int, int] | None = None
    size: int = 0

    @property
    def exists(self) -> bool:
        return self.mode is not None

    @property
    def is_file(self) -> bool:
        return self.mode is not None and stat.S_ISREG(self.mode)

    @property
    def is_dir(self) -> bool:
        return self.mode is not None and stat.S_ISDIR(self.mode)


@dataclass(frozen=True)
class WalkEntry:
    """One entry below a folder, as ``Root.walk`` meets it (symlinks not followed)."""

    path: str  # inside the root
    mode: int
    ident: tuple[int, int]
    size: int
    target: str | None = None  # symlink text


class Root:
    """Resolve and read paths inside ``directory`` without ever leaving it."""

    def __init__(self, directory: str, owners: Mapping[str, tuple[int, int, int]] | None = None) -> None:
        """``owners``: (uid, gid, mode) by path, where the files on disk do not say
        them: a flattened image (``Unpacked.owners``). A folder of this machine has
        none, and its files go into images as root's, with their own modes."""
        real = os.path.realpath(directory)
        try:
            self._fd = os.open(real, _DIR_FLAGS)
        except OSError:
            raise PathError(directory, "root is not a directory") from None
        self.directory = real
        top = os.fstat(self._fd)
        self.ident = (top.st_dev, top.st_ino)
        self._memo: dict[str, Resolved] = {}
        self._dirs: OrderedDict[str, int] = OrderedDict()
        self.owners: Mapping[str, tuple[int, int, int]] = owners or {}

    def __del__(self) -> None:
        for fd in [*self._dirs.values(), getattr(self, "_fd", -1)]:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __repr__(self) -> str:
        return f"Root({self.directory!r})"

    def owner(self, inner: str, mode: int) -> tuple[tuple[int, int], int]:
        """The owner (uid, gid) and permission bits the source gives a resolved path;
        ``mode`` is what the file on disk holds."""
        uid, gid, bits = self.owners.get(inner, (0, 0, stat.S_IMODE(mode)))
        return (uid, gid), bits

    @property
    def is_host(self) -> bool:
        return self.directory == "/"

    def host_path(self, inner: str) -> str:
        """The host path of an already resolved path inside the root (for messages
        and for tools that take names; minify itself reads through ``open_file``)."""
        if self.directory == "/":
            return inner
        return self.directory + inner if inner != "/" else self.directory

    # -- descriptors ----------------------------------------------------------------

    def _dirfd(self, real: str) -> int:
        """An ``O_PATH`` descriptor of a folder of the root, opened from the root's own
        descriptor one component at a time with ``O_NOFOLLOW`` (cached, bounded)."""
        if real == "/":
            return self._fd
        fd = self._dirs.get(real)
        if fd is not None:
            self._dirs.move_to_end(real)
            return fd
        parent = self._dirfd(posixpath.dirname(real))
        try:
            fd = os.open(posixpath.basename(real), _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise RootChanged(real, exc.strerror or str(exc)) from None
        self._dirs[real] = fd
        if len(self._dirs) > DIR_FDS:
            _, old = self._dirs.popitem(last=False)
            os.close(old)
        return fd

    def open_file(self, inner: str, ident: tuple[int, int] | None = None) -> tuple[int, os.stat_result]:
        """Open a regular file of the root for reading: never blocks (FIFOs), never
        follows a symlink, and refuses anything but a regular file. With ``ident``,
        the file must be the one a resolution saw."""
        res = self.resolve(inner)
        if not res.exists:
            raise PathError(inner, "no such file" + ("" if self.is_host else f" in {self.directory}"))
        if res.is_dir:
            raise NotRegularFile(self.host_path(res.path), "is a directory, not a file")
        parent = self._dirfd(posixpath.dirname(res.path))
        try:
            fd = os.open(posixpath.basename(res.path), _FILE_FLAGS, dir_fd=parent)
        except IsADirectoryError:
            raise NotRegularFile(self.host_path(res.path), "is a directory, not a file") from None
        except OSError as exc:
            raise RootChanged(res.path, exc.strerror or str(exc)) from None
        st = os.fstat(fd)
        want = ident or res.ident
        if want is not None and (st.st_dev, st.st_ino) != want:
            os.close(fd)
            raise RootChanged(res.path, "a different file is there now")
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise NotRegularFile(self.host_path(res.path), f"is a {kind_of(st.st_mode)}, not a regular file")
        return fd, st

    # -- resolution -------------------------------------------------------------------

    def resolve(self, path: str, cwd: str = "/") -> Resolved:
        """Resolve ``path`` (absolute inside the root, or relative to ``cwd``)."""
        absolute = path if path.startswith("/") else posixpath.join(cwd, path)
        hit = self._memo.get(absolute)
        if hit is None:
            hit = self._walk(absolute)
            self._memo[absolute] = hit
        return hit

    def _lstat(self, current: list[str], name: str) -> os.stat_result | None:
        """``name`` in the folder ``current`` (reached by descriptor), not followed;
        None when there is nothing there."""
        try:
            return os.lstat(name, dir_fd=self._dirfd(_join(current)))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise PathError(_join([*current, name]), exc.strerror or str(exc)) from None

    def _readlink(self, current: list[str], name: str) -> str:
        try:
            return os.readlink(name, dir_fd=self._dirfd(_join(current)))
        except OSError as exc:  # it was a symlink a moment ago
            raise RootChanged(_join([*current, name]), exc.strerror or str(exc)) from None

    def _walk(self, absolute: str) -> Resolved:
        if "\0" in absolute:
            raise PathError(absolute.replace("\0", "\\0"), "a path cannot contain a NUL byte")
        parts = deque(absolute.split("/"))
        current: list[str] = []
        links: list[Link] = []
        hops = 0
        st: os.stat_result | None = None
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            if st is not None and not stat.S_ISDIR(st.st_mode):
                # a component below a file (ENOTDIR), ".." included: nothing there
                return Resolved(_join([*current, name, *parts]), tuple(links), None)
            if name == "..":
                del current[-1:]  # ".." of / is /
                st = None
                continue
            st = self._lstat(current, name)
            if st is None:
                return Resolved(_join([*current, name, *parts]), tuple(links), None)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise PathError(absolute, "too many levels of symbolic links (a symlink loop?)")
                target = self._readlink(current, name)
                links.append(Link(_join([*current, name]), target))
                if target.startswith("/"):
                    current = []
                parts.extendleft(reversed(target.split("/")))
                st = None
                continue
            current.append(name)
        return self._arrived(current, links, st)

    def _arrived(self, current: list[str], links: list[Link], st: os.stat_result | None) -> Resolved:
        """Where a walk ended; after ".." or a symlink to a folder, look at it again."""
        if not current:
            return Resolved("/", tuple(links), stat.S_IFDIR, self.ident)
        if st is None:
            try:
                st = os.lstat(current[-1], dir_fd=self._dirfd(_join(current[:-1])))
            except OSError:
                return Resolved(_join(current), tuple(links), None)
        return Resolved(_join(current), tuple(links), st.st_mode, (st.st_dev, st.st_ino), st.st_size)

    def realpath(self, path: str, cwd: str = "/") -> str:
        return self.resolve(path, cwd).path

    # -- reading --------------------------------------------------------------------

    def listdir(self, inner: str) -> list[str]:
        """Names in a directory of the root (sorted), or [] if it is not one."""
        res = self.resolve(inner)
        if not res.is_dir:
            return []
        try:
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._dirfd(res.path))
        except (OSError, RootChanged):
            return []
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    def read_bytes(self, inner: str, limit: int = 64 << 20) -> bytes | None:
        """Contents of a small regular file inside the root, or None."""
        res = self.resolve(inner)
        if not res.is_file:
            return None
        try:
            fd, _ = self.open_file(res.path, res.ident)
        except (PathError, NotRegularFile):
            return None
        try:
            return read_all(fd, limit)
        finally:
            os.close(fd)

    def read_in(self, folder: str, name: str, limit: int = 64 << 20) -> bytes | None:
        """Contents of the small regular file ``name`` of a folder of the root, or
        None: opened from the folder's descriptor, not followed, without a walk of its
        own (dpkg's info/ holds a thousand lists, read each run); a symlink there is
        resolved inside the root as ``read_bytes`` does."""
        res = self.resolve(folder)
        if "/" in name or name in ("", ".", "..") or not res.is_dir:
            return self.read_bytes(posixpath.join(folder, name), limit)
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=self._dirfd(res.path))
        except (RootChanged, FileNotFoundError):
            return None
        except OSError:  # a symlink (O_NOFOLLOW), resolved inside the root
            return self.read_bytes(posixpath.join(res.path, name), limit)
        try:
            return read_all(fd, limit) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        finally:
            os.close(fd)

    def walk(self, inner: str, *, skip: tuple[str, ...] = ()) -> Iterator[WalkEntry]:
        """Every entry below a folder of the root, parents before children, names
        sorted, symlinks not followed. Each folder is opened from its parent's
        descriptor with ``O_NOFOLLOW``, so a folder swapped for a symlink during the
        walk cannot lead out. Iterative, with one descriptor per level of the current
        chain: a hostile tree deeper than ``MAX_WALK_DEPTH`` levels is one error line,
        never a ``RecursionError`` (os.fwalk recurses). ``skip`` are paths inside the
        root not to enter (OUT, when it lies in an input folder)."""
        res = self.resolve(inner)
        if not res.is_dir:
            return
        top = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._dirfd(res.path))
        chain: list[tuple[int, str, list[str]]] = []  # (descriptor, folder, subfolders left, last first)
        count = 0
        try:
            pending: tuple[int, str] | None = (top, res.path)
            while pending is not None:
                fd, base = pending
                subfolders: list[str] = []
                chain.append((fd, base, subfolders))
                for entry in _entries(fd, base, skip):
                    count += 1
                    if count > MAX_WALK_ENTRIES:
                        raise PathError(res.path, f"more than {MAX_WALK_ENTRIES} entries below it")
                    if stat.S_ISDIR(entry.mode):
                        subfolders.append(posixpath.basename(entry.path))
                    yield entry
                subfolders.reverse()  # entered in name order, taken from the end
                pending = _next_folder(chain, res.path)
        finally:
            for held, _, _ in chain:
                os.close(held)

    def contains_host_path(self, host: str) -> str | None:
        """The inner path of a host path under this root (lexically), or None."""
        absolute = os.path.abspath(host)
        if self.directory == "/":
            return absolute
        if absolute == self.directory:
            return "/"
        if absolute.startswith(self.directory + "/"):
            return absolute[len(self.directory) :]
        return None


def within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (lexically; both absolute, normalised)."""
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def read_host_file(path: str, limit: int = 256 << 20) -> bytes | None:
    """A regular file of the host (a file in OUT), or None: opened without following a
    final symlink and without blocking on a FIFO, checked on the open descriptor."""
    try:
        fd = os.open(path, _FILE_FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return read_all(fd, limit)
    finally:
        os.close(fd)


def read_all(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of an open file, from its start. A read asks for what the
    file holds (one byte more, to see its end), not a fixed megabyte: a buffer of the
    size asked is allocated each time, and most files read here are small. Past the
    size fstat gave (a file that grows meanwhile), reads go on in 64 KB pieces."""
    size = os.fstat(fd).st_size
    chunks = []
    offset = 0
    while offset < limit:
        want = size - offset + 1 if offset < size else 1 << 16
        chunk = os.pread(fd, min(1 << 20, limit - offset, want), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


#: Files at least this big have their digests computed side by side (hashlib lets go
#: of the GIL while it hashes a buffer), one chunk at a time.
PARALLEL_HASH = 8 << 20
HASH_CHUNK = 4 << 20


def hash_fd(fd: int, *algorithms: str) -> tuple[str, ...]:
    """The hex digests (hashlib names: md5, sha1, sha256, ...) of an open file, all in
    one read of it; a big file's digests on all cores."""
    import hashlib

    digests = [hashlib.new(name, usedforsecurity=False) for name in algorithms]
    pool = worker_pool() if len(digests) > 1 and os.fstat(fd).st_size >= PARALLEL_HASH else None
    offset = 0
    while chunk := os.pread(fd, HASH_CHUNK, offset):
        if pool is not None:
            for done in [pool.submit(d.update, chunk) for d in digests]:
                done.result()
        else:
            for digest in digests:
                digest.update(chunk)
        offset += len(chunk)
    return tuple(d.hexdigest() for d in digests)


@functools.cache
def worker_pool() -> ThreadPoolExecutor:
    """Threads for work that lets go of the GIL (hashlib hashing, zlib deflating a
    buffer), one pool per run; imported on first use, not at every start."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1), thread_name_prefix="minify-worker")


def kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special file"


def _join(parts: list[str]) -> str:
    return "/" + "/".join(parts)


def _entries(fd: int, base: str, skip: tuple[str, ...]) -> Iterator[WalkEntry]:
    """The entries of one open folder, names sorted, symlinks read, not followed."""
    for name in sorted(os.listdir(fd)):
        path = posixpath.join(base, name)
        if path in skip:
            continue
        try:
            st = os.lstat(name, dir_fd=fd)
            target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else None
        except OSError:
            continue  # gone meanwhile
        yield WalkEntry(path, st.st_mode, (st.st_dev, st.st_ino), st.st_size, target)


def _next_folder(chain: list[tuple[int, str, list[str]]], top: str) -> tuple[int, str] | None:
    """The next folder of a walk, opened from its parent's descriptor (a folder gone
    or swapped for a symlink meanwhile is passed over); finished folders are closed."""
    while chain:
        parent, folder, left = chain[-1]
        if not left:
            os.close(chain.pop()[0])
            continue
        name = left.pop()
        if len(chain) > MAX_WALK_DEPTH:
            raise PathError(top, f"folders nested more than {MAX_WALK_DEPTH} deep below it")
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except OSError:
            continue
        return fd, posixpath.join(folder, name)
    return None


def remove_tree(path: str, *, dir_fd: int | None = None, quiet: bool = False) -> None:
    """Remove a folder minify made (a private folder, a finished temporary OUT) and
    everything in it, symlinks not followed, without recursion and with one
    descriptor at a time: shutil.rmtree recurses on Python 3.11, so a 1,100-level
    chain from a hostile layer would stop it and leave the folder behind. Going up
    through ``..`` is safe here: nobody else can write in minify's own 0700 folders.
    ``quiet`` ignores what cannot be removed, as ``ignore_errors`` does."""
    try:
        _remove_tree(path, dir_fd)
    except OSError:
        if not quiet:
            raise


def _clear(fd: int) -> list[str]:
    """Unlink everything in an open folder but its subfolders; their names."""
    folders: list[str] = []
    others: list[str] = []
    with os.scandir(fd) as entries:  # the kind from the folder itself: no lstat per name
        for entry in entries:
            (folders if entry.is_dir(follow_symlinks=False) else others).append(entry.name)
    for name in others:
        os.unlink(name, dir_fd=fd)
    return folders


def _remove_tree(path: str, dir_fd: int | None) -> None:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    entered: list[str] = []  # the folders entered below ``path``
    left: list[list[str]] = []  # for each of them, its parent's subfolders still to remove
    try:
        pending = _clear(fd)
        while True:
            if pending:
                child = pending.pop()
                below = os.open(child, flags, dir_fd=fd)
                os.close(fd)
                fd = below
                entered.append(child)
                left.append(pending)
                pending = _clear(fd)  # each folder is listed once, however wide
                continue
            if not entered:
                break
            above = os.open("..", flags, dir_fd=fd)
            os.close(fd)
            fd = above
            os.rmdir(entered.pop(), dir_fd=fd)
            pending = left.pop()
    finally:
        os.close(fd)
    os.rmdir(path, dir_fd=dir_fd)
