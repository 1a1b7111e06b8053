"""``--test "CMD"``: proof that the image does the real job, before it is written.

CMD runs twice: inside the new rootfs, in a sandbox (its own mount and PID
namespaces, ``/proc``, a ``/dev`` of the usual devices with ``/dev/shm``, an empty
``/tmp``, the image's user, environment and working folder), and on the source root
(on this machine as it is for ``--root /``; in the same sandbox for any other root).
A different exit status (or, with ``--test-output``, different output) fails the run
before anything replaces OUT. The run inside the image is then repeated under
strace, and the paths it looked for and did not find that exist in the source root
are listed by package, with the flag that brings each: the trial and error between a
closure and a working image, done once, by minify.

Nothing is written into either root: each runs on an overlay (its lower layer the
root, read-only), whose upper layer lives in a private folder beside OUT and is
removed afterwards. A passing test costs one plain run in each place.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass

from minify.errors import MinifyError, ProofFailed
from minify.image import ImagePlan
from minify.packages import owners_of
from minify.root import Root
from minify.scripts import DEFAULT_PATH
from minify.trace import DEVICES, missing_paths

#: How long one run of a test may take (a server that never exits is a failed test).
TEST_TIMEOUT = 120.0
#: Missing paths listed per package in the report.
SHOWN = 6

#: Run inside the sandbox by this machine's Python before the program: enter the
#: root, take the image's user, exec the command through the image's PATH.
_HELPER = """
import os, sys, json, pwd, grp  # every import before the chroot: after it, none can be found
root, wd, user, env = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
argv = sys.argv[5:]
os.chroot(root)
os.chdir(wd)
if user:
    name, _, group = user.partition(":")
    if name.isascii() and name.isdigit():
        uid, gid = int(name), int(name)
    else:
        entry = pwd.getpwnam(name)
        uid, gid = entry.pw_uid, entry.pw_gid
    if group:
        gid = int(group) if group.isascii() and group.isdigit() else grp.getgrnam(group).gr_gid
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
try:
    os.execvpe(argv[0], argv, env)
except OSError as exc:
    sys.stderr.write(f"minify --test: cannot run {argv[0]}: {exc.strerror}\\n")
    sys.exit(127)
"""

#: Mounts the overlay and the runtime's file systems, then execs the helper.
_SETUP = """
set -e
mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4"
cd "$4"
for d in proc dev tmp; do [ -L "$d" ] || mkdir -p "$d"; done
[ -L proc ] || mount -t proc proc proc
if [ ! -L dev ]; then
    mount -t tmpfs -o mode=755 tmpfs dev
    for d in $DEVICES; do : > "dev/$d"; mount --bind "/dev/$d" "dev/$d"; done
    mkdir dev/shm && mount -t tmpfs -o mode=1777 tmpfs dev/shm
fi
[ -L tmp ] || mount -t tmpfs -o mode=1777 tmpfs tmp
shift 4
exec "$@"
"""


@dataclass(frozen=True)
class Outcome:
    status: int
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True)
class Sandbox:
    """Where and how a test runs in a root: the image's user, env and folder."""

    workdir: str
    user: str | None
    env: dict[str, str]


def prove(
    commands: tuple[str, ...],
    plan: ImagePlan,
    rootfs: str,
    *,
    source: Root,
    scratch: str,
    compare_output: bool = False,
    host_cwd: str | None = None,
) -> list[str]:
    """Run every test command in the image and at the source; raise ``ProofFailed``
    with the report on the first that differs. Returns notes for the ones that pass."""
    env = {"PATH": DEFAULT_PATH, **dict(plan.config.env)}
    box = Sandbox(plan.config.working_dir or "/", plan.config.user, env)
    notes: list[str] = []
    for command in commands:
        argv = shlex.split(command)
        if not argv:
            raise MinifyError("--test: an empty command")
        try:
            image = run_in(rootfs, argv, box, scratch=os.path.join(scratch, "image"))
            if source.is_host:
                at_source = _run_here(argv, host_cwd)
            else:
                at_source = run_in(source.directory, argv, box, scratch=os.path.join(scratch, "source"))
            problem = _difference(image, at_source, compare_output)
            if problem is None:
                notes.append(f"--test `{command}`: exit status {image.status} in the image, as at the source")
                continue
            missing = _missing_in_image(rootfs, argv, box, os.path.join(scratch, "trace"))
        finally:
            for name in ("image", "source", "trace"):
                shutil.rmtree(os.path.join(scratch, name), ignore_errors=True)
        report = _report(missing, plan, source)
        tail = _tail(image.stderr)
        raise ProofFailed(f"--test `{command}`: {problem}" + (f" ({tail})" if tail else ""), tuple(report))
    return notes


def _difference(image: Outcome, source: Outcome, compare_output: bool) -> str | None:
    if image.status != source.status:
        return f"exit status {image.status} in the image, {source.status} at the source"
    if compare_output and image.stdout != source.stdout:
        return "the output in the image differs from the output at the source"
    return None


def _tail(stderr: bytes) -> str:
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return " | ".join(line.strip() for line in lines[-2:])[:300]


