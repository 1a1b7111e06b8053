"""Every architecture Debian ships, judged by its own loader (issue 25).

One sysroot per architecture (tests/sysroots.py), built once per session, holds the
same fixtures: an RPATH/RUNPATH chain, libm and libdl, a missing library, a missing
symbol version, a library only ld.so.cache finds (built without libc, so i386's
ldconfig flags its entry 1), and copies the loader must skip ahead on the RPATH: one of
another machine or class, one of the other byte order (64-bit targets), one of another
float ABI or ABI version (where the loader checks e_flags). The loader, run in a chroot
under qemu, is the judge: closure, missing names and version errors equal, and
``minify rootfs`` writes a root that runs or refuses exactly when the loader fails.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import minify
from minify.cli import app
from minify.elf.files import ElfHeader, Endian
from minify.loader.arch import ARCHES, arch_of, machine_name
from minify.loader.glibc import ldso_facts
from minify.root import Root
from tests.conftest import FIXTURES, Builder, loader_truth, need_tool
from tests.sysroots import CROSSES, Cross, in_chroot, make_sysroot, patch_flags, run_ldconfig

#: e_flags bits that make a copy of another float ABI or ABI version: (set, clear).
OTHER_FLOATS = {
    "armhf": (0x200, 0x400),  # soft-float
    "armel": (0x400, 0x200),  # hard-float
    "riscv64": (0x0, 0x6),  # lp64
    "ppc64le": (0x1, 0x3),  # ELFv1
    "mips64el": (0x400, 0x0),  # 2008 NaN
    "mipsel": (0x400, 0x0),
}
#: The programs every sysroot holds, and those that exist only where a rule applies.
PROGRAMS = ("chain", "mathy", "gone", "oldver", "cached", "foreign", "order", "float")


@dataclass(frozen=True)
class Built:
    cross: Cross
    root: Path
    programs: tuple[str, ...]
    cached: bool  # the target's own ldconfig wrote /etc/ld.so.cache


def _other_order(cross: Cross) -> Cross | None:
    """An architecture of the same class and the other byte order, for a library the
    loader must skip; none for the 32-bit targets (Debian has no 32-bit big-endian one)."""
    if cross.name in ("armhf", "armel", "i386", "mipsel"):
        return None
    return next(c for c in CROSSES if c.name == ("ppc64le" if cross.name == "s390x" else "s390x"))


def _build(cross: Cross, root: Path, scratch: Path) -> Built:
    make_sysroot(cross, root)
    b = Builder(cross.gcc)
    libb = b.lib(root / "opt/b/libb.so.1", "b")
    liba = b.lib(root / "opt/a/liba.so.1", "a", links=[libb], runpath="/opt/b")
    b.prog(root / "bin/chain", links=[liba], rpath="/opt/a", flags=[f"-Wl,-rpath-link,{root}/opt/b"])
    b.prog(root / "bin/mathy", links=["-lm", "-ldl"])
    b.prog(
        root / "bin/gone", links=[b.lib(scratch / "libgone.so.1", "gone"), b.lib(scratch / "libgone2.so.1", "gone2")]
    )
    ver = root / "opt/ver/libver.so.1"
    b.lib(ver, "ver", src="versioned.c", flags=["-DWITH_V2", f"-Wl,--version-script={FIXTURES}/v2.map"])
    b.prog(root / "bin/oldver", src="usever.c", links=[ver], runpath="/opt/ver")
    b.lib(ver, "ver", src="versioned.c", flags=[f"-Wl,--version-script={FIXTURES}/v1.map"])
    # no libc dependency: i386's ldconfig gives its cache entry the generic flag 1
    cache = b.lib(root / "opt/cache/libcache.so.1", "cache", flags=["-nostdlib"])
    b.prog(root / "bin/cached", links=[cache])
    (root / "etc/ld.so.conf").write_text("/opt/cache\n")
    real = b.lib(root / "opt/real/libfoo.so.1", "foo")
    Builder("gcc").lib(root / "opt/foreign/libfoo.so.1", "foo")
    b.prog(root / "bin/foreign", links=[real], rpath="/opt/foreign:/opt/real")
    programs = ["chain", "mathy", "gone", "oldver", "cached", "foreign"]
    other = _other_order(cross)
    if other is not None:
        Builder(other.gcc).lib(root / "opt/order/libfoo.so.1", "foo")
        b.prog(root / "bin/order", links=[real], rpath="/opt/order:/opt/real")
        programs.append("order")
    if cross.name in OTHER_FLOATS:
        b.lib(root / "opt/float/libfoo.so.1", "foo")
        patch_flags(root / "opt/float/libfoo.so.1", *OTHER_FLOATS[cross.name])
        b.prog(root / "bin/float", links=[real], rpath="/opt/float:/opt/real")
        programs.append("float")
    return Built(cross, root, tuple(programs), run_ldconfig(cross, root))


@pytest.fixture(scope="session")
def sysroot(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Built]:
    """The sysroot of an architecture, built the first time a test asks for it."""
    built: dict[str, Built] = {}

    def get(name: str) -> Built:
        cross = next(c for c in CROSSES if c.name == name)
        need_tool(cross.gcc, cross.qemu_static)
        if name not in built:
            top = tmp_path_factory.mktemp(f"arch-{name}")
            built[name] = _build(cross, top / "root", top)
        return built[name]

    return get


NAMES = [c.name for c in CROSSES]


@pytest.mark.parametrize("name", NAMES)
def test_system_dirs_are_the_loaders_own(name: str, sysroot: Callable[[str], Built]) -> None:
    """The folders read out of ld.so are those the loader itself searches: with
    LD_DEBUG=libs it prints its system search path for each library it looks for, and
    by the second search it has dropped the hwcaps subfolders that do not exist, so
    what remains is its system folders (``--list-diagnostics`` would print them too,
    but it aborts on the 32-bit targets)."""
    built = sysroot(name)
    ran = in_chroot(built.root, ["/bin/gone"], {"LD_DEBUG": "libs", "LD_TRACE_LOADED_OBJECTS": "1"})
    paths = re.findall(r"search path=(\S*)\s+\(system search path\)", ran.stderr)
    assert len(paths) >= 2, ran.stderr[-3000:]
    arch = next(a for a in ARCHES if a.name == name)
    facts = ldso_facts(Root(str(built.root)), built.cross.interpreter, arch)
    assert facts.from_binary
    assert facts.system_dirs == tuple(paths[-1].split(":"))
    assert facts.system_dirs[0] == f"/lib/{built.cross.triplet}"


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("name", NAMES)
def test_closure_is_the_loaders(name: str, program: str, sysroot: Callable[[str], Built]) -> None:
    built = sysroot(name)
    if program not in built.programs:
        assert program in ("order", "float")  # no such rule on this architecture
        return
    truth = loader_truth(f"/bin/{program}", chroot=str(built.root), emulator="/qemu")
    (found,) = minify.analyze([f"/bin/{program}"], root=str(built.root)).programs
    assert found.machine == name and found.error is None, found.error
    assert set(found.closure) == truth.closure, truth.output
    assert set(found.missing) == truth.missing, truth.output
    glibc_says = sorted(re.findall(r"/\S+: version `[^']+' not found \(required by [^)]+\)", truth.output))
    assert sorted(found.version_errors) == glibc_says, truth.output
    if program == "cached" and not built.cached:
        assert truth.missing == {"libcache.so.1"}
        assert any("ld.so.conf but no ld.so.cache" in n for n in found.notes)


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("name", NAMES)
def test_rootfs_runs_or_refuses_as_the_loader_does(
    name: str, program: str, sysroot: Callable[[str], Built], tmp_path: Path
) -> None:
    built = sysroot(name)
    if program not in built.programs:
        assert program in ("order", "float")
        return
    real = in_chroot(built.root, [f"/bin/{program}"])
    made = CliRunner().invoke(app, ["rootfs", f"/bin/{program}", "--root", str(built.root), "-o", str(tmp_path / "o")])
    if real.returncode != 0:
        assert made.exit_code != 0, made.output
        return
    assert made.exit_code == 0, made.output
    rootfs = tmp_path / "o/rootfs"
    shutil.copy2(built.root / "qemu", rootfs / "qemu")
    ran = in_chroot(rootfs, [f"/bin/{program}"])
    assert (ran.returncode, ran.stdout) == (0, real.stdout), ran.stderr


def test_i386_cache_entries_with_the_generic_flag_are_used(sysroot: Callable[[str], Built]) -> None:
    """i386's ldconfig marks a library without a libc dependency with flags 1, which the
    generic _dl_cache_check_flags accepts; the loader finds it through the cache."""
    built = sysroot("i386")
    assert built.cached
    from minify.loader import ldcache

    cache = ldcache.parse((built.root / "etc/ld.so.cache").read_bytes())
    assert {e.flags for e in cache.by_name["libcache.so.1"]} == {1}
    (found,) = minify.analyze(["/bin/cached"], root=str(built.root)).programs
    assert found.ok and "/opt/cache/libcache.so.1" in found.closure


@pytest.mark.parametrize(
    ("machine", "elf_class", "endian", "flags", "name"),
    [
        (8, 64, "big", 0, "mips64 (big-endian)"),
        (8, 32, "little", 0x20, "mipsn32el"),
        (62, 32, "little", 0, "x32"),
        (258, 64, "little", 0, "loongarch64"),
        (0x1234, 64, "little", 0, "e_machine 4660 (64-bit, little-endian)"),
        (40, 32, "little", 0x5000400, "armhf"),
        (40, 32, "little", 0x5000200, "armel"),
    ],
)
def test_architectures_are_named(machine: int, elf_class: int, endian: str, flags: int, name: str) -> None:
    """A program of an architecture minify does not model is refused by its name, not
    by its e_machine number; 32-bit ARM is told apart by its float ABI."""
    header = ElfHeader(elf_class, Endian(endian), 0, 2, machine, True, None, flags=flags)
    assert machine_name(header) == name
    assert (arch_of(header) is None) == (name not in NAMES)
