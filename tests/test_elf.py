"""Reading ELF files as the loader does, whatever they carry: notes of other tools,
more dynamic entries than LIEF lists, tags LIEF does not know, two names for one file.
Each fixture is built with gcc and judged by the real loader or a real run."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import minify
from minify.elf.notes import read_dlopen_notes
from minify.elf.reader import LIEF_DYNAMIC_CAP, read_elf
from tests.conftest import FIXTURES, Builder, chroot_run, cli, loader_truth


def test_annobin_notes_neither_fail_nor_hide_the_dlopen_note(tmp_path: Path, builder: Builder) -> None:
    """Fedora/RHEL/UBI builds carry .gnu.build.attributes notes with binary owner names;
    LIEF raises UnicodeDecodeError reading them. Only the FDO note is read."""
    prog = builder.prog(tmp_path / "annobin", src="annobin.c")
    sections = subprocess.run(["readelf", "-SW", str(prog)], capture_output=True, text=True, check=True).stdout
    assert ".gnu.build.attributes" in sections and "NOTE" in sections
    notes, warnings = read_dlopen_notes(str(prog))
    assert [n.sonames for n in notes] == [("libz.so.1",)] and warnings == ()
    proc = cli("rootfs", str(prog), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "unreadable" not in proc.stderr
    lock = (tmp_path / "out/minify.lock.json").read_text()
    assert ".note.dlopen" in lock and "libz.so.1" in lock
    run = chroot_run(tmp_path / "out/rootfs", str(prog))
    assert run.returncode == 0 and run.stdout == "built with annobin notes\n", run.stderr


def test_a_malformed_dlopen_note_is_a_warning(tmp_path: Path, builder: Builder) -> None:
    src = (FIXTURES / "annobin.c").read_text().replace('[{\\"feature', '[{{\\"feature')
    (tmp_path / "bad.c").write_text(src)
    prog = tmp_path / "bad"
    subprocess.run(["gcc", str(tmp_path / "bad.c"), "-o", str(prog)], check=True)
    notes, warnings = read_dlopen_notes(str(prog))
    assert notes == () and len(warnings) == 1 and "malformed .note.dlopen" in warnings[0]
    proc = cli("rootfs", str(prog), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "malformed .note.dlopen" in proc.stderr


def _many_names(tmp_path: Path, builder: Builder, count: int) -> Path:
    """A program that needs ``count`` libraries (links to one empty object, so the
    loader maps one file) and then libz, RUNPATH $ORIGIN/libs."""
    libs = tmp_path / "libs"
    builder.lib(libs / "libempty.so.1", "empty", soname=None, src="empty.c")
    names = [f"m{i:04d}" for i in range(count)]
    for name in names:
        (libs / f"lib{name}.so").symlink_to("libempty.so.1")
    flags = [f"-L{libs}", "-Wl,--no-as-needed", *(f"-l{n}" for n in names), "-lz"]
    return builder.prog(tmp_path / "many", src="hello.c", runpath="$ORIGIN/libs", flags=flags)


def test_more_dynamic_entries_than_lief_lists(tmp_path: Path, builder: Builder) -> None:
    prog = _many_names(tmp_path, builder, LIEF_DYNAMIC_CAP + 1)
    info = read_elf(str(prog))
    assert len(info.needed) == LIEF_DYNAMIC_CAP + 3  # the links, libz, libc
    assert info.needed[-2:] == ("libz.so.1", "libc.so.6") and info.runpath == "$ORIGIN/libs"
    truth = loader_truth(str(prog))
    assert any("libz.so.1" in p for p in truth.closure) and not truth.missing
    (closure,) = minify.analyze([str(prog)]).programs
    assert closure.ok and set(closure.closure) == set(truth.closure)
    out = tmp_path / "out"
    proc = cli("rootfs", "./many", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = chroot_run(out / "rootfs", "/many")
    assert run.returncode == 0 and run.stdout == "hello from minify\n", run.stderr


def test_two_names_for_one_file_are_both_in_the_image(tmp_path: Path, builder: Builder) -> None:
    """-lfoo -lbar where libbar.so links to the same file: the loader opens both names
    (and maps the file once); the image must keep both."""
    lib = builder.lib(tmp_path / "libfoo.so.1", "foo", soname=None, src="empty.c")
    (tmp_path / "libfoo.so").symlink_to(lib.name)
    (tmp_path / "libbar.so").symlink_to(lib.name)
    prog = builder.prog(
        tmp_path / "prog",
        src="hello.c",
        runpath="$ORIGIN",
        flags=[f"-L{tmp_path}", "-Wl,--no-as-needed", "-lfoo", "-lbar"],
    )
    assert read_elf(str(prog)).needed[:2] == ("libfoo.so", "libbar.so")
    assert subprocess.run([str(prog)], capture_output=True).returncode == 0
    out = tmp_path / "out"
    proc = cli("rootfs", "./prog", "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert os.readlink(out / "rootfs/libbar.so") == "libfoo.so.1"
    assert os.readlink(out / "rootfs/libfoo.so") == "libfoo.so.1"
    run = chroot_run(out / "rootfs", "/prog")
    assert run.returncode == 0, run.stderr


def _retag(path: Path, old: int, new: int) -> None:
    """Rewrite the tag of one dynamic entry in place (64-bit little-endian file)."""
    data = bytearray(path.read_bytes())
    (phoff,) = struct.unpack_from("<Q", data, 32)
    phnum = struct.unpack_from("<H", data, 56)[0]
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", data, phoff + i * 56)
        if p_type == 2:
            for at in range(p_offset, p_offset + p_filesz, 16):
                if struct.unpack_from("<q", data, at)[0] == old:
                    struct.pack_into("<q", data, at, new)
                    path.write_bytes(bytes(data))
                    return
    raise AssertionError(f"no dynamic entry with tag {old:#x}")


def test_an_unknown_dynamic_tag_prints_no_library_warning(tmp_path: Path, builder: Builder) -> None:
    prog = builder.prog(tmp_path / "prog", src="hello.c")
    _retag(prog, 21, 0x6FFFF123)  # DT_DEBUG becomes a tag nobody defines
    assert subprocess.run([str(prog)], capture_output=True, text=True).stdout == "hello from minify\n"
    proc = cli("analyze", str(prog))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "libc.so.6" in proc.stdout


def test_a_library_without_version_information(tmp_path: Path, builder: Builder) -> None:
    """glibc: "no version information available (required by ...)", a warning at
    start-up; the program then fails when it binds the versioned symbol."""
    lib = tmp_path / "libver.so.1"
    builder.lib(lib, "ver", src="versioned.c", flags=["-DWITH_V2", f"-Wl,--version-script={FIXTURES}/v2.map"])
    prog = builder.prog(tmp_path / "prog", src="usever.c", links=[lib], runpath="$ORIGIN")
    builder.lib(lib, "ver", src="versioned.c", flags=["-DWITH_V2"])  # the same symbols, no versions
    real = subprocess.run([str(prog)], capture_output=True, text=True, env={"LD_BIND_NOW": "1"})
    assert real.returncode != 0
    assert "no version information available" in loader_truth(str(prog)).output
    (closure,) = minify.analyze([str(prog)]).programs
    assert len(closure.version_errors) == 1
    assert "no version information available (required by" in closure.version_errors[0]
    assert "binds a versioned symbol" in closure.version_errors[0]
