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
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from minify.elf import ET_DYN, ET_EXEC, ElfInfo, is_elf, script_interpreter
from minify.errors import BadInput, MinifyError, NotElf, PathError
from minify.loader.arch import Arch, arch_for, machine_name
from minify.loader.glibc import GlibcModel, Settings
from minify.loader.model import How, LoaderModel, Node, Reader, Role, Step
from minify.loader.musl import MuslModel
from minify.root import Link, Resolved, Root, kind_of

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["Analysis", "Dependency", "LoadedObject", "ProgramClosure", "Settings", "Skipped", "analyze"]


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
    kind: str  # needed | filter | auxiliary | preload | interpreter
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
    kind: str  # dynamic | static | not-elf
    loader: str | None  # glibc | musl
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
    root: str
    programs: tuple[ProgramClosure, ...]
    skipped: tuple[Skipped, ...] = ()

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

    @property
    def graph(self) -> nx.DiGraph:
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
                g.add_node(target, role="missing", requested=dep.name, size=0)
            g.add_edge(
                dep.requester,
                target,
                name=dep.name,
                how=dep.how.value if dep.how else "not found",
                via=dep.via,
                kind=dep.kind,
            )
    return g


@dataclass
class _Run:
    """Shared across the inputs of one analysis: the root, its parsed files, models."""

    root: Root
    settings: Settings
    reader: Reader
    models: dict[tuple[str, str, int, int], LoaderModel] = field(default_factory=dict)

    def model(self, kind: str, arch: Arch, interpreter: str, info: ElfInfo) -> LoaderModel:
        key = (kind, interpreter, arch.machine, arch.elf_class)
        model = self.models.get(key)
        if model is None:
            if kind == "musl":
                model = MuslModel(self.root, arch, interpreter, self.settings, self.reader)
            else:
                native = arch.name == _host_arch()
                model = GlibcModel(
                    self.root,
                    arch,
                    interpreter,
                    self.settings,
                    self.reader,
                    native=native,
                    endian=info.header.endian,
                )
            self.models[key] = model
        return model


def _host_arch() -> str:
    machine = os.uname().machine
    return {"amd64": "x86_64", "arm64": "aarch64", "i686": "i386", "armv7l": "armhf"}.get(machine, machine)


def analyze(
    paths: list[str] | tuple[str, ...],
    *,
    root: str = "/",
    cwd: str | None = None,
    library_path: str | None = None,
    preload: tuple[str, ...] = (),
    hwcaps: str = "default",
    cpuinfo: str | None = None,
    exclude: tuple[str, ...] = (),
) -> Analysis:
    """Resolve every input as the loader would, without running anything.

    ``paths`` are files or folders inside ``root`` (absolute, or relative to ``cwd``;
    ``cwd`` defaults to the current folder when the root is ``/``, else ``/``).
    ``exclude`` are folders inside the root that a folder walk does not enter (OUT).
    """
    view = Root(root)
    if cwd is None:
        cwd = os.getcwd() if view.is_host else "/"
    if cpuinfo is None:
        cpuinfo = _read_cpuinfo() if hwcaps in ("default", "host") else ""
    settings = Settings(cwd=cwd, library_path=library_path, preload=preload, hwcaps=hwcaps, cpuinfo=cpuinfo)
    run = _Run(view, settings, Reader(view))
    programs: list[ProgramClosure] = []
    skipped: list[Skipped] = []
    inputs = []
    for given in paths:
        for path, resolved, explicit in _inputs(view, given, cwd, skipped, exclude):
            if explicit or _worth_analysing(run, path, resolved, skipped):
                inputs.append((path, resolved))
    for path, resolved in inputs:
        programs.append(_analyze_program(run, path, resolved, skipped))
    return Analysis(view.directory, tuple(programs), tuple(skipped))


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
        header = run.reader.header(resolved)
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
            if reader.header(resolved).file_type in (ET_EXEC, ET_DYN):
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
        return ProgramClosure(path, resolved.path, "not-elf", None, None, None, error=str(exc))
    except BadInput as exc:
        return ProgramClosure(path, resolved.path, "not-elf", None, None, None, error=str(exc))
    header = info.header
    machine = machine_name(header.machine, header.elf_class)
    own = _object(path, resolved, info, Role.INPUT)
    interp = header.interpreter
    if interp is None and not info.needed:
        return ProgramClosure(path, resolved.path, "static", None, None, machine, objects=(own,))
    arch = arch_for(header.machine, header.elf_class)
    if arch is None:
        return ProgramClosure(
            path,
            resolved.path,
            "dynamic",
            None,
            interp,
            machine,
            objects=(own,),
            error=f"{path}: unsupported machine {machine}",
        )
    notes: list[str] = []
    if interp is None:
        # A shared library given as an input: loaded as ldd does, by its architecture's
        # standard loader (musl's when it needs musl's libc).
        musl = any(n == "libc.so" or n.startswith("libc.musl-") for n in info.needed)
        interp = f"/lib/ld-musl-{arch.musl}.so.1" if musl else arch.interpreter
        notes.append(f"no PT_INTERP: modelled as loaded by {interp}")
    kind = "musl" if posixpath.basename(interp).startswith("ld-musl-") else "glibc"
    try:
        model = run.model(kind, arch, interp, info)
        result = _walk(run, model, path, resolved, info, arch, machine, notes)
        return replace(result, library_input=header.interpreter is None)
    except MinifyError as exc:
        return ProgramClosure(path, resolved.path, "dynamic", kind, interp, machine, objects=(own,), error=str(exc))
    except ValueError as exc:  # an unknown hwcaps level
        return ProgramClosure(path, resolved.path, "dynamic", kind, interp, machine, objects=(own,), error=str(exc))


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


