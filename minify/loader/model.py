"""What the loader models share: how a name was found, the search trail, the objects.

``Node`` is the one mutable thing: the loader's own bookkeeping while a program is
being loaded (names an object was requested under grow as the walk goes on). It is
turned into frozen values by ``minify.closure`` when the walk is done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol, TypeVar

from minify.elf import (
    DlopenNote,
    ElfInfo,
    Symbols,
    read_dlopen_notes,
    read_elf,
    read_header,
    read_many,
    read_symbols,
)
from minify.errors import BadInput

if TYPE_CHECKING:
    from minify.elf import ElfHeader
    from minify.root import Resolved, Root


class How(StrEnum):
    """How a name was satisfied (the tag shown in the tree, the edge's ``how``)."""

    RPATH = "rpath"
    LD_LIBRARY_PATH = "LD_LIBRARY_PATH"
    RUNPATH = "runpath"
    LD_CACHE = "ld.so.cache"
    LD_CONF = "ld.so.conf"
    SYSTEM_DIR = "system dir"
    MUSL_PATH = "musl path"
    INTERPRETER = "interpreter"
    ALREADY_LOADED = "already loaded"
    SAME_FILE = "same file"
    DIRECT_PATH = "direct path"


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

#: Below this many files, forking workers costs more than it saves.
PREFETCH_MIN = 64


class Reader:
    """Parses each file once per run, keyed by device and inode.

    Errors are cached too: a corrupt file is reported the same way each time.
    """

    def __init__(self, root: Root) -> None:
        self.root = root
        self._headers: dict[tuple[int, int], ElfHeader | BadInput] = {}
        self._infos: dict[tuple[int, int], ElfInfo | BadInput] = {}
        self._symbols: dict[tuple[int, int], Symbols | BadInput] = {}
        self._notes: dict[tuple[int, int], tuple[DlopenNote, ...] | BadInput] = {}

    def header(self, resolved: Resolved) -> ElfHeader:
        return _cached(self._headers, resolved, lambda host: read_header(host)[0], self.root)

    def prefetch(self, files: list[Resolved]) -> None:
        """Parse many files ahead of the walk, in parallel where there are cores."""
        todo: dict[tuple[int, int], Resolved] = {}
        for resolved in files:
            if resolved.ident is not None and resolved.ident not in self._infos:
                todo.setdefault(resolved.ident, resolved)
        if len(todo) < PREFETCH_MIN:
            return
        workers = min(os.cpu_count() or 1, 8)
        paths = [self.root.host_path(r.path) for r in todo.values()]
        for key, result in zip(todo, read_many(paths, workers=workers), strict=True):
            self._infos[key] = result

    def info(self, resolved: Resolved) -> ElfInfo:
        return _cached(self._infos, resolved, read_elf, self.root)

    def symbols(self, resolved: Resolved) -> Symbols:
        """Dynamic symbols, for hints and verification (a second, fuller parse)."""
        return _cached(self._symbols, resolved, read_symbols, self.root)

    def dlopen_notes(self, resolved: Resolved) -> tuple[DlopenNote, ...]:
        return _cached(self._notes, resolved, read_dlopen_notes, self.root)


def _cached(table: dict[tuple[int, int], T | BadInput], resolved: Resolved, read: Callable[[str], T], root: Root) -> T:
    """One read per file (by device and inode); errors are remembered like results."""
    key = resolved.ident or (0, hash(resolved.path))
    hit = table.get(key)
    if hit is None:
        try:
            hit = read(root.host_path(resolved.path))
        except BadInput as exc:
            hit = exc
        table[key] = hit
    if isinstance(hit, BadInput):
        raise hit
    return hit


class LoaderModel(Protocol):
    """The rules one loader applies; ``minify.closure`` walks the graph with them."""

    kind: str
    interpreter: str
    notes: list[str]

    def origin_of_program(self, resolved: Resolved) -> str: ...

    def reserved(self, name: str) -> bool: ...

    def reuse_keys(self, node: Node) -> tuple[str, ...]: ...

    def find(self, name: str, requester: Node) -> SearchResult: ...

    def preloads(self) -> list[tuple[str, str]]: ...
