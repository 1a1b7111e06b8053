"""``minify rootfs``: plan the image, write it all-or-nothing, verify it, or check it.

The output folder holds ``rootfs/`` (exactly the closure), ``Dockerfile`` and
``minify.lock.json``. It is built in a temporary folder beside OUT and swapped into
place (``minify.output``) only after the finished rootfs has been analysed again with
itself as the root; any failure leaves OUT as it was. Every byte copied is read from
a descriptor opened inside the root, and the lock file's sha256 is that of exactly
those bytes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import posixpath
import shlex
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from minify import __version__, output, presets
from minify.closure import Analysis, ProgramClosure, analyze, dlopen_path, loadable_files
from minify.dockerfile import owned_trees, render_dockerignore
from minify.dockerfile import render as render_dockerfile
from minify.embedded import embedded_hints
from minify.errors import (
    BadInput,
    DockerfileError,
    ImageSourceError,
    IncompleteClosure,
    MinifyError,
    OutOfDate,
    OutputError,
    PlanError,
    TraceFailed,
    VerificationFailed,
)
from minify.hints import Hint, for_analysis, presets_called_for
from minify.image import (
    Digests,
    Entry,
    EntryType,
    Extra,
    Generated,
    ImageConfig,
    ImagePlan,
    Mapping,
    clean_path,
    plan_digests,
    plan_image,
    user_spec,
)
from minify.java import JavaNeeds, java_home, java_needs, loaded_first
from minify.java import app_files as java_app_files
from minify.loader.model import ProgramKind, Reader
from minify.loaderfiles import loader_files
from minify.node import NodeNeeds, is_node, node_needs
from minify.node import command_line as node_command_line
from minify.output import LOCK_NAME, LOCK_SCHEMA, SBOM_NAME
from minify.packagedata import left_out, program_data
from minify.packages import APK_DB, apk_installed, ownership, spelt_entries, unreadable_databases
from minify.presets import NONROOT
from minify.python import PythonNeeds, command_line, is_python, python_needs
from minify.root import Root, hash_fd, read_host_file, remove_tree, within
from minify.sbom import SBOM_PATH
from minify.sbom import document as spdx_document
from minify.scripts import DEFAULT_PATH, interpreters, shell_needs
from minify.sensitive import why_secret
from minify.served import Serving
from minify.target import Target
from minify.text import some
from minify.trace import TRACE_NAME, Trace, run_trace

#: Why a runtime's own files (the JVM's lib/) are in the image.
LAYOUT_REASON = "the runtime's layout"

if TYPE_CHECKING:
    from minify.fromimage import Origin

__all__ = ["LOCK_NAME", "RootfsOptions", "RootfsResult", "build", "check", "prepare"]

#: ``--max-unpacked-size``: a ``--from`` image that unpacks to more is refused.
DEFAULT_MAX_UNPACKED = 8 << 30
#: Every file gets this mtime, so the same inputs give the same image layer.
FIXED_MTIME = 0
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class RootfsOptions:
    paths: tuple[str, ...]
    output: str
    root: str = "/"
    cwd: str | None = None
    maps: tuple[Mapping, ...] = ()  # parsed: Mapping.parse("SRC=DEST")
    entrypoint: str | None = None
    cmd: tuple[str, ...] = ()
    user: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # parsed: env_pair("K=V")
    hwcaps: str = "all"
    force: bool = False
    with_: tuple[str, ...] = ()
    tz: tuple[str, ...] = ()
    charsets: tuple[str, ...] = ()
    terms: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    trace: str | None = None  # a command to run under strace (this runs it)
    trace_user: str | None = None
    trace_ok_exit: bool = False
    trace_timeout: float | None = None  # --trace-timeout: end a traced server after this
    probes: tuple[str, ...] = ()  # --probe: commands run against the traced server
    trace_exclude: tuple[str, ...] = ()  # globs of traced paths to leave out
    layout: tuple[str, ...] = ()  # a runtime's own files (the JVM's): added, their libraries' closures lenient
    brought: tuple[tuple[str, str], ...] = ()  # (path, why) of the files in ``add`` the inputs' apps need
    cache: bool = True  # the persistent cache of parsed ELF facts
    package_metadata: bool = True  # status.d stanzas, os-release and the SBOM in the image
    source: str | None = None  # --from: an image to minify (its flattened files are the root)
    platform: str | None = None  # --platform OS/ARCH[/VARIANT] of a multi-platform source
    max_unpacked: int = DEFAULT_MAX_UNPACKED  # --max-unpacked-size of a source image
    tests: tuple[str, ...] = ()  # --test: commands that must run in the image as at the source
    test_output: bool = False  # --test-output: and print the same output


@dataclass(frozen=True)
class RootfsResult:
    plan: ImagePlan
    output: str
    input_bytes: int
    layer_bytes: int
    differences: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    report: dict[str, Any] | None = None  # --from: the source, what was kept and dropped


@dataclass(frozen=True)
class Prepared:
    """Everything OUT will hold, planned in memory before anything is written."""

    plan: ImagePlan
    dockerfile: str
    trace: Trace | None
    out: output.Destination
    sbom: bytes = b""  # SPDX JSON of the image (OUT/sbom.spdx.json)
    digests: dict[str, Digests] = field(default_factory=dict)  # of every file of the plan
    report: dict[str, Any] | None = None  # --from: the source, what was kept and dropped


def _load_trace(options: RootfsOptions, view: Root, out: output.Destination, origin: Origin | None) -> Trace | None:
    """A new trace when asked (this runs the command: inside a source image, run in
    its flattened root), else the one OUT recorded (validated like any input: an
    edited file is not trusted)."""
    if options.trace is not None and origin is not None:
        from minify.fromimage import environment, user_ids

        config = origin.config
        command = options.trace or shlex.join((*config.entrypoint, *config.cmd))
        named = options.trace_user is not None
        return run_trace(
            command,
            cwd=options.cwd or config.working_dir or "/",
            ok_exit=options.trace_ok_exit,
            root=view.directory,
            env=environment(config),
            serving=Serving(options.trace_timeout, options.probes),
            ids=user_ids(view, options.trace_user, "--trace-user") if named else origin.user_ids,
        )
    if options.trace is not None:
        if not view.is_host:
            raise PlanError("--trace runs the command on this machine: it needs --root /")
        return run_trace(
            options.trace,
            cwd=options.cwd,
            user=options.trace_user,
            ok_exit=options.trace_ok_exit,
            serving=Serving(options.trace_timeout, options.probes),
        )
    saved = os.path.join(out.path, TRACE_NAME)
    if not os.path.lexists(saved):
        return None
    data = read_host_file(saved)
    if data is None:
        raise TraceFailed(f"{saved}: not a regular file that can be read")
    text = data.decode("utf-8", "surrogateescape")
    return Trace.from_json(text, saved)


def _traced_files(
    trace: Trace, view: Root, out: output.Destination, named: set[str], exclude: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """The traced files that may join the image, and warnings about the others:
    nothing under OUT, nothing ``--trace-exclude`` names, and no known secret unless
    the user named it with --add."""
    kept: list[str] = []
    warnings: list[str] = []
    secrets: list[str] = []
    out_inner = view.contains_host_path(out.path)
    for path in trace.files:
        if out_inner and within(path, out_inner):
            continue
        if any(fnmatch.fnmatchcase(path, glob) or within(path, glob) for glob in exclude):
            continue
        why = why_secret(path)
        if why is not None and path not in named:
            secrets.append(f"{path} ({why})")
            continue
        if view.resolve(path).is_file:
            kept.append(path)
    if secrets:
        warnings.append(
            "left out of the image, though the traced run read them: "
            + ", ".join(secrets)
            + "; --add a file explicitly if the image must have it"
        )
    if trace.exit_status != 0:
        warnings.append(f"the traced command exited with status {trace.exit_status} (accepted: --trace-ok-exit)")
    return kept, warnings


def _not_elf_note(view: Root, reader: Reader, traced: list[str]) -> list[str]:
    """Say which traced files are not ELF objects: data a user may not expect."""
    data = [p for p in traced if not _is_elf_file(view, reader, p)]
    if not data:
        return []
    shown = some(data, 8)
    return [f'note: the trace adds {len(data)} file(s) that are not ELF objects: {shown} (why "traced" in {LOCK_NAME})']


@dataclass
class _Gathered:
    """What goes into the image beside the closures of the inputs, as it is gathered
    from presets, ``--add``, a trace and dlopen notes."""

    extras: list[Extra] = field(default_factory=list)
    elf: list[str] = field(default_factory=list)  # ELF files among them: their closures too
    tree_elves: list[str] = field(default_factory=list)  # ELF files inside --add folders
    layout_elves: list[str] = field(default_factory=list)  # a runtime's libraries (the JVM's)
    named: set[str] = field(default_factory=set)  # what --add names (a secret there is wanted)
    warnings: list[str] = field(default_factory=list)


def prepare(options: RootfsOptions, *, folder: bool = True, origin: Origin | None = None) -> Prepared:
    """Analyse and plan everything in memory: the plan and the Dockerfile. OUT is a
    folder unless ``folder`` is False (an image archive). With ``origin`` (``--from``,
    inside ``fromimage.opened``) the root is the flattened source image."""
    # a flattened image is new inodes every run: caching its facts would only grow the cache
    target = Target(Root(options.root, origin.owners) if origin else options.root, cache=options.cache and not origin)
    view = target.root
    cwd = options.cwd if options.cwd is not None else (os.getcwd() if view.is_host else "/")
    inputs = tuple(view.host_path(view.resolve(posixpath.join(cwd, p)).path) for p in options.paths if p)
    out = output.destination(options.output, root=view.directory, inputs=inputs, cwd=os.getcwd(), folder=folder)
    skip = _skipped_folders(view, out)
    search = _search_path(origin)
    read = _analyse_inputs(options, target, cwd, skip, origin)
    analysis, brought, options = read.analysis, read.brought, read.apply(options)
    first = analysis.programs[0].path if analysis.programs else None
    programs, scripts = _split_scripts(analysis)
    analysis = replace(analysis, programs=programs)
    hints = _hints(analysis)
    names, chosen = _preset_names(options, hints)
    additions = presets.resolve(
        names, analysis, tz=options.tz, charsets=options.charsets, terms=options.terms, optional=chosen
    )
    gathered = _gather(options, analysis, additions, cwd, skip)
    trace = _load_trace(options, view, out, origin)
    if trace is not None:
        _gather_trace(trace, options, analysis, out, gathered, search)
    note_warnings = _gather_dlopen_notes(analysis, gathered)
    generated, dirs = _generated(options, additions, trace, view, origin, skip)
    extra, tree_warnings = _extra_closures(options, analysis, gathered, cwd)
    maps = _maps(options, cwd)
    config = _config(options, first, maps, additions.env, origin)
    layout = partial(
        plan_image,
        analysis,
        maps=maps,
        extra=extra,
        config=config,
        scripts=scripts,
        extras=tuple(gathered.extras),
        dirs=tuple(dirs),
        skip=skip,
    )
    # the loader's cache lists what the image ships: planned once without it first
    generated.extend(loader_files(layout(generated=tuple(generated)), analysis))
    where = str(origin.source) if origin is not None else view.directory
    plan, sbom, package_warnings, digests = _with_packages(options, layout, tuple(generated), analysis, where)
    gathered.warnings.extend(package_warnings)
    gathered.warnings.extend(_plan_notes(analysis, plan, names))
    _check_entrypoint(plan, config, options, origin)
    warnings = [*(origin.notes if origin else ()), *plan.warnings, *_skipped_warnings(analysis, gathered, scripts)]
    given = len(analysis.programs) + len(scripts) - len(set(brought) - set(read.added))
    warnings.extend([*tree_warnings, *_entrypoint_note(options, config, given), *brought.values(), *read.notes])
    warnings.extend(f"hint: {h}" for h in _open_hints(hints, names, trace, plan, analysis, extra))
    warnings.extend([*additions.notes, *note_warnings, *gathered.warnings])
    plan = replace(plan, warnings=tuple(warnings))
    try:
        dockerfile = render_dockerfile(plan)
    except DockerfileError as exc:
        raise PlanError(str(exc)) from None
    return Prepared(plan, dockerfile, trace, out, sbom, digests, _source_report(origin, plan))


def _search_path(origin: Origin | None) -> str:
    """The PATH ``#!/usr/bin/env NAME`` is looked up in: a source image's own (as its
    runtime would), else the runtimes' default."""
    if origin is None:
        return DEFAULT_PATH
    from minify.fromimage import environment

    return environment(origin.config)["PATH"]


