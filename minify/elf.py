"""Facts about ELF files: the only module that imports LIEF.

Every file is validated here before LIEF sees it (LIEF blocks on FIFOs, runs out of
memory on directories and silently returns an empty library list for many corrupt
files), then parsed once with a minimal configuration, and reduced to a frozen
``ElfInfo``. No LIEF object leaves this module.
"""

from __future__ import annotations

import functools
import os
import signal
import stat
import struct
import warnings
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from minify.elfimage import DT_STRSZ, DT_STRTAB, PT_DYNAMIC, compact_image, dynamic_pairs
from minify.errors import BadInput, CorruptElf, FileTooLarge, NotElf, NotRegularFile
from minify.root import kind_of
from minify.text import is_number

if TYPE_CHECKING:
    from collections.abc import Iterator

ELF_MAGIC = b"\x7fELF"
#: The largest file we accept as an ELF object. The biggest shared objects on a
#: desktop (libLLVM, Chromium) are a few hundred MB; anything beyond this is a sparse
#: file, a disk image or a mistake, and must not be read into memory.
MAX_ELF_SIZE = 1 << 30

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
    dynamic: tuple[int, int] = (0, 0)  # PT_DYNAMIC: file offset and size
    flags: int = 0  # e_flags: the float ABI and ABI version some loaders check
    abiversion: int = 0  # EI_ABIVERSION


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
        raise NotRegularFile(path, f"is a {kind_of(st.st_mode)}, not a regular file")
    return fd, st


class Opened:
    """A regular file open for reading: every read of it uses this one descriptor."""

    def __init__(self, name: str, fd: int, st: os.stat_result) -> None:
        self.name = name  # for messages
        self.fd = fd
        self.st = st

    @classmethod
    def path(cls, path: str) -> Opened:
        fd, st = open_regular(path)
        return cls(path, fd, st)

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset)

    @property
    def lief_name(self) -> str:
        """What LIEF opens: the very file behind the descriptor (/proc/self/fd/N
        reopens its inode, never a name that could have changed meanwhile)."""
        return f"/proc/self/fd/{self.fd}"


class _Borrowed(Opened):
    """An ``Opened`` that the caller closes."""

    def __exit__(self, *exc: object) -> None:
        pass


def _use(source: str | Opened) -> Opened:
    """A context for ``source``: opened (and closed) here for a path, borrowed for an
    already opened file."""
    if isinstance(source, Opened):
        return _Borrowed(source.name, source.fd, source.st)
    return Opened.path(source)


def read_prefix(source: str | Opened, size: int) -> bytes:
    """The first ``size`` bytes of a regular file (scripts, magic sniffing)."""
    with _use(source) as f:
        return f.pread(size, 0)


def is_elf(source: str | Opened) -> bool:
    """True when ``source`` is a regular file that starts with the ELF magic."""
    try:
        return read_prefix(source, 4) == ELF_MAGIC
    except BadInput:
        return False


def read_header(source: str | Opened) -> tuple[ElfHeader, int]:
    """Validate and read the ELF header and program headers, without LIEF.

    Returns the header facts and the file size. Raises ``BadInput`` subclasses with
    the loader's own words where it has them ("file too short", "invalid ELF header").
    """
    with _use(source) as f:
        return _read_header(f)


def _read_header(f: Opened) -> tuple[ElfHeader, int]:
    path, size = f.name, f.st.st_size
    if size > MAX_ELF_SIZE:
        raise FileTooLarge(path, f"{size} bytes is larger than any ELF object minify reads")
    head = f.pread(64, 0)
    elf_class, endian = _identification(path, head)
    fmt = "<" if endian is Endian.LITTLE else ">"
    if elf_class == 64:
        e_type, e_machine, _, _, e_phoff, _, e_flags = struct.unpack_from(fmt + "HHIQQQI", head, 16)
        e_phentsize, e_phnum = struct.unpack_from(fmt + "HH", head, 54)
    else:
        e_type, e_machine, _, _, e_phoff, _, e_flags = struct.unpack_from(fmt + "HHIIIII", head, 16)
        e_phentsize, e_phnum = struct.unpack_from(fmt + "HH", head, 42)
    dynamic, interpreter = _dynamic_and_interpreter(f, fmt, elf_class, (e_phoff, e_phentsize, e_phnum))
    header = ElfHeader(
        elf_class=elf_class,
        endian=endian,
        osabi=head[7],
        file_type=e_type,
        machine=e_machine,
        has_dynamic=dynamic is not None,
        interpreter=interpreter,
        dynamic=dynamic or (0, 0),
        flags=e_flags,
        abiversion=head[8],
    )
    return header, size


def _identification(path: str, head: bytes) -> tuple[int, Endian]:
    """The class and byte order from e_ident, in the loader's own words when wrong."""
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
    if len(head) < (52 if elf_class == 32 else 64):
        raise CorruptElf(path, "file too short for its ELF header")
    return elf_class, endian