def _run_here(argv: list[str], cwd: str | None) -> Outcome:
    """The command on this machine, as the user would run it (as ``--trace`` does)."""
    try:
        proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=TEST_TIMEOUT, cwd=cwd)
    except subprocess.TimeoutExpired:
        return Outcome(-1, b"", b"timed out")
    except OSError as exc:
        return Outcome(127, b"", (exc.strerror or str(exc)).encode())
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def _sandbox_command(root: str, argv: list[str], box: Sandbox, scratch: str, strace: list[str]) -> list[str]:
    tools = {name: shutil.which(name) for name in ("unshare", "mount", "sh")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise MinifyError(f"--test needs {', '.join(missing)} (util-linux)")
    upper, work, merged = (os.path.join(scratch, n) for n in ("upper", "work", "merged"))
    for folder in (upper, work, merged):
        os.makedirs(folder, exist_ok=True)
    unshare = [str(tools["unshare"]), "--mount", "--pid", "--fork", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")
    helper = [sys.executable, "-I", "-c", _HELPER, merged, box.workdir, box.user or "", json.dumps(box.env)]
    return [*unshare, str(tools["sh"]), "-c", _SETUP, "minify-test", root, upper, work, merged, *strace, *helper, *argv]


def run_in(root: str, argv: list[str], box: Sandbox, *, scratch: str, strace: tuple[str, ...] = ()) -> Outcome:
    """``argv`` inside ``root`` (an overlay of it: nothing is written there)."""
    cmd = _sandbox_command(root, argv, box, scratch, list(strace))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEVICES": " ".join(DEVICES)}
    try:
        proc = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=TEST_TIMEOUT, env=env)
    except subprocess.TimeoutExpired:
        return Outcome(-1, b"", f"timed out after {TEST_TIMEOUT:.0f}s".encode())
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def _missing_in_image(rootfs: str, argv: list[str], box: Sandbox, scratch: str) -> set[str]:
    """The failed run again, under strace: what it looked for and did not find."""
    strace = shutil.which("strace")
    if strace is None:
        return set()
    record = os.path.join(scratch, "record")
    os.makedirs(record)
    calls = "execve,open,openat,openat2,stat,lstat,newfstatat,statx,access,faccessat,faccessat2,readlink,chroot"
    tracer = [strace, "-f", "-ff", "-qq", "-y", "-s", "4096", "-e", f"trace={calls}", "-o", f"{record}/t"]
    run_in(rootfs, argv, box, scratch=scratch, strace=tuple(tracer))
    return missing_paths(record, box.workdir, os.path.join(scratch, "merged"))


#: Paths a preset brings, and the flag.
_PRESET_PATHS = (
    ("/usr/share/zoneinfo", "--with tzdata"),
    ("/etc/localtime", "--with tzdata"),
    ("/etc/ssl", "--with certs"),
    ("/usr/share/ca-certificates", "--with certs"),
    ("/usr/lib/locale", "--with locale"),
    ("/usr/share/terminfo", "--with terminfo"),
    ("/lib/terminfo", "--with terminfo"),
    ("/etc/terminfo", "--with terminfo"),
    ("/etc/nsswitch.conf", "--with nss"),
    ("/etc/passwd", "--with nss"),
    ("/etc/group", "--with nss"),
    ("/etc/hosts", "--with nss"),
)


def _flag(path: str, plan: ImagePlan, source: Root) -> str:
    """The flag that brings ``path``: a preset's, else ``--add`` of its folder when the
    image lacks that folder (a module or data folder), else of the file."""
    for prefix, flag in _PRESET_PATHS:
        if path == prefix or path.startswith(prefix + "/"):
            return flag
    if "/gconv/" in path:
        return "--with gconv"
    folder = posixpath.dirname(path)
    if folder != "/" and plan.lookup(folder) is None and source.resolve(folder).is_dir:
        return f"--add {folder}"
    return f"--add {path}"


def _report(missing: set[str], plan: ImagePlan, source: Root) -> list[str]:
    """What the run in the image did not find and the source root has, by package."""
    present = sorted(p for p in missing if plan.lookup(p) is None and _exists(source, p))
    if not present:
        return ["the run in the image looked for nothing that the source root has (see its output above)"]
    owners = owners_of(source, present)
    by_package: dict[str, list[str]] = {}
    for path in present:
        by_package.setdefault(owners.get(path, "no package"), []).append(path)
    lines = [f"the run in the image looked for {len(present)} path(s) that the source root has:"]
    flags: list[str] = []
    for package in sorted(by_package, key=lambda k: (k == "no package", k)):
        paths = by_package[package]
        shown = ", ".join(paths[:SHOWN]) + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")
        lines.append(f"  {package}: {shown}")
        flags.extend(_flag(p, plan, source) for p in paths)
    lines.append("bring them with: " + " ".join(dict.fromkeys(flags)))
    return lines


def _exists(source: Root, path: str) -> bool:
    try:
        resolved = source.resolve(path)
    except MinifyError:
        return False
    return resolved.exists and (resolved.is_file or resolved.is_dir)
