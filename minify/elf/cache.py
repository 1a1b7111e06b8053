"""A persistent cache of parsed ELF facts, so that a warm run never imports LIEF.

Importing LIEF costs more than the whole analysis of a program (about a second on a
slow machine), and the files it parses (a system's libraries) rarely change. Each
entry is one small JSON file, named after the file it describes:

    $XDG_CACHE_HOME/minify/<tag>/<inode & 255>/<key>.<kind>.json

- **key**: device, inode, size, mtime_ns and ctime_ns of the open descriptor. Any
  write to a file changes its ctime, which no user can set, so a changed file is a
  different key; an entry is only stored when the file's status is the same after the
  parse as before it, so a file changed while LIEF read it is never cached.
- **tag**: the cache format, Python's version, and the identity (size, mtime) of
  minify's ELF reader and of LIEF's installed package, so a new LIEF or a changed
  module of the ELF reader (``minify.elf``'s files, reader, notes, compact) starts a
  fresh folder. LIEF's package is found without importing it.
- Beside the ELF facts, the same key holds the digests (md5, sha1, sha256) of any
  file an image plan copies: a warm ``rootfs`` reads none of its sources' bytes, as
  the kernel copies them when they are still that version.
- Writes go to a temporary file in the same folder, then ``os.replace``: a reader sees
  a whole entry or none, and two runs at once write the same bytes.
- An entry that does not parse, has the wrong shape, or names another file is
  ignored (and overwritten by the next store). A cache folder that cannot be created
  turns the cache off for the run, silently: it only ever costs time.
- **Whose it is.** The folder is opened once, as a descriptor, and checked on it: this
  user's, not a symlink, writable by nobody else; every entry is then opened relative
  to it with ``O_NOFOLLOW`` and checked (this user's, a regular file) on its own
  descriptor. A folder swapped during the run (root's cache in a folder a user owns:
  ``sudo -E``, ``XDG_CACHE_HOME=/home/u/.cache``) changes nothing, since the descriptor
  still names the folder that was checked. A folder that is not this user's own turns
  the cache off, with a note (``FactCache.note``).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Callable, Hashable, Mapping
from enum import StrEnum
from functools import partial
from itertools import repeat
from typing import Any, TypeVar, cast

from minify.elf.files import ElfHeader, ElfInfo, SymbolRef, Symbols, VersionNeed
from minify.root import read_all

#: Bump when the stored shape or meaning changes (3: an imports entry beside each symbols
#: entry; 4: imports stored as columns).
FORMAT = 4
#: An entry larger than this is not a fact file (libc's symbols are about 200 KB).
MAX_ENTRY_BYTES = 32 << 20
#: Decoded entries kept for the rest of a run, at most (a batch of a whole system's
#: files reads each entry once anyway).
MAX_DECODED = 20_000
#: A symbols entry larger than this is not decoded for a few definitions: looking the
#: names up through the file's own hash table is then faster (pandoc's entry is 38 MB).
MAX_LOOKUP_ENTRY_BYTES = 2 << 20


class Kind(StrEnum):
    """What one entry holds."""

    INFO = "info"  # ElfInfo without the header (read fresh each run, it is cheap)
    SYMBOLS = "symbols"
    IMPORTS = "imports"  # the imported names alone: all hints need, small for any file
    LDSO = "ldso"  # the release and system folders compiled into a glibc ld.so
    DIGESTS = "digests"  # md5, sha1 and sha256 of the bytes (any regular file)


Key = tuple[int, int, int, int, int]
T = TypeVar("T")


def key_of(st: os.stat_result) -> Key:
    """What identifies one version of one file."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def default_folder() -> str | None:
    """``$XDG_CACHE_HOME/minify`` (an absolute XDG_CACHE_HOME only, as the XDG spec
    says), else ``~/.cache/minify``; None when there is no home to put it in."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not base.startswith("/"):
        home = os.path.expanduser("~")
        if not home.startswith("/"):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "minify")


#: The modules whose code decides the facts a cache entry holds.
READER_MODULES = ("files", "reader", "notes", "compact", "dynsym")


def _identity(path: str | None) -> str:
    if not path:
        return "none"
    try:
        st = os.stat(path)
    except OSError:
        return "none"
    return f"{st.st_size:x}.{st.st_mtime_ns:x}"


def _lief_package() -> str | None:
    """LIEF's ``__init__.py``, found on sys.path the way ``import lief`` would find it,
    without importing it (that is what the cache saves)."""
    for entry in sys.path:
        candidate = os.path.join(entry or ".", "lief", "__init__.py")
        if os.path.isfile(candidate):
            return candidate
    return None


def _tag() -> str:
    """The folder name for this cache format, Python, minify (and the state of its ELF
    reader) and LIEF: f1-py3.11-m0.1.0-<size>.<mtime>-l<size>.<mtime>."""
    from minify.version import __version__

    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    here = os.path.dirname(os.path.abspath(__file__))
    reader = ".".join(_identity(os.path.join(here, f"{name}.py")) for name in READER_MODULES)
    return f"f{FORMAT}-py{python}-m{__version__}-{reader}-l{_identity(_lief_package())}"


class FactCache:
    """Parsed facts by file identity, kept between runs."""

    def __init__(self, folder: str) -> None:
        self.folder = os.path.join(folder, _tag())
        self.note: str | None = None
        self._copies: Mapping[Key, Key] = {}  # a copy's key to its source's (``copied``)
        self._decoded_once: dict[tuple[Key, Kind, Hashable], object] = {}  # shared with views
        self._read_only = False
        self._fd = _own_folder(folder, None, self)
        if self._fd is not None:
            base, self._fd = self._fd, _own_folder(_tag(), self._fd, self)
            os.close(base)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # type: ignore[arg-type]

    def copied(self, sources: Mapping[Key, Key]) -> FactCache:
        """A view that answers for copies: each key of ``sources`` (a file written
        byte for byte from a source version, which the caller has checked) reads the
        entries of its source's key; the view stores nothing (a written rootfs is new
        inodes, whose entries no later run would hit). Facts are a function of the
        bytes, so the copy's are the source's: verification needs no parse of them."""
        view = object.__new__(FactCache)
        view.folder, view.note = self.folder, None
        view._fd = os.dup(self._fd) if self._fd is not None else None
        view._copies = dict(sources)
        view._decoded_once = self._decoded_once
        view._read_only = True
        return view

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    @classmethod
    def default(cls) -> FactCache | None:
        folder = default_folder()
        return cls(folder) if folder else None

    def _key(self, st: os.stat_result) -> Key:
        """The key whose entries answer for this file: its own, or for a copy its
        source's (``copied``)."""
        own = key_of(st)
        return self._copies.get(own, own)

    def _path(self, key: Key, kind: Kind) -> tuple[str, str]:
        """The subfolder and the file name of an entry, inside the cache folder. The
        subfolder needs no check of its own: only this user can write in the checked
        folder, so only this user can have made (or swapped) what is in it."""
        name = "-".join(f"{n:x}" for n in key)
        return f"{key[1] & 0xFF:02x}", f"{name}.{kind.value}.json"

    def info(self, st: os.stat_result, header: ElfHeader) -> ElfInfo | None:
        return self._decoded(st, Kind.INFO, lambda data: _info_from(data, header, st.st_size), given=header)

    def symbols(self, st: os.stat_result) -> Symbols | None:
        return self._decoded(st, Kind.SYMBOLS, _symbols_from)

    def definitions(self, st: os.stat_result, wanted: frozenset[str]) -> Symbols | None:
        """The imports, and the definitions of the ``wanted`` names alone, from the
        symbols entry: each version's names are intersected with ``wanted`` as a set,
        never decoded one by one (verification asks this of every object of a closure,
        which once scanned each file's whole symbol table). None for no entry, or one
        too big to be faster than the file's hash table. The imports are those of the
        imports entry, decoded once a run (verification has read them already)."""
        imports = self.imports(st)
        decode = partial(_symbols_from, wanted=wanted, imports=imports)
        return self._decoded(st, Kind.SYMBOLS, decode, MAX_LOOKUP_ENTRY_BYTES, wanted)

    def imports(self, st: os.stat_result) -> tuple[SymbolRef, ...] | None:
        """The imports alone, without the definitions: a program that exports much
        (pandoc's tens of MB of symbols) is read back in a few KB for its hints."""
        return self._decoded(st, Kind.IMPORTS, _imports_from)

    def import_names(self, st: os.stat_result) -> frozenset[str] | None:
        """The names the file imports, and nothing else: what hints look for. A warm
        analysis reads these for every object of every closure, so they are taken
        from the imports entry without a ``SymbolRef`` made for each."""
        return self._decoded(st, Kind.IMPORTS, _import_names_from, given="names")

    def digests(self, st: os.stat_result) -> tuple[str, str, str] | None:
        """The md5, sha1 and sha256 of this version of a file (lock file, package
        md5sums, SBOM): a warm rootfs reads none of its sources' bytes, since the
        kernel copies them (``copy_file_range``) when they are still this version."""
        return self._decoded(st, Kind.DIGESTS, _digests_from)

    def store_digests(self, st: os.stat_result, digests: tuple[str, str, str]) -> None:
        self.store(st, Kind.DIGESTS, {"digests": list(digests)})

    def _decoded(
        self,
        st: os.stat_result,
        kind: Kind,
        decode: Callable[[dict[str, Any]], T],
        limit: int = MAX_ENTRY_BYTES,
        given: Hashable = None,
    ) -> T | None:
        """The entry of ``kind``, decoded; an entry of the wrong shape is no entry.
        Each is decoded once a run (``given``: what else the decoding depends on): a
        rootfs reads its sources' entries for the plan and again, through ``copied``,
        for the verification of the copies."""
        slot = (self._key(st), kind, given)
        if slot in self._decoded_once:
            return cast("T", self._decoded_once[slot])
        data = self.load(st, kind, limit)
        if data is None:
            return None
        try:
            value = decode(data)
        except (KeyError, TypeError, ValueError):
            return None
        if len(self._decoded_once) < MAX_DECODED:
            self._decoded_once[slot] = value
        return value

    def store_info(self, st: os.stat_result, info: ElfInfo) -> None:
        self.store(st, Kind.INFO, _info_to(info))

    def store_symbols(self, st: os.stat_result, symbols: Symbols) -> None:
        """The symbols, and their imports again as an entry of their own: every
        symbols entry has that twin, so hints never need to load the definitions."""
        self.store(st, Kind.SYMBOLS, _symbols_to(symbols))
        self.store(st, Kind.IMPORTS, {"imports": _imports_to(symbols.imports)})

    def load(self, st: os.stat_result, kind: Kind, limit: int = MAX_ENTRY_BYTES) -> dict[str, Any] | None:
        """The entry of ``kind`` for this version of a file, or None (also for an
        entry of more than ``limit`` bytes)."""
        if self._fd is None:
            return None
        key = self._key(st)
        sub, name = self._path(key, kind)
        try:
            fd = os.open(f"{sub}/{name}", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self._fd)
        except OSError:
            return None
        try:
            own = os.fstat(fd)
            if not stat.S_ISREG(own.st_mode) or own.st_uid != os.getuid() or own.st_size > limit:
                return None  # not an entry this user wrote, or not one worth reading
            raw = read_all(fd, limit + 1)
            if len(raw) > limit:
                return None
            data = json.loads(raw)
        except (OSError, ValueError, RecursionError):
            return None
        finally:
            os.close(fd)
        if not isinstance(data, dict) or data.get("key") != list(key) or data.get("kind") != kind.value:
            return None
        return data

    def store(self, st: os.stat_result, kind: Kind, data: dict[str, Any]) -> None:
        if self._fd is None or self._read_only:
            return
        key = key_of(st)
        sub, name = self._path(key, kind)
        data = {"key": list(key), "kind": kind.value, **data}
        with contextlib.suppress(OSError):
            with contextlib.suppress(FileExistsError):
                os.mkdir(sub, 0o700, dir_fd=self._fd)
            temporary = f"{sub}/.new-{os.getpid()}-{os.urandom(6).hex()}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(temporary, flags, 0o600, dir_fd=self._fd)
            try:
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    json.dump(data, fh, separators=(",", ":"))
                os.replace(temporary, f"{sub}/{name}", src_dir_fd=self._fd, dst_dir_fd=self._fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary, dir_fd=self._fd)
                raise


