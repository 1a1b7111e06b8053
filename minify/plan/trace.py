"""``minify trace``: run a command under strace and record every file it loads or reads.

This is the one part of minify that executes a program, and it says so: it runs the
command on this machine, follows its children (``-f``), and keeps the files it
opened, executed or looked at successfully. The record is saved (``minify.trace``) so
later runs and ``--check`` reuse it without running anything. This is how programs
that dlopen or read their own trees at run time (python3 with its stdlib and
extension modules, java with libjvm) get a working image.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from minify.errors import MinifyError, TraceFailed
from minify.plan.served import Serving, loopback_command, process_group, run_served
from minify.root import remove_tree

TRACE_NAME = "minify.trace"
#: Paths a saved trace may list at most.
MAX_TRACE_PATHS = 1_000_000
#: Syscalls whose path arguments name a file the program needs, or one it makes.
SYSCALLS = (
    "execve,open,openat,openat2,creat,stat,lstat,newfstatat,statx,access,faccessat,faccessat2,readlink,readlinkat,"
    "rename,renameat,renameat2,link,linkat,symlink,symlinkat,mkdir,mkdirat,truncate"
)
#: Never recorded: kernel interfaces, and the loader's own files (the closure covers
#: libraries exactly; copying the host's cache would change how the image resolves).
SKIP_PREFIXES = ("/proc/", "/sys/", "/dev/", "/run/")
#: Inside an image, /run is the image's own (nginx writes its pid file there).
SKIP_IN_IMAGE = ("/proc/", "/sys/", "/dev/")
SKIP_FILES = ("/etc/ld.so.cache", "/etc/ld.so.preload")
#: One traced call, as ``strace -y`` prints it: name, arguments, result.
_CALL = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)")
#: A path argument: ``"name"``, with the folder of its ``dir_fd`` when it has one.
_PATH = re.compile(r'(?:(?:AT_FDCWD|-?\d+)<((?:[^>\\]|\\.)*)>, )?"((?:[^"\\]|\\.)*)"')
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC")
_MAKES_LAST = frozenset({"rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat"})


@dataclass(frozen=True)
class Trace:
    command: tuple[str, ...]
    files: tuple[str, ...]  # absolute paths of regular files it read, sorted
    dirs: tuple[str, ...]  # folders the command listed, looked at or checked
    exit_status: int = 0
    executed: tuple[str, ...] = ()  # files it executed (a script's interpreter is not seen)

    def to_json(self) -> str:
        data = {
            "command": list(self.command),
            "files": list(self.files),
            "dirs": list(self.dirs),
            "executed": list(self.executed),
            "exit_status": self.exit_status,
        }
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Trace:
        """A saved trace, validated like any input: a JSON object whose "command" is a
        list of strings and whose "files" and "dirs" are clean absolute paths."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise TraceFailed(f"{where}: not a minify trace ({exc})") from None
        if not isinstance(data, dict):
            raise TraceFailed(f"{where}: not a minify trace (not a JSON object)")
        command = data.get("command")
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise TraceFailed(f'{where}: not a minify trace ("command" is not a list of strings)')
        return cls(
            tuple(command),
            _paths(data.get("files"), "files", where),
            _paths(data.get("dirs", []), "dirs", where),
            executed=_paths(data.get("executed", []), "executed", where),
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


def run_trace(
    command: str | list[str],
    *,
    timeout: float = 300.0,
    cwd: str | None = None,
    user: str | None = None,
    ok_exit: bool = False,
    echo: bool = True,
    root: str | None = None,
    env: dict[str, str] | None = None,
    serving: Serving | None = None,
    ids: tuple[int, int] | None = None,
) -> Trace:
    """Run ``command`` under ``strace -f`` and return what it read.

    Files the run created or wrote (its output, a new data folder) are not part of
    what it needs, and are left out. ``user`` runs the command as that user (strace
    ``-u``: postgres' initdb refuses root). A non-zero exit fails the trace unless
    ``ok_exit``. With ``echo``, the command's own output goes to this process's stderr,
    as bytes (``gzip -c`` writes binary), leaving stdout to minify.

    With ``root`` (a flattened image) it runs inside it (``_inside``), with ``env``
    as its environment, ``cwd`` inside the root and ``ids`` (the image's user) as its
    uid and gid; the paths recorded are its paths. It runs on an overlay, so the root
    stays as the image has it: a file the run wrote that the image had (postgres'
    data) is the image's state, and comes with the image's bytes.
    With ``serving`` (a server: ``--trace-timeout``, ``--probe``) it runs in its own
    namespaces and minify ends it (``minify.plan.served``)."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise TraceFailed("trace: no command given")
    strace = shutil.which("strace")
    if strace is None:
        raise TraceFailed("trace needs strace (apt-get install strace)")
    as_user = _as_user(user, root)
    workdir = cwd or os.getcwd()
    with tempfile.TemporaryDirectory(prefix="minify-trace-") as tmp, _overlay(root) as scratch:
        os.chmod(tmp, 0o755)
        prefix = os.path.join(tmp, "t")
        traced = ["-e", f"trace={SYSCALLS}" + (",chroot" if root else ""), *as_user, "-o", prefix]
        cmd = [strace, "-f", "-ff", "-qq", "-y", "-s", "4096", *traced, *argv]
        serving = serving or Serving()
        if root is not None:
            cmd = _inside(root, scratch, workdir, cmd[: -len(argv)], argv, ids)
        elif serving.wanted:
            cmd = _isolated(cmd)
        sink = 2 if echo else subprocess.PIPE
        returncode, said = _run(
            cmd, serving, argv, sink=sink, cwd=workdir if root is None else "/", env=env, timeout=timeout
        )
        if returncode != 0 and not ok_exit:
            tail = " | ".join(said.decode("utf-8", "replace").strip().splitlines()[-3:])
            raise TraceFailed(
                f"trace: `{shlex.join(argv)}` exited with status {returncode}"
                + (f": {tail}" if tail else "")
                + " (--trace-ok-exit accepts that)"
            )
        seen = os.path.join(scratch, "merged") if root is not None else None
        files, dirs, executed = _collect(tmp, workdir, seen, root)
    return Trace(tuple(argv), tuple(sorted(files)), tuple(sorted(dirs)), returncode, tuple(sorted(executed)))


@contextlib.contextmanager
def _overlay(root: str | None) -> Iterator[str]:
    """A private folder for the overlay a run inside ``root`` writes on (its upper
    and work folders and the mount point), removed afterwards with all the run wrote."""
    if root is None:
        yield ""
        return
    scratch = tempfile.mkdtemp(prefix="minify-overlay-")
    try:
        for name in ("upper", "work", "merged"):
            os.mkdir(os.path.join(scratch, name), 0o755)
        yield scratch
    finally:
        remove_tree(scratch, quiet=True)


def _run(
    cmd: list[str],
    serving: Serving,
    argv: list[str],
    *,
    sink: int,
    cwd: str,
    env: dict[str, str] | None,
    timeout: float,
) -> tuple[int, bytes]:
    """The traced run's exit status (0 for a server minify stopped), and what it wrote
    to stderr when that was not shown."""
    try:
        if serving.wanted:
            return run_served(cmd, serving, sink=sink, cwd=cwd, env=env), b""
        return _run_group(cmd, sink=sink, cwd=cwd, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TraceFailed(
            f"trace: `{shlex.join(argv)}` timed out after {timeout:.0f}s (a server? --trace-timeout SECONDS ends it)"
        ) from None
    except OSError as exc:
        raise TraceFailed(f"trace: cannot run strace: {exc.strerror}") from None


def _run_group(cmd: list[str], *, sink: int, cwd: str, env: dict[str, str] | None, timeout: float) -> tuple[int, bytes]:
    """Run strace and the command in a process group of their own (``process_group``),
    so that whatever ends the run early kills every traced process with it."""
    with process_group(cmd, sink=sink, cwd=cwd, env=env) as proc:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err or b""


def _isolated(cmd: list[str]) -> list[str]:
    """``cmd`` (strace and the command) as the first process of its own PID, network
    and UTS namespaces, with the loopback interface up."""
    tools, unshare = namespaces("--trace-timeout and --probe")
    return [*unshare, "--net", "--uts", tools["sh"], "-c", f'{loopback_command()} && exec "$@"', "sh", *cmd]


def _as_user(user: str | None, root: str | None) -> list[str]:
    """strace's ``-u USER``, for a user of this machine."""
    if user is None:
        return []
    if root is not None:
        raise TraceFailed("--trace-user: a command traced inside an image runs as root there")
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise TraceFailed(f"--trace-user {user}: no such user on this machine") from None
    return ["-u", user]


#: The devices a container runtime gives every container.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def _inside(
    root: str, scratch: str, workdir: str, strace: list[str], argv: list[str], ids: tuple[int, int] | None
) -> list[str]:
    """The command line that runs ``argv`` under ``strace`` inside ``root``, never on
    this machine's files: in its own mount, PID, network (loopback only) and UTS
    namespaces, on an overlay of the root (its writes land in ``scratch``; where the
    kernel refuses one, the root itself, bound), with /proc, a /dev of the usual
    devices and /dev/shm, and an empty /tmp, chrooted by ``unshare --root`` as the
    image's user (``ids``; strace itself stays outside, writing its record here)."""
    tools, unshare = namespaces("--trace inside an image")
    mount = tools["mount"]
    merged = os.path.join(scratch, "merged")
    mounts = [  # $0: the root, $1: the scratch folder (paths stay out of the script's text)
        loopback_command(),
        f'{{ {mount} -t overlay overlay -o "lowerdir=$0,upperdir=$1/upper,workdir=$1/work" "$1/merged" 2>/dev/null'
        f' || {mount} --bind "$0" "$1/merged"; }}',
    ]
    for name, what in (("proc", "-t proc proc"), ("dev", "-t tmpfs -o mode=755 tmpfs"), ("tmp", "-t tmpfs tmpfs")):
        path = os.path.join(root, name)
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isdir(path)):
            continue  # never mount over a symlink: it could lead out
        at = f'"$1/merged/{name}"'
        mounts.append(f"{{ [ -d {at} ] || mkdir {at}; }} && {mount} {what} {at}")
        if name == "dev":
            mounts.extend(f': > "$1/merged/dev/{d}" && {mount} --bind /dev/{d} "$1/merged/dev/{d}"' for d in DEVICES)
            mounts.append(f'mkdir "$1/merged/dev/shm" && {mount} -t tmpfs -o mode=1777 tmpfs "$1/merged/dev/shm"')
    script = " && ".join([*mounts, "shift", 'exec "$@"'])
    # only root may become the image's user; in a user namespace only root is mapped
    user = ["--setgid", str(ids[1]), "--setuid", str(ids[0])] if ids is not None and os.geteuid() == 0 else []
    chroot = [tools["unshare"], f"--root={merged}", f"--wd={workdir}", *user, "--"]
    return [*unshare, "--net", "--uts", tools["sh"], "-c", script, root, scratch, *strace, *chroot, *argv]