@dataclass(frozen=True)
class _Inputs:
    """The analysed inputs and what came with them: the interpreters and the commands
    their scripts need (notes by path), the files to add (what shell scripts source,
    what Python apps import), other notes."""

    analysis: Analysis
    brought: dict[str, str]
    added: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    layout: tuple[str, ...] = ()  # a runtime's own files (``RootfsOptions.layout``)
    given: tuple[str, ...] = ()  # the user's --add
    why: dict[str, str] = field(default_factory=dict)  # why each of ``added`` is there

    @property
    def add(self) -> tuple[str, ...]:
        """``--add`` and the files the inputs' scripts and apps need."""
        return (*self.given, *self.added)

    def apply(self, options: RootfsOptions) -> RootfsOptions:
        """``options`` with what the inputs bring: to add, a runtime's layout, and why."""
        return replace(options, add=self.add, layout=self.layout, brought=tuple(self.why.items()))


def _analyse_inputs(
    options: RootfsOptions, target: Target, cwd: str, skip: tuple[str, ...], origin: Origin | None
) -> _Inputs:
    """The closures of the inputs, of the interpreters their ``#!`` lines need (looked
    up in the image's PATH) and of the commands their shell scripts run; the modules
    their Python apps import. hwcaps ``all`` analyses the baseline and adds every
    hwcaps copy later."""
    hwcaps = "baseline" if options.hwcaps in ("all", "baseline") else options.hwcaps
    view, search = target.root, _search_path(origin)
    inner = [
        p for p in (posixpath.normpath(posixpath.join(cwd, p)) for p in options.paths if p) if view.resolve(p).is_file
    ]
    needs = shell_needs(view, inner, search, cwd)
    paths, brought = _with_interpreters((*options.paths, *needs.programs), view, cwd, search)
    for program, script in needs.programs.items():
        brought[program] = f"note: {program} comes with {script}, a command it runs"
    for file in needs.sourced:
        brought.setdefault(file, f"note: {file} comes with the script that sources it")
    apps = _python_apps(view, inner, search, origin)
    jvm = _java_apps(target, [*inner, *needs.programs], origin)
    analysis = analyze(paths, root=target, cwd=cwd, hwcaps=hwcaps, cpuinfo="", exclude=skip)
    node = _node_apps(analysis, inner, search, origin)
    volumes = _volumes(view, origin)
    why = {**needs.why, **apps.why, **node.why, **dict.fromkeys(jvm.app, jvm.why)}
    why.update({**dict.fromkeys(volumes, "the image's VOLUME")})
    why = {path: reason for path, reason in why.items() if path not in options.add}  # the user's --add wins
    added = (*needs.sourced, *needs.files, *apps.files, *node.files, *node.addons, *jvm.app, *volumes)
    notes = (*needs.notes, *apps.notes, *node.notes, *jvm.notes)
    notes += tuple(f"note: {v} comes whole: a VOLUME of the image" for v in volumes)
    return _Inputs(analysis, brought, added, notes, jvm.files, options.add, why)


