"""Compact images of ELF files: what LIEF needs to read the dynamic facts, nothing else.

LIEF reads a whole file into memory before parsing it: 1.2 GB for the 1,150 files of
a system's /usr/bin and /usr/lib, and 1.1 times the largest file (libLLVM, a browser)
at once. The loader itself needs a few KB of each: the dynamic section, the dynamic
string table and the version tables (and, for symbol checks, the dynamic symbol table,
its hash table and versions). A compact image is a small, valid ELF file holding only
those, each at a new file offset and mapped at its original virtual address by a
PT_LOAD of its own, so LIEF finds every address where the file had it:

    ELF header (no section headers) | PT_LOAD... PT_DYNAMIC | the regions, in order

Every region is read with ``os.pread`` from the open descriptor, bounded by the file
part of the PT_LOAD that holds it. When the layout does not allow this (an address
outside every segment, a table that runs past its segment, more than a bounded number
of entries), ``compact_image`` returns None and the caller parses the whole file:
the compact image is an optimisation, never a different answer. A test compares the
facts of both on every ELF file of the machine's /usr.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from minify.elf.files import PT_DYNAMIC

if TYPE_CHECKING:
    from minify.elf.files import ElfHeader, Opened

PT_LOAD = 1
SHT_DYNSYM = 11
DT_NULL = 0
DT_HASH = 4
DT_STRTAB = 5
DT_SYMTAB = 6
DT_STRSZ = 10
DT_SYMENT = 11
DT_GNU_HASH = 0x6FFFFEF5
DT_VERSYM = 0x6FFFFFF0
DT_VERDEF = 0x6FFFFFFC
DT_VERDEFNUM = 0x6FFFFFFD
DT_VERNEED = 0x6FFFFFFE
DT_VERNEEDNUM = 0x6FFFFFFF
#: Bounds on what a hostile file can make us read or walk.
MAX_ENTRIES = 1 << 16  # version needs, definitions and their aux entries
MAX_SYMBOLS = 1 << 22
MAX_REGION = 256 << 20


@dataclass(frozen=True)
class _Load:
    offset: int
    vaddr: int
    filesz: int


class Layout:
    """The file's PT_LOADs and its dynamic entries: addresses to file offsets."""

    def __init__(self, f: Opened, header: ElfHeader) -> None:
        self.f = f
        self.size = f.st.st_size
        self.is64 = header.elf_class == 64
        self.sym_size = 24 if self.is64 else 16  # Elf64_Sym, Elf32_Sym: DT_SYMENT's default
        self.end = "<" if header.endian.value == "little" else ">"
        head = f.pread(64, 0)
        fmt = self.end + ("Q" if self.is64 else "I")
        self.phoff = struct.unpack_from(fmt, head, 32 if self.is64 else 28)[0]
        self.phentsize, self.phnum = struct.unpack_from(self.end + "HH", head, 54 if self.is64 else 42)
        self.head = head[: 64 if self.is64 else 52]
        self.loads: list[_Load] = []
        self.dynamic: tuple[int, int, int] | None = None  # offset, vaddr, size
        self._program_headers()

    def _program_headers(self) -> None:
        table = self.f.pread(self.phnum * self.phentsize, self.phoff)
        for i in range(self.phnum):
            at = i * self.phentsize
            if self.is64:
                p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(self.end + "IIQQQQ", table, at)
            else:
                p_type, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(self.end + "IIIII", table, at)
            if p_type == PT_LOAD:
                self.loads.append(_Load(p_offset, p_vaddr, p_filesz))
            elif p_type == PT_DYNAMIC:
                self.dynamic = (p_offset, p_vaddr, p_filesz)

    def offset(self, vaddr: int, size: int) -> int | None:
        """The file offset of ``size`` bytes at ``vaddr``, when one PT_LOAD holds them
        and they lie inside the file."""
        for load in self.loads:
            if load.vaddr <= vaddr and vaddr + size <= load.vaddr + load.filesz:
                at = load.offset + (vaddr - load.vaddr)
                return at if 0 <= size and at + size <= self.size else None
        return None

    def read(self, vaddr: int, size: int) -> bytes | None:
        at = self.offset(vaddr, size)
        if at is None or size > MAX_REGION:
            return None
        data = self.f.pread(size, at)
        return data if len(data) == size else None

    def entries(self) -> dict[int, int] | None:
        """The dynamic entries up to DT_NULL (the first of each tag)."""
        if self.dynamic is None:
            return None
        offset, _, size = self.dynamic
        out: dict[int, int] = {}
        for tag, value in dynamic_pairs(self.f.pread(size, offset), self.end, is64=self.is64):
            out.setdefault(tag, value)
        return out


