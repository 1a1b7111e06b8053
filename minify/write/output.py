"""The output folder: where it may be, whether minify owns it, and how it is replaced.

Promises (README, "Safety"):
- OUT is never ``/``, the current folder or one of its parents, the analysed root or
  one of its parents, or a folder that holds an input, whatever the flags.
- An OUT that exists is replaced only when minify can prove it wrote it: a lock file
  of its own format, and nothing in OUT that the lock file does not list. Anything
  else is named and left alone unless ``--force`` is given.
- The new OUT is built in a temporary folder beside it and swapped in with one atomic
  ``renameat2(RENAME_EXCHANGE)``: at every instant OUT is either the old one or the new
  one. Where the file system cannot exchange, two renames are used, and the next run
  puts back an OUT that an interruption between them left aside.
- One run at a time writes beside OUT (``flock`` on the folder that holds it); each run
  first removes what an interrupted run left there (``.minify-new-NAME-*``,
  ``.minify-old-NAME-*``), and only that.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from minify.errors import OutputError
from minify.root import read_host_file, remove_tree, within
from minify.text import some

LOCK_NAME = "minify.lock.json"
LOCK_SCHEMA = 1
SBOM_NAME = "sbom.spdx.json"
#: What minify writes at the top of OUT; anything else there is the user's.
OWN_NAMES = frozenset({"rootfs", "base", "owned", "Dockerfile", ".dockerignore", LOCK_NAME, "minify.trace", SBOM_NAME})
#: The folders of OUT that mirror image paths: each may hold only what the lock lists.
TREES = ("rootfs", "base", "owned")
#: How long a run waits for another one writing beside the same OUT.
LOCK_WAIT_SECONDS = 600.0

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class Destination:
    """OUT, checked: its absolute path, and the folder it goes in."""

    path: str
    parent: str
    name: str

    @property
    def leftovers(self) -> re.Pattern[str]:
        """Names of the temporary folders runs on this OUT make beside it."""
        return re.compile(rf"\.minify-(new|old)-{re.escape(self.name)}-[a-z0-9_]{{8}}")


def destination(output: str, *, root: str, inputs: tuple[str, ...], cwd: str, folder: bool = True) -> Destination:
    """Check where OUT is before anything is analysed or written (``folder``: OUT is a
    folder, as for ``minify rootfs``; else it may be a file, an image archive).

    ``inputs`` are host paths of the inputs (files and folders), already resolved inside
    the root (never with the host's realpath, which would follow a hostile root's
    symlinks out of it); ``root`` the host path of the analysed root.
    """
    if not output or "\0" in output:
        raise OutputError(f"{output!r}: not a folder name")
    absolute = os.path.abspath(output)
    if os.path.islink(absolute):
        raise OutputError(f"{absolute}: is a symlink; give the real folder")
    real = os.path.join(os.path.realpath(os.path.dirname(absolute)), os.path.basename(absolute))
    if real == "/" or os.path.basename(absolute) in ("", ".", ".."):
        raise OutputError(f"{output}: OUT cannot be the file system root")

    def holds(path: str) -> bool:
        return within(path, real)

    if holds(os.path.realpath(cwd)):
        raise OutputError(f"{output}: OUT cannot be the current folder or one of its parents")
    if holds(root):
        raise OutputError(f"{output}: OUT cannot be the analysed root {root} or one of its parents")
    for given in inputs:
        if holds(given):
            raise OutputError(f"{output}: OUT cannot be a folder that holds the input {given}")
    if folder and os.path.lexists(real) and not os.path.isdir(real):
        raise OutputError(f"{real}: exists and is not a folder")
    return Destination(real, os.path.dirname(real), os.path.basename(real))


def foreign_entries(out: str) -> list[str]:
    """What in OUT minify cannot show it wrote: [] when OUT is absent, empty, or
    exactly what its own lock file lists (a missing entry is no loss, an extra one is)."""
    if not os.path.isdir(out):
        return []
    names = sorted(os.listdir(out))
    if not names:
        return []
    lock = _own_lock(out)
    if lock is None:
        return [f"{out} (no {LOCK_NAME} of minify's own format)"]
    foreign = [os.path.join(out, n) for n in names if n not in OWN_NAMES]
    listed = {e["path"]: e["type"] for e in lock["entries"]}
    # the trees minify writes hold only entries of the lock file: rootfs/ all of them,
    # base/ and owned/ (links into rootfs/ for the Dockerfile's COPYs) some
    for tree in TREES:
        top = os.path.join(out, tree)
        if not os.path.lexists(top):
            continue
        if os.path.islink(top) or not os.path.isdir(top):
            foreign.append(top)
            continue
        for path, kind in listing(top):
            want = listed.get(path)
            if want is None or (want if want != "hardlink" else "file") != kind:
                foreign.append(top + path)
    return foreign


def _own_lock(out: str) -> dict[str, Any] | None:
    """OUT's lock file when it is one of minify's: a regular file (not a link), JSON
    with minify's schema number and a list of entries with a path and a type each."""
    text = read_host_file(os.path.join(out, LOCK_NAME))
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("schema") != LOCK_SCHEMA or "minify" not in data:
        return None
    entries = data.get("entries")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("type"), str) for e in entries
    ):
        return None
    return data


