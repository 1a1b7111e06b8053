"""LIEF given a compact image (the ELF header, and only the dynamic section, string
table, version tables and dynamic symbols, each at its own address) reads exactly the
facts it reads from the whole file: checked on every ELF file of this machine's /usr,
whatever its architecture (the aarch64 cross libraries and the 32-bit ones included)."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from minify.elf import reader as elf
from minify.elf.compact import compact_image
from minify.elf.files import ELF_MAGIC, Endian, Opened, read_header
from minify.elf.reader import read_elf, read_symbols
from minify.errors import BadInput


def usr_elf_files() -> list[str]:
    found = []
    for top, _, names in os.walk("/usr"):
        for name in sorted(names):
            path = os.path.join(top, name)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                with open(path, "rb") as fh:
                    if fh.read(4) == ELF_MAGIC:
                        found.append(path)
            except OSError:
                continue
    return found


def facts(read: object, path: str, *, compact: bool) -> object:
    try:
        return read(path, compact=compact)  # type: ignore[operator]
    except BadInput as exc:
        return type(exc).__name__


@pytest.fixture(scope="module")
def files() -> list[str]:
    found = usr_elf_files()
    assert len(found) > 200, "this machine's /usr has hardly any ELF files"
    return found


def test_this_lief_parses_compact_images() -> None:
    assert elf._compact_parses(), "the LIEF installed for the tests is older than 1.0"


@pytest.mark.parametrize("read", [read_elf, read_symbols], ids=["dynamic facts", "dynamic symbols"])
def test_compact_images_give_the_facts_of_whole_files(files: list[str], read: object) -> None:
    compact_used = 0
    differ = []
    for path in files:
        with Opened.path(path) as f:
            try:
                header, _ = read_header(f)
            except BadInput:
                continue
            if header.has_dynamic and compact_image(f, header, symbols=read is read_symbols) is not None:
                compact_used += 1
        if facts(read, path, compact=True) != facts(read, path, compact=False):
            differ.append(path)
    assert differ == []
    assert compact_used > len(files) // 2, f"compact images made for only {compact_used} of {len(files)} files"


def _strsz(f: Opened, dynamic: tuple[int, int], elf_class: int, little: bool) -> int:
    """DT_STRSZ from PT_DYNAMIC: the dynamic string table a compact image carries."""
    offset, size = dynamic
    fmt = ("<" if little else ">") + ("qQ" if elf_class == 64 else "iI")
    step = struct.calcsize(fmt)
    data = f.pread(min(size, 1 << 20), offset)
    for at in range(0, len(data) - step + 1, step):
        tag, value = struct.unpack_from(fmt, data, at)
        if tag == 10:  # DT_STRSZ
            return int(value)
        if tag == 0:
            break
    return 0


def test_a_compact_image_is_small(files: list[str]) -> None:
    """The point of it: a few KB where LIEF read the whole file (the largest dynamic
    ELF file of /usr whose dynamic string table is ordinary); a program that exports
    megabytes of symbol names (pandoc's Haskell runtime) carries those names and little
    else."""
    checked = 0
    for path in sorted(files, key=lambda p: -Path(p).stat().st_size):
        with Opened.path(path) as f:
            header, size = read_header(f)
            if not header.has_dynamic:
                continue
            image = compact_image(f, header, symbols=False)
            strsz = _strsz(f, header.dynamic, header.elf_class, header.endian is Endian.LITTLE)
        assert image is not None
        assert len(image) < strsz + (1 << 20), (path, len(image), strsz)
        if strsz < 1 << 20:
            assert size > 1 << 20
            assert len(image) < size // 20, (path, len(image), size)
            checked += 1
            break
    assert checked == 1
