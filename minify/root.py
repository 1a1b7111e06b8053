"""A target root filesystem seen the way a chrooted kernel would see it.

Every path is walked one component at a time; symlinks are followed by hand, absolute
targets restart at the root, and ``..`` at the root stays at the root. So no path,
however hostile its symlinks, can name a file outside the root, and ``..`` is applied
after a symlink is followed, as the kernel does (never textually).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import deque
from dataclasses import dataclass

from minify.errors import PathError

#: Linux gives up after 40 symlinks in one lookup (ELOOP); so do we.
MAX_SYMLINKS = 40


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

    @property
    def exists(self) -> bool:
        return self.mode is not None

    @property
    def is_file(self) -> bool:
        return self.mode is not None and stat.S_ISREG(self.mode)

    @property
    def is_dir(self) -> bool:
        return self.mode is not None and stat.S_ISDIR(self.mode)


class Root:
    """Resolve paths inside ``directory`` without ever leaving it."""

    def __init__(self, directory: str) -> None:
        real = os.path.realpath(directory)
        if not os.path.isdir(real):
            raise PathError(directory, "root is not a directory")
        self.directory = real
        self._memo: dict[str, Resolved] = {}

    def __repr__(self) -> str:
        return f"Root({self.directory!r})"

    @property
    def is_host(self) -> bool:
        return self.directory == "/"

    def host_path(self, inner: str) -> str:
        """The host path of an already resolved path inside the root."""
        if self.directory == "/":
            return inner
        return self.directory + inner if inner != "/" else self.directory

    def resolve(self, path: str, cwd: str = "/") -> Resolved:
        """Resolve ``path`` (absolute inside the root, or relative to ``cwd``)."""
        absolute = path if path.startswith("/") else posixpath.join(cwd, path)
        hit = self._memo.get(absolute)
        if hit is None:
            hit = self._walk(absolute)
            self._memo[absolute] = hit
        return hit

    def _walk(self, absolute: str) -> Resolved:
        parts = deque(absolute.split("/"))
        current: list[str] = []
        links: list[Link] = []
        hops = 0
        mode: int | None = stat.S_IFDIR
        st: os.stat_result | None = None
        while parts:
            name = parts.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if current:
                    current.pop()
                continue
            if mode is not None and not stat.S_ISDIR(mode):
                # a component below a file (ENOTDIR): nothing there
                return Resolved(_join([*current, name, *parts]), tuple(links), None)
            candidate = [*current, name]
            inner = _join(candidate)
            try:
                st = os.lstat(self.host_path(inner))
            except (FileNotFoundError, NotADirectoryError):
                return Resolved(_join(candidate + list(parts)), tuple(links), None)
            except OSError as exc:
                raise PathError(inner, exc.strerror or str(exc)) from None
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise PathError(absolute, "too many levels of symbolic links (a symlink loop?)")
                target = os.readlink(self.host_path(inner))
                links.append(Link(inner, target))
                if target.startswith("/"):
                    current = []
                parts.extendleft(reversed(target.split("/")))
                mode = stat.S_IFDIR
                continue
            current = candidate
            mode = st.st_mode
        ident = (st.st_dev, st.st_ino) if st is not None and current else None
        if not current:
            top = os.stat(self.directory)
            ident = (top.st_dev, top.st_ino)
        return Resolved(_join(current), tuple(links), mode, ident)

    def realpath(self, path: str, cwd: str = "/") -> str:
        return self.resolve(path, cwd).path

    def listdir(self, inner: str) -> list[str]:
        """Names in a directory of the root (sorted), or [] if it is not one."""
        res = self.resolve(inner)
        if not res.is_dir:
            return []
        try:
            return sorted(os.listdir(self.host_path(res.path)))
        except OSError:
            return []

    def read_bytes(self, inner: str, limit: int = 64 << 20) -> bytes | None:
        """Contents of a small regular file inside the root, or None."""
        res = self.resolve(inner)
        if not res.is_file:
            return None
        try:
            with open(self.host_path(res.path), "rb") as fh:
                return fh.read(limit)
        except OSError:
            return None

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


def _join(parts: list[str]) -> str:
    return "/" + "/".join(parts)
