"""minify verify: what `ldd -r` reports, statically, on real fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from minify.analysis.verify import verify
from minify.build.options import RootfsOptions
from minify.build.pipeline import build
from tests.conftest import Builder, host_libc_into

MINIFY = [sys.executable, "-m", "minify.cli"]


def test_a_symbol_the_libraries_do_not_define(tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "lib/libsym.so.1", "sym", src="sym.c", flags=["-DWITH_B"])
    prog = builder.prog(tmp_path / "prog", src="usesym.c", links=[lib], runpath="$ORIGIN/lib")
    out = tmp_path / "out"
    build(RootfsOptions(paths=(str(prog),), output=str(out)))
    assert verify(str(out)).ok
    # swap in a build of the library without sym_b, in the image
    image_lib = out / f"rootfs{tmp_path}/lib/libsym.so.1"
    builder.lib(image_lib, "sym", src="sym.c")
    report = verify(str(out))
    assert [(p.path, p.kind, p.detail) for p in report.problems] == [
        (str(prog), "undefined-symbol", "undefined symbol: sym_b")
    ]
    # the loader agrees, on the host with the same swap
    builder.lib(lib, "sym", src="sym.c")
    run = subprocess.run([str(prog)], capture_output=True, text=True, env={"LD_BIND_NOW": "1"})
    assert run.returncode != 0 and "undefined symbol: sym_b" in run.stderr
    cli = subprocess.run([*MINIFY, "verify", str(out)], capture_output=True, text=True)
    assert cli.returncode == 1
    assert f"{prog}: undefined symbol: sym_b" in cli.stdout


def test_a_symbol_the_source_lacks_too_is_a_warning(tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "lib/libsym.so.1", "sym", src="sym.c", flags=["-DWITH_B"])
    prog = builder.prog(tmp_path / "prog", src="usesym.c", links=[lib], runpath="$ORIGIN/lib")
    builder.lib(lib, "sym", src="sym.c")
    proc = subprocess.run([*MINIFY, "rootfs", str(prog), "-o", str(tmp_path / "out")], capture_output=True, text=True)
    # the source has the same problem: minify is no stricter than it (a warning)
    assert proc.returncode == 0, proc.stderr
    assert "undefined symbol: sym_b (in the source root too)" in proc.stderr
    check = subprocess.run([*MINIFY, "verify", str(tmp_path / "out")], capture_output=True, text=True)
    assert check.returncode == 1 and "undefined symbol: sym_b" in check.stdout
    # what the image loses stays an error: test_rootfs.py's map that breaks $ORIGIN


def test_versioned_symbols_are_matched_by_version(tmp_path: Path, builder: Builder) -> None:
    fix = Path(__file__).resolve().parent.parent / "fixtures"
    lib = tmp_path / "libver.so.1"
    builder.lib(lib, "ver", src="versioned.c", flags=["-DWITH_V2", f"-Wl,--version-script={fix}/v2.map"])
    prog = builder.prog(tmp_path / "prog", src="usever.c", links=[lib], runpath="$ORIGIN")
    out = tmp_path / "out"
    build(RootfsOptions(paths=(str(prog),), output=str(out)))
    assert verify(str(out)).ok
    # a build whose version script has no VER_2: the reference asks for ver_new@VER_2
    builder.lib(
        out / f"rootfs{lib}", "ver", src="versioned.c", flags=["-DWITH_V2", f"-Wl,--version-script={fix}/v1.map"]
    )
    report = verify(str(out))
    kinds = {p.kind for p in report.problems}
    assert "version" in kinds


def test_a_real_program_rootfs_verifies_clean(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(RootfsOptions(paths=(os.path.realpath("/usr/bin/python3"),), output=str(out)))
    report = verify(str(out / "rootfs"))
    assert report.ok, report.problems
    assert len(report.checked) >= 5


def test_a_loaded_library_is_checked_in_its_program_and_a_plugin_in_a_program_s_scope(
    tmp_path: Path, builder: Builder
) -> None:
    """A library the program loads is checked as the loader loads it: its dependency
    is found through the program's RUNPATH (its own search alone finds nothing), so
    that is no problem. Libraries no program loads are plugins, checked in the scope
    of the program plus their own closure: one that uses the program's symbols is
    clean, one that uses a symbol nobody defines is named."""
    root = tmp_path / "root"
    host_libc_into(root)
    dep = builder.lib(root / "app/lib/dep/libdep.so", "dep")
    priv = builder.lib(root / "app/lib/libpriv.so", "priv", links=[dep])
    sym = builder.lib(root / "app/lib/libsym.so", "sym", src="sym.c", flags=["-DWITH_B"])
    builder.prog(root / "app/prog", links=[priv, dep, sym], runpath="$ORIGIN/lib:$ORIGIN/lib/dep")
    builder.lib(root / "app/plugins/libplug.so", "plug", src="usesym.c")
    builder.lib(root / "app/plugins/libbad.so", "bad", src="usesym.c", flags=["-Dsym_b=nowhere_b"])
    report = verify(str(root))
    assert "/app/lib/libpriv.so" in report.checked and "/app/plugins/libplug.so" in report.checked
    assert [(p.path, p.kind, p.detail) for p in report.problems] == [
        ("/app/plugins/libbad.so", "undefined-symbol", "undefined symbol: nowhere_b")
    ]