def _node_apps(analysis: Analysis, inputs: list[str], search: str, origin: Origin | None) -> NodeNeeds:
    """The modules of the Node.js apps among the inputs (``#!`` scripts of node) and of
    a source image whose entrypoint is ``node FILE``."""
    view = analysis.target.root
    runs: list[tuple[str, list[str], list[str], dict[str, str]]] = []
    for path in inputs:
        chain, _ = interpreters(view, path, search)
        if chain and is_node(chain[-1]):
            runs.append((chain[-1], [path], [], {}))
    if origin is not None and origin.entry is not None and is_node(origin.entry):
        config = origin.config
        scripts, preloads = node_command_line((*config.entrypoint, *config.cmd), config.working_dir or "/")
        runs.append((origin.entry, scripts, preloads, dict(config.env)))
    files: list[str] = []
    addons: list[str] = []
    notes: list[str] = []
    why: dict[str, str] = {}
    for node, scripts, preloads, env in runs:
        real = view.realpath(node)
        own = [p for p in analysis.programs if real in (p.path, p.realpath)]
        binaries = [o.realpath for p in own for o in p.objects if o.realpath == real or "libnode" in o.realpath]
        needs = node_needs(view, node, scripts, preloads, env=env, binaries=binaries)
        files += needs.files
        addons += needs.addons
        notes += needs.notes
        why = {**needs.why, **why}
    return NodeNeeds(tuple(dict.fromkeys(files)), tuple(dict.fromkeys(addons)), tuple(notes), why)


def _volumes(view: Root, origin: Origin | None) -> tuple[str, ...]:
    """A source image's VOLUMEs that are folders of it: an engine fills a new volume
    with what the image holds there (postgres' data), so each comes whole, with its
    owners and modes."""
    if origin is None:
        return ()
    found = ((v, view.resolve(v)) for v in origin.config.volumes if v.startswith("/"))
    return tuple(v for v, res in found if res.is_dir and res.path == posixpath.normpath(v) != "/")


def _java_apps(target: Target, inputs: list[str], origin: Origin | None) -> JavaNeeds:
    """The JVM layout of each ``java`` among the inputs and a source image's entrypoint,
    and the class path that entrypoint's command line names."""
    homes = {java_home(target.root, p) for p in (*inputs, *([origin.entry] if origin and origin.entry else []))}
    found = [java_needs(target, home) for home in sorted(h for h in homes if h is not None)]
    if origin is not None and origin.entry is not None and java_home(target.root, origin.entry) is not None:
        config = origin.config
        argv = (*config.entrypoint, *config.cmd)
        found.append(java_app_files(target.root, argv, config.working_dir or "/", dict(config.env)))
    files, notes = tuple(f for n in found for f in n.files), tuple(x for n in found for x in n.notes)
    return JavaNeeds(files, notes, "java class path", tuple(f for n in found for f in n.app))


def _python_apps(view: Root, inputs: list[str], search: str, origin: Origin | None) -> PythonNeeds:
    """The modules of the Python apps among the inputs (``#!`` scripts of python3) and
    of a source image whose entrypoint is ``python3 SCRIPT``, ``-m MODULE`` or ``-c``."""
    files: list[str] = []
    notes: list[str] = []
    runs: list[tuple[str, list[str], list[str], str]] = []
    for path in inputs:
        chain, _ = interpreters(view, path, search)
        if chain and is_python(chain[-1]):
            runs.append((chain[-1], [path], [], ""))
    if origin is not None and origin.entry is not None and is_python(origin.entry):
        config = origin.config
        runs.append((origin.entry, *command_line((*config.entrypoint, *config.cmd), config.working_dir or "/")))
    why: dict[str, str] = {}
    for interpreter, scripts, modules, code in runs:
        needs = python_needs(view, interpreter, [s for s in scripts if view.resolve(s).is_file], modules, code)
        files += needs.files
        notes += needs.notes
        why = {**needs.why, **why}
    if files:
        notes.append(f"note: {len(set(files))} Python modules, packages and their files come with the app's imports")
    return PythonNeeds(tuple(dict.fromkeys(files)), tuple(notes), why)