def _own_folder(name: str, at: int | None, cache: FactCache) -> int | None:
    """A descriptor of the folder ``name`` (created if need be; relative to ``at``),
    checked on that descriptor: a folder, not a symlink, this user's, writable by
    nobody else. None otherwise; ``cache.note`` says why when it is not this user's."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        if at is None:
            os.makedirs(name, mode=0o700, exist_ok=True)
        else:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=at)
        fd = os.open(name, flags, dir_fd=at)
    except OSError:
        return None
    st = os.fstat(fd)
    if st.st_uid == os.getuid() and not st.st_mode & 0o022:
        return fd
    os.close(fd)
    where = name if at is None else cache.folder
    cache.note = f"note: the cache folder {where} is not this user's own (or others may write to it): no cache"
    return None


# JSON shapes. Names may carry surrogate escapes (undecodable bytes); JSON's \\u
# escapes keep them exactly.


def _info_to(info: ElfInfo) -> dict[str, Any]:
    return {
        "needed": list(info.needed),
        "soname": info.soname,
        "rpath": info.rpath,
        "runpath": info.runpath,
        "filters": list(info.filters),
        "auxiliaries": list(info.auxiliaries),
        "nodeflib": info.nodeflib,
        "version_needs": [[n.soname, list(n.versions), list(n.weak)] for n in info.version_needs],
        "version_defs": list(info.version_defs),
    }


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not set(map(type, value)) <= {str}:
        raise TypeError("not a list of strings")
    return tuple(value)


def _optional(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _info_from(data: dict[str, Any], header: ElfHeader, size: int) -> ElfInfo:
    needs = []
    for entry in data["version_needs"]:
        soname, versions, weak = entry
        if not isinstance(soname, str):
            raise TypeError("soname")
        needs.append(VersionNeed(soname, _strings(versions), _strings(weak)))
    if not isinstance(data["nodeflib"], bool):
        raise TypeError("nodeflib")
    return ElfInfo(
        header=header,
        size=size,
        needed=_strings(data["needed"]),
        soname=_optional(data["soname"]),
        rpath=_optional(data["rpath"]),
        runpath=_optional(data["runpath"]),
        filters=_strings(data["filters"]),
        auxiliaries=_strings(data["auxiliaries"]),
        nodeflib=data["nodeflib"],
        version_needs=tuple(needs),
        version_defs=_strings(data["version_defs"]),
    )


#: Stands for "no version" among version names (a version name cannot contain NUL).
_NO_VERSION = "\0"


def _symbols_to(symbols: Symbols) -> dict[str, Any]:
    """Imports as columns (``_imports_to``); definitions grouped by version, which keeps
    libc's few thousand symbols small and fast to read back."""
    return {
        "imports": _imports_to(symbols.imports),
        "defined": _by_version(symbols.defined),
        "hidden": _by_version(symbols.hidden),
    }


