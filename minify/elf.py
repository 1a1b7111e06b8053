"""Facts about ELF files: the only module that imports LIEF.

Every file is validated here before LIEF sees it (LIEF blocks on FIFOs, runs out of
memory on directories and silently returns an empty library list for many corrupt
files), then parsed once with a minimal configuration, and reduced to a frozen
``ElfInfo``. No LIEF object leaves this module.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from minify.errors import BadInput, CorruptElf, FileTooLarge, NotElf, NotRegularFile

if TYPE_CHECKING:
    from collections.abc import Iterator

ELF_MAGIC = b"\x7fELF"
#: The largest file we accept as an ELF object. The biggest shared objects on a
#: desktop (libLLVM, Chromium) are a few hundred MB; anything beyond this is a sparse
#: file, a disk image or a mistake, and must not be read into memory.
MAX_ELF_SIZE = 1 << 30

PT_DYNAMIC = 2
PT_INTERP = 3
ET_EXEC = 2
ET_DYN = 3
ELFOSABI_SYSV = 0
ELFOSABI_GNU = 3

VER_FLG_WEAK = 0x2
DF_1_NODEFLIB = 0x800
STB_LOCAL = 0
STB_WEAK = 2
SHN_UNDEF = 0
VERSYM_HIDDEN = 0x8000


class Endian(Enum):
    LITTLE = "little"
    BIG = "big"


@dataclass(frozen=True)
class ElfHeader:
    """What the loader checks before mapping a candidate (glibc open_verify)."""

    elf_class: int  # 32 or 64
    endian: Endian
    osabi: int
    file_type: int
    machine: int
    has_dynamic: bool
    interpreter: str | None


@dataclass(frozen=True)
class VersionNeed:
    """One VERNEED entry: the versions this object needs from the file ``soname``."""

    soname: str
    versions: tuple[str, ...]
    weak: tuple[str, ...] = ()


@dataclass(frozen=True)
class ElfInfo:
    """What the resolver needs to know about one object, as plain values."""

    header: ElfHeader
    size: int
    needed: tuple[str, ...]
    soname: str | None
    rpath: str | None
    runpath: str | None
    filters: tuple[str, ...]
    auxiliaries: tuple[str, ...]
    nodeflib: bool
    version_needs: tuple[VersionNeed, ...]
    version_defs: tuple[str, ...]

    @property
    def interpreter(self) -> str | None:
        return self.header.interpreter

    @property
    def is_dynamic(self) -> bool:
        return self.header.has_dynamic


def open_regular(path: str) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking on FIFOs; refuse non-files.

    O_NONBLOCK makes opening a FIFO return at once, and fstat on the open
    descriptor means the file we check is the file we read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except IsADirectoryError:
        raise NotRegularFile(path, "is a directory, not a file") from None
    except OSError as exc:
        raise BadInput(path, exc.strerror or str(exc)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(path, f"is a {_kind_of(st.st_mode)}, not a regular file")
    return fd, st


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def read_prefix(path: str, size: int) -> bytes:
    """The first ``size`` bytes of a regular file (scripts, magic sniffing)."""
    fd, _ = open_regular(path)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def is_elf(path: str) -> bool:
    """True when ``path`` is a regular file that starts with the ELF magic."""
    try:
        return read_prefix(path, 4) == ELF_MAGIC
    except BadInput:
        return False


def read_header(path: str) -> tuple[ElfHeader, int]:
    """Validate and read the ELF header and program headers, without LIEF.

    Returns the header facts and the file size. Raises ``BadInput`` subclasses with
    the loader's own words where it has them ("file too short", "invalid ELF header").
    """
    fd, st = open_regular(path)
    try:
        size = st.st_size
        if size > MAX_ELF_SIZE:
            raise FileTooLarge(path, f"{size} bytes is larger than any ELF object minify reads")
        head = os.pread(fd, 64, 0)
        if not head:
            raise NotElf(path, "empty file (file too short)")
        if head[:4] != ELF_MAGIC[: len(head)]:
            raise NotElf(path, "not an ELF file (invalid ELF header)")
        if len(head) < 16:
            raise NotElf(path, "file too short to be ELF")
        elf_class = {1: 32, 2: 64}.get(head[4])
        endian = {1: Endian.LITTLE, 2: Endian.BIG}.get(head[5])
        if elf_class is None or endian is None or head[6] != 1:
            raise CorruptElf(path, "invalid ELF identification bytes")
        fmt = "<" if endian is Endian.LITTLE else ">"
        ehdr_size = 52 if elf_class == 32 else 64
        if len(head) < ehdr_size:
            raise CorruptElf(path, "file too short for its ELF header")
        if elf_class == 64:
            e_type, e_machine, _, _, e_phoff = struct.unpack_from(fmt + "HHIQQ", head, 16)
            e_phentsize, e_phnum = struct.unpack_from(fmt + "HH", head, 54)
        else:
            e_type, e_machine, _, _, e_phoff = struct.unpack_from(fmt + "HHIII", head, 16)
            e_phentsize, e_phnum = struct.unpack_from(fmt + "HH", head, 42)
        has_dynamic = False
        interpreter = None
        if e_phnum:
            want = 56 if elf_class == 64 else 32
            if e_phentsize != want:
                raise CorruptElf(path, f"program header entry size {e_phentsize}, expected {want}")
            if e_phoff + e_phnum * e_phentsize > size:
                raise CorruptElf(path, "program headers lie outside the file")
            table = os.pread(fd, e_phnum * e_phentsize, e_phoff)
            for p_type, p_offset, p_filesz in _segments(table, fmt, elf_class, e_phnum):
                if p_type not in (PT_DYNAMIC, PT_INTERP):
                    continue
                if p_offset + p_filesz > size:
                    name = "dynamic section" if p_type == PT_DYNAMIC else "PT_INTERP"
                    raise CorruptElf(path, f"{name} lies outside the file (truncated?)")
                if p_type == PT_DYNAMIC:
                    has_dynamic = True
                else:
                    raw = os.pread(fd, min(p_filesz, 4096), p_offset)
                    interpreter = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    if not interpreter:
                        raise CorruptElf(path, "empty PT_INTERP")
        header = ElfHeader(
            elf_class=elf_class,
            endian=endian,
            osabi=head[7],
            file_type=e_type,
            machine=e_machine,
            has_dynamic=has_dynamic,
            interpreter=interpreter,
        )
        return header, size
    finally:
        os.close(fd)


def _segments(table: bytes, fmt: str, elf_class: int, count: int) -> Iterator[tuple[int, int, int]]:
    """(p_type, p_offset, p_filesz) of each program header."""
    for i in range(count):
        if elf_class == 64:
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(fmt + "IIQQQQ", table, i * 56)
        else:
            p_type, p_offset, _, _, p_filesz = struct.unpack_from(fmt + "IIIII", table, i * 32)
        yield p_type, p_offset, p_filesz


_LIEF: Any = None
_CONFIGS: dict[tuple[bool, bool], Any] = {}


def _lief() -> Any:
    """Import LIEF on first use: it costs half a second, which `--help` must not pay."""
    global _LIEF  # noqa: PLW0603 - a lazily imported module, not state
    if _LIEF is None:
        import lief

        lief.logging.disable()
        _LIEF = lief
    return _LIEF


def _parse(path: str, *, symbols: bool = False, notes: bool = False) -> Any:
    """LIEF's parse with only what is asked for: no relocations, no static symbol
    table, no overlay; dynamic symbols and notes only when a caller needs them."""
    lief = _lief()
    config = _CONFIGS.get((symbols, notes))
    if config is None:
        config = lief.ELF.ParserConfig()
        config.parse_dyn_symbols = symbols
        config.parse_symtab_symbols = False
        config.parse_relocations = False
        config.parse_notes = notes
        config.parse_overlay = False
        config.parse_symbol_versions = not notes
        _CONFIGS[(symbols, notes)] = config
    binary = lief.ELF.parse(path, config)
    if binary is None:
        raise CorruptElf(path, "LIEF could not parse it")
    return binary


def read_elf(path: str) -> ElfInfo:
    """Read the facts of one ELF file; raise ``BadInput`` when it is not usable."""
    header, size = read_header(path)
    if not header.has_dynamic:
        return ElfInfo(header, size, (), None, None, None, (), (), False, (), ())
    try:
        binary = _parse(path)
        return _facts(_lief(), binary, path, header, size)
    except (MemoryError, RuntimeError, ValueError) as exc:
        # UnicodeDecodeError included: LIEF decodes names as UTF-8 and raises on
        # garbage; a damaged string table is a damaged file, not a crash.
        raise CorruptElf(path, f"unreadable dynamic section ({type(exc).__name__})") from None


@dataclass(frozen=True)
class SymbolRef:
    """An undefined dynamic symbol: what the object needs someone else to define."""

    name: str
    version: str | None  # the VERNEED version it asks for
    weak: bool


@dataclass(frozen=True)
class Symbols:
    """The dynamic symbols that matter for binding: imports and definitions."""

    imports: tuple[SymbolRef, ...]
    defined: frozenset[tuple[str, str | None]]  # default (visible) definitions
    hidden: frozenset[tuple[str, str | None]]  # `name@VERSION` non-default definitions

    def defines(self, ref: SymbolRef) -> bool:
        """glibc elf/dl-lookup.c check_match, for one definer: a versioned reference
        matches that exact version (default or hidden) or an unversioned definition;
        an unversioned reference matches only a default definition."""
        if ref.version is None:
            return ref.name in self.default_names
        key = (ref.name, ref.version)
        return key in self.defined or key in self.hidden or (ref.name, None) in self.defined

    @cached_property
    def default_names(self) -> frozenset[str]:
        return frozenset(name for name, _ in self.defined)


def read_symbols(path: str) -> Symbols:
    """The dynamic symbol table of an ELF file, with symbol versions."""
    header, _ = read_header(path)
    if not header.has_dynamic:
        return Symbols((), frozenset(), frozenset())
    try:
        binary = _parse(path, symbols=True)
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
    except (MemoryError, RuntimeError, ValueError) as exc:
        raise CorruptElf(path, f"unreadable dynamic symbols ({type(exc).__name__})") from None


#: The FDO dlopen note (systemd's ELF_NOTE_DLOPEN_TYPE, owner "FDO").
DLOPEN_NOTE_TYPE = 0x407C0C0A


@dataclass(frozen=True)
class DlopenNote:
    """One entry of a ``.note.dlopen`` note: libraries the object may dlopen."""

    feature: str
    description: str
    priority: str  # required | recommended | suggested
    sonames: tuple[str, ...]


def read_dlopen_notes(path: str) -> tuple[DlopenNote, ...]:
    """The dlopen notes of an ELF file (https://systemd.io/ELF_DLOPEN_METADATA/).

    A note whose JSON does not parse is ignored, as systemd's own tools do."""
    import json

    read_header(path)  # validate before LIEF sees the file
    try:
        binary = _parse(path, notes=True)  # keep it alive: its notes point into it
        notes = list(binary.notes)
        out: list[DlopenNote] = []
        for note in notes:
            if _text(note.name).rstrip("\0") != "FDO" or note.original_type != DLOPEN_NOTE_TYPE:
                continue
            raw = bytes(note.description).split(b"\0", 1)[0]
            try:
                entries = json.loads(raw)
            except ValueError:
                continue
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, dict):
                    continue
                sonames = entry.get("soname") or []
                out.append(
                    DlopenNote(
                        feature=str(entry.get("feature", "")),
                        description=str(entry.get("description", "")),
                        priority=str(entry.get("priority", "recommended")),
                        sonames=tuple(str(s) for s in sonames if isinstance(s, str)),
                    )
                )
        return tuple(out)
    except (MemoryError, RuntimeError, ValueError) as exc:
        raise CorruptElf(path, f"unreadable notes ({type(exc).__name__})") from None


