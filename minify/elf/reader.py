"""Facts about ELF files: the only module that imports LIEF.

Every file is validated here before LIEF sees it (LIEF blocks on FIFOs, runs out of
memory on directories and silently returns an empty library list for many corrupt
files), then parsed once with a minimal configuration, and reduced to a frozen
``ElfInfo``. No LIEF object leaves this module.
"""

from __future__ import annotations

import functools
import signal
import struct
import warnings
from typing import TYPE_CHECKING, Any

from minify.elf.compact import DT_STRSZ, DT_STRTAB, compact_image, dynamic_pairs
from minify.elf.files import (
    DF_1_NODEFLIB,
    MAX_ELF_SIZE,
    SHN_UNDEF,
    STB_LOCAL,
    STB_WEAK,
    VER_FLG_WEAK,
    VERSYM_HIDDEN,
    ElfHeader,
    ElfInfo,
    Endian,
    Opened,
    SymbolRef,
    Symbols,
    VersionNeed,
    _read_header,
    _use,
)
from minify.errors import CorruptElf
from minify.text import is_number

if TYPE_CHECKING:
    pass

_LIEF: Any = None
_CONFIGS: dict[object, Any] = {}

# Dynamic tags, compared as integers: LIEF's enum differs between releases (0.15 has no
# FILTER member) and warns on values it does not know. (DT_STRTAB and DT_STRSZ come
# from minify.elf.compact, which reads the dynamic section too.)
DT_NEEDED = 1
DT_SONAME = 14
DT_RPATH = 15
DT_RUNPATH = 29
DT_FLAGS_1 = 0x6FFFFFFB
DT_AUXILIARY = 0x7FFFFFFD
DT_FILTER = 0x7FFFFFFF
#: LIEF stops reading a dynamic section after this many entries.
LIEF_DYNAMIC_CAP = 1000
#: Every tag the ELF gABI and the OS/processor ranges define is below 2**31; LIEF
#: reports a tag it cannot name as UNKNOWN (2**64 - 1) or with its own high bits.
MAX_KNOWN_TAG = 0x7FFFFFFF


def _lief() -> Any:
    """Import LIEF on first use: it costs half a second, which `--help` must not pay."""
    global _LIEF  # noqa: PLW0603 - a lazily imported module, not state
    if _LIEF is None:
        # Ctrl-C in the middle of LIEF's native initialisation ends in std::terminate:
        # SIGINT waits until the import is done, then interrupts Python code as usual
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            import lief

            lief.logging.disable()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        _LIEF = lief
    return _LIEF


def _parse(f: Opened, header: ElfHeader, *, symbols: bool = False, compact: bool = True) -> Any:
    """LIEF's parse of an open file with only what is asked for: no relocations, no
    static symbol table, no notes, no overlay; dynamic symbols only when asked. LIEF
    is given a compact image of the file (``minify.elf.compact``) where the file's layout
    allows one, else the whole file."""
    lief = _lief()
    config = _CONFIGS.get(symbols)
    if config is None:
        config = lief.ELF.ParserConfig()
        config.parse_dyn_symbols = symbols
        config.parse_symtab_symbols = False
        config.parse_relocations = False
        config.parse_notes = False
        config.parse_overlay = False
        config.parse_symbol_versions = True
        _CONFIGS[symbols] = config
    image = _compact(f, header, symbols=symbols) if compact and _compact_parses() else None
    if image is not None and symbols:
        config = _section_counted(config)
    binary = lief.ELF.parse(image if image is not None else f.lief_name, config)
    if binary is None:
        raise CorruptElf(f.name, "LIEF could not parse it")
    return binary


def _compact(f: Opened, header: ElfHeader, *, symbols: bool) -> bytes | None:
    """A compact image, or None: a file whose tables do not add up is parsed whole,
    and LIEF's verdict on it stands."""
    try:
        return compact_image(f, header, symbols=symbols)
    except (struct.error, OverflowError, ValueError, OSError):
        return None


@functools.cache
def _compact_parses() -> bool:
    """LIEF 1.0 and later parse compact images exactly as the whole files (tested on
    every ELF file of /usr); 0.15 refuses them (and crashes at exit after parsing
    bytes), so older releases are given the whole file."""
    version = str(getattr(_lief(), "__version__", "0"))
    major = version.split(".", 1)[0]
    return is_number(major) and int(major) >= 1