def dynamic_pairs(raw: bytes, end: str, *, is64: bool) -> list[tuple[int, int]]:
    """(d_tag, d_val) of a raw dynamic section (``end``: "<" or ">"), up to DT_NULL."""
    fmt = end + ("qQ" if is64 else "iI")
    step = struct.calcsize(fmt)
    pairs = []
    for at in range(0, len(raw) - step + 1, step):
        tag, value = struct.unpack_from(fmt, raw, at)
        if tag == DT_NULL:
            break
        pairs.append((tag, value))
    return pairs


def compact_image(f: Opened, header: ElfHeader, *, symbols: bool) -> bytes | None:
    """A small ELF image with the regions LIEF reads for the dynamic facts (and, with
    ``symbols``, the dynamic symbols); None when this file needs a whole-file parse."""
    layout = Layout(f, header)
    dyn = layout.entries()
    if dyn is None or layout.dynamic is None or DT_STRTAB not in dyn or DT_STRSZ not in dyn:
        return None
    _, dyn_vaddr, dyn_size = layout.dynamic
    regions = [(dyn_vaddr, dyn_size), (dyn[DT_STRTAB], dyn[DT_STRSZ])]
    for tag, count, walk in ((DT_VERNEED, DT_VERNEEDNUM, _verneed_size), (DT_VERDEF, DT_VERDEFNUM, _verdef_size)):
        if tag in dyn:
            size = walk(layout, dyn[tag], dyn.get(count, 0))
            if size is None:
                return None
            regions.append((dyn[tag], size))
    dynsym = None
    if symbols:
        tables = _symbol_regions(layout, dyn)
        if tables is None:
            return None
        regions.extend(tables)
        if DT_SYMTAB in dyn:
            dynsym = tables[-1] if DT_VERSYM not in dyn else tables[-2]
    return _build(layout, regions, dynsym, dyn.get(DT_SYMENT, layout.sym_size))


class Chain(NamedTuple):
    """Where a version table's entries keep their counts and links."""

    size: int
    cnt_at: int
    aux_at: int
    next_at: int
    aux_size: int
    aux_next_at: int


#: Elf_Verneed: 16 bytes, vn_cnt at 2, vn_aux at 8, vn_next at 12; Elf_Vernaux: 16
#: bytes, vna_next at 12.
VERNEED = Chain(16, 2, 8, 12, 16, 12)
#: Elf_Verdef: 20 bytes, vd_cnt at 6, vd_aux at 12, vd_next at 16; Elf_Verdaux: 8
#: bytes, vda_next at 4.
VERDEF = Chain(20, 6, 12, 16, 8, 4)


def _verneed_size(layout: Layout, vaddr: int, count: int) -> int | None:
    """Bytes from DT_VERNEED to the end of its last entry."""
    return _chain_size(layout, vaddr, count, VERNEED)


def _verdef_size(layout: Layout, vaddr: int, count: int) -> int | None:
    """The same for DT_VERDEF."""
    return _chain_size(layout, vaddr, count, VERDEF)


def _chain_size(layout: Layout, vaddr: int, count: int, chain: Chain) -> int | None:
    extent = 0
    try:
        for at, _, where, body in version_entries(layout, vaddr, count, chain):
            extent = max(extent, at + chain.size, where + chain.aux_size if body is not None else 0)
    except ValueError:
        return None
    return extent


def version_entries(
    layout: Layout, vaddr: int, count: int, chain: Chain
) -> Iterator[tuple[int, bytes, int, bytes | None]]:
    """(offset, entry, aux offset, aux entry) of a VERNEED or VERDEF chain: each entry
    once with no aux entry, then once per aux entry; ``count`` entries, each with its
    own count of aux entries, as the loader walks them. ValueError when the chain
    leaves the file."""
    size, cnt_at, aux_at, next_at, aux_size, aux_next_at = chain
    if not 0 < count <= MAX_ENTRIES:
        raise ValueError("version table count")
    at = 0
    for _ in range(count):
        head = layout.read(vaddr + at, size)
        if head is None:
            raise ValueError("version table outside the file")
        (cnt,) = struct.unpack_from(layout.end + "H", head, cnt_at)
        (first_aux,) = struct.unpack_from(layout.end + "I", head, aux_at)
        (nxt,) = struct.unpack_from(layout.end + "I", head, next_at)
        yield at, head, 0, None
        where = at + first_aux
        for _ in range(min(cnt, MAX_ENTRIES)):
            body = layout.read(vaddr + where, aux_size)
            if body is None:
                raise ValueError("version table outside the file")
            yield at, head, where, body
            (step,) = struct.unpack_from(layout.end + "I", body, aux_next_at)
            if not step:
                break
            where += step
        if not nxt:
            break
        at += nxt