def _walk(
    run: _Run,
    model: LoaderModel,
    path: str,
    resolved: Resolved,
    info: ElfInfo,
    arch: Arch,
    machine: str,
    notes: list[str],
) -> ProgramClosure:
    nodes: list[Node] = []  # load order
    index: dict[str, Node] = {}  # every name a loaded object answers to; first wins
    by_ident: dict[tuple[int, int], Node] = {}  # the loader also matches device+inode
    deps: list[Dependency] = []
    missing: list[str] = []
    notes.extend(model.notes)

    def add(node: Node) -> None:
        nodes.append(node)
        for key in model.reuse_keys(node):
            index.setdefault(key, node)
        if node.resolved.ident is not None and node.role is not Role.INPUT:
            by_ident.setdefault(node.resolved.ident, node)

    def register(node: Node, name: str) -> None:
        """The object now also answers to ``name`` (glibc's l_libname, musl's shortname)."""
        if "/" not in name or model.kind == "glibc":
            node.names.add(name)
            index.setdefault(name, node)

    def depend(requester: Node, name: str, kind: str, how: How | None, via: str, target: Node | None) -> None:
        deps.append(Dependency(requester.resolved.path, name, kind, how, via, target.resolved.path if target else None))

    main = Node(path, resolved, info, Role.INPUT, None, model.origin_of_program(resolved))
    add(main)
    interp_node: Node | None = None
    interp_res = run.root.resolve(model.interpreter)
    if interp_res.exists:
        interp_info = run.reader.info(interp_res)
        interp_dir = posixpath.dirname(model.interpreter)
        interp_node = Node(model.interpreter, interp_res, interp_info, Role.INTERPRETER, None, interp_dir)
        add(interp_node)
        register(interp_node, model.interpreter)
        depend(main, model.interpreter, "interpreter", How.INTERPRETER, "PT_INTERP", interp_node)
    else:
        missing.append(model.interpreter)
        step = Step("PT_INTERP", model.interpreter, "no such file")
        deps.append(Dependency(resolved.path, model.interpreter, "interpreter", None, "PT_INTERP", None, (step,)))

    def load(name: str, requester: Node, kind: str, role: Role) -> Node | None:
        """Satisfy one request; return the object when it is newly loaded."""
        if model.reserved(name) and interp_node is not None:
            register(interp_node, name)
            depend(requester, name, kind, How.INTERPRETER, model.interpreter, interp_node)
            return None
        reused = index.get(name)
        if reused is not None:
            how = How.INTERPRETER if reused is interp_node else How.ALREADY_LOADED
            depend(requester, name, kind, how, reused.path, reused)
            return None
        result = model.find(name, requester)
        found = result.found
        if found is None:
            if kind == "auxiliary":
                notes.append(f"auxiliary filtee {name} of {requester.path} not found (not an error)")
            elif kind == "preload":
                notes.append(f"preload {name} not found: the loader ignores it with a warning")
            else:
                missing.append(name)
            deps.append(Dependency(requester.resolved.path, name, kind, None, "", None, result.steps))
            return None
        same = by_ident.get(found.resolved.ident) if found.resolved.ident else None
        if same is not None:
            register(same, name)
            alias = Alias(found.resolved.path, found.resolved.links, found.how)
            deps.append(
                Dependency(
                    requester.resolved.path, name, kind, How.SAME_FILE, found.path, same.resolved.path, (), alias
                )
            )
            return None
        lib_info = run.reader.info(found.resolved)
        node = Node(found.path, found.resolved, lib_info, role, requester, posixpath.dirname(found.path))
        add(node)
        register(node, name)
        depend(requester, name, kind, found.how, found.via, node)
        return node

    queue: deque[Node] = deque([main])
    for name, source in model.preloads():
        loaded = load(name, main, "preload", Role.PRELOAD)
        if loaded is not None:
            queue.append(loaded)
        if source != "LD_PRELOAD":
            notes.append(f"{name} preloaded by the root's {source}")
    while queue:
        node = queue.popleft()
        requests = (
            [(n, "filter", Role.FILTEE) for n in node.info.filters]
            + [(n, "auxiliary", Role.FILTEE) for n in node.info.auxiliaries]
            + [(n, "needed", Role.LIBRARY) for n in node.info.needed]
        )
        for name, kind, role in requests:
            loaded = load(name, node, kind, role)
            if loaded is not None:
                queue.append(loaded)

    version_errors = _check_versions(nodes, deps) if model.kind == "glibc" else []
    ordered = [n for n in nodes if n is not interp_node] + ([interp_node] if interp_node else [])
    objects = tuple(_object(n.path, n.resolved, n.info, n.role) for n in ordered)
    return ProgramClosure(
        path=path,
        realpath=resolved.path,
        kind="dynamic",
        loader=model.kind,
        interpreter=model.interpreter,
        machine=machine,
        objects=objects,
        dependencies=tuple(deps),
        missing=tuple(dict.fromkeys(missing)),
        version_errors=tuple(version_errors),
        notes=tuple(dict.fromkeys(notes)),
        vdso=arch.vdso,
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


class Locator:
    """Where a program's loader would find a name the C library dlopen()s. One per
    analysis: its models (ld.so facts, the parsed ld.so.cache) serve every lookup."""

    def __init__(self, analysis: Analysis) -> None:
        view = Root(analysis.root)
        self.run = _Run(view, Settings(cwd="/", hwcaps="baseline"), Reader(view))

    def find(self, program: ProgramClosure, name: str) -> str | None:
        """The caller (libc) has no search paths of its own, so the program's RPATH,
        then the cache and the system directories apply (glibc elf/dl-open.c, dl-load.c)."""
        if program.kind != "dynamic" or program.interpreter is None or not program.objects:
            return None
        view, reader = self.run.root, self.run.reader
        main_obj = program.objects[0]
        resolved = view.resolve(main_obj.realpath)
        info = reader.info(resolved)
        arch = arch_for(info.header.machine, info.header.elf_class)
        if arch is None:
            return None
        kind = "musl" if posixpath.basename(program.interpreter).startswith("ld-musl-") else "glibc"
        model = self.run.model(kind, arch, program.interpreter, info)
        main = Node(main_obj.path, resolved, info, Role.INPUT, None, model.origin_of_program(resolved))
        caller_info = replace(info, needed=(), soname=None, rpath=None, runpath=None, filters=(), auxiliaries=())
        caller = Node("dlopen caller", resolved, caller_info, Role.LIBRARY, main, main.origin)
        found = model.find(name, caller).found
        return found.path if found else None
