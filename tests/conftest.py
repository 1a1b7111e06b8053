"""Shared test helpers: build real binaries from fixtures/ with gcc, and ask the real
loader what it loads (LD_TRACE_LOADED_OBJECTS=1), so minify is judged by the loader."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from minify.elf.reader import read_elf
from minify.root import Root

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    """minify's persistent cache goes to a folder of this session (every minify the
    tests start inherits it), never the user's ~/.cache; removed at the end."""
    del config
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="minify-test-cache-")


def pytest_unconfigure(config: pytest.Config) -> None:
    del config
    folder = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.basename(folder).startswith("minify-test-cache-"):
        shutil.rmtree(folder, ignore_errors=True)


IN_CI = os.environ.get("CI") == "true"


def _host_loader_facts() -> tuple[str, str]:
    """The host's PT_INTERP and the libc.so.6 its loader picks, as the loader itself
    says (LD_TRACE_LOADED_OBJECTS), so tests never assume x86-64 Debian paths."""
    sh = os.path.realpath("/bin/sh")
    interp = read_elf(sh).interpreter or ""
    out = subprocess.run([sh, "-c", ":"], capture_output=True, text=True, env={"LD_TRACE_LOADED_OBJECTS": "1"}).stdout
    libc = next((line.split()[2] for line in out.splitlines() if line.split()[:2] == ["libc.so.6", "=>"]), "")
    return interp, libc


#: The host's interpreter (/lib64/ld-linux-x86-64.so.2 on x86-64) and libc as its loader
#: finds it (/lib/x86_64-linux-gnu/libc.so.6 on Debian), and libc's folder.
HOST_INTERP, HOST_LIBC = _host_loader_facts()
HOST_LIBDIR = os.path.dirname(HOST_LIBC)
#: The multiarch triplet ($LIB is lib/TRIPLET on Debian-like systems).
TRIPLET = os.path.basename(HOST_LIBDIR)
#: The file name of the host's ld.so (its PT_INTERP is usually a link to it).
HOST_LDSO = os.path.basename(os.path.realpath(HOST_INTERP)) if HOST_INTERP else ""


def host_libc_into(root: Path, *, interp_link: str | None = None) -> Path:
    """Give ``root`` the host's libc and ld.so in the folder where the host has libc,
    and its PT_INTERP path as a link to that ld.so (``interp_link`` as its text);
    returns that folder. Programs gcc builds here then load inside ``root``."""
    libdir = root / HOST_LIBDIR.lstrip("/")
    libdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.realpath(HOST_LIBC), libdir / "libc.so.6")
    shutil.copy(os.path.realpath(HOST_INTERP), libdir / HOST_LDSO)
    interp = root / HOST_INTERP.lstrip("/")
    if not interp.exists():
        interp.parent.mkdir(parents=True, exist_ok=True)
        interp.symlink_to(interp_link or f"{HOST_LIBDIR}/{HOST_LDSO}")
    return libdir


def copy_host_path(src: str, top: Path) -> None:
    """A path of this machine into a root being assembled, at the same place; symlinks
    as symlinks. Copied, never hard-linked: a link would change the ctime of the
    machine's own files (and a write through it, the files themselves)."""
    if not os.path.lexists(src):
        return
    dest = top / src.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(dest):
        run(["cp", "-a", "--reflink=auto", src, str(dest)])


def need_tool(*tools: str) -> None:
    """Skip locally when a tool is missing; in CI a missing tool is a failure, since
    the test command installs every tool the tests use."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        if IN_CI:
            pytest.fail(f"tools missing in CI: {', '.join(missing)}")
        pytest.skip(f"tools missing: {', '.join(missing)}")


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[call-overload,no-any-return]


class Builder:
    """Compiles fixtures into a folder; every artefact is a real ELF file."""

    def __init__(self, cc: str = "gcc") -> None:
        self.cc = cc

    def lib(
        self,
        out: Path,
        name: str,
        *,
        soname: str | None = "",
        links: list[Path | str] | tuple[Path | str, ...] = (),
        rpath: str | None = None,
        runpath: str | None = None,
        flags: list[str] | tuple[str, ...] = (),
        src: str = "lib.c",
    ) -> Path:
        """``out`` is the file to write; ``soname`` defaults to its file name ("" ->
        basename, None -> no DT_SONAME)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [self.cc, "-shared", "-fPIC", f"-DNAME={name}", str(FIXTURES / src), "-o", str(out)]
        if soname is not None:
            cmd.append(f"-Wl,-soname,{soname or out.name}")
        cmd += self._link_flags(links, rpath, runpath)
        cmd += list(flags)
        run(cmd)
        return out

    def prog(
        self,
        out: Path,
        *,
        src: str = "prog.c",
        links: list[Path | str] | tuple[Path | str, ...] = (),
        rpath: str | None = None,
        runpath: str | None = None,
        flags: list[str] | tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> Path:
        out.parent.mkdir(parents=True, exist_ok=True)
        compiler = self.cc if not src.endswith(".cc") else self.cc.replace("gcc", "g++")
        cmd = [compiler, str(FIXTURES / src), "-o", str(out)]
        cmd += self._link_flags(links, rpath, runpath)
        cmd += list(flags)
        run(cmd, cwd=cwd)
        return out

    @staticmethod
    def _link_flags(
        links: list[Path | str] | tuple[Path | str, ...], rpath: str | None, runpath: str | None
    ) -> list[str]:
        flags = ["-Wl,--no-as-needed"] if links else []
        flags += [str(p) for p in links]
        if rpath is not None:
            flags += ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}"]
        if runpath is not None:
            flags += ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}"]
        return flags