def read_many(paths: list[str], *, workers: int) -> list[ElfInfo | BadInput]:
    """``read_elf`` over many files, on ``workers`` forked processes.

    LIEF holds the GIL while it parses, so threads do not help; forked workers share
    the already imported LIEF and send back the small frozen facts.
    """
    if workers < 2 or len(paths) < 2 * workers:
        return [_read_or_error(p) for p in paths]
    import multiprocessing

    _lief()  # import once, before forking
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_read_or_error, paths, chunksize=max(1, len(paths) // (workers * 8)))


def _read_or_error(path: str) -> ElfInfo | BadInput:
    try:
        return read_elf(path)
    except BadInput as exc:
        return exc


def _facts(lief: Any, binary: Any, path: str, header: ElfHeader, size: int) -> ElfInfo:
    """Copy what the resolver needs out of a parsed LIEF binary."""
    entries = list(binary.dynamic_entries)
    if not entries:
        # LIEF logs "PT_DYNAMIC parsing failed" and returns an empty list; the loader
        # would refuse the file, so we must not report it as having no dependencies.
        raise CorruptElf(path, "its dynamic section cannot be read")
    tag = lief.ELF.DynamicEntry.TAG
    needed: list[str] = []
    filters: list[str] = []
    auxiliaries: list[str] = []
    soname = rpath = runpath = None
    nodeflib = False
    strtab = None
    for entry in entries:
        t = entry.tag
        if t == tag.NEEDED:
            needed.append(_text(entry.name))
        elif t == tag.SONAME:
            soname = _text(entry.name)
        elif t == tag.RPATH:
            rpath = _text(entry.rpath)
        elif t == tag.RUNPATH:
            runpath = _text(entry.runpath)
        elif t == tag.FLAGS_1:
            nodeflib = bool(entry.value & DF_1_NODEFLIB)
        elif t in (tag.FILTER, tag.AUXILIARY):
            if strtab is None:
                strtab = _dynamic_strings(binary, entries, tag)
            name = _string_at(strtab, entry.value)
            (filters if t == tag.FILTER else auxiliaries).append(name)
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
        version_needs=tuple(needs),
        version_defs=tuple(defs),
    )


def _text(value: str | bytes) -> str:
    """LIEF gives str for UTF-8 names and bytes for the rest; names are bytes to the
    loader, so keep undecodable ones losslessly."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _dynamic_strings(binary: Any, entries: list[Any], tag: Any) -> bytes:
    """The bytes of DT_STRTAB, for entries LIEF does not name (DT_FILTER, DT_AUXILIARY)."""
    addr = size = None
    for entry in entries:
        if entry.tag == tag.STRTAB:
            addr = entry.value
        elif entry.tag == tag.STRSZ:
            size = entry.value
    if addr is None or size is None:
        return b""
    return bytes(binary.get_content_from_virtual_address(addr, size))


def _string_at(table: bytes, offset: int) -> str:
    return table[offset:].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def script_interpreter(path: str) -> str | None:
    """The interpreter a ``#!`` script names, or None for anything else."""
    try:
        head = read_prefix(path, 256)
    except BadInput:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip()
    return line.split()[0].decode("utf-8", "surrogateescape") if line else None