def _dynamic_and_interpreter(
    f: Opened, fmt: str, elf_class: int, table: tuple[int, int, int]
) -> tuple[tuple[int, int] | None, str | None]:
    """PT_DYNAMIC (offset, size) and the PT_INTERP name, checked against the file."""
    e_phoff, e_phentsize, e_phnum = table
    if not e_phnum:
        return None, None
    path, size = f.name, f.st.st_size
    want = 56 if elf_class == 64 else 32
    if e_phentsize != want:
        raise CorruptElf(path, f"program header entry size {e_phentsize}, expected {want}")
    if e_phoff + e_phnum * e_phentsize > size:
        raise CorruptElf(path, "program headers lie outside the file")
    dynamic = interpreter = None
    for p_type, p_offset, p_filesz, _align in _segments(
        f.pread(e_phnum * e_phentsize, e_phoff), fmt, elf_class, e_phnum
    ):
        if p_type not in (PT_DYNAMIC, PT_INTERP):
            continue
        if p_offset + p_filesz > size:
            name = "dynamic section" if p_type == PT_DYNAMIC else "PT_INTERP"
            raise CorruptElf(path, f"{name} lies outside the file (truncated?)")
        if p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        else:
            interpreter = _interpreter(f, p_offset, p_filesz)
    return dynamic, interpreter


def _interpreter(f: Opened, offset: int, length: int) -> str:
    # fs/binfmt_elf.c: an interpreter name longer than PATH_MAX is ENOEXEC
    if length > 4096:
        raise CorruptElf(f.name, f"PT_INTERP of {length} bytes (the kernel refuses more than 4096)")
    name = f.pread(length, offset).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if not name:
        raise CorruptElf(f.name, "empty PT_INTERP")
    return name


def _segments(table: bytes, fmt: str, elf_class: int, count: int) -> Iterator[tuple[int, int, int, int]]:
    """(p_type, p_offset, p_filesz, p_align) of each program header."""
    for i in range(count):
        if elf_class == 64:
            p_type, _, p_offset, _, _, p_filesz, _, p_align = struct.unpack_from(fmt + "IIQQQQQQ", table, i * 56)
        else:
            p_type, p_offset, _, _, p_filesz, _, _, p_align = struct.unpack_from(fmt + "IIIIIIII", table, i * 32)
        yield p_type, p_offset, p_filesz, p_align


_LIEF: Any = None
_CONFIGS: dict[object, Any] = {}

# Dynamic tags, compared as integers: LIEF's enum differs between releases (0.15 has no
# FILTER member) and warns on values it does not know. (DT_STRTAB and DT_STRSZ come
# from minify.elfimage, which reads the dynamic section too.)
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
    is given a compact image of the file (``minify.elfimage``) where the file's layout
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


#: The FDO dlopen note (systemd's ELF_NOTE_DLOPEN_TYPE, owner "FDO").
DLOPEN_NOTE_TYPE = 0x407C0C0A


@dataclass(frozen=True)
class DlopenNote:
    """One entry of a ``.note.dlopen`` note: libraries the object may dlopen."""

    feature: str
    description: str
    priority: str  # required | recommended | suggested
    sonames: tuple[str, ...]


SHT_NOTE = 7
PT_NOTE = 4
#: Bytes of notes read from one file at most: dlopen notes are a few KB; a file whose
#: note sections are larger (annobin's are large, but they are not read) is not trusted.
MAX_NOTE_BYTES = 16 << 20


def read_dlopen_notes(source: str | Opened) -> tuple[tuple[DlopenNote, ...], tuple[str, ...]]:
    """The FDO dlopen notes of an ELF file (https://systemd.io/ELF_DLOPEN_METADATA/),
    and warnings about malformed ones.

    Only notes with owner "FDO" and type 0x407c0c0a are looked at, read straight from
    the SHT_NOTE sections (or PT_NOTE segments): other notes, such as annobin's
    ``.gnu.build.attributes`` with binary owner names, can neither fail nor slow this.
    """
    with _use(source) as f:
        header, size = _read_header(f)
        out: list[DlopenNote] = []
        warned: list[str] = []
        for offset, length, align in _note_areas(f, header, size):
            for owner, note_type, desc in _notes(f.pread(length, offset), header.endian, align):
                if owner != b"FDO" or note_type != DLOPEN_NOTE_TYPE:
                    continue
                entries, problem = _dlopen_entries(desc)
                out.extend(entries)
                if problem:
                    warned.append(f"{f.name}: malformed .note.dlopen ignored ({problem})")
        return tuple(out), tuple(warned)


