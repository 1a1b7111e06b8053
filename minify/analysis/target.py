"""The target of one run: the root being analysed, its one parse cache, its loaders.

Every command used to rebuild this context from a root's name (the root view seven
times, the reader five, the loader models and the parsed ld.so.cache once per
re-analysis). A ``Target`` is built once per run and carried on ``Analysis``, so
presets, hints, dlopen lookups, ``--add`` closures and verification all ask the same
objects, and each file of the root is parsed at most once per run (and, with the
persistent cache, once per version of the file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minify.elf.cache import FactCache
from minify.loader.arch import host_arch
from minify.loader.glibc import GlibcModel, Settings
from minify.loader.model import LoaderKind, LoaderModel, Reader
from minify.loader.musl import MuslModel
from minify.root import Root

if TYPE_CHECKING:
    from minify.elf.files import Endian
    from minify.loader.arch import Arch

ModelKey = tuple[Settings, LoaderKind, str, int, int]


class Target:
    """A root, the reader that parses its files once, and its loader models."""

    def __init__(self, root: str | Root = "/", *, cache: bool | FactCache = True) -> None:
        self.root = root if isinstance(root, Root) else Root(root)
        facts: FactCache | None = cache if isinstance(cache, FactCache) else (FactCache.default() if cache else None)
        self.reader = Reader(self.root, facts)
        self._models: dict[ModelKey, LoaderModel] = {}

    def __repr__(self) -> str:
        return f"Target({self.root.directory!r})"

    @property
    def directory(self) -> str:
        return self.root.directory

    def models(self) -> tuple[LoaderModel, ...]:
        """The loader models this run built, in the order it built them."""
        return tuple(self._models.values())

    def model(self, settings: Settings, kind: LoaderKind, arch: Arch, interpreter: str, endian: Endian) -> LoaderModel:
        """The loader model for one interpreter under one set of settings, built once
        (it reads ld.so, /etc/ld.so.cache and ld.so.conf)."""
        key = (settings, kind, interpreter, arch.machine, arch.elf_class)
        model = self._models.get(key)
        if model is None:
            if kind is LoaderKind.MUSL:
                model = MuslModel(self.root, arch, interpreter, settings, self.reader)
            else:
                native = arch.name == host_arch()
                model = GlibcModel(self.root, arch, interpreter, settings, self.reader, native=native, endian=endian)
            self._models[key] = model
        return model
