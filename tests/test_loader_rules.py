"""One real fixture per rule of LOADER.md, each judged by the real loader.

Every test builds binaries with gcc, asks the loader (LD_TRACE_LOADED_OBJECTS=1) what it
loads, and checks that minify, which never runs them, finds exactly the same files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import minify
from minify.analysis.closure import ProgramClosure
from minify.elf.reader import read_elf
from minify.loader.model import How
from tests.conftest import HOST_INTERP, TRIPLET, Builder, Truth, add_rpath_entry, loader_truth, need_tool, run


def compare(
    program: Path | str,
    *,
    cwd: Path | None = None,
    library_path: str | None = None,
    preload: str | None = None,
) -> tuple[ProgramClosure, Truth]:
    env = {}
    if library_path is not None:
        env["LD_LIBRARY_PATH"] = library_path
    if preload is not None:
        env["LD_PRELOAD"] = preload
    truth = loader_truth(str(program), cwd=str(cwd) if cwd else None, env=env)
    analysis = minify.analyze(
        [str(program)],
        cwd=str(cwd) if cwd else os.getcwd(),
        library_path=library_path,
        preload=tuple(preload.split()) if preload else (),
    )
    (closure,) = analysis.programs
    assert closure.error is None, closure.error
    expected = set(truth.closure)
    if closure.interpreter:
        # glibc's trace lists ld.so only when some object needs it by name (rtld.c drops
        # an unreferenced ld.so from the list); the kernel maps it all the same.
        expected.add(closure.objects[-1].realpath)
    assert set(closure.closure) == expected, truth.output
    assert set(closure.missing) == truth.missing, truth.output
    return closure, truth


def how(closure: ProgramClosure, name: str) -> How | None:
    hows = [d.how for d in closure.dependencies if d.name == name]
    assert hows, f"{name} was never requested"
    return hows[0]


def test_seed_pausle_loads_libc_and_the_loader(built: dict[str, Path]) -> None:
    closure, _truth = compare(built["pausle"])
    names = {os.path.basename(p) for p in closure.closure}
    assert "libc.so.6" in names
    assert closure.interpreter == HOST_INTERP
    assert closure.vdso == "linux-vdso.so.1"
    assert len(closure.closure) == 3


def test_rpath_with_origin(tmp_path: Path, builder: Builder) -> None:
    liba = builder.lib(tmp_path / "app/lib/liba.so.1", "a")
    prog = builder.prog(tmp_path / "app/bin/prog", links=[liba], rpath="$ORIGIN/../lib")
    closure, _ = compare(prog)
    assert how(closure, "liba.so.1") is How.RPATH


def test_rpath_is_inherited_but_runpath_is_not(tmp_path: Path, builder: Builder) -> None:
    deep = builder.lib(tmp_path / "private/libdeep.so.1", "deep")
    mid = builder.lib(tmp_path / "lib/libmid.so.1", "mid", links=[deep])
    with_rpath = builder.prog(tmp_path / "rp", links=[mid], rpath=f"{tmp_path}/lib:{tmp_path}/private")
    closure, _ = compare(with_rpath)
    assert how(closure, "libdeep.so.1") is How.RPATH

    with_runpath = builder.prog(tmp_path / "run", links=[mid], runpath=f"{tmp_path}/lib:{tmp_path}/private")
    closure, _truth = compare(with_runpath)
    assert closure.missing == ("libdeep.so.1",)
    step_dirs = [s.directory for d in closure.dependencies if d.name == "libdeep.so.1" for s in d.searched]
    assert f"{tmp_path}/private" not in step_dirs


def test_runpath_makes_an_object_ignore_its_rpath(tmp_path: Path, builder: Builder) -> None:
    builder.lib(tmp_path / "a/liba.so.1", "a_in_a")
    other = builder.lib(tmp_path / "b/liba.so.1", "a_in_b")
    # A script that writes DT_RPATH and DT_RUNPATH both (GNU ld writes one or the other).
    prog = builder.prog(tmp_path / "both", links=[other], runpath=f"{tmp_path}/b")
    add_rpath_entry(prog, f"{tmp_path}/a")
    info = read_elf(str(prog))
    assert info.rpath == f"{tmp_path}/a" and info.runpath == f"{tmp_path}/b"
    closure, _ = compare(prog)
    assert any(p.endswith("/b/liba.so.1") for p in closure.closure)


def test_breadth_first_soname_reuse(tmp_path: Path, builder: Builder) -> None:
    first = builder.lib(tmp_path / "one/libshared.so.1", "shared1")
    builder.lib(tmp_path / "two/libshared.so.1", "shared2")
    user = builder.lib(tmp_path / "two/libuser.so.1", "user", links=[first], runpath="$ORIGIN")
    prog = builder.prog(tmp_path / "prog", links=[user, first], runpath=f"{tmp_path}/two:{tmp_path}/one")
    # BFS: the program's own needs (libuser, then libshared from its RUNPATH: two/) come
    # before libuser's; libuser's request for libshared reuses the loaded one.
    closure, _ = compare(prog)
    assert any(p.endswith("two/libshared.so.1") for p in closure.closure)
    assert not any(p.endswith("one/libshared.so.1") for p in closure.closure)


def test_origin_of_a_library_is_the_folder_it_was_opened_from(tmp_path: Path, builder: Builder) -> None:
    # real/lib/libwrap.so.1 has RUNPATH $ORIGIN/../private; it is reached through the
    # symlinked folder view/lib -> ../real/lib, so $ORIGIN is view/lib, not real/lib.
    builder.lib(tmp_path / "view/private/libinner.so.1", "inner_view")
    inner_real = builder.lib(tmp_path / "real/private/libinner.so.1", "inner_real")
    builder.lib(tmp_path / "real/lib/libwrap.so.1", "wrap", links=[inner_real], runpath="$ORIGIN/../private")
    (tmp_path / "view/lib").symlink_to("../real/lib")
    prog = builder.prog(tmp_path / "prog", links=[tmp_path / "real/lib/libwrap.so.1"], runpath=f"{tmp_path}/view/lib")
    closure, _ = compare(prog)
    # the kernel resolves view/lib/../private after following view/lib: real/private
    assert any(p.endswith("real/private/libinner.so.1") for p in closure.closure)


def test_origin_of_the_program_is_its_realpath(tmp_path: Path, builder: Builder) -> None:
    liba = builder.lib(tmp_path / "pkg/lib/liba.so.1", "a")
    builder.prog(tmp_path / "pkg/bin/tool", links=[liba], runpath="$ORIGIN/../lib")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/tool").symlink_to("../pkg/bin/tool")
    closure, _ = compare(tmp_path / "bin/tool")
    assert not closure.missing
    assert closure.realpath.endswith("pkg/bin/tool")


def test_dotdot_applies_after_symlinks(tmp_path: Path, builder: Builder) -> None:
    builder.lib(tmp_path / "real/private/libdd.so.1", "dd_real")
    builder.lib(tmp_path / "view/private/libdd.so.1", "dd_view")
    (tmp_path / "real/sub").mkdir(parents=True)
    (tmp_path / "view/lib").symlink_to("../real/sub")
    lib = builder.lib(tmp_path / "tmpl/libdd.so.1", "dd_tmpl")
    prog = builder.prog(tmp_path / "prog", links=[lib], runpath="$ORIGIN/view/lib/../private")
    closure, _ = compare(prog)
    assert any(p.endswith("real/private/libdd.so.1") for p in closure.closure)


def test_lib_and_platform_tokens(tmp_path: Path, builder: Builder) -> None:
    libdir = tmp_path / "lib" / TRIPLET
    libt = builder.lib(libdir / "libtok.so.1", "tok")
    prog = builder.prog(tmp_path / "prog", links=[libt], runpath="$ORIGIN/$LIB")
    closure, _ = compare(prog)
    assert not closure.missing
    # $PLATFORM: this CPU's AT_PLATFORM; put the library in every candidate folder
    # name we might compute, and let the loader say which one it takes.
    for platform in ("x86_64", "haswell", "xeon_phi"):
        builder.lib(tmp_path / platform / "libplat.so.1", f"plat_{platform}", soname="libplat.so.1")
    libp = tmp_path / "x86_64/libplat.so.1"
    prog = builder.prog(tmp_path / "prog2", links=[libp], runpath="${ORIGIN}/$PLATFORM")
    compare(prog)


def test_unknown_token_stays_literal(tmp_path: Path, builder: Builder) -> None:
    odd = tmp_path / "$ORIGINAL"
    lib = builder.lib(odd / "libodd.so.1", "odd")
    prog = builder.prog(tmp_path / "prog", links=[lib], runpath="$ORIGINAL")
    # "$ORIGINAL" is not $ORIGIN: a relative folder, so it depends on the cwd
    closure, _ = compare(prog, cwd=tmp_path)
    assert not closure.missing
    closure, _ = compare(prog, cwd=tmp_path / "$ORIGINAL")
    assert closure.missing == ("libodd.so.1",)


def test_library_path_and_empty_element_is_cwd(tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "here/liblp.so.1", "lp")
    prog = builder.prog(tmp_path / "prog", links=[lib])
    closure, _ = compare(prog, library_path=f"{tmp_path}/nowhere:{tmp_path}/here")
    assert how(closure, "liblp.so.1") is How.LD_LIBRARY_PATH
    closure, _ = compare(prog, library_path="/nonexistent:", cwd=tmp_path / "here")
    assert how(closure, "liblp.so.1") is How.LD_LIBRARY_PATH
    closure, _ = compare(prog)
    assert closure.missing == ("liblp.so.1",)


def test_preload_comes_before_the_programs_own_needs(tmp_path: Path, builder: Builder) -> None:
    pre = builder.lib(tmp_path / "libpre.so.1", "pre")
    prog = builder.prog(tmp_path / "prog")
    closure, _ = compare(prog, preload=str(pre))
    assert closure.objects[1].realpath == str(pre)


def test_nodeflib_skips_cache_and_system_dirs(tmp_path: Path, builder: Builder) -> None:
    prog = builder.prog(tmp_path / "prog", flags=["-Wl,-z,nodefaultlib"])
    closure, _truth = compare(prog)
    assert closure.missing == ("libc.so.6",)
    steps = [s.outcome for d in closure.dependencies if d.name == "libc.so.6" for s in d.searched]
    assert any("NODEFLIB" in s for s in steps)


def test_needed_with_a_slash_is_a_path(tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "sub/libslash.so", "slash", soname=None)
    prog = builder.prog(tmp_path / "prog", links=["sub/libslash.so"], cwd=tmp_path)
    closure, _ = compare(prog, cwd=tmp_path)
    assert how(closure, "sub/libslash.so") is How.DIRECT_PATH
    closure, _ = compare(prog, cwd=tmp_path / "sub")
    assert closure.missing == ("sub/libslash.so",)
    (dep,) = [d for d in closure.dependencies if d.name == "sub/libslash.so"]
    assert dep.searched[0].directory == str(tmp_path / "sub" / "sub/libslash.so")  # relative to the cwd
    assert lib.is_file()  # what is missing is the name relative to that cwd, not the library


def test_wrong_class_candidate_is_skipped(tmp_path: Path, builder: Builder) -> None:
    good = builder.lib(tmp_path / "good/libwc.so.1", "wc")
    bad = tmp_path / "bad/libwc.so.1"
    bad.parent.mkdir()
    data = bytearray(good.read_bytes())
    data[4] = 1  # ELFCLASS32
    bad.write_bytes(bytes(data))
    prog = builder.prog(tmp_path / "prog", links=[good], runpath=f"{tmp_path}/bad:{tmp_path}/good")
    closure, _ = compare(prog)
    assert any(p.endswith("good/libwc.so.1") for p in closure.closure)


def test_wrong_machine_candidate_is_skipped(tmp_path: Path, builder: Builder) -> None:
    need_tool("aarch64-linux-gnu-gcc")
    Builder("aarch64-linux-gnu-gcc").lib(tmp_path / "arm/libwm.so.1", "wm")
    good = builder.lib(tmp_path / "good/libwm.so.1", "wm")
    prog = builder.prog(tmp_path / "prog", links=[good], runpath=f"{tmp_path}/arm:{tmp_path}/good")
    closure, _ = compare(prog)
    assert any(p.endswith("good/libwm.so.1") for p in closure.closure)


def test_a_non_elf_candidate_stops_the_search(tmp_path: Path, builder: Builder) -> None:
    good = builder.lib(tmp_path / "good/libne.so.1", "ne")
    (tmp_path / "text").mkdir()
    (tmp_path / "text/libne.so.1").write_text("INPUT(-lc)\n")
    prog = builder.prog(tmp_path / "prog", links=[good], runpath=f"{tmp_path}/text:{tmp_path}/good")
    truth = loader_truth(str(prog))
    assert truth.failed
    (closure,) = minify.analyze([str(prog)]).programs
    assert closure.error is not None and "text/libne.so.1" in closure.error


def test_a_directory_candidate_stops_the_search(tmp_path: Path, builder: Builder) -> None:
    good = builder.lib(tmp_path / "good/libdir.so.1", "dir")
    (tmp_path / "dir/libdir.so.1").mkdir(parents=True)
    prog = builder.prog(tmp_path / "prog", links=[good], runpath=f"{tmp_path}/dir:{tmp_path}/good")
    truth = loader_truth(str(prog))
    assert truth.failed
    (closure,) = minify.analyze([str(prog)]).programs
    assert closure.error is not None and "directory" in closure.error


def test_same_file_under_two_names_is_one_object(tmp_path: Path, builder: Builder) -> None:
    one = builder.lib(tmp_path / "libone.so.1", "one", soname=None)
    two = builder.lib(tmp_path / "build/libtwo.so.1", "two", soname=None)
    prog = builder.prog(tmp_path / "prog", links=["./libone.so.1", "build/libtwo.so.1"], cwd=tmp_path)
    shutil.rmtree(tmp_path / "build")
    (tmp_path / "build").mkdir()
    os.link(one, tmp_path / "build/libtwo.so.1")
    closure, _ = compare(prog, cwd=tmp_path)
    assert how(closure, "build/libtwo.so.1") is How.SAME_FILE
    assert [o.realpath for o in closure.objects].count(str(one)) == 1  # one object for both names
    assert str(two) not in {o.realpath for o in closure.objects}


def test_filter_and_auxiliary_filtees(tmp_path: Path, builder: Builder) -> None:
    builder.lib(tmp_path / "libfiltee.so.1", "filtee")
    filt = builder.lib(
        tmp_path / "libfilter.so.1",
        "filter",
        flags=["-Wl,--filter=libfiltee.so.1", "-Wl,--auxiliary=libaux-missing.so.1"],
        runpath="$ORIGIN",
    )
    prog = builder.prog(tmp_path / "prog", links=[filt], runpath="$ORIGIN")
    truth = loader_truth(str(prog))
    # The trace lists the missing auxiliary filtee as "not found", yet the program runs:
    # a missing DT_AUXILIARY is not an error (elf/dl-deps.c), so minify does not call it missing.
    assert truth.missing == {"libaux-missing.so.1"}
    assert run([str(prog)]).stdout == "prog ran\n"
    (closure,) = minify.analyze([str(prog)]).programs
    assert set(closure.closure) == truth.closure
    assert closure.missing == ()
    assert any("auxiliary filtee libaux-missing.so.1" in n for n in closure.notes)


def test_glibc_hwcaps_subfolder_is_preferred_on_this_cpu(tmp_path: Path, builder: Builder) -> None:
    base = builder.lib(tmp_path / "lib/libhw.so.1", "hw")
    builder.lib(tmp_path / "lib/glibc-hwcaps/x86-64-v2/libhw.so.1", "hw_v2", soname="libhw.so.1")
    prog = builder.prog(tmp_path / "prog", links=[base], runpath=f"{tmp_path}/lib")
    closure, _truth = compare(prog)
    cpu = Path("/proc/cpuinfo").read_text()
    if "sse4_2" in cpu and "popcnt" in cpu:
        assert any("glibc-hwcaps/x86-64-v2" in p for p in closure.closure)
    (baseline,) = minify.analyze([str(prog)], hwcaps="baseline").programs
    assert any(p == str(base) for p in baseline.closure)


def test_legacy_tls_subfolder_on_glibc_2_36(tmp_path: Path, builder: Builder) -> None:
    base = builder.lib(tmp_path / "lib/libtls.so.1", "tls")
    builder.lib(tmp_path / "lib/tls/libtls.so.1", "tls_tls", soname="libtls.so.1")
    prog = builder.prog(tmp_path / "prog", links=[base], runpath=f"{tmp_path}/lib")
    compare(prog)


def test_version_requirement_not_met(tmp_path: Path, builder: Builder) -> None:
    lib = tmp_path / "libver.so.1"
    builder.lib(lib, "ver", src="versioned.c", flags=["-DWITH_V2", f"-Wl,--version-script={FIX}/v2.map"])
    prog = builder.prog(tmp_path / "prog", src="usever.c", links=[lib], runpath="$ORIGIN")
    (ok,) = minify.analyze([str(prog)]).programs
    assert ok.version_errors == ()
    builder.lib(lib, "ver", src="versioned.c", flags=[f"-Wl,--version-script={FIX}/v1.map"])
    truth = loader_truth(str(prog))
    assert "VER_2" in truth.output and "not found" in truth.output
    (bad,) = minify.analyze([str(prog)]).programs
    assert len(bad.version_errors) == 1 and "VER_2" in bad.version_errors[0]


def test_musl_program(tmp_path: Path, builder: Builder) -> None:
    need_tool("musl-gcc")
    musl = Builder("musl-gcc")
    lib = musl.lib(tmp_path / "lib/libm1.so", "m1")
    prog = musl.prog(tmp_path / "prog", links=[lib], rpath="$ORIGIN/lib")
    closure, _truth = compare(prog)
    assert closure.loader == "musl"
    assert closure.interpreter == "/lib/ld-musl-x86_64.so.1"
    hello = musl.prog(tmp_path / "hello", src="hello.c")
    closure, _ = compare(hello)
    assert len(closure.closure) == 2


def test_aarch64_sysroot(tmp_path: Path) -> None:
    need_tool("aarch64-linux-gnu-gcc", "qemu-aarch64-static")
    cross = Builder("aarch64-linux-gnu-gcc")
    root = tmp_path / "root"
    shutil.copytree("/usr/aarch64-linux-gnu/lib", root / "lib", symlinks=True)
    prog = cross.prog(root / "hello", src="hello.c")
    truth = loader_truth("/hello", qemu=str(root))
    assert "libc.so.6" in truth.output
    analysis = minify.analyze(["/hello"], root=str(root))
    (closure,) = analysis.programs
    assert closure.machine == "aarch64"
    assert set(closure.closure) == truth.closure, truth.output
    assert closure.interpreter == "/lib/ld-linux-aarch64.so.1" and closure.loader == "glibc"
    assert str(prog).endswith("/hello")


FIX = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.mark.parametrize("name", ["ls", "python3", "gdb", "git"])
def test_real_programs_of_this_machine(name: str) -> None:
    need_tool(name)
    path = shutil.which(name)
    assert path is not None
    compare(path)


def test_musl_inherits_runpath(tmp_path: Path) -> None:
    need_tool("musl-gcc")
    musl = Builder("musl-gcc")
    deep = musl.lib(tmp_path / "private/libdeep.so.1", "deep")
    mid = musl.lib(tmp_path / "lib/libmid.so.1", "mid", links=[deep])
    prog = musl.prog(tmp_path / "prog", links=[mid], runpath=f"{tmp_path}/lib:{tmp_path}/private")
    # glibc would not find libdeep (RUNPATH is not inherited); musl does
    closure, _ = compare(prog)
    assert closure.loader == "musl" and not closure.missing
    assert any(p.endswith("private/libdeep.so.1") for p in closure.closure)


def test_reuse_by_soname_glibc_versus_by_name_musl(tmp_path: Path, builder: Builder) -> None:
    """NEEDED liby.so.1 then libx.so.1, where the file liby.so.1 says DT_SONAME libx.so.1:
    glibc reuses it for libx.so.1 (one object); musl matches names only (two)."""
    need_tool("musl-gcc")
    for cc, kind in ((builder, "glibc"), (Builder("musl-gcc"), "musl")):
        d = tmp_path / kind
        liby = cc.lib(d / "liby.so.1", "y")
        libx = cc.lib(d / "libx.so.1", "x")
        prog = cc.prog(d / "prog", links=[liby, libx], runpath="$ORIGIN")
        cc.lib(liby, "y", soname="libx.so.1")  # swap in a file that claims the other soname
        closure, _ = compare(prog)
        names = {p.rsplit("/", 1)[1] for p in closure.closure}
        if kind == "glibc":
            assert "libx.so.1" not in names and how(closure, "libx.so.1") is How.ALREADY_LOADED
        else:
            assert {"liby.so.1", "libx.so.1"} <= names