def listing(rootfs: str) -> Iterator[tuple[str, str]]:
    """(path inside rootfs, type) of everything below it, symlinks not followed."""
    top = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            base = "" if dirpath == "." else dirpath[1:]
            for name in sorted(dirnames + filenames):
                try:
                    mode = os.lstat(name, dir_fd=dirfd).st_mode
                except OSError:
                    continue
                yield f"{base}/{name}", type_of(mode)
    finally:
        os.close(top)


def type_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "special"


def refuse_foreign(out: str, *, force: bool) -> None:
    """Refuse to replace an OUT holding things minify did not write, unless forced."""
    foreign = foreign_entries(out)
    if foreign and not force:
        shown = some(foreign, 5)
        raise OutputError(
            f"{out}: holds what minify did not write ({shown}); move it away, or use --force to delete it"
        )


@contextlib.contextmanager
def writing(out: Destination) -> Iterator[list[str]]:
    """Hold the lock for writing beside OUT; first tidy what interrupted runs left.
    Yields a list of notes (what was tidied)."""
    try:
        fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"{out.parent}: cannot open the folder that holds OUT ({exc.strerror})") from None
    try:
        _lock(fd, out)
        yield _tidy(out)
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, out: Destination) -> None:
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise OutputError(
                    f"{out.path}: another minify run has been writing beside it for {LOCK_WAIT_SECONDS:.0f}s; "
                    "try again when it has ended"
                ) from None
            time.sleep(0.1)
        except OSError:
            return  # a file system without flock: nothing to serialise with


def _tidy(out: Destination) -> list[str]:
    """Put back an OUT that an interrupted two-rename swap left aside; remove the
    temporary folders of interrupted runs (under the lock, none is in use)."""
    notes = []
    pattern = out.leftovers
    names = sorted(n for n in os.listdir(out.parent) if pattern.fullmatch(n))
    for name in names:
        path = os.path.join(out.parent, name)
        if os.path.islink(path) or not os.path.isdir(path):
            continue
        if name.startswith(".minify-old-") and not os.path.lexists(out.path):
            os.rename(path, out.path)
            notes.append(f"note: put back {out.path}, which an interrupted run had left as {name}")
            continue
        remove_tree(path)
        notes.append(f"note: removed {path}, left by an interrupted run")
    return notes


def make_temporary(out: Destination) -> str:
    try:
        return tempfile.mkdtemp(prefix=f".minify-new-{out.name}-", dir=out.parent)
    except OSError as exc:
        raise OutputError(f"{out.parent}: cannot write here ({exc.strerror})") from None


def swap_into_place(tmp: str, out: Destination) -> str | None:
    """Make ``tmp`` OUT in one step. Returns the path that now holds the old OUT (to
    be removed), or None when there was none."""
    try:
        _renameat2(tmp, out.path, _RENAME_NOREPLACE)
        return None
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
        if not os.path.lexists(out.path):
            os.rename(tmp, out.path)
            return None
    try:
        _renameat2(tmp, out.path, _RENAME_EXCHANGE)
        return tmp
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
    # No exchange on this file system: two renames; ``_tidy`` repairs an interruption.
    old = tempfile.mkdtemp(prefix=f".minify-old-{out.name}-", dir=out.parent)
    os.rmdir(old)
    os.rename(out.path, old)
    try:
        os.rename(tmp, out.path)
    except OSError:
        os.rename(old, out.path)
        raise
    return old


def _renameat2(source: str, dest: str, flags: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        raise OSError(errno.ENOSYS, "renameat2 is not available") from None
    call.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    call.restype = ctypes.c_int
    if call(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(dest), flags) != 0:
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), dest)
        raise OSError(code, os.strerror(code), source)
