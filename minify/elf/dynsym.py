"""Dynamic symbols read straight from the file, the way the loader finds them: the
dynamic symbol table, its string table and the version tables, each read with
``os.pread`` from the open descriptor at the address the dynamic section gives.

LIEF builds a Python object for every dynamic symbol: 2 seconds for pandoc's 413,000,
and verification did that for every object of every written rootfs. What binding
needs is the imports (a few hundred names per object) and, of the definitions, only
those some import asks for: ``wanted`` names them, and every other definition is
passed over without being decoded. The count of symbols is LIEF's (the ``.dynsym``
section header, else the hash tables), so the answer is the one LIEF gives; a file
whose tables do not add up is handed to LIEF whole, whose verdict stands. A test
compares both on every ELF file of the machine's /usr.
"""

from __future__ import annotations

import functools
import struct
import sys
from array import array
from collections.abc import Iterator

from minify.elf.compact import (
    DT_GNU_HASH,
    DT_STRSZ,
    DT_STRTAB,
    DT_SYMENT,
    DT_SYMTAB,
    DT_VERDEF,
    DT_VERDEFNUM,
    DT_VERNEED,
    DT_VERNEEDNUM,
    DT_VERSYM,
    VERDEF,
    VERNEED,
    Layout,
    symbol_count,
    version_entries,
)
from minify.elf.files import (
    SHN_UNDEF,
    STB_LOCAL,
    STB_WEAK,
    VERSYM_HIDDEN,
    ElfHeader,
    Opened,
    SymbolRef,
    Symbols,
    _read_header,
    _use,
)
from minify.elf.reader import read_symbols  # LIEF, for the files this cannot read

NO_SYMBOLS = Symbols((), frozenset(), frozenset())
#: A hash chain longer than this is a crafted one (a linker's are a few entries): the
#: file's definitions are then scanned, so that each lookup cannot walk every symbol.
MAX_CHAIN = 4096


class LongChain(Exception):
    """A GNU hash chain longer than ``MAX_CHAIN``."""


def read_dynamic_symbols(source: str | Opened, *, wanted: frozenset[str] | None = None) -> Symbols:
    """Imports and definitions of one ELF file; with ``wanted``, only the definitions
    of those names (the imports are always whole)."""
    with _use(source) as f:
        header, _ = _read_header(f)
        if not header.has_dynamic:
            return NO_SYMBOLS
        try:
            table = _Table.read(f, header)
            found = table.symbols(wanted) if table is not None else None
        except (struct.error, OverflowError, ValueError, IndexError, OSError):
            found = None
        if found is not None:
            return found
        return _only(read_symbols(f), wanted)


def _only(symbols: Symbols, wanted: frozenset[str] | None) -> Symbols:
    if wanted is None:
        return symbols
    return Symbols(
        symbols.imports,
        frozenset(d for d in symbols.defined if d[0] in wanted),
        frozenset(d for d in symbols.hidden if d[0] in wanted),
    )


