"""What the loader models share: how a name was found, the search trail, the objects.

``Node`` is the one mutable thing: the loader's own bookkeeping while a program is
being loaded (names an object was requested under grow as the walk goes on). It is
turned into frozen values by ``minify.analysis.closure`` when the walk is done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, TypeVar

from minify.elf.cache import key_of
from minify.elf.files import ElfHeader, ElfInfo, Opened, SymbolRef, Symbols, is_elf, read_header, shebang
from minify.elf.notes import DlopenNote, read_dlopen_notes
from minify.errors import BadInput, PathError

if TYPE_CHECKING:
    from minify.elf.cache import FactCache
    from minify.root import Resolved, Root


class How(StrEnum):
    """How a name was satisfied (the tag shown in the tree, the edge's ``how``)."""

    RPATH = "rpath"
    LD_LIBRARY_PATH = "LD_LIBRARY_PATH"
    RUNPATH = "runpath"
    LD_CACHE = "ld.so.cache"
    SYSTEM_DIR = "system dir"
    MUSL_PATH = "musl path"
    INTERPRETER = "interpreter"
    ALREADY_LOADED = "already loaded"
    SAME_FILE = "same file"
    DIRECT_PATH = "direct path"


class LoaderKind(StrEnum):
    """Which loader a program names in PT_INTERP."""

    GLIBC = "glibc"
    MUSL = "musl"


class Request(StrEnum):
    """Why a name was asked for (the dependency's ``kind``)."""

    NEEDED = "needed"
    FILTER = "filter"  # DT_FILTER: the filtee is loaded and must exist
    AUXILIARY = "auxiliary"  # DT_AUXILIARY: loaded when present, never an error
    PRELOAD = "preload"
    INTERPRETER = "interpreter"


class ProgramKind(StrEnum):
    """What an input turned out to be."""

    DYNAMIC = "dynamic"
    STATIC = "static"
    NOT_ELF = "not-elf"


class Role(StrEnum):
    INPUT = "input"
    INTERPRETER = "interpreter"
    LIBRARY = "library"
    FILTEE = "filtee"
    PRELOAD = "preload"


@dataclass(frozen=True)
class Step:
    """One place the search looked, or decided not to look, and what happened there."""

    source: str  # "RPATH of /usr/bin/x", "LD_LIBRARY_PATH", "ld.so.cache", ...
    directory: str | None
    outcome: str


@dataclass(frozen=True)
class Candidate:
    """A file the search settled on: where the loader opened it, and why there."""

    path: str  # as the loader opened it, inside the root, symlinks not resolved
    resolved: Resolved
    how: How
    via: str


@dataclass(frozen=True)
class SearchResult:
    """One library search: the file it found (if any) and every place it tried, in
    order, so that a miss can be explained."""

    found: Candidate | None
    steps: tuple[Step, ...]


@dataclass(eq=False)
class Node:
    """An object while the program is being loaded (the loader's ``link_map``)."""

    path: str
    resolved: Resolved
    info: ElfInfo
    role: Role
    loader: Node | None
    origin: str
    names: set[str] = field(default_factory=set)

    def chain(self) -> list[Node]:
        """This object, the object that loaded it, and so on up to the program."""
        out: list[Node] = []
        node: Node | None = self
        while node is not None:
            out.append(node)
            node = node.loader
        return out


T = TypeVar("T")
Notes = tuple[tuple[DlopenNote, ...], tuple[str, ...]]


class Reader:
    """Parses each file once per run, keyed by device and inode.

    Every file is opened through the root (``Root.open_file``: no symlink followed,
    the inode the resolution saw, regular files only) and read from that descriptor.
    Errors are cached too: a corrupt file is reported the same way each time.
    """

    def __init__(self, root: Root, cache: FactCache | None = None) -> None:
        self.root = root
        self.cache = cache  # parsed facts kept between runs (None: parse every file)
        self._headers: dict[tuple[int, int], ElfHeader | BadInput] = {}
        self._infos: dict[tuple[int, int], ElfInfo | BadInput] = {}
        self._symbols: dict[tuple[int, int], Symbols | BadInput] = {}
        self._imports: dict[tuple[int, int], tuple[SymbolRef, ...] | BadInput] = {}
        self._import_names: dict[tuple[int, int], frozenset[str] | BadInput] = {}
        self._wanted: dict[frozenset[str], dict[tuple[int, int], Symbols | BadInput]] = {}
        self._notes: dict[tuple[int, int], Notes | BadInput] = {}

    def header(self, resolved: Resolved) -> ElfHeader:
        return self._cached(self._headers, resolved, self._header_of)

    def _header_of(self, f: Opened) -> ElfHeader:
        """The file's ELF header, read and checked once a run (by device and inode):
        every fact taken from the persistent cache is first validated as a parse would
        be, and the first to ask reads the header for all of them. A file changed
        since then has another cache key (its ctime), so it misses and is parsed."""
        key = (f.st.st_dev, f.st.st_ino)
        known = self._headers.get(key)
        if isinstance(known, ElfHeader):
            return known
        header = read_header(f)[0]
        self._headers[key] = header
        return header

    def info(self, resolved: Resolved) -> ElfInfo:
        return self._cached(self._infos, resolved, self._read_info)

    def symbols(self, resolved: Resolved) -> Symbols:
        """Dynamic symbols, for hints and verification (a second, fuller parse)."""
        return self._cached(self._symbols, resolved, self._read_symbols)

    def imports(self, resolved: Resolved) -> tuple[SymbolRef, ...]:
        """The imported symbols alone, for hints: read from their own small cache
        entry, so a warm run never loads a big program's definitions to give hints."""
        known = self._symbols.get(_key(resolved))
        if isinstance(known, Symbols):
            return known.imports
        return self._cached(self._imports, resolved, self._read_imports)

    def import_names(self, resolved: Resolved) -> frozenset[str]:
        """The names alone of what the file imports (hints): from the cache without
        a ``SymbolRef`` made for each, which was half a warm analysis's hints."""
        key = _key(resolved)
        for known in (self._symbols.get(key), self._imports.get(key)):
            if isinstance(known, Symbols):
                return frozenset(r.name for r in known.imports)
            if isinstance(known, tuple):
                return frozenset(r.name for r in known)
        return self._cached(self._import_names, resolved, self._read_import_names)

    def _read_import_names(self, f: Opened) -> frozenset[str]:
        hit = self.cache.import_names(f.st) if self.cache is not None else None
        if hit is not None:
            self._header_of(f)  # the same validation as a parse
            return hit
        return frozenset(r.name for r in self._read_imports(f))

    def _read_imports(self, f: Opened) -> tuple[SymbolRef, ...]:
        if self.cache is None:
            return _parse_symbols(f, frozenset()).imports
        hit = self.cache.imports(f.st)
        if hit is not None:
            self._header_of(f)  # the same validation as a parse
            return hit
        return self._read_symbols(f).imports

    def definitions(self, resolved: Resolved, wanted: frozenset[str]) -> Symbols:
        """The imports, and the definitions of the ``wanted`` names alone: what
        verification checks, looked up through each file's hash table as the loader
        does, never by decoding every definition (pandoc exports 413,000)."""
        known = self._symbols.get(_key(resolved))
        if isinstance(known, Symbols):
            return known
        table = self._wanted.setdefault(wanted, {})
        return self._cached(table, resolved, lambda f: self._read_definitions(f, wanted))

    def _read_definitions(self, f: Opened, wanted: frozenset[str]) -> Symbols:
        """The persistent cache's symbols entry when it has one (sets, not a scan of
        the file's table), else the file's tables."""
        if self.cache is not None:
            hit = self.cache.definitions(f.st, wanted)
            if hit is not None:
                self._header_of(f)  # the same validation as a parse
                return hit
        return _parse_symbols(f, wanted)

    def _read_info(self, f: Opened) -> ElfInfo:
        """The persistent cache first; LIEF only for a file it has not seen as it is."""
        if self.cache is None:
            return _parse_info(f)
        header = self._header_of(f)
        if header.has_dynamic:
            hit = self.cache.info(f.st, header)
            if hit is not None:
                return hit
        info = _parse_info(f)
        if info.is_dynamic and unchanged(f):
            self.cache.store_info(f.st, info)
        return info

    def _read_symbols(self, f: Opened) -> Symbols:
        if self.cache is None:
            return _parse_symbols(f)
        hit = self.cache.symbols(f.st)
        if hit is not None:
            self._header_of(f)  # the same validation as a parse
            return hit
        symbols = _parse_symbols(f)
        if unchanged(f):
            self.cache.store_symbols(f.st, symbols)
        return symbols

    def dlopen_notes(self, resolved: Resolved) -> Notes:
        """The FDO dlopen notes, and warnings about malformed ones."""
        return self._cached(self._notes, resolved, lambda f: read_dlopen_notes(f, self._header_of(f)))

    def _cached(self, table: dict[tuple[int, int], T | BadInput], resolved: Resolved, read: Callable[[Opened], T]) -> T:
        """One read per file (by device and inode); errors are remembered like results."""
        key = _key(resolved)
        hit = table.get(key)
        if hit is None:
            try:
                with self.open(resolved) as opened:
                    hit = read(opened)
            except BadInput as exc:
                hit = exc
            table[key] = hit
        if isinstance(hit, BadInput):
            raise hit
        return hit

    def is_elf(self, resolved: Resolved) -> bool:
        """A regular file of the root that starts with the ELF magic (False for
        anything that cannot be opened as one)."""
        if not resolved.is_file:
            return False
        try:
            with self.open(resolved) as opened:
                return is_elf(opened)
        except BadInput:
            return False

    def script_interpreter(self, resolved: Resolved) -> str | None:
        """The interpreter a ``#!`` file of the root names, or None."""
        found = self.shebang(resolved)
        return found[0] if found else None

    def shebang(self, resolved: Resolved) -> tuple[str, str] | None:
        """The interpreter a ``#!`` file of the root names and its argument, or None."""
        try:
            with self.open(resolved) as opened:
                return shebang(opened)
        except BadInput:
            return None

    def open(self, resolved: Resolved) -> Opened:
        """The file a resolution names, opened safely inside the root (close it)."""
        try:
            fd, st = self.root.open_file(resolved.path, resolved.ident)
        except PathError as exc:
            raise BadInput(self.root.host_path(resolved.path), exc.problem) from None
        return Opened(self.root.host_path(resolved.path), fd, st)


def _parse_info(f: Opened) -> ElfInfo:
    """A file's facts, parsed: the reader (and through it LIEF) is imported on a cache
    miss only, since a warm run answers from the cache and needs neither."""
    from minify.elf.reader import read_elf

    return read_elf(f)


def _parse_symbols(f: Opened, wanted: frozenset[str] | None = None) -> Symbols:
    """A file's dynamic symbols from its own tables, on a cache miss (as ``_parse_info``)."""
    from minify.elf.dynsym import read_dynamic_symbols

    return read_dynamic_symbols(f, wanted=wanted)


def _key(resolved: Resolved) -> tuple[int, int]:
    """What a file is known by within a run: its device and inode (a path that names
    no file yet, by its hash)."""
    return resolved.ident or (0, hash(resolved.path))


def unchanged(f: Opened) -> bool:
    """The file has the same identity after the parse as before it (a file written
    while LIEF read it must not be cached under either version)."""
    return key_of(os.fstat(f.fd)) == key_of(f.st)


def dlopen_caller(program: Node) -> Node:
    """The C library as the caller of a ``dlopen`` it makes itself (iconv, NSS, libgcc_s
    for unwinding): an object with no search paths of its own, loaded by the program,
    so the program's RPATH, then LD_LIBRARY_PATH, the cache and the system folders
    apply (glibc elf/dl-open.c, elf/dl-load.c)."""
    info = replace(program.info, needed=(), soname=None, rpath=None, runpath=None, filters=(), auxiliaries=())
    info = replace(info, nodeflib=False)
    return Node("dlopen caller", program.resolved, info, Role.LIBRARY, program, program.origin)


class LoaderModel(Protocol):
    """The rules one loader applies; ``minify.analysis.closure`` walks the graph with them."""

    kind: LoaderKind
    interpreter: str
    notes: list[str]

    def origin_of_program(self, resolved: Resolved) -> str: ...

    def reserved(self, name: str) -> bool: ...

    def reuse_keys(self, node: Node) -> tuple[str, ...]: ...

    def find(self, name: str, requester: Node) -> SearchResult: ...

    def find_dlopen(self, name: str, program: Node) -> SearchResult: ...

    def preloads(self) -> list[tuple[str, str]]: ...