def namespaces(who: str) -> tuple[dict[str, str], list[str]]:
    """The tools a sandbox needs (unshare, mount, sh), and the command line that gives
    what follows its own mount and PID namespaces (a user namespace too when not
    root). ``--kill-child``: a run that times out takes its whole PID namespace with
    it. One line naming what is missing, for ``who``, when a tool is not installed."""
    found = {name: shutil.which(name) for name in ("unshare", "mount", "sh")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise TraceFailed(f"{who} needs {', '.join(missing)} (util-linux)")
    tools = {name: str(path) for name, path in found.items()}
    unshare = [tools["unshare"], "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")
    return tools, unshare


@dataclass
class _Calls:
    """Paths the traced processes read, listed, created and made folders of."""

    read: set[str] = field(default_factory=set)
    listed: set[str] = field(default_factory=set)
    made: set[str] = field(default_factory=set)
    made_dirs: set[str] = field(default_factory=set)
    executed: set[str] = field(default_factory=set)

    def add(self, call: str, args: str, paths: list[str]) -> None:
        if call == "execve":
            self.executed.add(paths[0])
        if call in _MAKES_LAST:
            self.made.add(paths[-1])
        elif call in ("mkdir", "mkdirat"):
            self.made_dirs.add(paths[0])
        elif call in ("creat", "truncate") or any(flag in args for flag in _WRITE_FLAGS):
            self.made.add(paths[0])
        elif "O_DIRECTORY" in args:
            self.listed.add(paths[0])
        else:
            self.read.add(paths[0])

    def written(self, path: str) -> bool:
        """Made by the run (or below a folder it made): not part of the system."""
        below = tuple(d.rstrip("/") + "/" for d in self.made_dirs)
        return path in self.made or path in self.made_dirs or path.startswith(below)


def _collect(
    folder: str, cwd: str, root: str | None = None, pristine: str | None = None
) -> tuple[set[str], set[str], set[str]]:
    """What the traced processes read (regular files), looked at (folders: listed,
    ``stat``ed or ``access``ed, as emacs checks ``etc/charsets`` before reading
    anything, or written into) and executed, less everything they created or wrote,
    and everything below folders they created. Inside a ``root``, what came before the
    chroot is left out, and folders strace names by their host path are named inside
    the root.
    A call on an open descriptor itself (``AT_EMPTY_PATH``: glibc's ``fstat`` of a
    redirected stdout) names no path the command looked up, and is left out: the file
    is whatever the caller of minify redirected to.
    With ``pristine`` (the root as the image has it, ``root`` being the overlay the run
    saw), what the run created is simply not there, and a file it wrote that the image
    had is kept: that is the image's state (postgres' data), with the image's bytes."""
    calls = _Calls()
    for match, _ in _traced_calls(folder, root):
        if int(match.group(3)) < 0:
            continue
        paths = [_absolute(d, n, cwd, root) for d, n in _PATH.findall(match.group(2))]
        if paths and None not in paths:
            calls.add(match.group(1), match.group(2), paths)  # type: ignore[arg-type]
    seen = pristine or root
    kind = _kind_in(seen) if seen is not None else _kind
    kept = calls.read | calls.made if pristine is not None else calls.read
    files: set[str] = set()
    dirs: set[str] = set()
    # the folders the run wrote into exist in the image, empty (R's temporary files in
    # /tmp, a server's log folder): what it wrote there is left out, not the folder
    written_in = {os.path.dirname(p) for p in calls.made | calls.made_dirs}
    skipped = SKIP_PREFIXES if pristine is None else SKIP_IN_IMAGE
    for path in kept | calls.listed | written_in:
        if (pristine is None and calls.written(path)) or (path + "/").startswith(skipped) or path in SKIP_FILES:
            continue
        found = kind(path)
        if found == "file" and path in kept:
            files.add(path)
        elif found == "dir":
            dirs.add(path)
    executed = {p for p in calls.executed if p in files}
    return files, dirs, executed


def _traced_calls(folder: str, root: str | None, *, command_only: bool = False) -> Iterator[tuple[re.Match[str], str]]:
    """Every traced call of the record in ``folder`` (one file per process), with its
    line. Inside a ``root``, only what came after the chroot; with ``command_only``,
    the process that entered the root counts from its exec of the command on."""
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.readlines()
        if root is not None:
            chrooting = any(line.startswith("chroot(") for line in lines)
            lines = _after_chroot(lines)
            if command_only and chrooting:
                lines = _after_exec(lines)
        for line in lines:
            match = _CALL.match(line)
            if match:
                yield match, line


def _after_chroot(lines: list[str]) -> list[str]:
    """The calls after a successful chroot in the process that made it (before it,
    unshare read this machine's files); other processes began inside."""
    for number, line in enumerate(lines):
        match = _CALL.match(line)
        if match and match.group(1) == "chroot" and match.group(3) == "0":
            return lines[number + 1 :]
    return [] if any(line.startswith("chroot(") for line in lines) else lines


def _kind(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return "file" if stat.S_ISREG(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else None


def _kind_in(root: str) -> Callable[[str], str | None]:
    from minify.root import Root

    view = Root(root)

    def kind(path: str) -> str | None:
        try:
            res = view.resolve(path)
        except MinifyError:
            return None
        return "file" if res.is_file else "dir" if res.is_dir else None

    return kind


def _absolute(folder: str, name: str, cwd: str, root: str | None = None) -> str | None:
    if not name:
        return None  # AT_EMPTY_PATH: the descriptor itself, not a path looked up
    path = _unescape(name)
    if not path.startswith("/"):
        base = _unescape(folder) if folder else cwd
        if folder and root is not None:
            if base != root and not base.startswith(root.rstrip("/") + "/"):
                return None  # a folder outside the root: not the traced command's
            base = base[len(root.rstrip("/")) :] or "/"
        path = os.path.join(base, path)
    return os.path.normpath(path)


def _unescape(text: str) -> str:
    """strace's C-style escapes (\\", \\\\, \\x..) back to the path."""
    return (
        text.encode("utf-8", "surrogateescape")
        .decode("unicode_escape")
        .encode("latin-1")
        .decode("utf-8", "surrogateescape")
    )


def missing_paths(folder: str, cwd: str, root: str) -> set[str]:
    """The paths the traced processes asked for and did not find (``ENOENT``), named
    inside ``root``, from the strace record in ``folder``: what a run in an image
    lacked. Only what came after the ``chroot`` of the process that made it counts."""
    out: set[str] = set()
    for match, line in _traced_calls(folder, root, command_only=True):
        if int(match.group(3)) >= 0 or " ENOENT " not in line[match.end(3) :] + " ":
            continue
        found = _PATH.findall(match.group(2))
        if not found:
            continue
        at, name = found[0]
        path = _absolute(at, name, cwd, root)
        if path is not None and not path.startswith(SKIP_PREFIXES) and path not in SKIP_FILES:
            out.add(path)
    return out


def _after_exec(lines: list[str]) -> list[str]:
    """The calls from the first successful ``execve`` on: what the process that
    entered the root did before it ran the command (reading the image's passwd for
    HOME) is not the command's."""
    for number, line in enumerate(lines):
        match = _CALL.match(line)
        if match and match.group(1) == "execve" and match.group(3) == "0":
            return lines[number:]
    return lines