def _symbol_regions(layout: Layout, dyn: dict[int, int]) -> list[tuple[int, int]] | None:
    """DT_SYMTAB, DT_VERSYM and the hash tables LIEF counts the symbols with."""
    if DT_SYMTAB not in dyn:
        return []
    counted = symbol_count(layout, dyn)
    if counted is None:
        return None
    nsyms, regions = counted
    entsize = dyn.get(DT_SYMENT, layout.sym_size)
    regions.append((dyn[DT_SYMTAB], nsyms * entsize))
    if DT_VERSYM in dyn:
        regions.append((dyn[DT_VERSYM], nsyms * 2))
    return regions


def symbol_count(layout: Layout, dyn: dict[int, int]) -> tuple[int, list[tuple[int, int]]] | None:
    """The number of dynamic symbols as LIEF counts them (the .dynsym section header
    when the file has one, else the larger of the hash tables' counts), and the hash
    tables' regions; None when the tables do not add up."""
    regions: list[tuple[int, int]] = []
    counts: list[int] = []
    if DT_HASH in dyn:
        head = layout.read(dyn[DT_HASH], 8)
        if head is None:
            return None
        nbucket, nchain = struct.unpack_from(layout.end + "II", head)
        regions.append((dyn[DT_HASH], 8 + 4 * (nbucket + nchain)))
        counts.append(nchain)
    if DT_GNU_HASH in dyn:
        gnu = _gnu_hash(layout, dyn[DT_GNU_HASH])
        if gnu is None:
            return None
        regions.append((dyn[DT_GNU_HASH], gnu[0]))
        counts.append(gnu[1])
    from_sections = _dynsym_count(layout, dyn[DT_SYMTAB])
    if from_sections is not None:
        counts = [from_sections]  # what LIEF counts from a whole file (a GNU hash table
        # leaves out the imports after its last bucket: libstdbuf.so has 17 symbols, its
        # table implies 1)
    if not counts or max(counts) > MAX_SYMBOLS:
        return None
    return max(counts), regions


