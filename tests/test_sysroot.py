"""A target root that is not the host: its own ld.so.cache (made by ldconfig -r) and
/etc/ld.so.preload, judged by the loader running inside a chroot of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import minify
from minify.loader.model import How
from tests.conftest import HOST_LDSO, HOST_LIBDIR, Builder, host_libc_into, loader_truth, need_tool

LIBDIR = HOST_LIBDIR.lstrip("/")
LDSO = HOST_LDSO


@pytest.fixture()
def sysroot(tmp_path: Path, builder: Builder) -> Path:
    need_tool("chroot")
    root = tmp_path / "root"
    host_libc_into(root)
    (root / "etc").mkdir()
    lib = builder.lib(root / "opt/lib/libcache.so.1", "cache")
    builder.prog(root / "bin/prog", links=[lib])
    (root / "etc/ld.so.conf").write_text("/opt/lib\n")
    subprocess.run(["/sbin/ldconfig", "-r", str(root)], check=True)
    assert (root / "etc/ld.so.cache").is_file()
    return root


def test_cache_of_the_root_is_used(sysroot: Path) -> None:
    truth = loader_truth("/bin/prog", chroot=str(sysroot))
    (program,) = minify.analyze(["/bin/prog"], root=str(sysroot)).programs
    assert program.ok, program
    assert set(program.closure) == truth.closure | {f"/{LIBDIR}/{LDSO}"}, truth.output
    hows = {d.name: d.how for d in program.dependencies}
    assert hows["libcache.so.1"] is How.LD_CACHE


def test_ld_so_preload_of_the_root(sysroot: Path, builder: Builder) -> None:
    builder.lib(sysroot / "opt/lib/libpre.so.1", "pre")
    (sysroot / "etc/ld.so.preload").write_text("/opt/lib/libpre.so.1\n")
    truth = loader_truth("/bin/prog", chroot=str(sysroot))
    assert "/opt/lib/libpre.so.1" in truth.closure
    (program,) = minify.analyze(["/bin/prog"], root=str(sysroot)).programs
    assert set(program.closure) == truth.closure | {f"/{LIBDIR}/{LDSO}"}
    assert any("ld.so.preload" in n for n in program.notes)


def test_without_a_cache_ld_so_conf_is_not_read(sysroot: Path) -> None:
    """The loader never reads ld.so.conf: without a cache, the library only it lists is
    missing for minify as for the loader, and the trail names the file and the command
    that would write the cache."""
    (sysroot / "etc/ld.so.cache").unlink()
    truth = loader_truth("/bin/prog", chroot=str(sysroot))
    assert truth.missing == {"libcache.so.1"}
    (program,) = minify.analyze(["/bin/prog"], root=str(sysroot)).programs
    assert set(program.missing) == truth.missing
    assert any("ld.so.conf but no ld.so.cache" in n and "ldconfig -r ROOT" in n for n in program.notes)
    (trail,) = [d for d in program.dependencies if d.name == "libcache.so.1"]
    assert any(s.directory == "/opt/lib/libcache.so.1" and "ldconfig -r ROOT" in s.outcome for s in trail.searched)
