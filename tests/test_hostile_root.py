"""A hostile --root: absolute and `..` symlinks pointing out of it, symlink loops, a
library that is a symlink to /etc/shadow. minify must never read or write outside the
root and OUT; strace is the witness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import minify
from minify.root import Root
from tests.conftest import (
    HOST_INTERP,
    HOST_LDSO,
    HOST_LIBDIR,
    Builder,
    host_libc_into,
    strace_minify,
    syscalls,
    written_paths,
)

LIBDIR = HOST_LIBDIR.lstrip("/")
LDSO = HOST_LDSO


@pytest.fixture()
def hostile_root(tmp_path: Path, builder: Builder) -> Path:
    root = tmp_path / "root"
    # `..` far past the top: inside the root it stops at the root
    host_libc_into(root, interp_link="../../../../../../../../" + LIBDIR + "/" + LDSO)
    (root / "bin").mkdir()
    (root / "etc").mkdir()
    evil = builder.lib(tmp_path / "build/libevil.so.1", "evil")
    loop = builder.lib(tmp_path / "build/libloop.so.1", "loop")
    esc = builder.lib(tmp_path / "build/libesc.so.1", "esc")
    (root / LIBDIR / "libevil.so.1").symlink_to("/etc/shadow")
    (root / LIBDIR / "libloop.so.1").symlink_to("libloop.so.1")
    (root / LIBDIR / "libesc.so.1").symlink_to("../../../../../../../" + str(esc))
    builder.prog(root / "bin/evil", links=[evil])
    builder.prog(root / "bin/loop", links=[loop])
    builder.prog(root / "bin/esc", links=[esc])
    builder.prog(root / "bin/hello", src="hello.c")
    return root


def test_paths_never_leave_the_root(hostile_root: Path) -> None:
    view = Root(str(hostile_root))
    assert view.realpath(HOST_INTERP) == f"/{LIBDIR}/{LDSO}"
    assert view.realpath(f"/{LIBDIR}/libevil.so.1") == "/etc/shadow"
    assert not view.resolve(f"/{LIBDIR}/libevil.so.1").exists
    assert view.realpath("/../../../../etc") == "/etc"


def test_symlink_to_etc_shadow_is_a_missing_library(hostile_root: Path) -> None:
    (program,) = minify.analyze(["/bin/evil"], root=str(hostile_root)).programs
    assert program.missing == ("libevil.so.1",)
    (clean,) = minify.analyze(["/bin/hello"], root=str(hostile_root)).programs
    assert clean.ok and clean.closure == tuple(sorted(("/bin/hello", f"/{LIBDIR}/{LDSO}", f"/{LIBDIR}/libc.so.6")))


def test_dotdot_escape_is_clamped_at_the_root(hostile_root: Path) -> None:
    (program,) = minify.analyze(["/bin/esc"], root=str(hostile_root)).programs
    assert program.missing == ("libesc.so.1",)  # the real one is outside the root


def test_symlink_loop_is_one_error(hostile_root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "minify.cli", "analyze", "--root", str(hostile_root), "/bin/loop"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "symbolic links" in proc.stderr and "Traceback" not in proc.stderr


def _traced(args: list[str], log: Path) -> subprocess.CompletedProcess[str]:
    return strace_minify(args, log)


def test_strace_shows_no_read_outside_root(hostile_root: Path, tmp_path: Path) -> None:
    log = tmp_path / "trace"
    proc = _traced(["analyze", "--root", str(hostile_root), "/bin/evil", "/bin/esc", "/bin/hello"], log)
    assert proc.returncode == 1, proc.stderr
    looked_at = {path for _, paths in syscalls(log) for path in paths}
    assert looked_at, "strace saw nothing"
    assert "/etc/shadow" not in looked_at
    assert str(tmp_path / "build/libesc.so.1") not in looked_at
    assert str(hostile_root / "etc/shadow") in looked_at  # where the symlink really leads


def test_rootfs_of_hostile_inputs_reads_nothing_outside_the_root(hostile_root: Path, tmp_path: Path) -> None:
    log = tmp_path / "trace"
    proc = _traced(["rootfs", "--root", str(hostile_root), "/bin/evil", "/bin/esc", "-o", str(tmp_path / "o")], log)
    assert proc.returncode == 1, proc.stderr
    looked_at = {path for _, paths in syscalls(log) for path in paths}
    assert str(hostile_root / "bin/evil") in looked_at
    assert "/etc/shadow" not in looked_at
    assert str(tmp_path / "build/libesc.so.1") not in looked_at


def test_rootfs_of_a_hostile_root_writes_only_out(hostile_root: Path, tmp_path: Path) -> None:
    """OUT's folder, and minify's own cache folder ($XDG_CACHE_HOME/minify), nothing else."""
    out = tmp_path / "work/out"
    out.parent.mkdir()
    log = tmp_path / "trace"
    cache = tmp_path / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    proc = strace_minify(["rootfs", "--root", str(hostile_root), "/bin/hello", "-o", str(out)], log, env=env)
    assert proc.returncode == 0, proc.stderr
    written = written_paths(log)
    assert written, "strace saw no writes at all"
    allowed = (str(out.parent) + "/", str(cache))  # XDG_CACHE_HOME is made if need be
    outside = sorted(p for p in written if not p.startswith(allowed) and "__pycache__" not in p)
    assert outside == []
    assert any(p.startswith(str(cache / "minify") + "/") for p in written), "the cache was not written"
    assert (out / "rootfs/bin/hello").is_file()
    assert not (out / "rootfs/etc").exists()
