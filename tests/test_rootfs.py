"""minify rootfs: exactly the closure, laid out as the loader opens it, written safely,
and proven by running it (chroot here; podman in test_podman.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minify.build.check import check
from minify.build.options import RootfsOptions
from minify.build.pipeline import build
from tests.conftest import HOST_INTERP, HOST_LIBC, Builder, chroot_run, cli, need_tool, tree_listing


def test_seed_rootfs_is_exactly_the_closure(tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["pausle"], tmp_path / "pausle-dynamic")
    proc = cli("rootfs", "./pausle-dynamic", "-o", "out/", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    names = sorted(p.name for p in out.iterdir())
    assert names == [".dockerignore", "Dockerfile", "base", "minify.lock.json", "rootfs", "sbom.spdx.json"]
    listing = tree_listing(out / "rootfs")
    everything = {p for p, kind in listing.items() if not kind.startswith("->") and kind != "dir"}
    # what scanners read (README, "What scanners see"); everything else is the closure
    metadata = {p for p in everything if p.startswith(("/var/lib/dpkg/status.d/", "/etc/", "/usr/share/minify/"))}
    files = everything - metadata
    real = {os.path.realpath(HOST_INTERP), os.path.realpath(HOST_LIBC)}
    assert files == {"/pausle-dynamic"} | real
    assert "/usr/share/minify/sbom.spdx.json" in metadata and "/etc/os-release" in metadata
    # the interpreter at its literal PT_INTERP path, through the same links as the host
    interp = out / "rootfs" / HOST_INTERP.lstrip("/")
    assert os.path.realpath(interp).endswith(os.path.basename(os.path.realpath(HOST_INTERP)))
    assert interp.exists()
    dockerfile = (out / "Dockerfile").read_text()
    assert "FROM scratch" in dockerfile and "COPY rootfs/ /" in dockerfile
    assert 'ENTRYPOINT ["/pausle-dynamic"]' in dockerfile
    lock = json.loads((out / "minify.lock.json").read_text())
    by_path = {e["path"]: e for e in lock["entries"]}
    assert by_path["/pausle-dynamic"]["why"] == ["input"]
    assert set(by_path) == set(listing)
    total = sum((out / "rootfs" / p.lstrip("/")).stat().st_size for p in files)
    assert total < 3_000_000, "the seed's image should be about 2.2 MB"
    assert "verified" in proc.stdout


def test_same_inputs_give_byte_identical_output(tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["hello"], tmp_path / "hello")
    for out in ("a", "b"):
        assert cli("rootfs", "./hello", "-o", out, cwd=tmp_path).returncode == 0
    assert tree_listing(tmp_path / "a") == tree_listing(tmp_path / "b")
    assert (tmp_path / "a/minify.lock.json").read_bytes() == (tmp_path / "b/minify.lock.json").read_bytes()


def test_hello_runs_in_its_rootfs_with_chroot(tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["hello"], tmp_path / "hello")
    assert cli("rootfs", "./hello", "-o", "out", cwd=tmp_path).returncode == 0
    proc = chroot_run(tmp_path / "out/rootfs", "/hello")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from minify\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["/usr/bin/ls", "/"],
        ["/usr/bin/xz", "--version"],
        ["/usr/bin/openssl", "version"],
        ["/usr/bin/git", "--version"],
        ["/usr/bin/sqlite3", "-version"],
        ["/usr/bin/curl", "--version"],
    ],
)
def test_real_programs_run_in_their_rootfs(tmp_path: Path, argv: list[str]) -> None:
    if not os.path.exists(argv[0]):
        need_tool(os.path.basename(argv[0]))
    result = build(RootfsOptions(paths=(argv[0],), output=str(tmp_path / "out")))
    assert len(result.plan.files) > 2
    rootfs = tmp_path / "out/rootfs"
    inside = chroot_run(rootfs, *argv)
    assert inside.returncode == 0, inside.stderr
    if argv[1] == "/":
        assert inside.stdout.split() == sorted([*os.listdir(rootfs), "dev", "proc"])
    else:
        host = subprocess.run(argv, capture_output=True, text=True, env={}, check=True)
        assert inside.stdout == host.stdout


def test_origin_libraries_move_with_their_program(tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "app/lib/libapp.so.1", "app")
    builder.prog(tmp_path / "app/bin/tool", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    proc = cli("rootfs", "./app/bin/tool", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rootfs = tmp_path / "out/rootfs"
    assert (rootfs / "app/bin/tool").is_file() and (rootfs / "app/lib/libapp.so.1").is_file()
    assert chroot_run(rootfs, "/app/bin/tool").stdout == "hello from minify\n"


def test_map_relocates_a_tree(tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "opt/x/lib/libx.so.1", "x")
    builder.prog(tmp_path / "opt/x/bin/x", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    proc = cli("rootfs", str(tmp_path / "opt/x/bin/x"), "-o", str(tmp_path / "out"), "--map", f"{tmp_path}/opt/x=/app")
    assert proc.returncode == 0, proc.stderr
    rootfs = tmp_path / "out/rootfs"
    assert (rootfs / "app/lib/libx.so.1").is_file()
    assert 'ENTRYPOINT ["/app/bin/x"]' in (tmp_path / "out/Dockerfile").read_text()
    assert chroot_run(rootfs, "/app/bin/x").stdout == "hello from minify\n"


def test_a_map_that_breaks_origin_fails_verification_and_leaves_out_alone(tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "opt/y/lib/liby.so.1", "y")
    prog = builder.prog(tmp_path / "opt/y/bin/y", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    out = tmp_path / "out"
    assert cli("rootfs", str(prog), "-o", str(out)).returncode == 0
    before = tree_listing(out)
    proc = cli("rootfs", str(prog), "-o", str(out), "--map", f"{tmp_path}/opt/y/bin=/bin")
    assert proc.returncode == 1
    assert "liby.so.1: not found in the image" in proc.stderr
    assert tree_listing(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".minify")] == []


def test_hard_links_stay_one_file(tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["hello"], tmp_path / "one")
    os.link(tmp_path / "one", tmp_path / "two")
    assert cli("rootfs", "./one", "./two", "-o", "out", "--entrypoint", "/one", cwd=tmp_path).returncode == 0
    rootfs = tmp_path / "out/rootfs"
    assert (rootfs / "one").stat().st_ino == (rootfs / "two").stat().st_ino
    lock = json.loads((tmp_path / "out/minify.lock.json").read_text())
    assert {e["path"]: e["type"] for e in lock["entries"]}["/two"] == "hardlink"


def test_setuid_bit_is_dropped_with_a_warning(tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["hello"], tmp_path / "suid")
    os.chmod(tmp_path / "suid", 0o4755)
    proc = cli("rootfs", "./suid", "-o", "out", cwd=tmp_path)
    assert proc.returncode == 0
    assert "setuid/setgid bits dropped" in proc.stderr
    assert (tmp_path / "out/rootfs/suid").stat().st_mode & 0o7777 == 0o755


def test_hwcaps_all_ships_every_variant(tmp_path: Path, builder: Builder) -> None:
    base = builder.lib(tmp_path / "lib/libhw.so.1", "hw")
    builder.lib(tmp_path / "lib/glibc-hwcaps/x86-64-v2/libhw.so.1", "hw_v2", soname="libhw.so.1")
    prog = builder.prog(tmp_path / "prog", links=[base], runpath=f"{tmp_path}/lib")
    build(RootfsOptions(paths=(str(prog),), output=str(tmp_path / "all")))
    assert (tmp_path / f"all/rootfs{tmp_path}/lib/glibc-hwcaps/x86-64-v2/libhw.so.1").is_file()
    assert (tmp_path / f"all/rootfs{tmp_path}/lib/libhw.so.1").is_file()
    build(RootfsOptions(paths=(str(prog),), output=str(tmp_path / "base"), hwcaps="baseline"))
    assert not (tmp_path / f"base/rootfs{tmp_path}/lib/glibc-hwcaps").exists()


def test_check_writes_nothing_and_reports_differences(tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["hello"], tmp_path / "hello")
    assert cli("rootfs", "./hello", "-o", "out", cwd=tmp_path).returncode == 0
    ok = cli("rootfs", "./hello", "-o", "out", "--check", cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    (tmp_path / "out/rootfs/hello").chmod(0o700)
    before = tree_listing(tmp_path / "out")
    stale = cli("rootfs", "./hello", "-o", "out", "--check", cwd=tmp_path)
    assert stale.returncode == 1
    assert "changed: /hello" in stale.stdout
    assert tree_listing(tmp_path / "out") == before
    missing = cli("rootfs", "./hello", "-o", "never", "--check", cwd=tmp_path)
    assert missing.returncode == 1 and not (tmp_path / "never").exists()
    (tmp_path / "out/rootfs/hello").chmod(0o755)
    result = check(RootfsOptions(paths=("./hello",), output=str(tmp_path / "out"), cwd=str(tmp_path)))
    listing = tree_listing(tmp_path / "out/rootfs")
    assert {e.path for e in result.plan.files} == {p for p, v in listing.items() if v != "dir" and v[:3] != "-> "}
    for number in range(30):  # many differences: the first 20 named, the rest counted
        (tmp_path / f"out/rootfs/stray-{number:02}").write_text("x")
    many = cli("rootfs", "./hello", "-o", "out", "--check", cwd=tmp_path)
    lines = many.stdout.splitlines()
    assert many.returncode == 1 and len(lines) == 21 and lines[-1] == "... and 10 more", many.stdout


def test_refuses_an_output_it_did_not_write(tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["hello"], tmp_path / "hello")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/precious").write_text("keep me")
    proc = cli("rootfs", "./hello", "-o", "mine", cwd=tmp_path)
    assert proc.returncode == 2 and "--force" in proc.stderr
    assert (tmp_path / "mine/precious").read_text() == "keep me"
    (tmp_path / "afile").write_text("x")
    proc = cli("rootfs", "./hello", "-o", "afile", cwd=tmp_path)
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    assert (tmp_path / "afile").read_text() == "x"
    forced = cli("rootfs", "./hello", "-o", "mine", "--force", cwd=tmp_path)
    assert forced.returncode == 0 and not (tmp_path / "mine/precious").exists()


def test_missing_library_fails_with_exit_1_and_writes_nothing(tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "gone/libgone.so.1", "gone")
    prog = builder.prog(tmp_path / "prog", links=[lib])
    proc = cli("rootfs", str(prog), "-o", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "libgone.so.1: not found" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_scripts_bring_their_interpreter(tmp_path: Path, built: dict[str, Path]) -> None:
    need_tool("dash")
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/dash\necho from script\n")
    script.chmod(0o755)
    proc = cli("rootfs", str(script), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert f"/bin/dash comes with {script}, the #! interpreter it needs" in proc.stderr
    assert f'ENTRYPOINT ["{script}"]' in (tmp_path / "out/Dockerfile").read_text()
    assert chroot_run(tmp_path / "out/rootfs", str(script)).stdout == "from script\n"
    # given as well, it is not brought twice
    again = cli("rootfs", str(script), "/bin/dash", "-o", str(tmp_path / "out"))
    assert again.returncode == 0 and "comes with" not in again.stderr
    # an interpreter the root lacks is one line, exit 2
    script.write_text("#!/no/such/shell\necho x\n")
    missing = cli("rootfs", str(script), "-o", str(tmp_path / "out2"))
    assert missing.returncode == 2 and "/no/such/shell is not in the root" in missing.stderr


def test_output_folder_parents_are_created(tmp_path: Path, built: dict[str, Path]) -> None:
    proc = cli("rootfs", str(built["hello"]), "-o", str(tmp_path / "no/such/out"))
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "no/such/out")) == [
        ".dockerignore",
        "Dockerfile",
        "base",
        "minify.lock.json",
        "rootfs",
        "sbom.spdx.json",
    ]


def test_dockerfile_options(tmp_path: Path, built: dict[str, Path]) -> None:
    proc = cli(
        "rootfs",
        str(built["hello"]),
        "-o",
        str(tmp_path / "out"),
        "--cmd",
        "a b",
        "--cmd",
        "c",
        "--user",
        "65532:65532",
        "--env",
        "GREETING=hi there",
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out/Dockerfile").read_text()
    assert 'CMD ["a b", "c"]' in text
    assert "USER 65532:65532" in text
    assert "ENV GREETING='hi there'" in text
    bad = cli("rootfs", str(built["hello"]), "-o", str(tmp_path / "o2"), "--user", "nobody;rm")
    assert bad.returncode == 2 and "--user" in bad.stderr


def test_a_full_disk_leaves_out_as_it_was(tmp_path: Path, built: dict[str, Path]) -> None:
    """On a 3 MB tmpfs: the hello image fits, python3's does not; the second run fails
    with one line and leaves the first image in place, with no temporary left over."""
    need_tool("unshare", "mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    shutil.copy(built["hello"], tmp_path / "hello")
    script = (
        'mount -t tmpfs -o size=3m tmpfs "$0" && cd "$0" && '
        '"$1" -m minify.cli rootfs "$2" -o out && '
        'if "$1" -m minify.cli rootfs /usr/bin/python3.11 /usr/bin/python3 -o out --entrypoint /usr/bin/python3.11 '
        "2>err; then echo unexpected; fi; cat err; grep ENTRYPOINT out/Dockerfile; ls -A"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, str(disk), sys.executable, str(tmp_path / "hello")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "unexpected" not in lines
    error = [line for line in lines if line.startswith("minify: error:")]
    assert len(error) == 1 and "No space left on device" in error[0] and "left as it was" in error[0]
    assert f'ENTRYPOINT ["{tmp_path}/hello"]' in lines  # the first image is still there
    assert sorted(lines[-2:]) == ["err", "out"]  # and no temporary folder is left


def test_a_folder_input_keeps_its_symlinks(tmp_path: Path, built: dict[str, Path]) -> None:
    (tmp_path / "bin").mkdir()
    shutil.copy(built["hello"], tmp_path / "bin/app-1.2")
    (tmp_path / "bin/app").symlink_to("app-1.2")
    (tmp_path / "bin/README").write_text("not a program\n")
    proc = cli("rootfs", "./bin", "-o", "out", "--entrypoint", "/bin/app", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and "README" in proc.stderr
    rootfs = tmp_path / "out/rootfs"
    assert os.readlink(rootfs / "bin/app") == "app-1.2"
    assert not (rootfs / "bin/README").exists()
    assert chroot_run(rootfs, "/bin/app").stdout == "hello from minify\n"