def _section_counted(config: Any) -> Any:
    """A copy of ``config`` that counts the dynamic symbols from the .dynsym section
    header, the one section a compact image has."""
    key = "section"
    counted = _CONFIGS.get(key)
    if counted is None:
        lief = _lief()
        counted = lief.ELF.ParserConfig()
        for name in ("parse_dyn_symbols", "parse_symtab_symbols", "parse_relocations", "parse_notes"):
            setattr(counted, name, getattr(config, name))
        counted.parse_overlay = False
        counted.parse_symbol_versions = True
        counted.count_mtd = type(config.count_mtd).SECTION
        _CONFIGS[key] = counted
    return counted


def read_elf(source: str | Opened, *, compact: bool = True) -> ElfInfo:
    """Read the facts of one ELF file; raise ``BadInput`` when it is not usable.
    ``compact=False`` hands LIEF the whole file (the reference the compact image is
    tested against)."""
    with _use(source) as f:
        header, size = _read_header(f)
        if not header.has_dynamic:
            return ElfInfo(header, size, (), None, None, None, (), (), False, (), ())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # users see minify's words, not LIEF's
                binary = _parse(f, header, compact=compact)
                return _facts(binary, f, header, size)
        except (MemoryError, RuntimeError, ValueError, struct.error) as exc:
            # UnicodeDecodeError included: LIEF decodes names as UTF-8 and raises on
            # garbage; a damaged string table is a damaged file, not a crash.
            raise CorruptElf(f.name, f"unreadable dynamic section ({type(exc).__name__})") from None


def read_symbols(source: str | Opened, *, compact: bool = True) -> Symbols:
    """The dynamic symbol table of an ELF file, with symbol versions."""
    with _use(source) as f:
        header, _ = _read_header(f)
        if not header.has_dynamic:
            return Symbols((), frozenset(), frozenset())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _symbols(_parse(f, header, symbols=True, compact=compact))
        except (MemoryError, RuntimeError, ValueError) as exc:
            raise CorruptElf(f.name, f"unreadable dynamic symbols ({type(exc).__name__})") from None


def _symbols(binary: Any) -> Symbols:
    imports: list[SymbolRef] = []
    defined: set[tuple[str, str | None]] = set()
    hidden: set[tuple[str, str | None]] = set()
    for sym in binary.dynamic_symbols:
        binding = int(sym.binding)
        if binding == STB_LOCAL or not sym.name:
            continue
        version: str | None = None
        index = 1
        if sym.has_version:
            index = sym.symbol_version.value
            aux = sym.symbol_version.symbol_version_auxiliary
            if aux is not None and (index & 0x7FFF) > 1:
                version = _text(aux.name)
        name = _text(sym.name)
        if sym.shndx == SHN_UNDEF:
            imports.append(SymbolRef(name, version, binding == STB_WEAK))
        elif index & VERSYM_HIDDEN:
            hidden.add((name, version))
        else:
            defined.add((name, version))
    return Symbols(tuple(imports), frozenset(defined), frozenset(hidden))


def _facts(binary: Any, f: Opened, header: ElfHeader, size: int) -> ElfInfo:
    """Copy what the resolver needs out of a parsed LIEF binary."""
    entries = [(int(e.tag), e) for e in binary.dynamic_entries]
    if not entries:
        # LIEF logs "PT_DYNAMIC parsing failed" and returns an empty list; the loader
        # would refuse the file, so we must not report it as having no dependencies.
        raise CorruptElf(f.name, "its dynamic section cannot be read")
    if len(entries) >= LIEF_DYNAMIC_CAP or any(t > MAX_KNOWN_TAG for t, _ in entries):
        # LIEF stopped reading, or could not name a tag (0.15 turns DT_FILTER into
        # UNKNOWN): read every entry from the file's own PT_DYNAMIC instead
        return _facts_from_raw(binary, f, header, size)
    names = _named_entries(binary, entries)
    needed, filters, auxiliaries = names[DT_NEEDED], names[DT_FILTER], names[DT_AUXILIARY]
    soname, rpath, runpath = (names[t][-1] if names[t] else None for t in (DT_SONAME, DT_RPATH, DT_RUNPATH))
    flags = [e.value for t, e in entries if t == DT_FLAGS_1]  # the last one counts, as in ld.so
    nodeflib = bool(flags and flags[-1] & DF_1_NODEFLIB)
    needs, defs = _versions(binary)
    return ElfInfo(
        header=header,
        size=size,
        needed=tuple(needed),
        soname=soname,
        rpath=rpath,
        runpath=runpath,
        filters=tuple(filters),
        auxiliaries=tuple(auxiliaries),
        nodeflib=nodeflib,
        version_needs=needs,
        version_defs=defs,
    )


