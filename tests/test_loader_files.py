"""The loader's cache in the image (issue 19): libraries that only ld.so.cache finds
(``/usr/local/lib``, a folder of ``ld.so.conf.d``) load from the rootfs, ``ldconfig -p``
lists exactly the shipped libraries, and ``ctypes.util.find_library`` finds them."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from minify.loader import ldcache
from tests.conftest import Builder, chroot_run, cli, host_libc_into, need_tool


def _cache_listing(cache: Path) -> set[tuple[str, str]]:
    """(name, path) of every entry, as glibc's own ldconfig reads the file."""
    out = subprocess.run(["/sbin/ldconfig", "-p", "-C", str(cache)], capture_output=True, text=True, check=True)
    pairs = set()
    for line in out.stdout.splitlines()[1:]:
        if " => " in line:
            left, path = line.rsplit(" => ", 1)
            pairs.add((left.split()[0], path.strip()))
    return pairs


@pytest.fixture()
def local_root(tmp_path: Path, builder: Builder) -> Path:
    """A root whose program needs one library in /usr/local/lib and one in a folder
    that only /etc/ld.so.conf.d names; its cache made by ldconfig -r, as on a system
    after `make install && ldconfig`. An unrelated library is in the cache too."""
    need_tool("chroot", "unshare")
    root = tmp_path / "root"
    host_libc_into(root)
    local = builder.lib(root / "usr/local/lib/liblocal.so.1", "local")
    conf = builder.lib(root / "opt/vendor/lib/libvendor.so.1", "vendor")
    builder.lib(root / "opt/vendor/lib/libunused.so.1", "unused")
    builder.prog(root / "usr/bin/prog", links=[local, conf])
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/local.conf").write_text("/usr/local/lib\n")
    (root / "etc/ld.so.conf.d/vendor.conf").write_text("/opt/vendor/lib\n")
    subprocess.run(["/sbin/ldconfig", "-r", str(root)], check=True)
    return root