def _note_areas(f: Opened, header: ElfHeader, size: int) -> list[tuple[int, int, int]]:
    """(offset, size, alignment) of the note sections, or of the PT_NOTE segments when
    the file has no section headers; bounded by the file and ``MAX_NOTE_BYTES``."""
    fmt = "<" if header.endian is Endian.LITTLE else ">"
    head = f.pread(64, 0)
    areas: list[tuple[int, int, int]] = []
    if header.elf_class == 64:
        (e_shoff,) = struct.unpack_from(fmt + "Q", head, 40)
        e_shentsize, e_shnum = struct.unpack_from(fmt + "HH", head, 58)
        e_phoff, e_phnum = struct.unpack_from(fmt + "Q", head, 32)[0], struct.unpack_from(fmt + "H", head, 56)[0]
    else:
        (e_shoff,) = struct.unpack_from(fmt + "I", head, 32)
        e_shentsize, e_shnum = struct.unpack_from(fmt + "HH", head, 46)
        e_phoff, e_phnum = struct.unpack_from(fmt + "I", head, 28)[0], struct.unpack_from(fmt + "H", head, 44)[0]
    want = 64 if header.elf_class == 64 else 40
    if e_shnum and e_shentsize == want and e_shoff + e_shnum * want <= size:
        table = f.pread(e_shnum * want, e_shoff)
        for i in range(e_shnum):
            if header.elf_class == 64:
                sh_type, _, _, sh_offset, sh_size, _, _, sh_align = struct.unpack_from(
                    fmt + "IQQQQIIQ", table, i * 64 + 4
                )
            else:
                sh_type, _, _, sh_offset, sh_size, _, _, sh_align = struct.unpack_from(
                    fmt + "IIIIIIII", table, i * 40 + 4
                )
            if sh_type == SHT_NOTE:
                areas.append((sh_offset, sh_size, sh_align))
    elif e_phnum:
        entsize = 56 if header.elf_class == 64 else 32
        table = f.pread(e_phnum * entsize, e_phoff)
        areas.extend((o, n, a) for t, o, n, a in _segments(table, fmt, header.elf_class, e_phnum) if t == PT_NOTE)
    out = []
    budget = MAX_NOTE_BYTES
    for offset, length, align in areas:
        if offset + length > size or length > budget:
            continue
        budget -= length
        out.append((offset, length, 8 if align == 8 else 4))
    return out


def _notes(data: bytes, endian: Endian, align: int) -> Iterator[tuple[bytes, int, bytes]]:
    """(owner, type, descriptor) of each note in a note area; stops at the first note
    that does not fit (the gABI layout: name and descriptor padded to ``align``)."""
    fmt = "<III" if endian is Endian.LITTLE else ">III"
    at = 0
    while at + 12 <= len(data):
        namesz, descsz, note_type = struct.unpack_from(fmt, data, at)
        name_at = at + 12
        desc_at = name_at + -(-namesz // align) * align
        end = desc_at + -(-descsz // align) * align
        if desc_at + descsz > len(data):
            return
        yield data[name_at : name_at + namesz].rstrip(b"\0"), note_type, data[desc_at : desc_at + descsz]
        at = max(end, at + 12)


def _dlopen_entries(desc: bytes) -> tuple[list[DlopenNote], str | None]:
    """The entries of one dlopen note's JSON, and what was wrong with it, if anything."""
    import json

    try:
        entries = json.loads(desc.split(b"\0", 1)[0])
    except (ValueError, RecursionError):
        return [], "its JSON does not parse"
    if not isinstance(entries, list):
        return [], "its JSON is not a list"
    out = []
    problem = None
    for entry in entries:
        sonames = entry.get("soname") if isinstance(entry, dict) else None
        if not isinstance(sonames, list) or not all(isinstance(s, str) for s in sonames):
            problem = "an entry without a list of sonames"
            continue
        assert isinstance(entry, dict)
        priority = str(entry.get("priority", "recommended"))
        if priority not in ("required", "recommended", "suggested"):
            problem = f"unknown priority {priority!r}"
            continue
        out.append(
            DlopenNote(
                feature=str(entry.get("feature", "")),
                description=str(entry.get("description", "")),
                priority=priority,
                sonames=tuple(sonames),
            )
        )
    return out, problem


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


def shebang(source: str | Opened) -> tuple[str, str] | None:
    """The interpreter a ``#!`` script names and the rest of its line, the one
    argument the kernel passes (empty when there is none); None for anything else."""
    try:
        head = read_prefix(source, 256)
    except BadInput:
        return None
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].strip()
    if not line:
        return None
    interp = line.split()[0]
    arg = line[len(interp) :].strip()
    return interp.decode("utf-8", "surrogateescape"), arg.decode("utf-8", "surrogateescape")


def script_interpreter(source: str | Opened) -> str | None:
    """The interpreter a ``#!`` script names, or None for anything else."""
    found = shebang(source)
    return found[0] if found else None
