"""``minify verify``: check a finished root filesystem the way the loader will see it,
without executing anything.

Every ELF file in it must resolve with the rootfs as the root, every version it needs
must be defined, and every undefined, non-weak dynamic symbol must be defined by an
object in its lookup scope, honouring symbol versions: what `ldd -r` reports, done
statically. A library that no program loads (a plugin, an NSS or gconv module) is
checked in the scope of a program that could dlopen it, plus its own closure.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

from minify.analysis.closure import Analysis, LoadedObject, ProgramClosure, analyze, loadable_files
from minify.analysis.target import Target
from minify.elf.cache import FactCache
from minify.elf.files import SymbolRef, Symbols
from minify.errors import BadInput, PathError
from minify.loader.model import ProgramKind
from minify.root import Root

LOCK_NAME = "minify.lock.json"


@dataclass(frozen=True)
class Problem:
    path: str  # the object, inside the rootfs
    kind: str  # error | missing-library | version | undefined-symbol
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


@dataclass(frozen=True)
class VerifyReport:
    rootfs: str
    checked: tuple[str, ...]
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def rootfs_of(directory: str) -> str:
    """OUT (with rootfs/ and a lock file) or a root filesystem folder itself."""
    if not os.path.isdir(directory):
        raise PathError(directory, "not a folder")
    inner = os.path.join(directory, "rootfs")
    if os.path.isdir(inner) and os.path.exists(os.path.join(directory, LOCK_NAME)):
        return inner
    return directory


def elf_files(rootfs: str | Target) -> list[str]:
    """Loadable ELF files of the rootfs (paths inside it), symlinks not followed; an
    unreadable one is listed too, and reported as that file's error."""
    target = rootfs if isinstance(rootfs, Target) else _uncached(rootfs)
    return loadable_files(target.root, target.reader, "/", unreadable=True)


def _uncached(root: str) -> Target:
    """A rootfs just written is new inodes: cache entries of it would never be hit."""
    return Target(root, cache=False)


#: A link into these is resolved by the container runtime's mounts, not the image.
RUNTIME_MOUNTS = ("/proc", "/sys", "/dev", "/run")


def verify(directory: str, facts: FactCache | None = None) -> VerifyReport:
    """Resolve every ELF file of the rootfs with the rootfs as the root, and every
    symlink of it. ``facts``: a cache view that knows the files copied byte for byte
    (``FactCache.copied``), whose facts need no parse."""
    rootfs = os.path.realpath(rootfs_of(directory))
    # one view of the rootfs, and its loader models, for both steps
    target = Target(rootfs, cache=facts) if facts is not None else _uncached(rootfs)
    files = elf_files(target)
    problems = check_files(target, files) + dangling_links(rootfs)
    return VerifyReport(rootfs, tuple(files), tuple(dict.fromkeys(problems)))


def check_files(root: str | Target, files: list[str]) -> list[Problem]:
    """Libraries, versions and symbols of ``files`` (paths inside ``root``).

    A library that a program among them loads is checked as part of that program, as
    the loader will load it (its own search paths alone may not find what the program
    brought in first: systemd's private libraries). A library no program loads (a
    plugin) may use what the programs have loaded: glibc reuses a loaded object by
    its soname."""
    target = root if isinstance(root, Target) else _uncached(root)
    analysis = _programs_then_plugins(target, files)
    programs = [p for p in analysis.programs if not p.library_input]
    loaded = {o.realpath for p in programs for o in p.objects}
    names = {n for p in programs for o in p.objects for n in (o.soname, posixpath.basename(o.path)) if n}
    problems: list[Problem] = []
    for program in analysis.programs:
        if program.error:
            problems.append(Problem(program.path, "error", program.error))
        if program.library_input and program.realpath in loaded:
            continue
        missing = [n for n in program.missing if not (program.library_input and n in names)]
        problems.extend(
            Problem(program.path, "missing-library", f"{name}: not found in the rootfs") for name in missing
        )
        problems.extend(Problem(program.path, "version", e) for e in program.version_errors)
    problems.extend(_symbol_problems(analysis))
    return problems