def test_libraries_only_the_cache_finds_load_from_the_image(local_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("rootfs", "/usr/bin/prog", "--root", str(local_root), "-o", str(out))
    assert result.returncode == 0, result.stderr
    rootfs = out / "rootfs"
    # the loader itself, in a chroot of the image, finds both libraries through the cache
    ran = chroot_run(rootfs, "/usr/bin/prog")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "prog ran\n"
    listed = _cache_listing(rootfs / "etc/ld.so.cache")
    source = _cache_listing(local_root / "etc/ld.so.cache")
    shipped = {(n, p) for n, p in source if (rootfs / p.lstrip("/")).exists()}
    assert listed == shipped
    assert ("liblocal.so.1", "/usr/local/lib/liblocal.so.1") in listed
    assert ("libvendor.so.1", "/opt/vendor/lib/libvendor.so.1") in listed
    assert not any(n == "libunused.so.1" for n, _ in listed)
    conf = (rootfs / "etc/ld.so.conf").read_text().splitlines()
    assert [line for line in conf if not line.startswith("#")] == ["/usr/local/lib", "/opt/vendor/lib"]
    # the same inputs give the same bytes
    again = tmp_path / "again"
    assert cli("rootfs", "/usr/bin/prog", "--root", str(local_root), "-o", str(again)).returncode == 0
    assert (again / "rootfs/etc/ld.so.cache").read_bytes() == (rootfs / "etc/ld.so.cache").read_bytes()
    # and without it, the loader does not find them: the cache is what makes it run
    (again / "rootfs/etc/ld.so.cache").unlink()
    failed = chroot_run(again / "rootfs", "/usr/bin/prog")
    assert failed.returncode == 127 and "liblocal.so.1" in failed.stderr


def test_the_written_cache_reads_back_with_its_hwcaps_entries() -> None:
    """A cache with glibc-hwcaps entries (of two subfolders, one dropped) keeps the
    entries, their order and the subfolder names, as ldconfig and minify read them."""
    ext = ldcache.HWCAP_EXTENSION
    entries = (
        ldcache.CacheEntry(0x303, "libz.so.1", "/usr/lib/glibc-hwcaps/x86-64-v3/libz.so.1", ext | 1, "x86-64-v3"),
        ldcache.CacheEntry(0x303, "libz.so.1", "/usr/lib/libz.so.1", 0),
        ldcache.CacheEntry(0x303, "liba.so.1", "/usr/lib/glibc-hwcaps/x86-64-v2/liba.so.1", ext, "x86-64-v2"),
    )
    for big in (False, True):
        data = ldcache.write(entries, big_endian=big)
        back = ldcache.parse(data)
        assert back.big_endian is big
        assert [(e.name, e.path, e.hwcaps_subdir) for e in back.entries] == [
            (e.name, e.path, e.hwcaps_subdir) for e in entries
        ]
        assert back.lookup("libz.so.1", (0x303,), ("x86-64-v3",)) == entries[0].path
        assert back.lookup("libz.so.1", (0x303,), ()) == "/usr/lib/libz.so.1"


def test_ldconfig_reads_the_written_hwcaps_cache(tmp_path: Path) -> None:
    ext = ldcache.HWCAP_EXTENSION
    entries = (
        ldcache.CacheEntry(0x303, "libz.so.1", "/usr/lib/glibc-hwcaps/x86-64-v3/libz.so.1", ext, "x86-64-v3"),
        ldcache.CacheEntry(0x303, "libz.so.1", "/usr/lib/libz.so.1", 0),
    )
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(ldcache.write(entries, big_endian=False))
    out = subprocess.run(["/sbin/ldconfig", "-p", "-C", str(cache)], capture_output=True, text=True, check=True)
    assert "2 libs found" in out.stdout
    assert 'hwcap: "x86-64-v3"' in out.stdout, out.stdout


def test_find_library_inside_a_python_image(tmp_path: Path) -> None:
    """python3's ctypes.util.find_library runs `ldconfig -p`, which reads the cache: in
    the image it finds libz (which python3 loads) as on this machine. The trace brings
    ldconfig and the standard library; without the image's cache it finds nothing."""
    need_tool("python3", "strace")
    job = "import ctypes.util; print(ctypes.util.find_library('z'))"
    host = subprocess.run(["python3", "-c", job], capture_output=True, text=True, check=True).stdout
    assert host.strip().startswith("libz.so"), host
    out = tmp_path / "out"
    result = cli("rootfs", "/usr/bin/python3", "-o", str(out), "--trace", f"/usr/bin/python3 -c {job!r}")
    assert result.returncode == 0, result.stderr
    ran = chroot_run(out / "rootfs", "/usr/bin/python3", "-c", job)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == host
    (out / "rootfs/etc/ld.so.cache").unlink()
    without = chroot_run(out / "rootfs", "/usr/bin/python3", "-c", job)
    assert without.stdout.strip() == "None"


#: The aarch64 ldconfig that the test command downloads (libc-bin:arm64).
ARM_LDCONFIG = Path(__file__).resolve().parent.parent / ".cache/libc-bin/arm64/sbin/ldconfig"


def _arm_listing(cache: Path) -> set[tuple[str, str]]:
    out = subprocess.run(
        ["qemu-aarch64-static", str(ARM_LDCONFIG), "-p", "-C", str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {(line.split()[0], line.rsplit(" => ", 1)[1].strip()) for line in out.stdout.splitlines() if " => " in line}


def test_an_aarch64_sysroot_gets_its_own_cache(tmp_path: Path) -> None:
    """A sysroot of another architecture, its cache made by its own ldconfig (under
    qemu): the image's cache is written for aarch64, lists exactly the shipped
    libraries, and the aarch64 loader finds the /usr/local/lib library through it."""
    need_tool("aarch64-linux-gnu-gcc", "qemu-aarch64-static")
    if not ARM_LDCONFIG.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{ARM_LDCONFIG} is missing: the test command downloads it")
        pytest.skip(f"{ARM_LDCONFIG} is missing: run tests/run.sh once")
    cross = Builder("aarch64-linux-gnu-gcc")
    root = tmp_path / "root"
    shutil.copytree("/usr/aarch64-linux-gnu/lib", root / "lib", symlinks=True)
    local = cross.lib(root / "usr/local/lib/liblocal.so.1", "local")
    cross.prog(root / "prog", links=[local])
    (root / "etc").mkdir()
    (root / "etc/ld.so.conf").write_text("/usr/local/lib\n")
    subprocess.run(["qemu-aarch64-static", str(ARM_LDCONFIG), "-r", str(root)], check=True)
    source = _arm_listing(root / "etc/ld.so.cache")
    assert ("liblocal.so.1", "/usr/local/lib/liblocal.so.1") in source
    out = tmp_path / "out"
    result = cli("rootfs", "/prog", "--root", str(root), "-o", str(out))
    assert result.returncode == 0, result.stderr
    rootfs = out / "rootfs"
    cache = rootfs / "etc/ld.so.cache"
    listed = _arm_listing(cache)
    assert listed == {(n, p) for n, p in source if (rootfs / p.lstrip("/")).exists()}
    assert ("liblocal.so.1", "/usr/local/lib/liblocal.so.1") in listed
    assert ldcache.parse(cache.read_bytes()).entries[0].flags == 0xA03  # libc6, AArch64
    qemu = ["qemu-aarch64-static", "-L", str(rootfs), str(rootfs / "prog")]
    ran = subprocess.run(qemu, capture_output=True, text=True, timeout=60)
    assert (ran.returncode, ran.stdout) == (0, "prog ran\n"), ran.stderr
    cache.unlink()  # qemu then gives the loader this machine's cache, which has no aarch64 entry
    failed = subprocess.run(qemu, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 127 and "liblocal.so.1" in failed.stderr


def test_a_musl_image_gets_the_roots_search_path_file(tmp_path: Path) -> None:
    """musl reads <prefix>/etc/ld-musl-ARCH.path instead of its default path: the image
    gets the root's file with the folders it has, and the program loads through it."""
    need_tool("musl-gcc", "chroot", "unshare")
    musl = Builder("musl-gcc")
    root = tmp_path / "root"
    loader = Path("/lib/ld-musl-x86_64.so.1")
    if not loader.exists():
        pytest.fail(f"{loader} is missing: the test command installs musl-tools")
    (root / "lib").mkdir(parents=True)
    shutil.copy(loader.resolve(), root / "lib" / loader.name)
    lib = musl.lib(root / "opt/musl/lib/libmp.so.1", "mp")
    musl.prog(root / "bin/prog", links=[lib])
    (root / "etc").mkdir()
    path_file = root / "etc/ld-musl-x86_64.path"
    path_file.write_text("/lib\n/opt/musl/lib\n/no/such/folder\n")
    out = tmp_path / "out"
    result = cli("rootfs", "/bin/prog", "--root", str(root), "-o", str(out))
    assert result.returncode == 0, result.stderr
    rootfs = out / "rootfs"
    assert (rootfs / "etc/ld-musl-x86_64.path").read_text() == "/lib\n/opt/musl/lib\n"
    ran = chroot_run(rootfs, "/bin/prog")
    assert (ran.returncode, ran.stdout) == (0, "prog ran\n"), ran.stderr
    (rootfs / "etc/ld-musl-x86_64.path").unlink()
    failed = chroot_run(rootfs, "/bin/prog")
    assert failed.returncode != 0 and "libmp.so.1" in failed.stderr
