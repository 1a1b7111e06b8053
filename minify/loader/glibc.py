"""The glibc loader's search rules (elf/dl-load.c _dl_map_object, open_path, open_verify).

Order for a name without '/', for the object L that needs it:
RPATH of L and of each object up the chain that loaded it (only when L has no
RUNPATH; an object with both ignores its own RPATH: elf/get-dynamic-info.h),
LD_LIBRARY_PATH, RUNPATH of L, ld.so.cache, the system directories. DF_1_NODEFLIB on L
drops cache hits in the system directories and the system directories themselves.
Every directory is tried with its hwcaps subfolders first.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Literal

from minify.elf.cache import Kind
from minify.elf.files import ELFOSABI_GNU, ELFOSABI_SYSV, ET_DYN, ET_EXEC, Endian
from minify.errors import BadInput, CorruptElf, NotRegularFile
from minify.loader import hwcaps as hw
from minify.loader import ldcache, ldconf
from minify.loader.arch import Arch
from minify.loader.model import (
    Candidate,
    How,
    LoaderKind,
    Node,
    Reader,
    Role,
    SearchResult,
    Step,
    dlopen_caller,
    unchanged,
)
from minify.loader.tokens import Tokens, expand, split_glibc_path
from minify.root import Resolved, Root

_VERSION = re.compile(rb"release version ([0-9]+)\.([0-9]+)")
#: A system directory is a short printable string; ld.so has a handful of them.
MAX_DIR_LENGTH = 256
MAX_SYSTEM_DIRS = 64
#: Runs of folder-like strings, and first strings of a run, tried against ld.so's
#: lengths array (a real ld.so has two or three runs; each search reads the file once).
MAX_RUNS = 32
MAX_FIRSTS = 8
#: Bytes of ld.so read for its facts (ld.so is a few hundred KB).
LDSO_LIMIT = 16 << 20
#: Steps of a failed search kept for the report.
MAX_STEPS = 256


@dataclass(frozen=True)
class Settings:
    """What the user says about the run that the files cannot tell us."""

    cwd: str = "/"
    library_path: str | None = None  # modelled LD_LIBRARY_PATH
    preload: tuple[str, ...] = ()  # modelled LD_PRELOAD
    hwcaps: str = "default"  # host | baseline | all | a level | default
    cpuinfo: str = ""  # /proc/cpuinfo text of the host, for hwcaps=host


@dataclass(frozen=True)
class LdsoFacts:
    """Facts read from the target's own ld.so, so a sysroot is modelled as itself."""

    version: tuple[int, int] | None
    system_dirs: tuple[str, ...]
    from_binary: bool


def ldso_facts(root: Root, interpreter: str, arch: Arch, reader: Reader | None = None) -> LdsoFacts:
    """The glibc release and system directories compiled into ld.so.

    ld.so keeps its system directories as one run of NUL-terminated strings ending in
    '/' (elf/dl-load.c system_dirs, generated from SYSTEM_DIRS); we read them rather
    than guess the distribution. With a ``reader`` that has a persistent cache, what
    was read from this version of ld.so is remembered.
    """
    cache = reader.cache if reader is not None else None
    resolved = root.resolve(interpreter)
    if reader is None or cache is None or not resolved.is_file:
        return _ldso_facts(root.read_bytes(interpreter, limit=LDSO_LIMIT) or b"", root, arch)
    try:
        with reader.open(resolved) as f:
            hit = cache.load(f.st, Kind.LDSO)
            if hit is not None:
                remembered = _ldso_from(hit)
                if remembered is not None:
                    return remembered
            facts = _ldso_facts(f.pread(min(f.st.st_size, LDSO_LIMIT), 0), root, arch)
            if facts.from_binary and unchanged(f):
                cache.store(f.st, Kind.LDSO, {"version": facts.version, "system_dirs": list(facts.system_dirs)})
            return facts
    except BadInput:
        return _ldso_facts(b"", root, arch)


def _ldso_from(data: dict[str, object]) -> LdsoFacts | None:
    version, dirs = data.get("version"), data.get("system_dirs")
    if not isinstance(dirs, list) or not dirs or not all(isinstance(d, str) for d in dirs):
        return None
    if version is None:
        return LdsoFacts(None, tuple(dirs), True)
    if not (isinstance(version, list) and len(version) == 2 and all(type(v) is int for v in version)):
        return None
    return LdsoFacts((version[0], version[1]), tuple(dirs), True)


