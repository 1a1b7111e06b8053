"""ELF files as minify opens them, and the frozen facts read from them.

A file is opened once, as a regular file checked on its descriptor (never a FIFO, a
folder or something over ``MAX_ELF_SIZE``), and its header is read by hand: the
class, byte order, machine and type decide whether LIEF (``minify.elf.reader``) is
asked at all. The facts (``ElfHeader``, ``ElfInfo``, ``Symbols``) are frozen
dataclasses: no LIEF object leaves this package.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import TYPE_CHECKING

from minify.errors import BadInput, CorruptElf, FileTooLarge, NotElf, NotRegularFile
from minify.root import kind_of

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
