"""What joins the image beside the inputs' closures, gathered from presets, ``--add``,
a trace, dlopen notes and hwcaps copies, with the warnings and hints about what is
left out or may be missing.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import shlex
import stat
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from minify.analysis.closure import Analysis, ProgramClosure, analyze, dlopen_path, loadable_files
from minify.analysis.hints import Hint, for_analysis, presets_called_for
from minify.analysis.target import Target
from minify.build.options import LAYOUT_REASON, RootfsOptions
from minify.errors import BadInput, IncompleteClosure, MinifyError, PlanError, TraceFailed
from minify.loader.model import ProgramKind, Reader
from minify.plan import presets
from minify.plan.image import Extra, Generated, ImagePlan, Mapping, clean_path
from minify.plan.java import loaded_first
from minify.plan.scripts import interpreters
from minify.plan.sensitive import why_secret
from minify.plan.served import Serving
from minify.plan.trace import TRACE_NAME, Trace, run_trace
from minify.root import Root, read_host_file, within
from minify.text import some
from minify.write import output
from minify.write.output import LOCK_NAME

if TYPE_CHECKING:
    from minify.sources.fromimage import Origin


def load_trace(options: RootfsOptions, view: Root, out: output.Destination, origin: Origin | None) -> Trace | None:
    """A new trace when asked (this runs the command: inside a source image, run in
    its flattened root), else the one OUT recorded (validated like any input: an
    edited file is not trusted)."""
    if options.trace is not None and origin is not None:
        from minify.sources.fromimage import environment, user_ids

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


def maps_of(options: RootfsOptions, cwd: str) -> tuple[Mapping, ...]:
    """``--map`` values, and for relative inputs their folder mapped to /: a relative
    input keeps its path relative to the current folder, rooted at /."""
    maps = options.maps
    if any(not p.startswith("/") for p in options.paths) and cwd != "/":
        maps += (Mapping(clean_path(cwd, "--cwd"), "/", explicit=False),)
    return maps


def open_hints(
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
    hints = hints_of(analysis, extra) if extra else hints
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


def preset_names(options: RootfsOptions, hints: tuple[Hint, ...]) -> tuple[tuple[str, ...], frozenset[str]]:
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


def gather_extras(
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
    for path in options.layout:  # the JVM's: closures as loaded after libjvm.so (extra_closures)
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


def gather_trace(
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


def generated_files(
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


def extra_closures(
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


def skipped_warnings(analysis: Analysis, got: _Gathered, scripts: tuple[tuple[str, str], ...]) -> list[str]:
    """Inputs that are not programs, except inside folders given to ``--add`` and the
    scripts that ship (with the interpreters they need)."""
    added = [e.path for e in got.extras if e.reason.startswith("--add")]
    shipped = {path for path, _ in scripts}
    return [
        f"skipped {s.path}: {s.reason}"
        for s in analysis.skipped
        if not s.symlink and s.path not in shipped and not any(within(s.path, f) for f in added)
    ]


def skipped_folders(view: Root, out: output.Destination) -> tuple[str, ...]:
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


def hints_of(analysis: Analysis, extra: tuple[ProgramClosure, ...] = ()) -> tuple[Hint, ...]:
    """Hints for every program, merged; with ``extra``, for the final closure: the
    libraries a trace, ``--add`` or a runtime's layout brought ask too."""
    if extra:
        analysis = replace(analysis, programs=(*analysis.programs, *extra))
    out: dict[tuple[str | None, str], Hint] = {}
    for hints in for_analysis(analysis).values():
        for hint in hints:
            out.setdefault((hint.preset, hint.reason), hint)
    return tuple(out.values())


def gather_dlopen_notes(analysis: Analysis, got: _Gathered) -> list[str]:
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


def split_scripts(analysis: Analysis) -> tuple[tuple[ProgramClosure, ...], tuple[tuple[str, str], ...]]:
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
