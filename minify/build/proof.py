"""``--test "CMD"``: proof that the image does the real job, before it is written.

CMD runs twice: inside the new rootfs, in a sandbox (its own mount and PID
namespaces, ``/proc``, a ``/dev`` of the usual devices with ``/dev/shm``, an empty
tmpfs ``/tmp`` where the image has none, the image's user, environment and working
folder), and on the source root
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
from minify.plan.embedded import PROGRAM_PREFIXES
from minify.plan.image import ImagePlan
from minify.plan.packagedata import data_packages
from minify.plan.packages import owners_of
from minify.plan.presets import TERMINFO_DIRS, ZONEINFO
from minify.plan.scripts import DEFAULT_PATH, interpreters
from minify.plan.trace import DEVICES, missing_paths, namespaces
from minify.root import Root, remove_tree
from minify.text import some

#: How long one run of a test may take (a server that never exits is a failed test).
TEST_TIMEOUT = 120.0
#: Missing paths listed per package in the report.
SHOWN = 6
#: A missing file's folder is suggested whole up to this many entries.
FOLDER_FILES = 500

#: Run inside the sandbox by this machine's Python before the program: enter the
#: root, take the image's user, exec the command through the image's PATH.
_HELPER = """
import os, sys, json, pwd, grp, stat  # every import before the chroot: after it, none can be found
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
if "HOME" not in env:  # as runc does: the user's home in the image's passwd, else /
    env["HOME"] = "/"  # read by hand: NSS here would be this process's lookups, not the job's
    try:  # a regular file only, opened without blocking: never a wait on a FIFO
        fd = os.open("/etc/passwd", os.O_RDONLY | os.O_NONBLOCK)  # inside the chroot: a link stays in it
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError("not a regular file")
        with open(fd, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.rstrip("\\n").split(":")
                if len(fields) >= 6 and fields[2] == str(os.getuid()):
                    env["HOME"] = fields[5] or "/"
                    break
    except OSError:
        pass
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
for d in proc dev; do [ -L "$d" ] || mkdir -p "$d"; done
[ -L proc ] || mount -t proc proc proc
if [ ! -L dev ]; then
    mount -t tmpfs -o mode=755 tmpfs dev
    for d in $DEVICES; do : > "dev/$d"; mount --bind "/dev/$d" "dev/$d"; done
    mkdir dev/shm && mount -t tmpfs -o mode=1777 tmpfs dev/shm
fi
[ -e tmp ] || [ -L tmp ] || { mkdir tmp && mount -t tmpfs -o mode=1777 tmpfs tmp; }
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
                remove_tree(os.path.join(scratch, name), quiet=True)
        report = _report(missing, plan, source, env["PATH"])
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
    tools, unshare = namespaces("--test")
    upper, work, merged = (os.path.join(scratch, n) for n in ("upper", "work", "merged"))
    for folder in (upper, work, merged):
        os.makedirs(folder, exist_ok=True)
    helper = [sys.executable, "-I", "-c", _HELPER, merged, box.workdir, box.user or "", json.dumps(box.env)]
    return [*unshare, tools["sh"], "-c", _SETUP, "minify-test", root, upper, work, merged, *strace, *helper, *argv]


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
    (ZONEINFO, "--with tzdata"),
    ("/etc/localtime", "--with tzdata"),
    ("/etc/ssl", "--with certs"),
    ("/usr/share/ca-certificates", "--with certs"),
    ("/usr/lib/locale", "--with locale"),
    *((folder, "--with terminfo") for folder in TERMINFO_DIRS),
    ("/etc/nsswitch.conf", "--with nss"),
    ("/etc/passwd", "--with nss"),
    ("/etc/group", "--with nss"),
    ("/etc/hosts", "--with nss"),
)


def _flag(path: str, plan: ImagePlan, source: Root, data: bool) -> str:
    """The flag that brings ``path``: a preset's (``package-data`` for a file of the
    programs' own packages, which brings the rest of their data at once), else
    ``--add`` of its folder when the image lacks that folder, else of the file."""
    if data:
        return "--with package-data"
    for prefix, flag in _PRESET_PATHS:
        if path == prefix or path.startswith(prefix + "/"):
            return flag
    if "/gconv/" in path:
        return "--with gconv"
    if path.startswith(PROGRAM_PREFIXES):
        return f"--add {path}"  # a program: the file (its closure comes with it), never all of /bin
    folder = posixpath.dirname(path)
    if folder != "/" and plan.lookup(folder) is None and _small_folder(source, folder):
        return f"--add {folder}"
    return f"--add {path}"


def _small_folder(source: Root, folder: str) -> bool:
    """A folder worth suggesting whole: at most ``FOLDER_FILES`` files (a module or data
    folder, not /usr/share/locale's 3,000 translations for one locale.alias)."""
    if not source.resolve(folder).is_dir:
        return False
    count = 0
    try:
        for _ in source.walk(folder):
            count += 1
            if count > FOLDER_FILES:
                return False
    except MinifyError:
        return False
    return True


def _report(missing: set[str], plan: ImagePlan, source: Root, search: str) -> list[str]:
    """What the run in the image did not find and the source root has, by package
    (``search``: the image's PATH, where ``#!/usr/bin/env NAME`` finds NAME)."""
    found = {p for p in missing if plan.lookup(p) is None and _exists(source, p)}
    # an execve of a script the image has fails with ENOENT when its #! interpreter is
    # missing (Rscript runs the bash script R): name the interpreter
    for path in sorted(missing - found):
        if plan.lookup(path) is not None and _exists(source, path):
            chain, _ = interpreters(source, path, search)
            found.update(i for i in chain if plan.lookup(i) is None)
    # one name per file: /bin/uname and /usr/bin/uname are one file on a usrmerged root
    by_file: dict[str, str] = {}
    for path in sorted(found):
        by_file.setdefault(source.realpath(path), path)
    present = sorted(by_file.values())
    if not present:
        return ["the run in the image looked for nothing that the source root has (see its output above)"]
    owners = owners_of(source, present)
    # the programs' own packages, as the plan's entries name them
    data = set(data_packages(source, {e.package for p in plan.programs if (e := plan.lookup(p)) and e.package}))
    by_package: dict[str, list[str]] = {}
    for path in present:
        by_package.setdefault(owners.get(path, "no package"), []).append(path)
    lines = [f"the run in the image looked for {len(present)} path(s) that the source root has:"]
    flags: list[str] = []
    for package in sorted(by_package, key=lambda k: (k == "no package", k)):
        paths = by_package[package]
        shown = some(paths, SHOWN)
        lines.append(f"  {package}: {shown}")
        flags.extend(_flag(p, plan, source, package in data) for p in paths)
    lines.append("bring them with: " + " ".join(dict.fromkeys(flags)))
    return lines


def _exists(source: Root, path: str) -> bool:
    try:
        resolved = source.resolve(path)
    except MinifyError:
        return False
    return resolved.exists and (resolved.is_file or resolved.is_dir)