def _ldso_facts(data: bytes, root: Root, arch: Arch) -> LdsoFacts:
    found = _VERSION.search(data)
    version = (int(found.group(1)), int(found.group(2))) if found else None
    dirs = system_dirs(data, arch)
    if dirs:
        return LdsoFacts(version, dirs, True)
    guess: tuple[str, ...]
    if root.resolve(f"/lib/{arch.triplet}").exists or root.resolve(f"/usr/lib/{arch.triplet}").exists:
        guess = (f"/lib/{arch.triplet}", f"/usr/lib/{arch.triplet}", "/lib", "/usr/lib")
    elif arch.upstream_lib == "lib":
        guess = ("/lib", "/usr/lib")
    else:
        guess = (f"/{arch.upstream_lib}", f"/usr/{arch.upstream_lib}")
    return LdsoFacts(version, guess, False)


def system_dirs(data: bytes, arch: Arch) -> tuple[str, ...]:
    """ld.so's system folders: elf/dl-load.c keeps them as ``system_dirs``, one run of
    NUL-terminated strings ending in '/' ("/lib/x86_64-linux-gnu/\\0/usr/lib/...\\0"),
    and their lengths as ``system_dirs_len``, an array of size_t. Any bytes may come
    right before the first string (machine code on armhf), so a run's first folder is
    one of the '/'-suffixes of its piece; the one whose lengths array ld.so also holds
    (in the target's word size and byte order) is the loader's own. Without such an
    array, the longest suffix of the run that names a lib folder. Empty when ld.so has
    no such run."""
    fallback: tuple[str, ...] = ()
    word = 8 if arch.elf_class == 64 else 4
    order: Literal["little", "big"] = "big" if arch.big_endian else "little"
    for firsts, rest in _string_runs(data)[:MAX_RUNS]:
        options = [(first, *rest) for first in firsts[:MAX_FIRSTS]] + [rest[i:] for i in range(len(rest) - 1)]
        for dirs in options:
            found = tuple(_folder(d) for d in dirs[:MAX_SYSTEM_DIRS])
            if b"".join(len(d).to_bytes(word, order) for d in dirs) in data:
                return found
            if not fallback and any("lib" in d for d in found):
                fallback = found
    return fallback


def _folder(text: str) -> str:
    return text.rstrip("/") or "/"


def _string_runs(data: bytes) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """Runs of two or more consecutive NUL-terminated strings that each start and end
    with '/', in one linear pass: (the candidates for the first string, longest first,
    the rest). The first string's piece may start with other bytes: its candidates are
    its printable tail's suffixes that start with '/'."""
    runs: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    firsts: tuple[str, ...] = ()
    rest: list[str] = []
    for piece in data.split(b"\0")[:-1]:  # the last piece has no terminating NUL
        whole = 1 < len(piece) <= MAX_DIR_LENGTH and piece.endswith(b"/")
        if whole and firsts and piece.startswith(b"/") and _printable(piece):
            rest.append(piece.decode())
            continue
        if rest:
            runs.append((firsts, tuple(rest)))
        firsts, rest = (_first_candidates(piece) if whole else ()), []
    if rest:
        runs.append((firsts, tuple(rest)))
    return runs


def _first_candidates(piece: bytes) -> tuple[str, ...]:
    """The suffixes of ``piece`` after its last non-printable byte that start with '/'
    and are more than '/', longest first."""
    start = max((i + 1 for i, b in enumerate(piece) if b not in _PRINTABLE), default=0)
    tail = piece[start:]
    return tuple(tail[i:].decode() for i in range(len(tail) - 1) if tail[i] == 0x2F)


#: The bytes of a folder string: printable ASCII without the space.
_PRINTABLE = range(0x21, 0x7F)


def _printable(piece: bytes) -> bool:
    return all(b in _PRINTABLE for b in piece)


def choose_hwcaps(arch: Arch, setting: str, cpuinfo: str, *, native: bool) -> hw.Hwcaps:
    """``default`` is this CPU when the target is the host's architecture, else baseline."""
    if setting == "default":
        setting = "host" if native else "baseline"
    if setting == "host":
        return hw.host(arch, cpuinfo)
    if setting in ("baseline", "all"):
        return hw.baseline(arch)
    return hw.at_level(arch, setting)