def _with_interpreters(
    paths: tuple[str, ...], view: Root, cwd: str, search: str
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The inputs, and the interpreters their ``#!`` lines need (``#!/usr/bin/env
    python3``: env and python3 as PATH finds it), which come with them; notes on the
    ones brought, by path."""
    out = list(paths)
    brought: dict[str, str] = {}
    for path in paths:
        inner = posixpath.normpath(posixpath.join(cwd, path)) if path else path
        if not inner or not view.resolve(inner).is_file:
            continue
        chain, problem = interpreters(view, inner, search)
        if problem is not None:
            raise PlanError(problem.replace("not in the image", "not in the root"))
        for interpreter in chain:
            if interpreter not in out and view.realpath(interpreter) not in out:
                out.append(interpreter)
                brought[interpreter] = f"note: {interpreter} comes with {path}, the #! interpreter it needs"
    return tuple(out), brought


def _plan_notes(analysis: Analysis, plan: ImagePlan, presets_taken: tuple[str, ...]) -> list[str]:
    """What the planned image still lacks or should not have: the programs' package
    data left out (unless taken), the hints from their own bytes, surprising modes;
    and a cache this run could not use."""
    cache = analysis.target.reader.cache
    notes = [cache.note] if cache is not None and cache.note else []
    if "package-data" not in presets_taken:
        notes.extend(left_out(program_data(analysis, plan), plan))
    return [*notes, *embedded_hints(analysis, plan), *surprising_modes(plan)]


def surprising_modes(plan: ImagePlan) -> list[str]:
    """Modes a user would not expect to ship (a source image's 0777 entrypoint, a 07777
    home), named: a world-writable program or folder lets any user of the container
    change what runs; a set-id folder changes who owns what is made in it."""
    out = []
    entry = plan.lookup(plan.config.entrypoint[0]) if plan.config.entrypoint else None
    if entry is not None and entry.mode & 0o022:
        out.append(
            f"the entrypoint {plan.config.entrypoint[0]} is writable by others than its owner ({entry.mode:04o})"
        )
    for item in plan.entries:
        if item.type is not EntryType.DIR:
            continue
        if item.mode & 0o002 and not item.mode & 0o1000:
            out.append(f"{item.path}: a folder anyone may write to, without the sticky bit ({item.mode:04o})")
        if item.mode & 0o6000:
            out.append(f"{item.path}: a folder with set-id bits ({item.mode:04o})")
    return out


def _entrypoint_note(options: RootfsOptions, config: ImageConfig, inputs: int) -> list[str]:
    """With several inputs, say which one the image runs."""
    if options.source is not None or options.entrypoint is not None or inputs < 2 or not config.entrypoint:
        return []
    return [
        f"note: the ENTRYPOINT is {config.entrypoint[0]}, the first of {inputs} inputs (--entrypoint names another)"
    ]


def _source_report(origin: Origin | None, plan: ImagePlan) -> dict[str, Any] | None:
    if origin is None:
        return None
    from minify.fromimage import report

    return report(origin, plan)


def _check_entrypoint(plan: ImagePlan, config: ImageConfig, options: RootfsOptions, origin: Origin | None) -> None:
    """``--entrypoint`` names a path of the image; a source's own was resolved through
    its PATH already (``Origin.entry``)."""
    if options.entrypoint is None and origin is not None:
        if origin.entry is not None and plan.lookup(origin.entry) is None:
            raise ImageSourceError(f"the entrypoint {origin.entry} did not make it into the image")
        return
    if config.entrypoint and plan.lookup(config.entrypoint[0]) is None:
        raise PlanError(f"--entrypoint {config.entrypoint[0]} is not in the image")


def _with_packages(
    options: RootfsOptions,
    layout: Callable[..., ImagePlan],
    generated: tuple[Generated, ...],
    analysis: Analysis,
    where: str,
) -> tuple[ImagePlan, bytes, list[str], dict[str, Digests]]:
    """The plan with each entry's owning package, the package metadata scanners read
    and the SBOM in the image (unless ``--no-package-metadata``); the SBOM, warnings,
    and the digests of the plan's files."""
    from minify.oci import source_date_epoch

    view = analysis.target.root
    plan = layout(generated=generated)
    digests = plan_digests(plan, view)  # each file of the root read once, for all three uses
    names = spelt_entries(plan, view)  # the ways a package database may spell each file
    owned = ownership(plan, view, digests, names)
    apk_files, apk_warnings, apk_owners = apk_installed(plan, view, names)
    rpm = unreadable_databases(view)
    warnings = [*owned.warnings, *apk_warnings, *rpm]
    if not owned.found and not view.resolve(APK_DB).is_file and not rpm:
        warnings.append(f"note: {where} has no dpkg database: scanners will see no packages in the image")
    if options.package_metadata:
        generated += owned.generated + apk_files
        plan = layout(generated=generated)
        digests = plan_digests(plan, view, digests)
    sbom = spdx_document(plan, owned, analysis, source_date_epoch(), digests, warnings)
    if options.package_metadata:
        plan = layout(generated=(*generated, Generated(SBOM_PATH, sbom, reason="the SBOM of this image")))
        digests = plan_digests(plan, view, digests)
    owners = {**apk_owners, **owned.owners}
    entries = tuple(replace(e, package=owners.get(e.path)) for e in plan.entries)
    return replace(plan, entries=entries), sbom, warnings, digests


def _maps(options: RootfsOptions, cwd: str) -> tuple[Mapping, ...]:
    """``--map`` values, and for relative inputs their folder mapped to /: a relative
    input keeps its path relative to the current folder, rooted at /."""
    maps = options.maps
    if any(not p.startswith("/") for p in options.paths) and cwd != "/":
        maps += (Mapping(clean_path(cwd, "--cwd"), "/", explicit=False),)
    return maps


def _open_hints(
    hints: tuple[Hint, ...],
    names: tuple[str, ...],
    trace: Trace | None,
    plan: ImagePlan,
    analysis: Analysis,
    extra: tuple[ProgramClosure, ...] = (),
) -> list[Hint]:
    """The hints the image still needs, of the final closure (``extra``: what a trace,
    ``--add`` or a runtime's layout brought asks too): not a preset it takes, not a
    preset whose files a trace (or ``--add``) brought already, and with a trace none of
    the hints about dlopen and data, which the trace answers."""
    hints = _hints(analysis, extra) if extra else hints
    shipped = {e.path for e in plan.entries}
    out = []
    for hint in hints:
        if hint.preset in names or (trace is not None and hint.preset is None):
            continue
        if hint.preset is not None and _preset_shipped(hint.preset, shipped, analysis):
            continue
        out.append(hint)
    return out


def _preset_shipped(name: str, shipped: set[str], analysis: Analysis) -> bool:
    """True when the image already holds a file the preset would add (a traced
    zoneinfo file, a CA bundle added by hand)."""
    try:
        wanted = presets.resolve((name,), analysis)
    except MinifyError:
        return False
    return any(within(p, path) for path in wanted.files for p in shipped)


def _preset_names(options: RootfsOptions, hints: tuple[Hint, ...]) -> tuple[tuple[str, ...], frozenset[str]]:
    """``--with``, the presets that ``--tz``/``--gconv``/``--term`` imply, and for
    ``auto`` the ones the hints call for; and which of them only ``auto`` chose (those
    the root cannot serve are left out with a note, not a failed run)."""
    names = presets.parse_with(options.with_)
    subsets = (("tzdata", options.tz), ("gconv", options.charsets), ("terminfo", options.terms))
    names += tuple(n for n, given in subsets if given and n not in names)
    if "auto" not in names:
        return names, frozenset()
    named = [n for n in names if n != "auto"]
    chosen = [n for n in presets_called_for(hints) if n not in named]
    return tuple(dict.fromkeys(named + chosen)), frozenset(chosen)


def _gather(
    options: RootfsOptions, analysis: Analysis, additions: presets.Additions, cwd: str, skip: tuple[str, ...]
) -> _Gathered:
    """Files from the presets, symlinks of input folders, and ``--add``."""
    view, reader = analysis.target.root, analysis.target.reader
    preset_of = dict(additions.preset_of)
    got = _Gathered(elf=list(additions.elf))
    got.extras.extend(Extra(path, None, f"--with {preset_of.get(path, 'preset')}") for path in additions.files)
    # a package's modules come with their closures, as the ELF files of an --add folder
    got.tree_elves.extend(
        p for p in additions.files if preset_of.get(p) == "package-data" and _is_elf_file(view, reader, p)
    )
    # symlinks inside an input folder (bin/app -> app-1.2) belong to the folder too
    got.extras.extend(
        Extra(s.path, None, "symlink in an input folder", private=True) for s in analysis.skipped if s.symlink
    )
    for path in options.layout:  # the JVM's: closures as loaded after libjvm.so (_extra_closures)
        got.extras.append(Extra(path, None, LAYOUT_REASON))
        if _is_elf_file(view, reader, path):
            got.layout_elves.append(path)
    why = dict(options.brought)
    for spec in options.add:
        added = _parse_add(spec, view, cwd)
        if spec in why:  # brought for an app (its imports, a script's data): not named by the user
            added = replace(added, reason=why.pop(spec))
        else:
            got.named.update((view.realpath(added.path), added.path))
        got.extras.append(added)
        if _is_elf_file(view, reader, added.path):
            got.elf.append(added.path)
        elif view.resolve(added.path).is_dir:
            got.tree_elves.extend(loadable_files(view, reader, added.path, skip=skip))
    return got


def _gather_trace(
    trace: Trace, options: RootfsOptions, analysis: Analysis, out: output.Destination, got: _Gathered, search: str
) -> None:
    """The files a trace read, less secrets, OUT and ``--trace-exclude``."""
    view, reader = analysis.target.root, analysis.target.reader
    traced, warnings = _traced_files(trace, view, out, got.named, options.trace_exclude)
    got.warnings.extend([*warnings, *_not_elf_note(view, reader, traced)])
    for path in traced:
        got.extras.append(Extra(path, None, "traced"))
        if _is_elf_file(view, reader, path):
            got.elf.append(path)
    # the kernel opens a script's interpreter itself: strace never shows it
    kept = set(traced)
    for script in trace.executed:
        if script not in kept:
            continue
        chain, _ = interpreters(view, script, search)  # what env found is traced already
        for interpreter in chain:
            got.extras.append(Extra(interpreter, None, f"traced (interpreter of {script})"))
            if _is_elf_file(view, reader, interpreter):
                got.elf.append(interpreter)