def _named_entries(binary: Any, entries: list[tuple[int, Any]]) -> dict[int, list[str]]:
    """The names of DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH, DT_FILTER and
    DT_AUXILIARY entries, in order; LIEF names the first four, the filters' names come
    from the dynamic string table."""
    names: dict[int, list[str]] = {t: [] for t in (DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH, DT_FILTER, DT_AUXILIARY)}
    strtab = None
    for t, entry in entries:
        if t in (DT_NEEDED, DT_SONAME):
            names[t].append(_text(entry.name))
        elif t == DT_RPATH:
            names[t].append(_text(entry.rpath))
        elif t == DT_RUNPATH:
            names[t].append(_text(entry.runpath))
        elif t in (DT_FILTER, DT_AUXILIARY):
            if strtab is None:
                strtab = _dynamic_strings(binary, [(tag, e.value) for tag, e in entries])
            names[t].append(_string_at(strtab, entry.value))
    return names


def _facts_from_raw(binary: Any, f: Opened, header: ElfHeader, size: int) -> ElfInfo:
    """Every dynamic entry up to DT_NULL, read from the file's PT_DYNAMIC, for the
    objects whose dynamic section is longer than LIEF reads; strings through LIEF."""
    offset, length = header.dynamic
    end = "<" if header.endian is Endian.LITTLE else ">"
    pairs = dynamic_pairs(f.pread(length, offset), end, is64=header.elf_class == 64)
    strtab = _dynamic_strings(binary, pairs)

    def strings(tag: int) -> list[str]:
        return [_string_at(strtab, value) for t, value in pairs if t == tag]

    def one(tag: int) -> str | None:
        found = strings(tag)
        return found[-1] if found else None

    nodeflib = any(t == DT_FLAGS_1 and v & DF_1_NODEFLIB for t, v in pairs)
    needs, defs = _versions(binary)
    return ElfInfo(
        header=header,
        size=size,
        needed=tuple(strings(DT_NEEDED)),
        soname=one(DT_SONAME),
        rpath=one(DT_RPATH),
        runpath=one(DT_RUNPATH),
        filters=tuple(strings(DT_FILTER)),
        auxiliaries=tuple(strings(DT_AUXILIARY)),
        nodeflib=nodeflib,
        version_needs=needs,
        version_defs=defs,
    )


def _versions(binary: Any) -> tuple[tuple[VersionNeed, ...], tuple[str, ...]]:
    """VERNEED (per file, the versions needed) and VERDEF (the versions defined)."""
    needs = []
    for req in binary.symbols_version_requirement:
        versions: list[str] = []
        weak: list[str] = []
        for aux in req.get_auxiliary_symbols():
            (weak if aux.flags & VER_FLG_WEAK else versions).append(_text(aux.name))
        needs.append(VersionNeed(_text(req.name), tuple(versions), tuple(weak)))
    defs = []
    for definition in binary.symbols_version_definition:
        if definition.flags & 0x1:  # VER_FLG_BASE names the file itself
            continue
        aux = list(definition.auxiliary_symbols)
        if aux:
            defs.append(_text(aux[0].name))
    return tuple(needs), tuple(defs)


def _text(value: str | bytes) -> str:
    """LIEF gives str for UTF-8 names and bytes for the rest; names are bytes to the
    loader, so keep undecodable ones losslessly."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _dynamic_strings(binary: Any, pairs: list[tuple[int, int]]) -> bytes:
    """The bytes of DT_STRTAB, for names LIEF does not give (DT_FILTER, DT_AUXILIARY,
    entries past its cap)."""
    addr = size = None
    for tag, value in pairs:
        if tag == DT_STRTAB:
            addr = value
        elif tag == DT_STRSZ:
            size = value
    if addr is None or size is None or size > MAX_ELF_SIZE:
        return b""
    return bytes(binary.get_content_from_virtual_address(addr, size))


def _string_at(table: bytes, offset: int) -> str:
    return table[offset:].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