@dataclass(frozen=True)
class Truth:
    """What the real loader reported."""

    closure: frozenset[str]  # realpaths inside the root
    missing: frozenset[str]
    failed: bool  # the loader stopped with an error
    output: str


_LINE = re.compile(r"^\s*(?:(\S+) => )?(\S+?|not found)(?: \(0x[0-9a-f]+\))?$")


def loader_truth(
    program: str,
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    chroot: str | None = None,
    qemu: str | None = None,
    emulator: str | None = None,
) -> Truth:
    """Run the program under LD_TRACE_LOADED_OBJECTS=1 (the loader lists what it maps
    and exits without running main). Test-only: minify itself never does this."""
    full_env = {"LD_TRACE_LOADED_OBJECTS": "1", "PATH": "/usr/bin:/bin"}
    full_env.update(env or {})
    preexec = None
    if chroot:
        # chroot(1) would itself be traced by LD_TRACE_LOADED_OBJECTS: enter the root
        # in the child instead, so only the program sees the variable
        def preexec() -> None:
            os.chroot(chroot)
            os.chdir("/")

        cmd = [emulator, program] if emulator else [program]  # the emulator's path inside the root
    elif qemu:
        # qemu-user runs the guest loader with every absolute path prefixed by the root
        cmd = ["qemu-aarch64-static", "-L", qemu, qemu + program]
    else:
        cmd = [program]
        interp = read_elf(program).interpreter
        if interp and os.path.basename(interp).startswith("ld-musl-"):
            # musl's loader lists instead of running when asked with --list
            cmd = [interp, "--list", program]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=cwd, timeout=60, preexec_fn=preexec)
    root = Root(chroot or qemu or "/")
    closure: set[str] = set()
    missing: set[str] = set()
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line == program or line.startswith(program + " "):
            continue  # musl lists the program itself
        if not line or line.startswith(("linux-vdso", "linux-gate")) or "statically linked" in line:
            continue
        if line.endswith("=> not found"):
            missing.add(line.split(" => ")[0])
            continue
        m = _LINE.match(line)
        assert m, f"unparsed loader line: {line!r}"
        path = m.group(2)
        if not path.startswith("/"):
            path = os.path.join(cwd or os.getcwd(), path)
        closure.add(root.realpath(path))
    # the trace lists what ld.so maps; the program itself is mapped by the kernel
    closure.add(root.realpath(program if program.startswith("/") else os.path.join(cwd or os.getcwd(), program)))
    return Truth(
        frozenset(closure), frozenset(missing), proc.returncode != 0 and not missing, proc.stdout + proc.stderr
    )


# -- running minify and its images --------------------------------------------------------

MINIFY = [sys.executable, "-m", "minify.cli"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MINIFY, *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def chroot_pty(rootfs: Path, *argv: str, keys: bytes = b"q", term: str = "xterm") -> str:
    """Run ``argv`` chrooted into a copy of ``rootfs`` on a pseudo-terminal (as
    ``podman run -t`` would), type ``keys`` once it has drawn, and return what it
    wrote to the terminal."""
    import pty
    import select

    need_tool("unshare", "chroot")
    box = Path(tempfile.mkdtemp(prefix="chroot-pty-"))
    try:
        top = box / "root"
        shutil.copytree(rootfs, top, symlinks=True)
        for folder in ("proc", "dev"):
            (top / folder).mkdir(exist_ok=True)
        (top / "dev/null").touch()
        script = 'mount -t proc proc "$0/proc" && mount --bind /dev/null "$0/dev/null" && exec chroot "$0" "$@"'
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TERM": term, "LINES": "24", "COLUMNS": "80"}
            os.execvpe("unshare", ["unshare", "--mount", "--pid", "--fork", "sh", "-c", script, str(top), *argv], env)
        output = b""
        deadline = time.monotonic() + 30
        typed = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                if not typed:
                    os.write(fd, keys)
                    typed = True
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        else:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
        return output.decode("utf-8", "replace")
    finally:
        shutil.rmtree(box, ignore_errors=True)


def tree_listing(top: Path) -> dict[str, str]:
    """Every path under ``top`` with what it is: file digest+mode, symlink text, dir."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = "/" + str(p.relative_to(top))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + f" {p.stat().st_mode & 0o7777:o}"
    return out


#: The devices a container runtime gives every container (LibreOffice reads urandom).
RUNTIME_DEVICES = ("null", "zero", "full", "random", "urandom")


def chroot_run(
    rootfs: Path, *argv: str, env: dict[str, str] | None = None, keep: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` chrooted into a copy of ``rootfs`` with what a container runtime
    provides: /proc (glibc reads /proc/self/exe for the program's $ORIGIN) and the
    usual devices, with ``env`` besides PATH. The copy keeps the image itself exactly
    as minify wrote it; with ``keep`` the copy is made there and left, to read what
    the run wrote."""
    need_tool("unshare", "chroot")
    box = Path(tempfile.mkdtemp(prefix="chroot-"))
    try:
        top = keep if keep is not None else box / "root"
        shutil.copytree(rootfs, top, symlinks=True)
        (top / "proc").mkdir()
        (top / "dev").mkdir()
        binds = []
        for device in RUNTIME_DEVICES:
            (top / "dev" / device).touch()
            binds.append(f'mount --bind /dev/{device} "$0/dev/{device}"')
        script = " && ".join(['mount -t proc proc "$0/proc"', *binds, 'exec chroot "$0" "$@"'])
        return subprocess.run(
            ["unshare", "--mount", "--pid", "--fork", "sh", "-c", script, str(top), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})},
        )
    finally:
        shutil.rmtree(box, ignore_errors=True)


CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
"""

Podman = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    need_tool("podman", "runc")
    conf = tmp_path_factory.mktemp("podman") / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    images: list[str] = []

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["podman", "--runtime", "runc", *args], capture_output=True, text=True, env=env, timeout=300
        )
        if check:
            assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr}"
        if args[0] == "build":
            images.append(args[args.index("-t") + 1])
        return proc

    yield run
    for image in images:
        run("rmi", "-f", image, check=False)


def image_from(podman: Podman, out: Path) -> str:
    tag = f"localhost/minify-test-{uuid.uuid4().hex[:10]}"
    podman("build", "-q", "-t", tag, str(out))
    return tag


@pytest.fixture(scope="session")
def builder() -> Builder:
    need_tool("gcc")
    return Builder()


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, builder: Builder) -> dict[str, Path]:
    """Binaries that several test modules share, built once per session."""
    base = tmp_path_factory.mktemp("built")
    out = {
        "pausle": builder.prog(
            base / "pausle-dynamic",
            src="pausle.c",
            flags=[
                "-Os",
                "-fdata-sections",
                "-ffunction-sections",
                "-fipa-pta",
                "-Wl,--gc-sections",
                "-Wl,-O1",
                "-Wl,--as-needed",
                "-Wl,--strip-all",
            ],
        ),
        "hello": builder.prog(base / "hello", src="hello.c"),
    }
    return out


def add_rpath_entry(path: Path, rpath: str) -> None:
    """Give an ELF file a DT_RPATH beside its DT_RUNPATH (no linker writes both), by
    rewriting it with LIEF: a fixture-making step, the result is judged by the loader."""
    import lief

    binary = lief.ELF.parse(str(path))
    binary.add(lief.ELF.DynamicEntryRpath(rpath))
    binary.write(str(path))


# -- strace as the witness ------------------------------------------------------------


def strace_minify(args: list[str], log: Path, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``minify ARGS`` under strace, every file call logged with the folder behind
    each descriptor (``-y``), since minify walks roots with ``dir_fd``."""
    need_tool("strace")
    cmd = ["strace", "-f", "-qq", "-y", "-o", str(log), "-e", "trace=%file", sys.executable, "-m", "minify.cli"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload,no-any-return]


_CALL = re.compile(r"^\d+\s+(\w+)\((.*)$")
_PATH_ARG = re.compile(r'(?:(?:AT_FDCWD|\d+)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"')


def syscalls(log: Path) -> list[tuple[str, list[str]]]:
    """(name, absolute paths) of every traced call: a ``dir_fd`` argument and the name
    beside it are joined into the path the kernel looked at."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        match = _CALL.match(line)
        if not match:
            continue
        paths = []
        found = _PATH_ARG.findall(match.group(2).split(") = ")[0])
        pairs = [(folder, name) for folder, name in found if folder]
        if not pairs:  # calls without a dir_fd: their path arguments come first
            call = match.group(1)
            pairs = found[:2] if call in ("rename", "link") else found[1:2] if call == "symlink" else found[:1]
        for folder, raw in pairs:
            name = raw.encode().decode("unicode_escape", "replace")
            if name.startswith("/") or not folder:
                paths.append(name)
            else:
                paths.append(folder if not name else f"{folder.rstrip('/')}/{name}")
        out.append((match.group(1), paths))
    return out


def written_paths(log: Path) -> set[str]:
    """Paths that a traced process created, replaced or changed."""
    written = set()
    for (name, paths), line in zip(syscalls(log), _call_lines(log), strict=True):
        if not paths:
            continue
        if name in ("open", "openat", "creat") and ("O_CREAT" in line or name == "creat"):
            written.add(paths[0])
        elif name in ("mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "chmod", "fchmodat", "utimensat"):
            written.add(paths[0])
        elif name in ("symlink", "symlinkat", "link", "linkat", "rename", "renameat", "renameat2"):
            written.update(paths[-1:] if name.startswith(("symlink", "link")) else paths)
    return written


def _call_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if _CALL.match(line)]