class _Table:
    """The raw tables of one file, as columns: name offsets, bindings and section
    indexes of every symbol, version indexes, version names, and the GNU hash table."""

    def __init__(self, layout: Layout, dyn: dict[int, int], nsyms: int) -> None:
        standard = layout.sym_size
        raw = layout.read(dyn[DT_SYMTAB], nsyms * standard)
        strtab = layout.read(dyn[DT_STRTAB], dyn[DT_STRSZ])
        if raw is None or strtab is None:
            raise ValueError("symbol tables outside the file")
        swap = (layout.end == "<") != (sys.byteorder == "little")
        words, halves = _column(raw, "I", swap), _column(raw, "H", swap)
        step = standard // 4
        self.names = words[0::step]
        self.info = raw[4::24] if layout.is64 else raw[12::16]
        self.shndx = halves[3::12] if layout.is64 else halves[7::8]
        self.strtab = strtab
        self.versym = None
        if DT_VERSYM in dyn:
            data = layout.read(dyn[DT_VERSYM], nsyms * 2)
            if data is None:
                raise ValueError("version table outside the file")
            self.versym = _column(data, "H", swap)
        self.versions: dict[int, str] = _version_names(layout, dyn, strtab)
        self.hash = _GnuHash.read(layout, dyn[DT_GNU_HASH], nsyms, swap) if DT_GNU_HASH in dyn else None

    @classmethod
    def read(cls, f: Opened, header: ElfHeader) -> _Table | None:
        layout = Layout(f, header)
        dyn = layout.entries()
        if dyn is None or not all(t in dyn for t in (DT_SYMTAB, DT_STRTAB, DT_STRSZ)):
            return None
        counted = symbol_count(layout, dyn)
        if dyn.get(DT_SYMENT, layout.sym_size) != layout.sym_size or counted is None:
            return None
        return cls(layout, dyn, counted[0])

    def name(self, offset: int) -> bytes:
        return _name_at(self.strtab, offset)

    def symbols(self, wanted: frozenset[str] | None) -> Symbols:
        try:
            return self._symbols(wanted)
        except LongChain:
            self.hash = None
            return self._symbols(wanted)

    def _symbols(self, wanted: frozenset[str] | None) -> Symbols:
        imports = [self._ref(i) for i, s in enumerate(self.shndx) if s == SHN_UNDEF and self._global(i)]
        defined: set[tuple[str, str | None]] = set()
        hidden: set[tuple[str, str | None]] = set()
        for index in self._definitions(wanted):
            name = self.name(self.names[index])
            if not name:
                continue
            raw_version, version = self._version(index)
            (hidden if raw_version & VERSYM_HIDDEN else defined).add((_text(name), version))
        return Symbols(tuple(r for r in imports if r.name), frozenset(defined), frozenset(hidden))

    def _global(self, index: int) -> bool:
        return self.info[index] >> 4 != STB_LOCAL and self.names[index] != 0

    def _version(self, index: int) -> tuple[int, str | None]:
        raw_version = self.versym[index] if self.versym is not None else 1
        number = raw_version & 0x7FFF
        return raw_version, self.versions.get(number) if number > 1 else None

    def _ref(self, index: int) -> SymbolRef:
        name = _text(self.name(self.names[index]))
        return SymbolRef(name, self._version(index)[1], self.info[index] >> 4 == STB_WEAK)

    def _definitions(self, wanted: frozenset[str] | None) -> Iterator[int]:
        """Indexes of the global definitions (of ``wanted`` names only, when given).
        A file with fewer symbols than twice the names wanted is scanned; a bigger
        one is asked through its GNU hash table, as the loader looks names up, for
        each name (plus the definitions the table leaves out: LIEF counts those)."""
        if wanted is None:
            yield from self._scan(range(len(self.shndx)), None)
            return
        keep = _encoded(wanted)
        if self.hash is None or len(self.shndx) <= 2 * len(wanted):
            yield from self._scan(range(len(self.shndx)), keep)
            return
        # the definitions below the table's first symbol, which it leaves out
        yield from self._scan(range(min(self.hash.symoffset, len(self.shndx))), keep)
        for name, h in _hashed(wanted).items():
            for index in self.hash.candidates(h):
                if self._defines(index) and self.name(self.names[index]) == name:
                    yield index

    def _scan(self, indexes: range, keep: frozenset[bytes] | None) -> Iterator[int]:
        for index in indexes:
            if self._defines(index) and (keep is None or self.name(self.names[index]) in keep):
                yield index

    def _defines(self, index: int) -> bool:
        return self.shndx[index] != SHN_UNDEF and self._global(index)