def _generated(
    options: RootfsOptions,
    additions: presets.Additions,
    trace: Trace | None,
    view: Root,
    origin: Origin | None,
    skip: tuple[str, ...] = (),
) -> tuple[list[Generated], list[tuple[str, int, tuple[int, int]]]]:
    """Files minify writes (users, nsswitch.conf) and empty folders (/tmp, a home, the
    folders a trace listed or looked at, less OUT and secret places, a source image's
    working folder and its user's home)."""
    generated = list(additions.generated)
    dirs = list(additions.dirs)
    if origin is not None:
        dirs.extend(d for d in (origin.working_dir, origin.home) if d is not None and d[0] != "/")
        if options.user is None:
            generated.extend(origin.users)
    if trace is not None:
        dirs.extend(_traced_folders(trace, view, skip))
    if options.user == "nonroot":
        generated.extend(presets.users_files(view))
        dirs.append(presets.NONROOT_HOME)
    return _merge_users(generated), dirs


def _merge_users(generated: list[Generated]) -> list[Generated]:
    """One /etc/passwd and one /etc/group when several sources write them (``--with
    nss`` and a source image's named user): the lines of the first, then the others'
    lines for names and ids it does not have. Any other file: the first one."""
    merged: dict[str, Generated] = {}
    for item in generated:
        first = merged.get(item.path)
        if first is None:
            merged[item.path] = item
        elif item.path in ("/etc/passwd", "/etc/group"):
            lines = first.content.decode("utf-8", "replace").splitlines()
            taken = {field for line in lines for field in line.split(":")[0:3:2]}
            extra = [
                ln
                for ln in item.content.decode("utf-8", "replace").splitlines()
                if not set(ln.split(":")[0:3:2]) & taken
            ]
            text = "".join(f"{line}\n" for line in (*lines, *extra))
            merged[item.path] = replace(first, content=text.encode(), reason=f"{first.reason}; {item.reason}")
    return list(merged.values())


def _traced_folders(trace: Trace, view: Root, skip: tuple[str, ...]) -> list[tuple[str, int, tuple[int, int]]]:
    """The folders a trace looked at or wrote into, less OUT and secret places, with
    their permission bits in the root (``/tmp`` keeps 1777) less setuid and setgid, and
    a source image's owner (nginx's /var/lib/nginx). One reached through a link
    (postgres' /var/run/postgresql) is named by that path: the plan lays the link too."""
    out = []
    for folder in trace.dirs:
        found = view.resolve(folder)
        if any(within(p, s) for p in (folder, found.path) for s in skip) or why_secret(found.path) is not None:
            continue
        if found.is_dir and found.mode is not None:
            owner, mode = view.owner(found.path, found.mode)
            out.append((folder, mode & ~(stat.S_ISUID | stat.S_ISGID), owner))
    return out


def _extra_closures(
    options: RootfsOptions, analysis: Analysis, got: _Gathered, cwd: str
) -> tuple[tuple[ProgramClosure, ...], list[str]]:
    """Closures beside the inputs': hwcaps copies, added and traced ELF files, and the
    ELF files of added folders (those may lack libraries: a warning, not an error)."""
    target = analysis.target
    extra: tuple[ProgramClosure, ...] = ()
    if options.hwcaps == "all":
        extra = _hwcaps_variants(analysis, cwd)
    if got.elf:
        extra += _closures_of(sorted(set(got.elf)), target, cwd)
    warnings: list[str] = []
    if got.tree_elves:
        closures, warnings = _closures_of_tree(sorted(set(got.tree_elves) - set(got.elf)), target, cwd)
        extra += closures
    if got.layout_elves:  # the JVM opens libjvm.so by path first: its soname meets the others' need
        elves = sorted(set(got.layout_elves))
        closures, more = _closures_of_tree(elves, target, cwd, preload=loaded_first(elves))
        extra, warnings = extra + closures, warnings + more
    return extra, warnings


def _skipped_warnings(analysis: Analysis, got: _Gathered, scripts: tuple[tuple[str, str], ...]) -> list[str]:
    """Inputs that are not programs, except inside folders given to ``--add`` and the
    scripts that ship (with the interpreters they need)."""
    added = [e.path for e in got.extras if e.reason.startswith("--add")]
    shipped = {path for path, _ in scripts}
    return [
        f"skipped {s.path}: {s.reason}"
        for s in analysis.skipped
        if not s.symlink and s.path not in shipped and not any(within(s.path, f) for f in added)
    ]


def _skipped_folders(view: Root, out: output.Destination) -> tuple[str, ...]:
    """OUT and the temporary folders beside it, as paths inside the root: a folder
    input or ``--add`` of a folder that holds OUT never takes in a previous image."""
    inner = view.contains_host_path(out.path)
    if inner is None:
        return ()
    parent = posixpath.dirname(inner)
    names = os.listdir(out.parent) if os.path.isdir(out.parent) else []
    siblings = [posixpath.join(parent, n) for n in names if out.leftovers.fullmatch(n)]
    return (inner, *siblings)


def _is_elf_file(view: Root, reader: Reader, path: str) -> bool:
    return reader.is_elf(view.resolve(path))


def _hints(analysis: Analysis, extra: tuple[ProgramClosure, ...] = ()) -> tuple[Hint, ...]:
    """Hints for every program, merged; with ``extra``, for the final closure: the
    libraries a trace, ``--add`` or a runtime's layout brought ask too."""
    if extra:
        analysis = replace(analysis, programs=(*analysis.programs, *extra))
    out: dict[tuple[str | None, str], Hint] = {}
    for hints in for_analysis(analysis).values():
        for hint in hints:
            out.setdefault((hint.preset, hint.reason), hint)
    return tuple(out.values())


def _gather_dlopen_notes(analysis: Analysis, got: _Gathered) -> list[str]:
    """The libraries the ``.note.dlopen`` notes bring, with their closures; warnings."""
    noted, warnings = _dlopen_notes(analysis)
    got.elf.extend(noted)
    got.extras.extend(Extra(path, None, ".note.dlopen") for path in noted)
    return warnings


def _dlopen_notes(analysis: Analysis) -> tuple[list[str], list[str]]:
    """Libraries that ``.note.dlopen`` notes mark required or recommended, found where
    the program's loader would find them. A required one that is missing fails."""
    reader = analysis.target.reader
    found: list[str] = []
    warnings: list[str] = []
    missing: list[str] = []
    for program in analysis.programs:
        for obj in program.objects if program.kind is ProgramKind.DYNAMIC else ():
            try:
                notes, malformed = reader.dlopen_notes(reader.root.resolve(obj.realpath))
            except BadInput:
                continue  # the analysis read this file; its notes are optional
            warnings.extend(malformed)
            wanted = [
                (n.priority, soname) for n in notes if n.priority in ("required", "recommended") for soname in n.sonames
            ]
            for priority, soname in wanted:
                path = dlopen_path(analysis, program, soname)
                if path is not None:
                    found.append(path)
                else:
                    problem = f"{soname}: {priority} by the .note.dlopen of {obj.path}, not found"
                    (missing if priority == "required" else warnings).append(problem)
    if missing:
        raise IncompleteClosure("; ".join(missing))
    return sorted(set(found)), warnings


