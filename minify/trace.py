"""``minify trace``: run a command under strace and record every file it loads or reads.

This is the one part of minify that executes a program, and it says so: it runs the
command on this machine, follows its children (``-f``), and keeps the files it
opened, executed or looked at successfully. The record is saved (``minify.trace``) so
later runs and ``--check`` reuse it without running anything. This is how programs
that dlopen or read their own trees at run time (python3 with its stdlib and
extension modules, java with libjvm) get a working image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass

from minify.errors import MinifyError

TRACE_NAME = "minify.trace"
#: Paths a saved trace may list at most.
MAX_TRACE_PATHS = 1_000_000
#: Syscalls whose first path argument names a file the program needs.
SYSCALLS = "execve,open,openat,openat2,stat,lstat,newfstatat,statx,access,faccessat,faccessat2,readlink,readlinkat"
#: Never recorded: kernel interfaces, and the loader's own files (the closure covers
#: libraries exactly; copying the host's cache would change how the image resolves).
SKIP_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/")
SKIP_FILES = ("/etc/ld.so.cache", "/etc/ld.so.preload")
_LINE = re.compile(r'^(\w+)\((?:AT_FDCWD, )?"((?:[^"\\]|\\.)*)"(.*)\)\s+=\s+(-?\d+)')


class TraceFailed(MinifyError):
    """The traced command failed, timed out, or strace is missing."""


@dataclass(frozen=True)
class Trace:
    command: tuple[str, ...]
    files: tuple[str, ...]  # absolute paths of regular files, sorted
    dirs: tuple[str, ...]  # folders the command listed

    def to_json(self) -> str:
        data = {"command": list(self.command), "files": list(self.files), "dirs": list(self.dirs)}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Trace:
        """A saved trace, validated like any input: a JSON object whose "command" is a
        list of strings and whose "files" and "dirs" are clean absolute paths."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise TraceFailed(f"{where}: not a minify trace ({exc})") from None
        if not isinstance(data, dict):
            raise TraceFailed(f"{where}: not a minify trace (not a JSON object)")
        command = data.get("command")
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise TraceFailed(f'{where}: not a minify trace ("command" is not a list of strings)')
        return cls(
            tuple(command), _paths(data.get("files"), "files", where), _paths(data.get("dirs", []), "dirs", where)
        )


def _paths(value: object, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_TRACE_PATHS:
        raise TraceFailed(f'{where}: not a minify trace ("{key}" is not a list of at most {MAX_TRACE_PATHS} paths)')
    out = []
    for item in value:
        if (
            not isinstance(item, str)
            or not item.startswith("/")
            or "\0" in item
            or len(item) > 4096
            or os.path.normpath(item) != item
            or item.startswith("//")
        ):
            raise TraceFailed(f"{where}: not a minify trace ({key} entry {item!r} is not a clean absolute path)")
        out.append(item)
    return tuple(sorted(set(out)))


def run_trace(command: str | list[str], *, timeout: float = 300.0, cwd: str | None = None) -> Trace:
    """Run ``command`` under ``strace -f`` and return what it touched."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise TraceFailed("trace: no command given")
    strace = shutil.which("strace")
    if strace is None:
        raise TraceFailed("trace needs strace (apt-get install strace)")
    workdir = cwd or os.getcwd()
    with tempfile.TemporaryDirectory(prefix="minify-trace-") as tmp:
        prefix = os.path.join(tmp, "t")
        cmd = [strace, "-f", "-ff", "-qq", "-s", "4096", "-e", f"trace={SYSCALLS}", "-o", prefix, *argv]
        try:
            # the command's output is bytes (gzip -c, convert png:-): never decoded
            proc = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd=workdir)
        except subprocess.TimeoutExpired as exc:
            err = (exc.stderr or b"").decode("utf-8", "replace")
            raise TraceFailed(f"trace: `{shlex.join(argv)}` timed out after {timeout:.0f}s; {err}".strip()) from None
        except OSError as exc:
            raise TraceFailed(f"trace: cannot run strace: {exc.strerror}") from None
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
            raise TraceFailed(f"trace: `{shlex.join(argv)}` exited with status {proc.returncode}: {tail}")
        files, dirs = _collect(tmp, workdir)
    return Trace(tuple(argv), tuple(sorted(files)), tuple(sorted(dirs)))


def _collect(folder: str, cwd: str) -> tuple[set[str], set[str]]:
    files: set[str] = set()
    dirs: set[str] = set()
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), encoding="utf-8", errors="surrogateescape") as fh:
            for line in fh:
                match = _LINE.match(line)
                if not match or int(match.group(4)) < 0:
                    continue
                path = _unescape(match.group(2))
                if not path.startswith("/"):
                    path = os.path.join(cwd, path)
                path = os.path.normpath(path)
                if path.startswith(SKIP_PREFIXES) or path in SKIP_FILES:
                    continue
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    files.add(path)
                elif stat.S_ISDIR(st.st_mode) and "O_DIRECTORY" in match.group(3):
                    dirs.add(path)
    return files, dirs


def _unescape(text: str) -> str:
    """strace's C-style escapes (\\", \\\\, \\x..) back to the path."""
    return (
        text.encode("utf-8", "surrogateescape")
        .decode("unicode_escape")
        .encode("latin-1")
        .decode("utf-8", "surrogateescape")
    )