class _GnuHash:
    """DT_GNU_HASH: the buckets and chains the loader walks to find a name."""

    def __init__(self, symoffset: int, buckets: array[int], chains: array[int]) -> None:
        self.symoffset, self.buckets, self.chains = symoffset, buckets, chains

    @classmethod
    def read(cls, layout: Layout, vaddr: int, nsyms: int, swap: bool) -> _GnuHash | None:
        head = layout.read(vaddr, 16)
        if head is None:
            return None
        nbuckets, symoffset, bloom_size, _ = struct.unpack_from(layout.end + "IIII", head)
        buckets_at = 16 + bloom_size * (8 if layout.is64 else 4)
        buckets = layout.read(vaddr + buckets_at, 4 * nbuckets) if nbuckets else None
        chains = layout.read(vaddr + buckets_at + 4 * nbuckets, 4 * (nsyms - symoffset)) if nsyms > symoffset else b""
        if buckets is None or chains is None:
            return None
        return cls(symoffset, _column(buckets, "I", swap), _column(chains, "I", swap))

    def candidates(self, h: int) -> Iterator[int]:
        """Symbol indexes in the chain of the name whose hash is ``h`` that have it."""
        index = self.buckets[h % len(self.buckets)]
        if index < self.symoffset:
            return
        for _ in range(MAX_CHAIN):
            if index - self.symoffset >= len(self.chains):
                return
            value = self.chains[index - self.symoffset]
            if (value | 1) == (h | 1):
                yield index
            if value & 1:
                return
            index += 1
        raise LongChain(h)


@functools.lru_cache(maxsize=4)
def _encoded(wanted: frozenset[str]) -> frozenset[bytes]:
    """The names as the file spells them; once per set of names, not once per file."""
    return frozenset(n.encode("utf-8", "surrogateescape") for n in wanted)


@functools.lru_cache(maxsize=4)
def _hashed(wanted: frozenset[str]) -> dict[bytes, int]:
    """Each name's GNU hash (glibc's dl_new_hash), once per set of names."""
    out = {}
    for name in _encoded(wanted):
        h = 5381
        for c in name:
            h = (h * 33 + c) & 0xFFFFFFFF
        out[name] = h
    return out


def _column(data: bytes, code: str, swap: bool) -> array[int]:
    values = array(code)
    values.frombytes(data[: len(data) - len(data) % values.itemsize])
    if swap:
        values.byteswap()
    return values


def _version_names(layout: Layout, dyn: dict[int, int], strtab: bytes) -> dict[int, str]:
    """Version index to name: VERNEED's vna_other to its name, VERDEF's vd_ndx to its
    first name (a definition wins when a file gives one index to both)."""
    names: dict[int, str] = {}
    if DT_VERNEED in dyn:
        # Elf_Vernaux: vna_other at 6, vna_name at 8
        for _, _, _, aux in version_entries(layout, dyn[DT_VERNEED], dyn.get(DT_VERNEEDNUM, 0), VERNEED):
            if aux is not None:
                other, name = struct.unpack_from(layout.end + "HI", aux, 6)
                names[other] = _text(_name_at(strtab, name))
    if DT_VERDEF in dyn:
        # Elf_Verdef: vd_ndx at 4; Elf_Verdaux: vda_name at 0
        firsts: dict[int, str] = {}
        for _, head, _, aux in version_entries(layout, dyn[DT_VERDEF], dyn.get(DT_VERDEFNUM, 0), VERDEF):
            if aux is not None:
                (ndx,) = struct.unpack_from(layout.end + "H", head, 4)
                firsts.setdefault(ndx, _text(_name_at(strtab, struct.unpack_from(layout.end + "I", aux, 0)[0])))
        names.update(firsts)
    return names


def _name_at(table: bytes, offset: int) -> bytes:
    """The NUL-ended name at ``offset``; ValueError when it is not inside the table."""
    if offset >= len(table):
        raise ValueError("name outside the string table")
    return table[offset : table.index(b"\0", offset)]


def _text(name: bytes) -> str:
    """Names are bytes to the loader: undecodable ones travel as surrogate escapes."""
    return name.decode("utf-8", "surrogateescape")