def _by_version(pairs: frozenset[tuple[str, str | None]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, version in pairs:
        out.setdefault(_NO_VERSION if version is None else version, []).append(name)
    return {version: sorted(names) for version, names in sorted(out.items())}


def _pairs(value: object, wanted: frozenset[str] | None = None) -> frozenset[tuple[str, str | None]]:
    """(name, version) pairs of a by-version object; only ``wanted`` names if given."""
    if not isinstance(value, dict):
        raise TypeError("not an object")
    out: set[tuple[str, str | None]] = set()
    for version, names in value.items():
        key = None if version == _NO_VERSION else version
        listed = _strings(names)
        out.update(zip(listed if wanted is None else wanted.intersection(listed), repeat(key)))
    return frozenset(out)


def _imports_to(imports: tuple[SymbolRef, ...]) -> dict[str, list[Any]]:
    """Imports as three columns of the same length (names, versions, weak flags): the
    names, all hints read, come back as one list of strings, checked and made a set
    at C speed, where rows of three cost a Python step each (curl's closure: 3,900)."""
    return {
        "names": [s.name for s in imports],
        "versions": [_NO_VERSION if s.version is None else s.version for s in imports],
        "weak": [s.weak for s in imports],
    }


def _import_columns(data: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], list[bool]]:
    columns = data["imports"]
    names, versions, weak = _strings(columns["names"]), _strings(columns["versions"]), columns["weak"]
    if not isinstance(weak, list) or not set(map(type, weak)) <= {bool} or not len(names) == len(versions) == len(weak):
        raise TypeError("imports")
    return names, versions, weak


def _imports_from(data: dict[str, Any]) -> tuple[SymbolRef, ...]:
    names, versions, weak = _import_columns(data)
    return tuple(
        SymbolRef(name, None if version == _NO_VERSION else version, flag)
        for name, version, flag in zip(names, versions, weak, strict=True)
    )


def _import_names_from(data: dict[str, Any]) -> frozenset[str]:
    """The names of an imports entry, all three columns checked (as for the imports)."""
    return frozenset(_import_columns(data)[0])


#: The length of each digest's hex spelling, in the order stored.
_DIGEST_LENGTHS = (32, 40, 64)


def _digests_from(data: dict[str, Any]) -> tuple[str, str, str]:
    md5, sha1, sha256 = _strings(data["digests"])
    for value, length in zip((md5, sha1, sha256), _DIGEST_LENGTHS, strict=True):
        if len(value) != length or value.strip("0123456789abcdef"):
            raise ValueError("not a digest")
    return md5, sha1, sha256


def _symbols_from(
    data: dict[str, Any], wanted: frozenset[str] | None = None, imports: tuple[SymbolRef, ...] | None = None
) -> Symbols:
    """A symbols entry; ``imports``, when given, are its twin entry's, already decoded."""
    ours = imports if imports is not None else _imports_from(data)
    return Symbols(ours, _pairs(data["defined"], wanted), _pairs(data["hidden"], wanted))
