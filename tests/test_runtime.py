"""What the static closure cannot see: each fixture fails in its exact-closure image,
the hint names the preset, and `--with auto` makes it work (chroot and podman)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HOST_INTERP, HOST_LIBC, Builder, Podman, chroot_run, cli, host_libc_into, image_from

CASES = [
    ("getpwnam.c", "nss", "nonroot 65532 /home/nonroot\n"),
    ("getaddrinfo.c", "nss", "localhost resolved\n"),
    ("iconv.c", "gconv", "café\n"),
    ("localtime.c", "tzdata", "01:00 CET\n"),
    ("cancel.c", "libgcc_s", "cancelled\n"),
    ("setlocale.c", "locale", "C.UTF-8\n"),
]


def build_fixture(builder: Builder, tmp_path: Path, src: str) -> Path:
    name = src.split(".", maxsplit=1)[0]
    flags = ["-pthread"] if name == "cancel" else []
    return builder.prog(tmp_path / name, src=f"runtime/{src}", flags=flags)


@pytest.mark.parametrize(("src", "preset", "expected"), CASES)
def test_fails_without_its_preset_and_works_with_auto(
    tmp_path: Path, builder: Builder, src: str, preset: str, expected: str
) -> None:
    prog = build_fixture(builder, tmp_path, src)
    bare = cli("rootfs", str(prog), "-o", str(tmp_path / "bare"))
    assert bare.returncode == 0, bare.stderr
    assert f"add --with {preset}" in bare.stderr
    failed = chroot_run(tmp_path / "bare/rootfs", str(prog))
    assert failed.returncode != 0 or failed.stdout != expected
    auto = cli("rootfs", str(prog), "-o", str(tmp_path / "auto"), "--with", "auto")
    assert auto.returncode == 0, auto.stderr
    worked = chroot_run(tmp_path / "auto/rootfs", str(prog))
    assert (worked.returncode, worked.stdout) == (0, expected), worked.stderr


@pytest.mark.podman
@pytest.mark.parametrize(
    ("src", "expected"), [("getpwnam.c", CASES[0][2]), ("iconv.c", "café\n"), ("localtime.c", "01:00 CET\n")]
)
def test_with_auto_in_podman(podman: Podman, tmp_path: Path, builder: Builder, src: str, expected: str) -> None:
    prog = build_fixture(builder, tmp_path, src)
    assert cli("rootfs", str(prog), "-o", str(tmp_path / "out"), "--with", "auto").returncode == 0
    assert podman("run", "--rm", image_from(podman, tmp_path / "out")).stdout == expected


def test_cxx_throw_across_threads_needs_no_preset(tmp_path: Path, builder: Builder) -> None:
    # libstdc++ needs libgcc_s.so.1 itself on Debian, so the exact closure already has it
    prog = builder.prog(tmp_path / "throw", src="runtime/throw.cc", flags=["-pthread"])
    proc = cli("rootfs", str(prog), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0
    assert "--with libgcc_s" not in proc.stderr
    run = chroot_run(tmp_path / "out/rootfs", str(prog))
    assert (run.returncode, run.stdout) == (0, "thrown on a thread\n")


def test_tz_and_gconv_subsets(tmp_path: Path, builder: Builder) -> None:
    tz = build_fixture(builder, tmp_path, "localtime.c")
    proc = cli("rootfs", str(tz), "-o", str(tmp_path / "tz"), "--with", "tzdata", "--tz", "Europe/Paris,UTC")
    assert proc.returncode == 0, proc.stderr
    zones = tmp_path / "tz/rootfs/usr/share/zoneinfo"
    # UTC is a symlink to Etc/UTC in Debian's tzdata: the chain comes along
    assert sorted(p.name for p in zones.iterdir()) == ["Etc", "Europe", "UTC"]
    assert chroot_run(tmp_path / "tz/rootfs", str(tz)).stdout == "01:00 CET\n"
    ic = build_fixture(builder, tmp_path, "iconv.c")
    proc = cli("rootfs", str(ic), "-o", str(tmp_path / "ic"), "--with", "gconv", "--gconv", "ISO-8859-1")
    assert proc.returncode == 0, proc.stderr
    lock = json.loads((tmp_path / "ic/minify.lock.json").read_text())
    modules = sorted(
        e["path"].rsplit("/", 1)[1] for e in lock["entries"] if e["path"].endswith(".so") and "/gconv/" in e["path"]
    )
    assert modules == ["ISO8859-1.so"]
    assert chroot_run(tmp_path / "ic/rootfs", str(ic)).stdout == "café\n"
    bad = cli("rootfs", str(ic), "-o", str(tmp_path / "x"), "--with", "gconv", "--gconv", "KLINGON")
    assert bad.returncode == 1 and "KLINGON" in bad.stderr


def test_user_nonroot_tmp_and_certs(tmp_path: Path, builder: Builder) -> None:
    prog = build_fixture(builder, tmp_path, "getpwnam.c")
    proc = cli("rootfs", str(prog), "-o", str(tmp_path / "out"), "--user", "nonroot", "--with", "tmp,certs")
    assert proc.returncode == 0, proc.stderr
    dockerfile = (tmp_path / "out/Dockerfile").read_text()
    assert "USER 65532:65532" in dockerfile
    assert "ENV SSL_CERT_FILE='/etc/ssl/certs/ca-certificates.crt'" in dockerfile
    rootfs = tmp_path / "out/rootfs"
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert "nonroot:x:65532:65532" in (rootfs / "etc/passwd").read_text()
    assert (rootfs / "etc/ssl/certs/ca-certificates.crt").stat().st_size > 1000
    args = ("rootfs", str(prog), "-o", str(tmp_path / "out"), "--user", "nonroot", "--with", "tmp,certs", "--check")
    assert cli(*args).returncode == 0


def test_preset_the_root_cannot_satisfy(tmp_path: Path, builder: Builder) -> None:
    root = tmp_path / "root"
    builder.prog(root / "bin/tz", src="runtime/localtime.c")
    for lib in (HOST_LIBC, HOST_INTERP):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, dest)
    out = tmp_path / "out"
    proc = cli("rootfs", "--root", str(root), "/bin/tz", "-o", str(out), "--with", "tzdata,certs")
    assert proc.returncode == 1
    assert "/usr/share/zoneinfo" in proc.stderr and "CA bundle" in proc.stderr
    assert not out.exists()
    assert "--with tzdata: no /usr/share/zoneinfo in the root" in proc.stderr


def test_add_files_and_refusals(tmp_path: Path, builder: Builder) -> None:
    prog = builder.prog(tmp_path / "hello", src="hello.c")
    data = tmp_path / "share/data.txt"
    data.parent.mkdir()
    data.write_text("payload\n")
    plugin = builder.lib(tmp_path / "plugins/libplug.so", "plug")
    proc = cli("rootfs", str(prog), "-o", str(tmp_path / "out"), "--add", f"{data}:/srv/data.txt", "--add", str(plugin))
    assert proc.returncode == 0, proc.stderr
    rootfs = tmp_path / "out/rootfs"
    assert (rootfs / "srv/data.txt").read_text() == "payload\n"
    assert (rootfs / str(plugin).lstrip("/")).is_file()
    missing = cli("rootfs", str(prog), "-o", str(tmp_path / "o2"), "--add", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    climbing = cli("rootfs", str(prog), "-o", str(tmp_path / "o3"), "--add", f"{tmp_path}/../etc/passwd")
    assert climbing.returncode == 2 and "'..'" in climbing.stderr
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_analyze_shows_hints(tmp_path: Path, builder: Builder) -> None:
    prog = build_fixture(builder, tmp_path, "iconv.c")
    proc = subprocess.run(["minify", "analyze", str(prog)], capture_output=True, text=True)
    assert "hint:" in proc.stdout and "--with gconv" in proc.stdout
    data = json.loads(
        subprocess.run(["minify", "analyze", "-f", "json", str(prog)], capture_output=True, text=True).stdout
    )
    assert data["inputs"][0]["hints"][0]["preset"] == "gconv"


def test_dlopen_note_brings_recommended_and_hints_suggested(tmp_path: Path, builder: Builder) -> None:
    prog = builder.prog(tmp_path / "noted", src="dlopen_note.c")
    proc = cli("rootfs", str(prog), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    lock = json.loads((tmp_path / "out/minify.lock.json").read_text())
    names = {e["path"].rsplit("/", 1)[1]: e for e in lock["entries"]}
    assert "libzstd.so.1" in names and ".note.dlopen" in names["libzstd.so.1"]["why"]
    assert "liblz4.so.1" not in names
    assert "suggests dlopen of liblz4.so.1" in proc.stderr


def test_with_auto_leaves_out_what_the_root_lacks(tmp_path: Path, builder: Builder) -> None:
    """A root without zoneinfo (an image's): `--with auto` still writes the image and
    notes the preset it left out; naming the preset fails with the same reason."""
    root = tmp_path / "root"
    host_libc_into(root)
    build_fixture(builder, root, "localtime.c")
    auto = cli("rootfs", "/localtime", "--root", str(root), "-o", str(tmp_path / "auto"), "--with", "auto")
    assert auto.returncode == 0, auto.stderr
    assert "note: --with auto: tzdata left out: no /usr/share/zoneinfo in the root" in auto.stderr
    named = cli("rootfs", "/localtime", "--root", str(root), "-o", str(tmp_path / "named"), "--with", "tzdata")
    assert named.returncode != 0
    assert "--with tzdata: no /usr/share/zoneinfo in the root" in named.stderr
