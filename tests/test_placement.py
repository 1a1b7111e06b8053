"""From a right closure to a right image on every common layout: programs named through
usrmerge links, an app with its libraries beside it, private library folders reached
through RUNPATH. Each image is verified by minify and then run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import Builder, chroot_run, cli, need_tool, tree_listing


def _usrmerged(path: str) -> bool:
    return os.path.islink(os.path.dirname(path)) or os.path.realpath(path) != path


@pytest.mark.parametrize(
    ("program", "argv"),
    [
        ("/bin/true", ["/bin/true"]),
        ("/bin/ls", ["/bin/ls", "-d", "/"]),
        ("/sbin/ldconfig", ["/sbin/ldconfig", "--version"]),
    ],
)
def test_a_program_named_through_a_folder_symlink(tmp_path: Path, program: str, argv: list[str]) -> None:
    """On a usrmerged system /bin -> usr/bin: the program is in the image under the name
    the user gave, and is the entrypoint under that name."""
    out = tmp_path / "out"
    proc = cli("rootfs", program, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f'ENTRYPOINT ["{program}"]' in (out / "Dockerfile").read_text()
    listing = tree_listing(out / "rootfs")
    if _usrmerged(program):
        top = "/" + program.split("/")[1]
        assert listing[top].startswith("-> ")
    run = chroot_run(out / "rootfs", *argv)
    assert run.returncode == 0, run.stderr


def test_an_app_with_its_libraries_beside_it(tmp_path: Path, builder: Builder) -> None:
    """./prog with RUNPATH $ORIGIN/lib and ./lib/libl.so.1: /lib is the system's usrmerge
    link in the image, so the library goes through it, as on the source system."""
    lib = builder.lib(tmp_path / "app/lib/libl.so.1", "l")
    builder.prog(tmp_path / "app/prog", links=[lib], runpath="$ORIGIN/lib")
    out = tmp_path / "out"
    proc = cli("rootfs", "./prog", "-o", str(out), cwd=tmp_path / "app")
    assert proc.returncode == 0, proc.stderr
    listing = tree_listing(out / "rootfs")
    if os.path.islink("/lib"):  # usrmerged: the image has the system's link too
        assert listing["/lib"] == "-> " + os.readlink("/lib")
    assert (out / "rootfs/lib/libl.so.1").is_file()
    run = chroot_run(out / "rootfs", "/prog")
    assert run.returncode == 0 and run.stdout == "prog ran\n", run.stderr


def test_two_files_at_one_path_name_both_and_suggest_map(tmp_path: Path, builder: Builder) -> None:
    one = builder.lib(tmp_path / "a/lib/libl.so.1", "one")
    two = builder.lib(tmp_path / "b/lib/libl.so.1", "two")
    builder.prog(tmp_path / "a/prog", links=[one], runpath="$ORIGIN/lib")
    builder.prog(tmp_path / "b/prog2", links=[two], runpath="$ORIGIN/lib")
    out = tmp_path / "out"
    proc = cli(
        "rootfs",
        str(tmp_path / "a/prog"),
        str(tmp_path / "b/prog2"),
        "-o",
        str(out),
        "--map",
        f"{tmp_path / 'a'}=/app",
        "--map",
        f"{tmp_path / 'b'}=/app",
    )
    assert proc.returncode == 2
    assert str(one) in proc.stderr and str(two) in proc.stderr and "--map" in proc.stderr


def test_a_private_library_folder_reached_through_runpath(tmp_path: Path, builder: Builder) -> None:
    """systemd's shape: the program's RUNPATH names a private folder; libcore there
    needs libshared and has no search path of its own, so only the program's load
    finds libshared (as "already loaded"). Checked alone, libcore would not resolve."""
    private = tmp_path / "usr/lib/app"
    shared = builder.lib(private / "libshared.so", "shared")
    core = builder.lib(private / "libcore.so", "core", links=[shared])
    prog = builder.prog(tmp_path / "usr/bin/prog", links=[core, shared], runpath=str(private))
    out = tmp_path / "out"
    proc = cli("rootfs", str(prog), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    run = chroot_run(out / "rootfs", str(prog))
    assert run.returncode == 0 and run.stdout == "prog ran\n", run.stderr
    assert cli("verify", str(out)).returncode == 0


def test_systemd_analyze(tmp_path: Path) -> None:
    need_tool("systemd-analyze")
    program = shutil.which("systemd-analyze")
    assert program
    out = tmp_path / "out"
    proc = cli("rootfs", program, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    run = chroot_run(out / "rootfs", program, "--version")
    assert run.returncode == 0 and "systemd" in run.stdout, run.stderr