def _parse_add(spec: str, view: Root, cwd: str) -> Extra:
    """``--add PATH[:DEST]``: a path of the root, refused if it is empty, names no
    file, or climbs out of the root with `..`."""
    path, _, dest = spec.partition(":")
    if not path:
        raise PlanError(f"--add {spec!r}: PATH is empty")
    if "\0" in spec:
        raise PlanError(f"--add {spec!r}: a path cannot contain a NUL byte")
    if ".." in path.split("/") or (dest and ".." in dest.split("/")):
        raise PlanError(f"--add {spec}: '..' is not allowed (it would leave the root)")
    if dest and not dest.startswith("/"):
        raise PlanError(f"--add {spec}: DEST must be an absolute path in the image")
    inner = posixpath.normpath(path if path.startswith("/") else posixpath.join(cwd, path))
    if not view.resolve(inner).exists:
        raise PlanError(f"--add {spec}: {inner} does not exist" + ("" if view.is_host else f" in {view.directory}"))
    if not dest and not path.startswith("/"):
        dest = "/" + posixpath.normpath(path)  # relative, as a relative input: rooted at /
    return Extra(inner, clean_path(dest, "--add DEST") if dest else None, f"--add {spec}")


def _closures_of(paths: list[str], target: Target, cwd: str) -> tuple[ProgramClosure, ...]:
    """The closures of ELF files added beside the programs (dlopened modules)."""
    extra = analyze(paths, root=target, cwd=cwd, hwcaps="baseline", cpuinfo="")
    for program in extra.programs:
        if program.error or program.missing:
            raise PlanError(program.error or f"{program.path}: needs {', '.join(program.missing)}, not found")
    return extra.programs


def _closures_of_tree(
    paths: list[str], target: Target, cwd: str, preload: tuple[str, ...] = ()
) -> tuple[tuple[ProgramClosure, ...], list[str]]:
    """The closures of the ELF files of an added folder (with ``preload`` loaded
    first). One whose libraries are not in the source root either is still copied,
    with a warning: minify is no stricter than the system it reads."""
    extra = analyze(paths, root=target, cwd=cwd, hwcaps="baseline", cpuinfo="", preload=preload)
    kept, warnings = [], []
    for program in extra.programs:
        if program.error or program.missing:
            warnings.append(
                f"{program.path}: {program.error or 'needs ' + ', '.join(program.missing) + ', not found in the root'};"
                " copied without its closure"
            )
        else:
            kept.append(program)
    return tuple(kept), warnings


def _split_scripts(analysis: Analysis) -> tuple[tuple[ProgramClosure, ...], tuple[tuple[str, str], ...]]:
    """Scripts are accepted when their ``#!`` interpreter is an input too."""
    view, reader = analysis.target.root, analysis.target.reader
    given = {p.realpath for p in analysis.programs if p.kind is not ProgramKind.NOT_ELF}
    given |= {p.path for p in analysis.programs if p.kind is not ProgramKind.NOT_ELF}
    programs = []
    scripts = []
    for program in analysis.programs:
        if program.kind is not ProgramKind.NOT_ELF:
            programs.append(program)
            continue
        interp = reader.script_interpreter(view.resolve(program.realpath))
        if interp is None:
            raise PlanError(program.error or f"{program.path}: not an ELF file")
        if interp not in given and view.realpath(interp) not in given:
            raise PlanError(
                f"{program.path} is a script for {interp}, which is not included unless given: add {interp} as an input"
            )
        scripts.append((program.path, interp))
    return tuple(programs), tuple(scripts)


def _hwcaps_variants(analysis: Analysis, cwd: str) -> tuple[ProgramClosure, ...]:
    """Every glibc-hwcaps copy of every library, so the image runs on any CPU and still
    gets the tuned copy where the CPU allows (glibc >= 2.33)."""
    view = analysis.target.root
    variants: list[str] = []
    for obj in analysis.objects().values():
        folder = posixpath.dirname(obj.path)
        hw = posixpath.join(folder, "glibc-hwcaps")
        for level in view.listdir(hw):
            candidate = posixpath.join(hw, level, posixpath.basename(obj.path))
            if view.resolve(candidate).is_file:
                variants.append(candidate)
    if not variants:
        return ()
    extra = analyze(sorted(set(variants)), root=analysis.target, cwd=cwd, hwcaps="baseline", cpuinfo="")
    return extra.programs


def _config(
    options: RootfsOptions,
    first: str | None,
    maps: tuple[Mapping, ...],
    preset_env: tuple[tuple[str, str], ...] = (),
    origin: Origin | None = None,
) -> ImageConfig:
    user = NONROOT if options.user == "nonroot" else options.user
    if user is not None:
        user_spec(user)
    if origin is not None:
        return _source_config(options, origin, preset_env, user)
    env = [*preset_env, *options.env]
    entrypoint: tuple[str, ...] = ()
    if options.entrypoint:
        entrypoint = (options.entrypoint,)
    elif first is not None:  # the first input, as given (a script or a program)
        path = first
        for m in sorted(maps, key=lambda m: -len(m.source)):
            moved = m.apply(path)
            if moved is not None:
                path = moved
                break
        entrypoint = (path,)
    return ImageConfig(entrypoint, options.cmd, user, tuple(dict.fromkeys(env)), _labels())


def _labels(source: tuple[tuple[str, str], ...] = ()) -> tuple[tuple[str, str], ...]:
    """minify's own labels, after a source image's (its description only where the
    source has none)."""
    labels = dict(source)
    labels.setdefault(
        "org.opencontainers.image.description", "minified by minify: the exact loader closure, nothing else"
    )
    labels["io.github.minify.version"] = __version__
    return tuple(labels.items())


def _source_config(
    options: RootfsOptions, origin: Origin, preset_env: tuple[tuple[str, str], ...], user: str | None
) -> ImageConfig:
    """The source image's config, with what the options name instead; the environment
    merged by name (the source's, the presets', ``--env``)."""
    base = origin.config
    env = dict(base.env)
    env.update(preset_env)
    env.update(options.env)
    return replace(
        base,
        entrypoint=(options.entrypoint,) if options.entrypoint else base.entrypoint,
        cmd=options.cmd or base.cmd,
        user=user or base.user,
        env=tuple(env.items()),
        labels=(*_labels(base.labels), ("io.github.minify.source", origin.digest)),
    )


# -- lock file -----------------------------------------------------------------------


def _entry_data(entry: Entry, sha: str | None) -> dict[str, Any]:
    owner = {"owner": f"{entry.owner[0]}:{entry.owner[1]}"} if entry.owned else {}
    package = {"package": entry.package} if entry.package else {}
    return {
        **owner,
        **package,
        "path": entry.path,
        "type": entry.type.value,
        "mode": f"{entry.mode:04o}",
        "size": entry.size,
        "sha256": sha,
        "target": entry.target,
        "why": list(entry.reasons),
    }