def _step(steps: list[Step], step: Step) -> None:
    """Keep the first ``MAX_STEPS`` steps of a search trail, then one that says so."""
    if len(steps) < MAX_STEPS:
        steps.append(step)
    elif len(steps) == MAX_STEPS:
        steps.append(Step("...", None, f"more folders searched; the first {MAX_STEPS} are shown"))


class GlibcModel:
    kind = LoaderKind.GLIBC

    def __init__(
        self,
        root: Root,
        arch: Arch,
        interpreter: str,
        settings: Settings,
        reader: Reader,
        *,
        native: bool,
        endian: Endian,
    ) -> None:
        self.root = root
        self.arch = arch
        self.interpreter = interpreter
        self.settings = settings
        self.reader = reader
        self.endian = endian
        self.notes: list[str] = []
        facts = ldso_facts(root, interpreter, arch, reader)
        if not facts.from_binary:
            self.notes.append(
                f"system directories guessed ({':'.join(facts.system_dirs)}): {interpreter} could not be read"
            )
        self.system_dirs = facts.system_dirs
        self.lib = self.system_dirs[0].strip("/")  # $LIB is ld.so's own slibdir
        self.hwcaps = choose_hwcaps(arch, settings.hwcaps, settings.cpuinfo, native=native)
        # glibc 2.37 removed the legacy tls/ and platform subfolders
        self.legacy_ok = facts.version is None or facts.version <= (2, 36)
        self._memo: dict[tuple[object, ...], SearchResult] = {}
        self._dirs: dict[str, bool] = {}
        self.cache: ldcache.LdCache | None = None
        self.conf_dirs: tuple[str, ...] = ()
        data = root.read_bytes("/etc/ld.so.cache")
        if data is not None:
            try:
                self.cache = ldcache.parse(data)
            except ldcache.CacheFormatError as exc:
                self.notes.append(f"/etc/ld.so.cache ignored: {exc}")
        if self.cache is None:
            self.conf_dirs = ldconf.directories(root)
            if self.conf_dirs:
                self.notes.append(
                    "the root has an ld.so.conf but no ld.so.cache: the loader never reads ld.so.conf, so its"
                    f" folders ({':'.join(self.conf_dirs[:8])}) are not searched; `ldconfig -r ROOT` would write"
                    " the cache that makes them searched"
                )

    # -- the parts closure.py asks for --------------------------------------------

    def origin_of_program(self, resolved: Resolved) -> str:
        """$ORIGIN of the program: the folder of its realpath (/proc/self/exe)."""
        return posixpath.dirname(resolved.path)

    def reserved(self, name: str) -> bool:
        return False

    def reuse_keys(self, node: Node) -> tuple[str, ...]:
        """elf/dl-load.c _dl_map_object: a loaded object matches by the path it was
        opened by (the program's l_name is empty), any name it was requested under
        (added by closure.py), or its DT_SONAME."""
        keys = () if node.role is Role.INPUT else (node.path,)
        return (*keys, node.info.soname) if node.info.soname else keys

    def preloads(self) -> list[tuple[str, str]]:
        """LD_PRELOAD (when modelled), then the root's /etc/ld.so.preload (rtld.c)."""
        out = [(name, "LD_PRELOAD") for name in self.settings.preload]
        data = self.root.read_bytes("/etc/ld.so.preload")
        if data:
            text = data.decode("utf-8", "replace")
            for line in text.splitlines():
                line = line.split("#", 1)[0]
                out.extend((n, "/etc/ld.so.preload") for n in re.split(r"[\s:]+", line) if n)
        return out

    def tokens(self, node: Node) -> Tokens:
        return Tokens(node.origin, self.lib, self.hwcaps.platform)

    def find_dlopen(self, name: str, program: Node) -> SearchResult:
        """Where a dlopen() by the C library finds ``name`` for ``program``."""
        return self.find(name, dlopen_caller(program))

    def find(self, name: str, requester: Node) -> SearchResult:
        """Search for ``name`` on behalf of ``requester``; memoised, since the answer
        depends only on the name and the search paths that apply to the requester."""
        key = (name, *self._search_key(requester))
        hit = self._memo.get(key)
        if hit is None:
            if "/" in name:
                hit = self._direct(name, requester)
            else:
                steps: list[Step] = []
                found = self._search(name, requester, steps)
                hit = SearchResult(found, () if found else tuple(steps))  # the trail is shown for misses
            self._memo[key] = hit
        return hit

    def _search_key(self, requester: Node) -> tuple[object, ...]:
        """Everything about the requester that its search depends on: the object itself
        (its path fixes its RUNPATH, DF_1_NODEFLIB and $ORIGIN), the RPATHs up the chain
        that loaded it, and the program's $ORIGIN when LD_LIBRARY_PATH is modelled."""
        nodes = requester.chain()
        chain = tuple((n.path, n.origin) for n in nodes if n.info.rpath)
        program_origin = nodes[-1].origin if self.settings.library_path else None
        return (requester.path, requester.origin, chain, program_origin)

    # -- search -------------------------------------------------------------------

    def _direct(self, name: str, requester: Node) -> SearchResult:
        path = expand(name, self.tokens(requester))
        if not path.startswith("/"):
            path = posixpath.join(self.settings.cwd, path)
        resolved = self.root.resolve(path)
        if not resolved.exists:
            return SearchResult(None, (Step("direct path", path, "no such file"),))
        skip = self.check(resolved)
        if skip:
            return SearchResult(None, (Step("direct path", path, skip),))
        return SearchResult(Candidate(path, resolved, How.DIRECT_PATH, path), ())

    def _search(self, name: str, requester: Node, steps: list[Step]) -> Candidate | None:
        """elf/dl-load.c _dl_map_object: RPATHs up the chain (unless the requester has
        RUNPATH), LD_LIBRARY_PATH, the requester's RUNPATH, then the defaults."""
        program = requester.chain()[-1]
        hit = self._in_rpaths(name, requester, steps)
        if hit is None and self.settings.library_path is not None:
            text = expand(self.settings.library_path, self.tokens(program))
            dirs = split_glibc_path(text, self.settings.cwd)
            hit = self._in_dirs(name, dirs, How.LD_LIBRARY_PATH, "LD_LIBRARY_PATH", steps)
        if hit is None and requester.info.runpath:
            source = f"RUNPATH of {requester.path}"
            dirs = split_glibc_path(expand(requester.info.runpath, self.tokens(requester)), self.settings.cwd)
            hit = self._in_dirs(name, dirs, How.RUNPATH, source, steps)
        return hit if hit is not None else self._in_defaults(name, requester, steps)

    def _in_rpaths(self, name: str, requester: Node, steps: list[Step]) -> Candidate | None:
        """The RPATH of the requester and of each object up the chain that loaded it;
        none of them when the requester has RUNPATH, and never an object's RPATH when
        that object also has RUNPATH (elf/get-dynamic-info.h)."""
        if requester.info.runpath is not None:
            if any(n.info.rpath for n in requester.chain()):
                steps.append(Step("RPATH", None, f"ignored: {requester.path} has RUNPATH"))
            return None
        for node in requester.chain():
            if not node.info.rpath:
                continue
            source = f"RPATH of {node.path}"
            if node.info.runpath is not None:
                steps.append(Step(source, None, "ignored: that object also has RUNPATH"))
                continue
            dirs = split_glibc_path(expand(node.info.rpath, self.tokens(node)), self.settings.cwd)
            hit = self._in_dirs(name, dirs, How.RPATH, source, steps)
            if hit:
                return hit
        return None

    def _in_defaults(self, name: str, requester: Node, steps: list[Step]) -> Candidate | None:
        """ld.so.cache, then the system folders; with DF_1_NODEFLIB neither the cache's
        system-folder entries nor those folders. Without a cache, ld.so.conf is not
        read (ld.so never does); a miss that it lists says so on the trail."""
        nodeflib = requester.info.nodeflib
        if self.cache is not None:
            hit = self._from_cache(name, nodeflib, steps)
            if hit:
                return hit
        if nodeflib:
            steps.append(Step("system dirs", None, f"ignored: {requester.path} has DF_1_NODEFLIB"))
            return None
        hit = self._in_dirs(name, self.system_dirs, How.SYSTEM_DIR, "system dir", steps)
        if hit is None and self.cache is None and self.conf_dirs:
            listed = self._in_dirs(name, self.conf_dirs, How.SYSTEM_DIR, "ld.so.conf", [])
            if listed is not None:
                steps.append(
                    Step(
                        "ld.so.conf",
                        listed.path,
                        "not searched: the loader reads ld.so.conf only through ld.so.cache, which the root"
                        " lacks (`ldconfig -r ROOT` would make this found)",
                    )
                )
        return hit

    def _from_cache(self, name: str, nodeflib: bool, steps: list[Step]) -> Candidate | None:
        assert self.cache is not None
        path = self.cache.lookup(name, self.arch.cache_flags, self.hwcaps.subdirs)
        if path is None:
            _step(steps, Step("ld.so.cache", None, "no entry"))
            return None
        if nodeflib and posixpath.dirname(path) in self.system_dirs:
            steps.append(Step("ld.so.cache", path, "ignored: DF_1_NODEFLIB and in a system dir"))
            return None
        resolved = self.root.resolve(path)
        if not resolved.exists:
            steps.append(Step("ld.so.cache", path, "entry points to a missing file"))
            return None
        skip = self.check(resolved)
        if skip:
            steps.append(Step("ld.so.cache", path, skip))
            return None
        return Candidate(path, resolved, How.LD_CACHE, "/etc/ld.so.cache")

    def _in_dirs(self, name: str, dirs: tuple[str, ...], how: How, source: str, steps: list[Step]) -> Candidate | None:
        """The first acceptable ``name`` in ``dirs`` (each with its hwcaps subfolders).
        Duplicate folders are tried once (glibc fillin_rpath), and a folder that does
        not exist is known once per run, so a path list costs its length, not more."""
        for directory in dict.fromkeys(dirs):
            for folder in self.hwcaps.candidates(directory, legacy_ok=self.legacy_ok):
                absolute = folder if folder.startswith("/") else posixpath.join(self.settings.cwd, folder)
                if not self._is_dir(absolute):
                    continue
                resolved = self.root.resolve(f"{absolute.rstrip('/')}/{name}")
                if not resolved.exists:
                    continue
                skip = self.check(resolved)
                if skip:
                    _step(steps, Step(source, folder, skip))
                    continue
                return Candidate(f"{absolute.rstrip('/')}/{name}", resolved, how, directory)
            _step(steps, Step(source, directory, "not found"))
        return None

    def _is_dir(self, folder: str) -> bool:
        known = self._dirs.get(folder)
        if known is None:
            known = self._dirs[folder] = self.root.resolve(folder).is_dir
        return known

    def check(self, resolved: Resolved) -> str | None:
        """glibc open_verify, as Debian's loader applies it: None to accept, a reason
        to skip the file and search on (another class, machine, byte order or float ABI:
        ``Arch.rejects``), or raise where the loader stops with an error (not ELF, too
        short, a foreign OS ABI or ABI version, a file type it cannot load)."""
        host = self.root.host_path(resolved.path)
        if resolved.is_dir:
            raise NotRegularFile(host, "cannot read file data: is a directory")
        header = self.reader.header(resolved)
        if header.elf_class != self.arch.elf_class:
            return f"skipped: wrong ELF class (ELFCLASS{header.elf_class})"
        if header.endian is not self.endian:
            return f"skipped: other byte order ({header.endian.value}-endian)"
        if header.osabi not in self.arch.osabis:
            raise CorruptElf(host, f"ELF file OS ABI invalid ({header.osabi})")
        if not _valid_abiversion(self.arch, header.osabi, header.abiversion):
            raise CorruptElf(host, f"ELF file ABI version invalid ({header.abiversion})")
        skip = self.arch.rejects(header)
        if skip:
            return skip
        if header.file_type not in (ET_DYN, ET_EXEC):
            raise CorruptElf(host, "only ET_DYN and ET_EXEC can be loaded")
        return None


def _valid_abiversion(arch: Arch, osabi: int, version: int) -> bool:
    """VALID_ELF_ABIVERSION (sysdeps/gnu/ldsodefs.h, MIPS's own)."""
    if version == 0:
        return True
    if osabi == ELFOSABI_GNU:
        return version < arch.abi_max
    return osabi == ELFOSABI_SYSV and version < arch.sysv_abi_max