def _dynsym_count(layout: Layout, symtab: int) -> int | None:
    """The number of symbols of the file's own .dynsym section header, if it has one
    at DT_SYMTAB."""
    head, end = layout.head, layout.end
    if layout.is64:
        (shoff,) = struct.unpack_from(end + "Q", head, 40)
        shentsize, shnum = struct.unpack_from(end + "HH", head, 58)
        fmt, want = end + "IIQQQQIIQQ", 64
    else:
        (shoff,) = struct.unpack_from(end + "I", head, 32)
        shentsize, shnum = struct.unpack_from(end + "HH", head, 46)
        fmt, want = end + "IIIIIIIIII", 40
    if not shnum or shentsize != want or shnum > MAX_ENTRIES or shoff + shnum * want > layout.size:
        return None
    table = layout.f.pread(shnum * want, shoff)
    if len(table) != shnum * want:
        return None
    for i in range(shnum):
        _, sh_type, _, sh_addr, _, sh_size, _, _, _, sh_entsize = struct.unpack_from(fmt, table, i * want)
        if sh_type == SHT_DYNSYM and sh_addr == symtab and sh_entsize:
            return int(sh_size // sh_entsize)
    return None


def _gnu_hash(layout: Layout, vaddr: int) -> tuple[int, int] | None:
    """The size of a DT_GNU_HASH table and the number of symbols it implies."""
    head = layout.read(vaddr, 16)
    if head is None:
        return None
    nbuckets, symoffset, bloom_size, _ = struct.unpack_from(layout.end + "IIII", head)
    word = 8 if layout.is64 else 4
    buckets_at = 16 + bloom_size * word
    if nbuckets > MAX_SYMBOLS or bloom_size > MAX_SYMBOLS:
        return None
    raw = layout.read(vaddr + buckets_at, 4 * nbuckets)
    if raw is None:
        return None
    buckets = struct.unpack(f"{layout.end}{nbuckets}I", raw)
    last = max(buckets, default=0)
    if last < symoffset:
        return buckets_at + 4 * nbuckets, symoffset
    chains_at = buckets_at + 4 * nbuckets
    index = last
    while index - symoffset < MAX_SYMBOLS:
        value = layout.read(vaddr + chains_at + 4 * (index - symoffset), 4)
        if value is None:
            return None
        if struct.unpack(layout.end + "I", value)[0] & 1:
            break
        index += 1
    else:
        return None
    return chains_at + 4 * (index - symoffset + 1), index + 1


def _build(
    layout: Layout, regions: list[tuple[int, int]], dynsym: tuple[int, int] | None, entsize: int
) -> bytes | None:
    """The image: ELF header, one PT_LOAD per merged region, PT_DYNAMIC, the bytes,
    and with ``dynsym`` a section header table of a null section and .dynsym (LIEF
    counts the dynamic symbols from it: its count from a GNU hash table alone is 0)."""
    merged: list[list[int]] = []
    for vaddr, size in sorted(r for r in regions if r[1] > 0):
        if merged and vaddr <= merged[-1][1]:
            start, stop = merged[-1][0], max(merged[-1][1], vaddr + size)
            if layout.offset(start, stop - start) is not None:  # one segment holds both
                merged[-1][1] = stop
                continue
        merged.append([vaddr, vaddr + size])
    is64, end = layout.is64, layout.end
    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    count = len(merged) + 1
    data_at = ehsize + count * phentsize
    blobs: list[bytes] = []
    phdrs: list[bytes] = []
    at = data_at
    placed: list[tuple[int, int, int]] = []  # vaddr, end, new offset
    for start, stop in merged:
        blob = layout.read(start, stop - start)
        if blob is None:
            return None
        phdrs.append(_phdr(is64, end, PT_LOAD, at, start, len(blob)))
        placed.append((start, stop, at))
        blobs.append(blob)
        at += len(blob)
    _, dyn_vaddr, dyn_size = layout.dynamic  # type: ignore[misc]
    dyn_at = next((off + dyn_vaddr - s for s, e, off in placed if s <= dyn_vaddr and dyn_vaddr + dyn_size <= e), None)
    if dyn_at is None:
        return None
    phdrs.append(_phdr(is64, end, PT_DYNAMIC, dyn_at, dyn_vaddr, dyn_size))
    sections = b""
    if dynsym is not None:
        sym_vaddr, sym_size = dynsym
        sym_at = next((off + sym_vaddr - s for s, e, off in placed if s <= sym_vaddr < e), None)
        if sym_at is None:
            return None
        sections = _shdr(is64, end, 0, 0, 0, 0, 0) + _shdr(is64, end, SHT_DYNSYM, sym_vaddr, sym_at, sym_size, entsize)
    head = _ehdr(layout, count, at if sections else 0, 2 if sections else 0)
    return head + b"".join(phdrs) + b"".join(blobs) + sections


def _shdr(is64: bool, end: str, sh_type: int, addr: int, offset: int, size: int, entsize: int) -> bytes:
    if is64:
        return struct.pack(end + "IIQQQQIIQQ", 0, sh_type, 2, addr, offset, size, 0, 1, 8, entsize)
    return struct.pack(end + "IIIIIIIIII", 0, sh_type, 2, addr, offset, size, 0, 1, 4, entsize)


def _phdr(is64: bool, end: str, p_type: int, offset: int, vaddr: int, size: int) -> bytes:
    if is64:
        return struct.pack(end + "IIQQQQQQ", p_type, 4, offset, vaddr, vaddr, size, size, 1)
    return struct.pack(end + "IIIIIIII", p_type, offset, vaddr, vaddr, size, size, 4, 1)


def _ehdr(layout: Layout, phnum: int, shoff: int, shnum: int) -> bytes:
    """The file's own ELF header with the program headers right after it, and the
    section headers (if any) at the end."""
    head = bytearray(layout.head)
    end = layout.end
    if layout.is64:
        struct.pack_into(end + "Q", head, 32, 64)  # e_phoff
        struct.pack_into(end + "Q", head, 40, shoff)  # e_shoff
        struct.pack_into(end + "HH", head, 54, 56, phnum)  # e_phentsize, e_phnum
        struct.pack_into(end + "HHH", head, 58, 64, shnum, 0)  # e_shentsize, e_shnum, e_shstrndx
    else:
        struct.pack_into(end + "I", head, 28, 52)
        struct.pack_into(end + "I", head, 32, shoff)
        struct.pack_into(end + "HH", head, 42, 32, phnum)
        struct.pack_into(end + "HHH", head, 46, 40, shnum, 0)
    return bytes(head)
