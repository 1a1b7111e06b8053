"""Breadth-first resolution of programs into their closures, and the graph of them.

For each input this walks DT_NEEDED (and filtees) breadth-first, in DT_NEEDED order,
asking the loader model (glibc or musl) how each name is reused or searched, exactly
as the loader does when the program runs. The results are frozen values; ``graph()``
turns them into a networkx DiGraph.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import TYPE_CHECKING

from minify.analysis.target import Target
from minify.elf.files import ET_DYN, ET_EXEC, ElfInfo, is_elf, read_header, script_interpreter
from minify.errors import BadInput, MinifyError, NotElf, PathError
from minify.loader.arch import Arch, arch_of, machine_name
from minify.loader.glibc import Settings
from minify.loader.model import How, LoaderKind, LoaderModel, Node, ProgramKind, Reader, Request, Role, Step
from minify.root import Link, Resolved, Root, kind_of

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "Analysis",
    "Dependency",
    "LinkMap",
    "LoadedObject",
    "ProgramClosure",
    "Settings",
    "Skipped",
    "analyze",
    "dlopen_path",
]


@dataclass(frozen=True)
class LoadedObject:
    """One file the loader maps for a program."""

    path: str  # as the loader opened it, inside the root
    realpath: str  # inside the root
    soname: str | None
    size: int
    role: Role
    links: tuple[Link, ...]  # symlinks followed from ``path`` to ``realpath``
    needed: tuple[str, ...]
    rpath: str | None
    runpath: str | None


@dataclass(frozen=True)
class Alias:
    """Another name the loader opened an already loaded file under (two DT_NEEDED
    names for one file): the image must keep that name too."""

    path: str  # inside the root, symlinks resolved (a hard link keeps its own name)
    links: tuple[Link, ...]  # symlinks followed to get there
    how: How  # how the search found this name (rpath, runpath, ld.so.cache, ...)


@dataclass(frozen=True)
class Dependency:
    """One request for a name, and how the loader satisfied it (or did not)."""

    requester: str  # realpath of the object that asked
    name: str
    kind: Request
    how: How | None  # None when not found
    via: str
    target: str | None  # realpath of the object that satisfies it
    searched: tuple[Step, ...] = ()
    opened: Alias | None = None  # how.SAME_FILE: the name as the loader opened it


@dataclass(frozen=True)
class ProgramClosure:
    """Everything the loader would load for one input, in load order."""

    path: str  # as given, inside the root
    realpath: str
    kind: ProgramKind
    loader: LoaderKind | None
    interpreter: str | None
    machine: str | None
    objects: tuple[LoadedObject, ...] = ()
    dependencies: tuple[Dependency, ...] = ()
    missing: tuple[str, ...] = ()
    version_errors: tuple[str, ...] = ()
    error: str | None = None
    notes: tuple[str, ...] = ()
    vdso: str | None = None
    library_input: bool = False  # a shared library given as input (no PT_INTERP)

    @property
    def closure(self) -> tuple[str, ...]:
        """Sorted realpaths of every object loaded, the interpreter included."""
        return tuple(sorted({o.realpath for o in self.objects}))

    @property
    def ok(self) -> bool:
        return self.error is None and not self.missing and not self.version_errors


@dataclass(frozen=True)
class Skipped:
    """An input file that is not a program (text, data, script, symlink)."""

    path: str
    reason: str
    symlink: bool = False


@dataclass(frozen=True)
class Analysis:
    """The closures of the inputs, and the target they were resolved in (its parsed
    files and loader models serve every later question about the same root)."""

    root: str
    programs: tuple[ProgramClosure, ...]
    skipped: tuple[Skipped, ...] = ()
    target: Target = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.target is None:
            object.__setattr__(self, "target", Target(self.root))

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.programs)

    @property
    def has_errors(self) -> bool:
        return any(p.error for p in self.programs)

    def objects(self) -> dict[str, LoadedObject]:
        """Every object of every closure, by realpath (first program's view wins)."""
        out: dict[str, LoadedObject] = {}
        for program in self.programs:
            for obj in program.objects:
                out.setdefault(obj.realpath, obj)
        return out

    @cached_property
    def graph(self) -> nx.DiGraph:
        """Built once, on first use (networkx is imported only then)."""
        return build_graph(self)


def build_graph(analysis: Analysis) -> nx.DiGraph:
    """Nodes: objects (by realpath), the vdso note, unresolved names; edges: requests."""
    import networkx as nx

    g = nx.DiGraph(root=analysis.root)
    for program in analysis.programs:
        for obj in program.objects:
            if obj.realpath not in g:
                g.add_node(
                    obj.realpath,
                    path=obj.path,
                    realpath=obj.realpath,
                    soname=obj.soname or "",
                    size=obj.size,
                    role=obj.role.value,
                )
        if program.vdso:
            g.add_node(program.vdso, role="vdso", note="mapped by the kernel, not a file", size=0)
            g.add_edge(program.realpath, program.vdso, name=program.vdso, how="kernel", via="kernel", kind="vdso")
        for dep in program.dependencies:
            target = dep.target
            if target is None:
                target = f"missing:{dep.name}"
                searched = "; ".join(f"{s.source}: {s.directory or '-'} ({s.outcome})" for s in dep.searched)
                g.add_node(target, role="missing", requested=dep.name, size=0, searched=searched)
            g.add_edge(
                dep.requester,
                target,
                name=dep.name,
                how=dep.how.value if dep.how else "not found",
                via=dep.via,
                kind=dep.kind,
            )
    return g


@dataclass(frozen=True)
class _Run:
    """One analysis: the target it reads and the settings its loaders are modelled with."""

    target: Target
    settings: Settings

    @property
    def root(self) -> Root:
        return self.target.root

    @property
    def reader(self) -> Reader:
        return self.target.reader

    def model(self, kind: LoaderKind, arch: Arch, interpreter: str, info: ElfInfo) -> LoaderModel:
        return self.target.model(self.settings, kind, arch, interpreter, info.header.endian)


def analyze(
    paths: list[str] | tuple[str, ...],
    *,
    root: str | Target = "/",
    cwd: str | None = None,
    library_path: str | None = None,
    preload: tuple[str, ...] = (),
    hwcaps: str = "default",
    cpuinfo: str | None = None,
    exclude: tuple[str, ...] = (),
    cache: bool = True,
) -> Analysis:
    """Resolve every input as the loader would, without running anything.

    ``root`` is a folder, or the ``Target`` of an earlier analysis (its parsed files
    and loader models are reused). ``paths`` are files or folders inside it (absolute,
    or relative to ``cwd``; ``cwd`` defaults to the current folder when the root is
    ``/``, else ``/``). ``exclude`` are folders inside the root that a folder walk does
    not enter (OUT). ``cache=False`` parses every file, bypassing the persistent cache.
    """
    target = root if isinstance(root, Target) else Target(root, cache=cache)
    view = target.root
    if cwd is None:
        cwd = os.getcwd() if view.is_host else "/"
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo() if hwcaps in ("default", "host") else ""
    settings = Settings(cwd=cwd, library_path=library_path, preload=preload, hwcaps=hwcaps, cpuinfo=cpuinfo)
    run = _Run(target, settings)
    skipped: list[Skipped] = []
    inputs = []
    for given in paths:
        for path, resolved, explicit in _inputs(view, given, cwd, skipped, exclude):
            if explicit or _worth_analysing(run, path, resolved, skipped):
                inputs.append((path, resolved))
    programs = [_analyze_program(run, path, resolved, skipped) for path, resolved in inputs]
    return Analysis(view.directory, tuple(programs), tuple(skipped), target)


def _read_cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _worth_analysing(run: _Run, path: str, resolved: Resolved, skipped: list[Skipped]) -> bool:
    """In a folder walk, only loadable ELF files are programs; the rest is counted."""
    try:
        with run.reader.open(resolved) as opened:
            if not is_elf(opened):
                interp = script_interpreter(opened)
                reason = f"script for {interp} (the interpreter is not included unless given)" if interp else "not ELF"
                skipped.append(Skipped(path, reason))
                return False
            header, _ = read_header(opened)  # one open to sniff and read the header
    except BadInput:
        return True  # reported as this input's error
    if header.file_type not in (ET_EXEC, ET_DYN):
        skipped.append(Skipped(path, "ELF, but not loadable (relocatable object or core file)"))
        return False
    return True


def loadable_files(
    view: Root, reader: Reader, folder: str, *, skip: tuple[str, ...] = (), unreadable: bool = False
) -> list[str]:
    """Loadable ELF files below a folder of the root (a rootfs, a runtime's tree of
    extension modules), symlinks not followed; with ``unreadable``, also the ELF files
    that cannot be read, so that a caller reports them."""
    out = []
    for entry in view.walk(folder, skip=skip):
        if not stat.S_ISREG(entry.mode):
            continue
        resolved = view.resolve(entry.path)
        try:
            with reader.open(resolved) as opened:
                if not is_elf(opened):
                    continue
                if read_header(opened)[0].file_type in (ET_EXEC, ET_DYN):
                    out.append(entry.path)
        except BadInput:
            if unreadable:
                out.append(entry.path)
    return out


def _inputs(
    view: Root, given: str, cwd: str, skipped: list[Skipped], exclude: tuple[str, ...]
) -> list[tuple[str, Resolved, bool]]:
    """The files an input names: itself, or every regular file below a folder."""
    if not given:
        raise PathError("''", "an empty path names no file")
    path = given if given.startswith("/") else posixpath.normpath(posixpath.join(cwd, given))
    resolved = view.resolve(path)
    if not resolved.exists:
        raise PathError(given, "no such file or directory" + ("" if view.is_host else f" in {view.directory}"))
    if not resolved.is_dir:
        return [(path, resolved, True)]
    out = []
    for entry in view.walk(resolved.path, skip=exclude):
        inner = path.rstrip("/") + entry.path[len(resolved.path.rstrip("/")) :]
        if stat.S_ISLNK(entry.mode):
            skipped.append(Skipped(inner, "symlink (its target is analysed where it lives)", symlink=True))
        elif stat.S_ISREG(entry.mode):
            out.append((inner, view.resolve(inner), False))
        elif not stat.S_ISDIR(entry.mode):
            skipped.append(Skipped(inner, f"not a regular file ({kind_of(entry.mode)})"))
    return out


def _analyze_program(run: _Run, path: str, resolved: Resolved, skipped: list[Skipped]) -> ProgramClosure:
    try:
        info = run.reader.info(resolved)
    except NotElf as exc:
        interp = run.reader.script_interpreter(resolved)
        if interp:
            skipped.append(Skipped(path, f"script for {interp} (the interpreter is not included unless given)"))
        else:
            skipped.append(Skipped(path, "not an ELF file"))
        return ProgramClosure(path, resolved.path, ProgramKind.NOT_ELF, None, None, None, error=str(exc))
    except BadInput as exc:
        return ProgramClosure(path, resolved.path, ProgramKind.NOT_ELF, None, None, None, error=str(exc))
    header = info.header
    machine = machine_name(header)
    own = _object(path, resolved, info, Role.INPUT)
    if header.interpreter is None and not info.needed:
        return ProgramClosure(path, resolved.path, ProgramKind.STATIC, None, None, machine, objects=(own,))
    arch = arch_of(header)
    failed = partial(ProgramClosure, path, resolved.path, ProgramKind.DYNAMIC, objects=(own,))
    if arch is None:
        return failed(None, header.interpreter, machine, error=f"{path}: unsupported machine {machine}")
    interp, notes = _interpreter_of(info, arch)
    kind = loader_kind(interp)
    try:
        model = run.model(kind, arch, interp, info)
        link_map = LinkMap(run, model, notes)
        link_map.load_program(path, resolved, info)
        return link_map.closure(arch, machine, library_input=header.interpreter is None)
    except (MinifyError, ValueError) as exc:  # ValueError: an unknown hwcaps level
        return failed(kind, interp, machine, error=str(exc))


def loader_kind(interpreter: str) -> LoaderKind:
    """musl's loader is named ld-musl-ARCH.so.1; every other is glibc's."""
    return LoaderKind.MUSL if posixpath.basename(interpreter).startswith("ld-musl-") else LoaderKind.GLIBC


def _interpreter_of(info: ElfInfo, arch: Arch) -> tuple[str, list[str]]:
    """PT_INTERP, or for a shared library given as an input, the loader that ldd would
    use: its architecture's standard one (musl's when it needs musl's libc)."""
    if info.header.interpreter is not None:
        return info.header.interpreter, []
    musl = any(n == "libc.so" or n.startswith("libc.musl-") for n in info.needed)
    interp = f"/lib/ld-musl-{arch.musl}.so.1" if musl else arch.interpreter
    return interp, [f"no PT_INTERP: modelled as loaded by {interp}"]


def _object(path: str, resolved: Resolved, info: ElfInfo, role: Role) -> LoadedObject:
    return LoadedObject(
        path=path,
        realpath=resolved.path,
        soname=info.soname,
        size=info.size,
        role=role,
        links=resolved.links,
        needed=info.needed,
        rpath=info.rpath,
        runpath=info.runpath,
    )


class LinkMap:
    """The loader's list of loaded objects while one program is being loaded
    (glibc's link_map chain, musl's dso list): the program and its interpreter first,
    then preloads, then every DT_NEEDED and filtee breadth-first, each object once."""

    def __init__(self, run: _Run, model: LoaderModel, notes: list[str]) -> None:
        self.run = run
        self.model = model
        self.nodes: list[Node] = []  # load order
        self.index: dict[str, Node] = {}  # every name a loaded object answers to; first wins
        self.by_ident: dict[tuple[int, int], Node] = {}  # the loader also matches device+inode
        self.deps: list[Dependency] = []
        self.missing: list[str] = []
        self.notes: list[str] = [*notes, *model.notes]
        self.main: Node | None = None
        self.interp: Node | None = None

    # -- the steps ----------------------------------------------------------------

    def add(self, node: Node) -> None:
        """A newly mapped object: it answers to its reuse keys and its file identity."""
        self.nodes.append(node)
        for key in self.model.reuse_keys(node):
            self.index.setdefault(key, node)
        if node.resolved.ident is not None and node.role is not Role.INPUT:
            self.by_ident.setdefault(node.resolved.ident, node)

    def register(self, node: Node, name: str) -> None:
        """The object now also answers to ``name`` (glibc's l_libname, musl's shortname)."""
        if "/" not in name or self.model.kind is LoaderKind.GLIBC:
            node.names.add(name)
            self.index.setdefault(name, node)

    def depend(self, requester: Node, name: str, kind: Request, how: How, via: str, target: Node) -> None:
        self.deps.append(Dependency(requester.resolved.path, name, kind, how, via, target.resolved.path))

    def load_program(self, path: str, resolved: Resolved, info: ElfInfo) -> None:
        """The program, its interpreter, its preloads and everything they need."""
        main = Node(path, resolved, info, Role.INPUT, None, self.model.origin_of_program(resolved))
        self.main = main
        self.add(main)
        self._map_interpreter(main)
        queue: deque[Node] = deque([main])
        for name, source in self.model.preloads():
            loaded = self.load(name, main, Request.PRELOAD, Role.PRELOAD)
            if loaded is not None:
                queue.append(loaded)
            if source != "LD_PRELOAD":
                self.notes.append(f"{name} preloaded by the root's {source}")
        while queue:
            node = queue.popleft()
            for name, kind, role in _requests(node.info):
                loaded = self.load(name, node, kind, role)
                if loaded is not None:
                    queue.append(loaded)

    def _map_interpreter(self, main: Node) -> None:
        interpreter = self.model.interpreter
        resolved = self.run.root.resolve(interpreter)
        if not resolved.exists:
            self.missing.append(interpreter)
            step = Step("PT_INTERP", interpreter, "no such file")
            self.deps.append(
                Dependency(main.resolved.path, interpreter, Request.INTERPRETER, None, "PT_INTERP", None, (step,))
            )
            return
        info = self.run.reader.info(resolved)
        node = Node(interpreter, resolved, info, Role.INTERPRETER, None, posixpath.dirname(interpreter))
        self.interp = node
        self.add(node)
        self.register(node, interpreter)
        self.depend(main, interpreter, Request.INTERPRETER, How.INTERPRETER, "PT_INTERP", node)

    def load(self, name: str, requester: Node, kind: Request, role: Role) -> Node | None:
        """Satisfy one request; return the object when it is newly loaded."""
        if self._reuse(name, requester, kind):
            return None
        result = self.model.find(name, requester)
        found = result.found
        if found is None:
            self._not_found(name, requester, kind, result.steps)
            return None
        same = self.by_ident.get(found.resolved.ident) if found.resolved.ident else None
        if same is not None:
            self.register(same, name)
            alias = Alias(found.resolved.path, found.resolved.links, found.how)
            self.deps.append(
                Dependency(
                    requester.resolved.path, name, kind, How.SAME_FILE, found.path, same.resolved.path, (), alias
                )
            )
            return None
        info = self.run.reader.info(found.resolved)
        node = Node(found.path, found.resolved, info, role, requester, posixpath.dirname(found.path))
        self.add(node)
        self.register(node, name)
        self.depend(requester, name, kind, found.how, found.via, node)
        return node

    def _reuse(self, name: str, requester: Node, kind: Request) -> bool:
        """A name the interpreter reserves, or one an object already answers to."""
        if self.model.reserved(name) and self.interp is not None:
            self.register(self.interp, name)
            self.depend(requester, name, kind, How.INTERPRETER, self.model.interpreter, self.interp)
            return True
        reused = self.index.get(name)
        if reused is None:
            return False
        how = How.INTERPRETER if reused is self.interp else How.ALREADY_LOADED
        self.depend(requester, name, kind, how, reused.path, reused)
        return True

    def _not_found(self, name: str, requester: Node, kind: Request, steps: tuple[Step, ...]) -> None:
        if kind is Request.AUXILIARY:
            self.notes.append(f"auxiliary filtee {name} of {requester.path} not found (not an error)")
        elif kind is Request.PRELOAD:
            self.notes.append(f"preload {name} not found: the loader ignores it with a warning")
        else:
            self.missing.append(name)
        self.deps.append(Dependency(requester.resolved.path, name, kind, None, "", None, steps))

    # -- the result -----------------------------------------------------------------

    def closure(self, arch: Arch, machine: str, *, library_input: bool) -> ProgramClosure:
        """The frozen result: objects in load order, the interpreter last (as ldd)."""
        assert self.main is not None
        version_errors = _check_versions(self.nodes, self.deps) if self.model.kind is LoaderKind.GLIBC else []
        ordered = [n for n in self.nodes if n is not self.interp] + ([self.interp] if self.interp else [])
        return ProgramClosure(
            path=self.main.path,
            realpath=self.main.resolved.path,
            kind=ProgramKind.DYNAMIC,
            loader=self.model.kind,
            interpreter=self.model.interpreter,
            machine=machine,
            objects=tuple(_object(n.path, n.resolved, n.info, n.role) for n in ordered),
            dependencies=tuple(self.deps),
            missing=tuple(dict.fromkeys(self.missing)),
            version_errors=tuple(version_errors),
            notes=tuple(dict.fromkeys(self.notes)),
            vdso=arch.vdso,
            library_input=library_input,
        )


def _requests(info: ElfInfo) -> list[tuple[str, Request, Role]]:
    """An object's requests in the loader's order: filtees first (elf/dl-deps.c)."""
    return (
        [(n, Request.FILTER, Role.FILTEE) for n in info.filters]
        + [(n, Request.AUXILIARY, Role.FILTEE) for n in info.auxiliaries]
        + [(n, Request.NEEDED, Role.LIBRARY) for n in info.needed]
    )


def _check_versions(nodes: list[Node], deps: list[Dependency]) -> list[str]:
    """glibc elf/dl-version.c: every VERNEED entry must be met by the VERDEF of the
    object that provides that file ("version `X' not found (required by Y)")."""
    by_real = {n.resolved.path: n for n in nodes}
    provider: dict[tuple[str, str], Node] = {}
    for dep in deps:
        if dep.target is not None and dep.target in by_real:
            provider[(dep.requester, dep.name)] = by_real[dep.target]
    errors = []
    for node in nodes:
        for need in node.info.version_needs:
            target = provider.get((node.resolved.path, need.soname))
            if target is None:
                target = next((n for n in nodes if n.info.soname == need.soname or need.soname in n.names), None)
            if target is None:
                continue  # not loaded: reported as missing already
            if not target.info.version_defs:
                # elf/dl-version.c: no DT_VERDEF at all is only a warning at start-up;
                # binding a versioned symbol from it then fails (dl-lookup.c check_match)
                errors.append(
                    f"{target.path}: no version information available (required by {node.path}); "
                    f"the program fails when it binds a versioned symbol from it"
                )
                continue
            defined = set(target.info.version_defs)
            for version in need.versions:
                if version not in defined:
                    errors.append(f"{target.path}: version `{version}' not found (required by {node.path})")
    return errors


def dlopen_path(analysis: Analysis, program: ProgramClosure, name: str) -> str | None:
    """Where the program's loader finds a name that its C library dlopen()s (iconv
    modules, NSS, libgcc_s), asked of the analysis's own target and loader models.
    Modelled with baseline hwcaps: the image must work on any CPU."""
    if program.kind is not ProgramKind.DYNAMIC or program.interpreter is None or not program.objects:
        return None
    target = analysis.target
    main_obj = program.objects[0]
    resolved = target.root.resolve(main_obj.realpath)
    info = target.reader.info(resolved)
    arch = arch_of(info.header)
    if arch is None:
        return None
    settings = Settings(cwd="/", hwcaps="baseline")
    model = target.model(settings, loader_kind(program.interpreter), arch, program.interpreter, info.header.endian)
    main = Node(main_obj.path, resolved, info, Role.INPUT, None, model.origin_of_program(resolved))
    found = model.find_dlopen(name, main).found
    return found.path if found else None
