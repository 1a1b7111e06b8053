"""The dynamic symbols read without LIEF (``minify.elf.dynsym``) are LIEF's, on every
ELF file of this machine's /usr: the imports whole, the definitions whole, and the
definitions of a chosen set of names (found through the GNU hash table, the loader's
way) exactly LIEF's definitions of those names. Verification and hints read them."""

from __future__ import annotations

import os
import random
import shutil
import struct
from array import array
from pathlib import Path

import pytest

from minify.elf import dynsym
from minify.elf.compact import DT_GNU_HASH, Layout, symbol_count
from minify.elf.dynsym import _Table, read_dynamic_symbols
from minify.elf.files import Opened, Symbols, read_header
from minify.elf.reader import read_symbols
from minify.errors import BadInput
from tests.conftest import HOST_LIBC
from tests.test_compact import usr_elf_files


def _read(read: object, path: str, **kw: object) -> Symbols | str:
    try:
        return read(path, **kw)  # type: ignore[operator,no-any-return]
    except BadInput as exc:
        return type(exc).__name__


def _natively_read(path: str) -> bool:
    """Whether the tables of ``path`` are read here rather than handed to LIEF."""
    with Opened.path(path) as f:
        header, _ = read_header(f)
        return header.has_dynamic and _Table.read(f, header) is not None


def _sample(symbols: Symbols, seed: str) -> frozenset[str]:
    """Some defined names, some imported ones and one nobody defines."""
    names = sorted({n for n, _ in symbols.defined | symbols.hidden})
    chosen = random.Random(seed).sample(names, min(40, len(names)))
    return frozenset([*chosen, *(r.name for r in symbols.imports[:20]), "minify_defines_no_such_name"])


def test_every_elf_file_of_usr_gives_lief_s_symbols() -> None:
    files = usr_elf_files()
    assert len(files) > 200, "this machine's /usr has hardly any ELF files"
    differ: list[str] = []
    native = 0
    for path in files:
        ours, lief = _read(read_dynamic_symbols, path), _read(read_symbols, path)
        if ours != lief:
            differ.append(path)
            continue
        if not isinstance(lief, Symbols):
            continue
        native += _natively_read(path)
        wanted = _sample(lief, path)
        some = read_dynamic_symbols(path, wanted=wanted)
        if (
            some.imports != lief.imports
            or some.defined != {d for d in lief.defined if d[0] in wanted}
            or some.hidden != {d for d in lief.hidden if d[0] in wanted}
        ):
            differ.append(f"{path} (chosen names)")
    assert differ == []
    assert native > len(files) // 2, f"only {native} of {len(files)} files read without LIEF"


def test_versioned_definitions_of_libc_are_found_by_name() -> None:
    """A name libc defines in several versions (memcpy@GLIBC_2.2.5 and the default
    memcpy@@GLIBC_2.14 on x86-64) comes back with all of them, looked up by hash."""
    full = read_symbols(HOST_LIBC)
    want = frozenset({"memcpy", "realpath", "pthread_cond_wait"})
    some = read_dynamic_symbols(HOST_LIBC, wanted=want)
    assert some.defined == {d for d in full.defined if d[0] in want}
    assert some.hidden == {d for d in full.hidden if d[0] in want}
    assert some.defined, "libc defines none of memcpy, realpath, pthread_cond_wait"


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3, 0.6, 0.95])
def test_a_truncated_library_gets_lief_s_verdict(tmp_path: Path, fraction: float) -> None:
    """Tables that run past the end of the file are never read past it: the file goes
    to LIEF whole, and both readers say the same."""
    copy = tmp_path / "libc.so.6"
    shutil.copyfile(HOST_LIBC, copy)
    os.truncate(copy, int(copy.stat().st_size * fraction))
    assert _read(read_dynamic_symbols, str(copy)) == _read(read_symbols, str(copy))


def test_a_hash_table_whose_chains_never_end_is_not_walked_for_every_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crafted GNU hash table (no chain ever ends) would make each lookup walk every
    symbol: past ``MAX_CHAIN`` steps the definitions are scanned instead, and the
    answer is still LIEF's."""
    copy = tmp_path / "libc.so.6"
    shutil.copyfile(HOST_LIBC, copy)
    with Opened.path(str(copy)) as f:
        header, _ = read_header(f)
        layout = Layout(f, header)
        dyn = layout.entries()
        assert dyn is not None and DT_GNU_HASH in dyn, "this libc has no GNU hash table"
        nsyms = symbol_count(layout, dyn)
        assert nsyms is not None
        nbuckets, symoffset, bloom_size, _ = struct.unpack("<IIII", layout.read(dyn[DT_GNU_HASH], 16) or b"")
        chains = dyn[DT_GNU_HASH] + 16 + bloom_size * 8 + 4 * nbuckets
        count = nsyms[0] - symoffset
        at = layout.offset(chains, 4 * count)
        assert at is not None
    with open(copy, "r+b") as fh:
        fh.seek(at)
        values = array("I", fh.read(4 * count))
        fh.seek(at)
        fh.write(array("I", (v & ~1 for v in values)).tobytes())
    monkeypatch.setattr(dynsym, "MAX_CHAIN", 8)
    want = frozenset({"memcpy", "realpath", "pthread_cond_wait", "minify_defines_no_such_name"})
    full = read_symbols(str(copy))
    some = read_dynamic_symbols(str(copy), wanted=want)
    assert some.defined == {d for d in full.defined if d[0] in want} != set()
    assert some.hidden == {d for d in full.hidden if d[0] in want}