def lock_data(
    plan: ImagePlan, dockerfile: str, hashes: dict[str, str], report: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The lock file: every entry, with the sha256 of the bytes written (``hashes``),
    and for ``--from`` the report on the source image."""
    entries = [_entry_data(e, hashes.get(e.path)) for e in plan.entries]
    source = {"source": report} if report is not None else {}
    return {
        **source,
        "schema": LOCK_SCHEMA,
        "minify": __version__,
        "programs": list(plan.programs),
        "scripts": list(plan.scripts),
        "entrypoint": list(plan.config.entrypoint),
        "dockerfile_sha256": hashlib.sha256(dockerfile.encode()).hexdigest(),
        "entries": entries,
    }


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


# -- writing -----------------------------------------------------------------------


@contextlib.contextmanager
def with_source(options: RootfsOptions) -> Iterator[tuple[RootfsOptions, Origin | None]]:
    """With ``--from``, ``fromimage.opened`` (imported only then: reading images is
    not every run's cost); otherwise the options as they are."""
    if options.source is None:
        yield options, None
        return
    from minify.fromimage import opened

    with opened(options) as found:
        yield found


def build(options: RootfsOptions, *, progress: Callable[[int, int], None] | None = None) -> RootfsResult:
    """Write OUT atomically; verify the rootfs before it replaces anything."""
    with with_source(options) as (inner, origin):
        return _build(inner, origin, progress)


def _build(options: RootfsOptions, origin: Origin | None, progress: Callable[[int, int], None] | None) -> RootfsResult:
    prepared = prepare(options, origin=origin)
    plan, out = prepared.plan, prepared.out
    output.refuse_foreign(out.path, force=options.force)  # fail before the long part
    if not os.path.isdir(out.parent):
        try:
            os.makedirs(out.parent, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{out.parent}: cannot create the folder that holds OUT ({exc.strerror})") from None
    warnings = list(plan.warnings)
    with output.writing(out) as notes:
        warnings.extend(notes)
        tmp = output.make_temporary(out)
        old: str | None = None
        try:
            rootfs = os.path.join(tmp, "rootfs")
            hashes, copy_warnings, _ = materialise(plan, rootfs, progress=progress)
            warnings.extend(copy_warnings)
            write_owned(plan, os.path.join(tmp, "owned"), rootfs)
            _write_text(os.path.join(tmp, "Dockerfile"), prepared.dockerfile)
            if any(e.owned for e in plan.entries):
                _write_text(os.path.join(tmp, ".dockerignore"), render_dockerignore(plan))
            lock = lock_data(plan, prepared.dockerfile, hashes, prepared.report)
            _write_text(os.path.join(tmp, LOCK_NAME), _dump(lock))
            if prepared.trace is not None:
                _write_text(os.path.join(tmp, TRACE_NAME), prepared.trace.to_json())
            _write_text(os.path.join(tmp, SBOM_NAME), prepared.sbom.decode("utf-8", "surrogateescape"))
            warnings.extend(verify_rootfs(rootfs, plan))
            warnings.extend(run_tests(options, plan, rootfs, out))
            os.chmod(tmp, 0o755)
            output.refuse_foreign(out.path, force=options.force)  # again, under the lock
            old = output.swap_into_place(tmp, out)
        except BaseException as exc:
            remove_tree(tmp, quiet=True)
            if isinstance(exc, OSError):
                raise OutputError(
                    f"{exc.filename or out.path}: {exc.strerror or exc}; {out.path} left as it was"
                ) from None
            raise
        if old is not None:
            remove_tree(old, quiet=True)
    return _result(replace(plan, warnings=tuple(dict.fromkeys(warnings))), out.path, report=prepared.report)


def run_tests(options: RootfsOptions, plan: ImagePlan, rootfs: str, out: output.Destination) -> list[str]:
    """``--test``: each command runs in the finished rootfs and at the source, in a
    private folder beside OUT that is removed afterwards (a crash leaves it to the
    next run's clean-up, as every ``.minify-new-*``)."""
    if not options.tests:
        return []
    from minify.proof import prove

    scratch = output.make_temporary(out)
    try:
        return prove(
            options.tests,
            plan,
            rootfs,
            source=Root(plan.root),
            scratch=scratch,
            compare_output=options.test_output,
            host_cwd=options.cwd or os.getcwd(),
        )
    finally:
        remove_tree(scratch, quiet=True)


def _write_text(path: str, text: str) -> None:
    _write(text.encode("utf-8", "surrogateescape"), path, 0o644)


def _result(
    plan: ImagePlan, out: str, differences: tuple[str, ...] = (), report: dict[str, Any] | None = None
) -> RootfsResult:
    from minify.render import layer_size

    layer = layer_size([e.size for e in plan.entries])
    return RootfsResult(plan, out, plan.input_bytes, layer, differences, plan.warnings, report)


def _inside(base: str, path: str) -> str:
    """``base`` + image ``path``, refusing anything that would land outside ``base``."""
    norm = posixpath.normpath(path)
    if not norm.startswith("/") or ".." in norm.split("/"):
        raise PlanError(f"{path}: not a clean absolute path")
    dest = base + norm
    parent = os.path.realpath(os.path.dirname(dest))
    if parent != base and not parent.startswith(base + "/"):
        raise PlanError(f"{path}: would be written outside {base}")
    return dest


def materialise(
    plan: ImagePlan, directory: str, *, progress: Callable[[int, int], None] | None = None
) -> tuple[dict[str, str], list[str], dict[str, bytes]]:
    """Write the entries of ``plan`` under ``directory`` (which must not exist).

    Returns the sha256 of every file written (of the very bytes written), warnings
    (file capabilities that a plain copy drops), and those capabilities
    (``security.capability``) by image path, for a writer that can keep them."""
    os.mkdir(directory, 0o755)
    base = os.path.realpath(directory)
    root = Root(plan.root)
    hashes: dict[str, str] = {}
    warnings: list[str] = []
    capabilities: dict[str, bytes] = {}
    total = len(plan.entries)
    for done, entry in enumerate(plan.entries, 1):
        sha, capability = _materialise_entry(root, base, entry)
        if sha is not None:
            hashes[entry.path] = sha
        if capability:
            capabilities[entry.path] = capability
            warnings.append(f"{entry.path}: file capabilities (security.capability) dropped")
        if progress is not None:
            progress(done, total)
    if os.geteuid() == 0:  # only root may give files away; the Dockerfile does it anyway
        for entry in plan.entries:
            if entry.owned:
                os.lchown(base + entry.path, *entry.owner)
    for entry in reversed(plan.entries):  # children first, so folder times stick
        os.utime(base + entry.path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(base, (FIXED_MTIME, FIXED_MTIME))
    return hashes, warnings, capabilities


def _materialise_entry(root: Root, base: str, entry: Entry) -> tuple[str | None, bytes | None]:
    """Write one entry; the sha256 of a file's bytes, and the file capability a copy
    of it dropped."""
    dest = _inside(base, entry.path)
    if entry.type is EntryType.DIR:
        os.mkdir(dest, 0o700)
        os.chmod(dest, entry.mode)
    elif entry.type is EntryType.SYMLINK:
        assert entry.target is not None
        os.symlink(entry.target, dest)
    elif entry.type is EntryType.HARDLINK:
        assert entry.target is not None
        os.link(_inside(base, entry.target), dest, follow_symlinks=False)
    elif entry.content is not None:
        _write(entry.content, dest, entry.mode)
        return hashlib.sha256(entry.content).hexdigest(), None
    else:
        assert entry.source is not None
        return _copy(root, entry, dest)
    return None, None


def write_owned(plan: ImagePlan, directory: str, rootfs: str) -> None:
    """``owned/``: the owned trees (``dockerfile.owned_trees``) for the Dockerfile's
    ``COPY --chown`` (a COPY makes everything 0:0, and ``--chown`` changes a folder only
    when it creates it, so ``.dockerignore`` keeps them out of ``COPY rootfs/ /``).
    Files are hard links to the written rootfs (same bytes, no second copy)."""
    owned = owned_trees(plan)
    if not owned:
        return
    os.mkdir(directory, 0o755)
    base, rootfs = os.path.realpath(directory), os.path.realpath(rootfs)
    for entry in owned:
        dest = _inside(base, entry.path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if entry.type is EntryType.DIR:
            os.mkdir(dest, entry.mode)
            os.chmod(dest, entry.mode)
        elif entry.type is EntryType.HARDLINK and entry.target is not None and os.path.lexists(base + entry.target):
            os.link(base + entry.target, dest, follow_symlinks=False)
        else:
            os.link(_inside(rootfs, entry.path), dest, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(base, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(base, (FIXED_MTIME, FIXED_MTIME))


def _write(content: bytes, dest: str, mode: int) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _open_source(root: Root, entry: Entry) -> int:
    """The source file of an entry, opened inside the root: the very inode the
    analysis saw, a regular file, no symlink followed."""
    assert entry.source is not None
    try:
        fd, _ = root.open_file(entry.source, entry.ident)
    except BadInput as exc:
        raise PlanError(str(exc)) from None
    return fd


def _copy(root: Root, entry: Entry, dest: str) -> tuple[str, bytes | None]:
    """Copy one file from the root; the sha256 of what was written, and the source's
    file capabilities (which a plain copy drops)."""
    src_fd = _open_source(root, entry)
    try:
        try:
            capability = os.getxattr(src_fd, "security.capability") or None
        except OSError:
            capability = None
        digest = hashlib.sha256()
        dst_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            offset = 0
            while chunk := os.pread(src_fd, COPY_CHUNK, offset):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst_fd, view) :]
                offset += len(chunk)
            os.fchmod(dst_fd, entry.mode)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return digest.hexdigest(), capability


def _sha256_fd(fd: int) -> str:
    return hash_fd(fd, "sha256")[0]


# -- verification and --check --------------------------------------------------------


def verify_rootfs(rootfs: str, plan: ImagePlan) -> list[str]:
    """The finished rootfs, checked with itself as the root (no cache, no host files):
    libraries, versions, symbols and links, as ``minify verify`` does.

    minify is no stricter than the system it reads: a problem the source root has as
    well (an ImageMagick coder with an undefined symbol on the host too, a link that
    dangles there too) is returned as a warning; only what the image lost fails."""
    from minify.verify import check_files, dangling_links, verify

    report = verify(rootfs)
    if report.ok:
        return []
    source_of = {e.path: e.source or e.path for e in plan.entries}
    objects = sorted({source_of.get(p.path, p.path) for p in report.problems if p.kind != "dangling-link"})
    links = sorted({source_of.get(p.path, p.path) for p in report.problems if p.kind == "dangling-link"})
    try:
        at_source = set(check_files(plan.root, objects) if objects else []) | set(dangling_links(plan.root, links))
    except BadInput:
        at_source = set()
    inherited = {(p.path, p.kind, _in_image(p.detail)) for p in at_source}
    lost: list[str] = []
    kept: dict[tuple[str, str], list[str]] = {}
    for problem in report.problems:
        key = (source_of.get(problem.path, problem.path), problem.kind, _in_image(problem.detail))
        if key in inherited:
            kept.setdefault((problem.path, problem.kind), []).append(_in_image(problem.detail))
        else:
            lost.append(_in_image(str(problem)))
    if lost:
        raise VerificationFailed(tuple(lost))
    # a runtime's libraries (the JVM's) are loaded after libjvm.so, which the files do not say
    layout = {e.path for e in plan.entries if LAYOUT_REASON in e.reasons}
    return [_inherited_line(path, kind, details) for (path, kind), details in kept.items() if path not in layout]


def _inherited_line(path: str, kind: str, details: list[str]) -> str:
    """One warning per file and kind of problem the source root has too (a JDK library
    misses the JVM_ symbols libjvm.so gives it at run time: a hundred lines otherwise)."""
    if len(details) <= 2:
        return "; ".join(f"{path}: {d} (in the source root too)" for d in details)
    return f"{path}: {len(details)} problems of kind {kind} (in the source root too): {some(details, 2)}"


def _in_image(problem: str) -> str:
    return problem.replace(" not found in the rootfs", " not found in the image").replace(
        " is not in the rootfs", " is not in the image"
    )


def check(options: RootfsOptions) -> RootfsResult:
    """``--check``: write nothing, run nothing; list how OUT differs from what would
    be produced (a saved trace is reused, never run again)."""
    with with_source(options) as (inner, origin):
        return _check(inner, origin)


def _check(options: RootfsOptions, origin: Origin | None) -> RootfsResult:
    prepared = prepare(replace(options, trace=None), origin=origin)
    plan, dockerfile, out = prepared.plan, prepared.dockerfile, prepared.out.path
    differences: list[str] = []
    if options.trace is not None:
        if prepared.trace is None:
            differences.append(f"{TRACE_NAME} is missing (--check never runs --trace)")
        elif prepared.trace.command != tuple(shlex.split(options.trace)):
            differences.append(f"{TRACE_NAME} records another command than --trace")
    hashes = {path: d.sha256 for path, d in prepared.digests.items()}
    lock = lock_data(plan, dockerfile, hashes, prepared.report)
    sbom = prepared.sbom.decode("utf-8", "surrogateescape")
    for name, want in (("Dockerfile", dockerfile), (LOCK_NAME, _dump(lock)), (SBOM_NAME, sbom)):
        have = read_host_file(os.path.join(out, name))
        if have is None:
            differences.append(f"{name} is missing")
        elif have != want.encode("utf-8", "surrogateescape"):
            differences.append(f"{name} differs")
    differences.extend(_tree_differences(os.path.join(out, "rootfs"), lock["entries"]))
    result = _result(plan, out, tuple(differences), prepared.report)
    if differences:
        raise OutOfDate(tuple(differences))
    return result


def _tree_differences(rootfs: str, wanted: list[dict[str, Any]]) -> list[str]:
    want = {e["path"]: e for e in wanted}
    have: dict[str, dict[str, Any]] = {}
    if os.path.isdir(rootfs) and not os.path.islink(rootfs):
        for path, kind in output.listing(rootfs):
            have[path] = _describe(rootfs + path, kind)
    out = []
    for path in sorted(want.keys() | have.keys()):
        w, h = want.get(path), have.get(path)
        if h is None:
            out.append(f"missing: {path}")
        elif w is None:
            out.append(f"unexpected: {path}")
        else:
            kind = "file" if w["type"] == "hardlink" else w["type"]
            if kind != h["type"]:
                out.append(f"changed: {path} is a {h['type']}, should be a {w['type']}")
            elif kind == "symlink" and w["target"] != h["target"]:
                out.append(f"changed: {path} -> {h['target']}, should point to {w['target']}")
            elif kind == "file" and w["type"] == "file" and (w["sha256"] != h["sha256"] or w["mode"] != h["mode"]):
                out.append(f"changed: {path} (contents or mode)")
    return out


def _describe(host: str, kind: str) -> dict[str, Any]:
    """What is at a path of OUT: special files (a FIFO) are named, never opened."""
    if kind == "symlink":
        return {"type": "symlink", "target": os.readlink(host)}
    if kind != "file":
        return {"type": kind}
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {"type": "special"}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {"type": "special"}
        return {"type": "file", "sha256": _sha256_fd(fd), "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
    finally:
        os.close(fd)
