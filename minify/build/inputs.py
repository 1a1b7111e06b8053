"""The inputs, analysed: their closures and what their runtimes bring.

A ``#!`` script brings its interpreter (found in the image's PATH), a shell script
the commands it runs and the files it sources, a Python, Node.js or Java app the
modules and class path it loads, a source image its VOLUMEs.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from minify.analysis.closure import Analysis, analyze
from minify.analysis.target import Target
from minify.build.options import RootfsOptions
from minify.errors import PlanError
from minify.plan.java import JavaNeeds, java_home, java_needs
from minify.plan.java import app_files as java_app_files
from minify.plan.node import NodeNeeds, is_node, node_needs
from minify.plan.node import command_line as node_command_line
from minify.plan.python import PythonNeeds, command_line, is_python, python_needs
from minify.plan.scripts import DEFAULT_PATH, interpreters, shell_needs
from minify.root import Root

if TYPE_CHECKING:
    from minify.sources.fromimage import Origin


def search_path(origin: Origin | None) -> str:
    """The PATH ``#!/usr/bin/env NAME`` is looked up in: a source image's own (as its
    runtime would), else the runtimes' default."""
    if origin is None:
        return DEFAULT_PATH
    from minify.sources.fromimage import environment

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


def analyse_inputs(
    options: RootfsOptions, target: Target, cwd: str, skip: tuple[str, ...], origin: Origin | None
) -> _Inputs:
    """The closures of the inputs, of the interpreters their ``#!`` lines need (looked
    up in the image's PATH) and of the commands their shell scripts run; the modules
    their Python apps import. hwcaps ``all`` analyses the baseline and adds every
    hwcaps copy later."""
    hwcaps = "baseline" if options.hwcaps in ("all", "baseline") else options.hwcaps
    view, search = target.root, search_path(origin)
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