def _programs_then_plugins(target: Target, files: list[str]) -> Analysis:
    """The analysis of the programs among ``files``, and of the libraries none of them
    loads, in the order of ``files``. A library a program loads is checked in that
    program's closure, as the loader loads it, and is not resolved on its own as well
    (a closure of a hundred libraries would be walked a hundred times more)."""
    analyse = partial(analyze, root=target, cwd="/", hwcaps="baseline", cpuinfo="")
    given = {f: _has_interpreter(target, f) for f in files}
    programs = analyse([f for f, program in given.items() if program])
    loaded = {o.realpath for p in programs.programs for o in p.objects}
    rest = analyse([f for f, program in given.items() if not program and _realpath(target, f) not in loaded])
    order = {path: index for index, path in enumerate(files)}
    closures = sorted((*programs.programs, *rest.programs), key=lambda p: order.get(p.path, len(order)))
    return replace(programs, programs=tuple(closures), skipped=programs.skipped + rest.skipped)


def _has_interpreter(target: Target, path: str) -> bool:
    """A program (PT_INTERP); False for a library, or a file that does not read as
    ELF or cannot be reached (its own analysis says why)."""
    try:
        return target.reader.info(target.root.resolve(path)).header.interpreter is not None
    except (BadInput, PathError):
        return False


def _realpath(target: Target, path: str) -> str | None:
    try:
        return target.root.resolve(path).path
    except PathError:
        return None


def dangling_links(root: str, paths: list[str] | None = None) -> list[Problem]:
    """Symlinks of the root (all, or ``paths``) that lead nowhere inside it."""
    view = Root(root)
    if paths is None:
        paths = [e.path for e in view.walk("/") if e.target is not None]
    problems = []
    for path in paths:
        try:
            target = view.resolve(path)
        except PathError as exc:
            problems.append(Problem(path, "dangling-link", exc.problem))
            continue
        if not target.exists and not target.path.startswith(tuple(m + "/" for m in RUNTIME_MOUNTS)):
            problems.append(Problem(path, "dangling-link", f"dangling symlink: {target.path} is not in the rootfs"))
    return problems


def _symbol_problems(analysis: Analysis) -> list[Problem]:
    reader = analysis.target.reader
    usable = [
        p for p in analysis.programs if p.kind is ProgramKind.DYNAMIC and not p.error and (p.ok or p.library_input)
    ]
    objects = {o.realpath for p in usable for o in p.objects}
    # the names some object imports: the only definitions worth reading
    wanted = frozenset(r.name for path in objects for r in reader.imports(reader.root.resolve(path)) if not r.weak)

    def symbols(path: str) -> Symbols:
        return reader.definitions(reader.root.resolve(path), wanted)

    programs = [p for p in usable if not p.library_input]
    loaded_by_programs = {o.realpath for p in programs for o in p.objects}
    problems: list[Problem] = []
    reported: set[tuple[str, str]] = set()
    for closure in usable:
        own = closure.objects[0].realpath
        if closure in programs:
            scopes = [closure.objects]
        elif own in loaded_by_programs:
            continue  # checked as part of a program that loads it
        else:
            # a plugin: some program dlopens it; its scope is that program's plus its own
            scopes = [p.objects + closure.objects for p in programs] or [closure.objects]
        missing = _undefined(closure, scopes, symbols)
        for path, ref_text in missing:
            if (path, ref_text) not in reported:
                reported.add((path, ref_text))
                problems.append(Problem(path, "undefined-symbol", f"undefined symbol: {ref_text}"))
    return problems


def _scope_defines(definers: list[Symbols]) -> Callable[[SymbolRef], bool]:
    """Whether some object of a scope defines a reference: ``Symbols.defines`` of each
    definer, or-ed, as three sets made once per scope (a closure of a hundred objects
    asks it for thousands of references)."""
    default_names = {name for d in definers for name, _ in d.defined}
    versioned = {key for d in definers for key in (*d.defined, *d.hidden)}
    unversioned = {name for d in definers for name, version in d.defined if version is None}

    def defines(ref: SymbolRef) -> bool:
        if ref.version is None:
            return ref.name in default_names
        return (ref.name, ref.version) in versioned or ref.name in unversioned

    return defines


def _undefined(
    closure: ProgramClosure, scopes: list[tuple[LoadedObject, ...]], symbols: Callable[[str], Symbols]
) -> list[tuple[str, str]]:
    """(object, symbol) pairs that no object of any scope defines; empty if one scope
    satisfies every reference of the closure."""
    best: list[tuple[str, str]] | None = None
    for scope in scopes:
        defines = _scope_defines([symbols(o.realpath) for o in scope])
        missing = []
        for obj in closure.objects:
            for ref in symbols(obj.realpath).imports:
                if ref.weak:
                    continue
                if not defines(ref):
                    text = ref.name + (f"@{ref.version}" if ref.version else "")
                    missing.append((obj.realpath, text))
        if not missing:
            return []
        if best is None or len(missing) < len(best):
            best = missing
    return best or []
