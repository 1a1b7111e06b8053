"""``minify rootfs``: plan the image, write it all-or-nothing, verify it, or check it.

The output folder holds ``rootfs/`` (exactly the closure), ``Dockerfile`` and
``minify.lock.json``. It is built in a temporary folder beside OUT and renamed into
place only after the finished rootfs has been analysed again with itself as the root;
any failure leaves OUT as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from minify import __version__, presets
from minify.closure import Analysis, Locator, ProgramClosure, analyze
from minify.dockerfile import render as render_dockerfile
from minify.elf import is_elf, script_interpreter
from minify.errors import OutOfDate, OutputError, VerificationFailed
from minify.hints import Hint, for_analysis, presets_called_for
from minify.image import (
    Entry,
    EntryType,
    Extra,
    ImageConfig,
    ImagePlan,
    IncompleteClosure,
    Mapping,
    PlanError,
    plan_image,
)
from minify.loader.model import Reader
from minify.presets import NONROOT
from minify.root import Root
from minify.trace import TRACE_NAME, Trace, run_trace

LOCK_NAME = "minify.lock.json"
LOCK_SCHEMA = 1
#: Every file gets this mtime, so the same inputs give the same image layer.
FIXED_MTIME = 0


@dataclass(frozen=True)
class RootfsOptions:
    paths: tuple[str, ...]
    output: str
    root: str = "/"
    cwd: str | None = None
    maps: tuple[str, ...] = ()
    entrypoint: str | None = None
    cmd: tuple[str, ...] = ()
    user: str | None = None
    env: tuple[str, ...] = ()
    hwcaps: str = "all"
    force: bool = False
    with_: tuple[str, ...] = ()
    tz: tuple[str, ...] = ()
    charsets: tuple[str, ...] = ()
    add: tuple[str, ...] = ()
    trace: str | None = None  # a command to run under strace (this runs it)


@dataclass(frozen=True)
class RootfsResult:
    plan: ImagePlan
    output: str
    input_bytes: int
    layer_bytes: int
    differences: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Prepared:
    """Everything OUT will hold, rendered in memory before anything is written."""

    plan: ImagePlan
    dockerfile: str
    lock: dict[str, Any]
    trace: Trace | None


def _load_trace(options: RootfsOptions, view: Root) -> Trace | None:
    """A new trace when asked (this runs the command), else the one OUT recorded."""
    if options.trace is not None:
        if not view.is_host:
            raise PlanError("--trace runs the command on this machine: it needs --root /")
        return run_trace(options.trace, cwd=options.cwd)
    saved = os.path.join(os.path.abspath(options.output), TRACE_NAME)
    if os.path.isfile(saved):
        with open(saved, encoding="utf-8") as fh:
            return Trace.from_json(fh.read(), saved)
    return None


def prepare(options: RootfsOptions) -> Prepared:
    """Analyse, plan and render everything in memory: plan, Dockerfile, lock data."""
    cwd = options.cwd
    view = Root(options.root)
    if cwd is None:
        cwd = os.getcwd() if view.is_host else "/"
    analysis_hwcaps = "baseline" if options.hwcaps in ("all", "baseline") else options.hwcaps
    analysis = analyze(options.paths, root=options.root, cwd=cwd, hwcaps=analysis_hwcaps, cpuinfo="")
    programs, scripts = _split_scripts(analysis)
    analysis = Analysis(analysis.root, programs, analysis.skipped)
    maps = tuple(Mapping.parse(m) for m in options.maps)
    if any(not p.startswith("/") for p in options.paths) and cwd != "/":
        # a relative input keeps its path relative to the current folder, rooted at /
        maps += (Mapping(cwd, "/"),)
    reader = Reader(view)  # one parse per file for hints and dlopen notes
    hints = _hints(analysis, reader)
    names = presets.parse_with(options.with_)
    if "auto" in names:
        names = tuple(dict.fromkeys([n for n in names if n != "auto"] + list(presets_called_for(hints))))
    locator = Locator(analysis)  # one set of loader models for every dlopen lookup
    additions = presets.resolve(names, analysis, locator=locator, tz=options.tz, charsets=options.charsets)
    extras = [Extra(path, None, "--with preset") for path in additions.files]
    # symlinks inside an input folder (bin/app -> app-1.2) belong to the folder too
    extras.extend(
        Extra(s.path, None, "symlink in an input folder", private=True) for s in analysis.skipped if s.symlink
    )
    elf_extras = list(additions.elf)
    for spec in options.add:
        added = _parse_add(spec, view, cwd)
        extras.append(added)
        if view.resolve(added.path).is_file and is_elf(view.host_path(view.realpath(added.path))):
            elf_extras.append(added.path)
    trace = _load_trace(options, view)
    if trace is not None:
        for path in trace.files:
            extras.append(Extra(path, None, "traced"))
            if is_elf(view.host_path(view.realpath(path))):
                elf_extras.append(path)
    noted, note_warnings = _dlopen_notes(analysis, reader, locator)
    elf_extras.extend(noted)
    extras.extend(Extra(path, None, ".note.dlopen") for path in noted)
    generated = list(additions.generated)
    dirs = list(additions.dirs)
    if trace is not None:
        dirs.extend((d, 0o755) for d in trace.dirs if view.resolve(d).path == d)
    if options.user == "nonroot":
        generated.extend(presets.users_files())
        dirs.append(("/home/nonroot", 0o755))
    extra: tuple[ProgramClosure, ...] = ()
    if options.hwcaps == "all":
        extra = _hwcaps_variants(analysis, view, cwd)
    if elf_extras:
        extra += _closures_of(sorted(set(elf_extras)), analysis.root, cwd)
    config = _config(options, analysis, maps, additions.env)
    plan = plan_image(
        analysis,
        maps=maps,
        extra=extra,
        config=config,
        scripts=scripts,
        extras=tuple(extras),
        generated=tuple(generated),
        dirs=tuple(dirs),
    )
    if config.entrypoint and plan.entry(config.entrypoint[0]) is None:
        raise PlanError(f"--entrypoint {config.entrypoint[0]} is not in the image")
    warnings = list(plan.warnings)
    warnings.extend(f"skipped {s.path}: {s.reason}" for s in analysis.skipped if not s.symlink)
    if not config.entrypoint:
        warnings.append("no ENTRYPOINT: several inputs and no --entrypoint")
    warnings.extend(
        f"hint: {h}" for h in hints if h.preset not in names and not (trace is not None and h.preset is None)
    )
    warnings.extend(additions.notes)
    warnings.extend(note_warnings)
    plan = replace(plan, warnings=tuple(warnings))
    dockerfile = render_dockerfile(plan)
    return Prepared(plan, dockerfile, lock_data(plan, dockerfile), trace)


def _hints(analysis: Analysis, reader: Reader) -> tuple[Hint, ...]:
    """Hints for every program, merged."""
    out: dict[tuple[str | None, str], Hint] = {}
    for hints in for_analysis(analysis, reader).values():
        for hint in hints:
            out.setdefault((hint.preset, hint.reason), hint)
    return tuple(out.values())


def _dlopen_notes(analysis: Analysis, reader: Reader, locator: Locator) -> tuple[list[str], list[str]]:
    """Libraries that ``.note.dlopen`` notes mark required or recommended, found where
    the program's loader would find them. A required one that is missing fails."""
    found: list[str] = []
    warnings: list[str] = []
    missing: list[str] = []
    for program in analysis.programs:
        if program.kind != "dynamic":
            continue
        for obj in program.objects:
            for note in reader.dlopen_notes(reader.root.resolve(obj.realpath)):
                if note.priority not in ("required", "recommended"):
                    continue
                for soname in note.sonames:
                    path = locator.find(program, soname)
                    if path is not None:
                        found.append(path)
                    elif note.priority == "required":
                        missing.append(f"{soname}: required by the .note.dlopen of {obj.path}, not found")
                    else:
                        warnings.append(f"{soname}: recommended by the .note.dlopen of {obj.path}, not found")
    if missing:
        raise IncompleteClosure("; ".join(missing))
    return sorted(set(found)), warnings


def _parse_add(spec: str, view: Root, cwd: str) -> Extra:
    """``--add PATH[:DEST]``: a path of the root, refused if it names no file or
    climbs out of the root with `..`."""
    path, _, dest = spec.partition(":")
    if ".." in path.split("/") or (dest and ".." in dest.split("/")):
        raise PlanError(f"--add {spec}: '..' is not allowed (it would leave the root)")
    if dest and not dest.startswith("/"):
        raise PlanError(f"--add {spec}: DEST must be an absolute path in the image")
    inner = path if path.startswith("/") else posixpath.join(cwd, path)
    if not view.resolve(inner).exists:
        raise PlanError(f"--add {spec}: {inner} does not exist" + ("" if view.is_host else f" in {view.directory}"))
    return Extra(inner, posixpath.normpath(dest) if dest else None, f"--add {spec}")


def _closures_of(paths: list[str], root: str, cwd: str) -> tuple[ProgramClosure, ...]:
    """The closures of ELF files added beside the programs (dlopened modules)."""
    extra = analyze(paths, root=root, cwd=cwd, hwcaps="baseline", cpuinfo="")
    for program in extra.programs:
        if program.error or program.missing:
            raise PlanError(program.error or f"{program.path}: needs {', '.join(program.missing)}, not found")
    return extra.programs


def _split_scripts(analysis: Analysis) -> tuple[tuple[ProgramClosure, ...], tuple[tuple[str, str], ...]]:
    """Scripts are accepted when their ``#!`` interpreter is an input too."""
    view = Root(analysis.root)
    given = {p.realpath for p in analysis.programs if p.kind != "not-elf"}
    given |= {p.path for p in analysis.programs if p.kind != "not-elf"}
    programs = []
    scripts = []
    for program in analysis.programs:
        if program.kind != "not-elf":
            programs.append(program)
            continue
        interp = script_interpreter(view.host_path(program.realpath))
        if interp is None:
            raise PlanError(program.error or f"{program.path}: not an ELF file")
        if interp not in given and view.realpath(interp) not in given:
            raise PlanError(
                f"{program.path} is a script for {interp}, which is not included unless given: add {interp} as an input"
            )
        scripts.append((view.host_path(program.path), interp))
    return tuple(programs), tuple(scripts)


def _hwcaps_variants(analysis: Analysis, view: Root, cwd: str) -> tuple[ProgramClosure, ...]:
    """Every glibc-hwcaps copy of every library, so the image runs on any CPU and still
    gets the tuned copy where the CPU allows (glibc >= 2.33)."""
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
    extra = analyze(sorted(set(variants)), root=analysis.root, cwd=cwd, hwcaps="baseline", cpuinfo="")
    return extra.programs


_USER = re.compile(r"^[0-9]+(:[0-9]+)?$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _config(
    options: RootfsOptions,
    analysis: Analysis,
    maps: tuple[Mapping, ...],
    preset_env: tuple[tuple[str, str], ...] = (),
) -> ImageConfig:
    user = NONROOT if options.user == "nonroot" else options.user
    if user is not None and not _USER.match(user):
        raise PlanError(
            f"--user {options.user!r}: expected UID[:GID] (numbers) or nonroot; a scratch image has no user names"
        )
    env = list(preset_env)
    for item in options.env:
        if not _ENV.match(item):
            raise PlanError(f"--env {item!r}: expected NAME=VALUE")
        key, _, value = item.partition("=")
        env.append((key, value))
    entrypoint: tuple[str, ...] = ()
    if options.entrypoint:
        entrypoint = (options.entrypoint,)
    elif len(analysis.programs) == 1:
        path = analysis.programs[0].path
        for m in sorted(maps, key=lambda m: -len(m.source)):
            moved = m.apply(path)
            if moved is not None:
                path = moved
                break
        entrypoint = (path,)
    labels = (
        ("org.opencontainers.image.description", "minified by minify: the exact loader closure, nothing else"),
        ("io.github.minify.version", __version__),
    )
    return ImageConfig(entrypoint, options.cmd, user, tuple(dict.fromkeys(env)), labels)


# -- lock file -----------------------------------------------------------------------


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entry_data(entry: Entry, sha: str | None) -> dict[str, Any]:
    return {
        "path": entry.path,
        "type": entry.type.value,
        "mode": f"{entry.mode:04o}",
        "size": entry.size,
        "sha256": sha,
        "target": entry.target,
        "why": list(entry.reasons),
    }


def lock_data(plan: ImagePlan, dockerfile: str) -> dict[str, Any]:
    entries = []
    for e in plan.entries:
        sha = None
        if e.content is not None:
            sha = hashlib.sha256(e.content).hexdigest()
        elif e.type is EntryType.FILE and e.source:
            sha = sha256_of(e.source)
        entries.append(_entry_data(e, sha))
    return {
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


def build(options: RootfsOptions, *, progress: Callable[[int, int], None] | None = None) -> RootfsResult:
    """Write OUT atomically; verify the rootfs before it replaces anything."""
    prepared = prepare(options)
    plan = prepared.plan
    out = os.path.abspath(options.output)
    _check_output(out, force=options.force)
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise OutputError(f"{parent}: the folder that should hold {os.path.basename(out)} does not exist")
    try:
        tmp = tempfile.mkdtemp(prefix=".minify-", dir=parent)
    except OSError as exc:
        raise OutputError(f"{parent}: cannot write here ({exc.strerror})") from None
    try:
        rootfs = os.path.join(tmp, "rootfs")
        materialise(plan, rootfs, progress=progress)
        with open(os.path.join(tmp, "Dockerfile"), "w", encoding="utf-8") as fh:
            fh.write(prepared.dockerfile)
        with open(os.path.join(tmp, LOCK_NAME), "w", encoding="utf-8") as fh:
            fh.write(_dump(prepared.lock))
        if prepared.trace is not None:
            with open(os.path.join(tmp, TRACE_NAME), "w", encoding="utf-8") as fh:
                fh.write(prepared.trace.to_json())
        verify_rootfs(rootfs)
        os.chmod(tmp, 0o755)
        _swap_into_place(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"{exc.filename or out}: {exc.strerror or exc}; {out} left as it was") from None
        raise
    return _result(plan, out)


def _result(plan: ImagePlan, out: str, differences: tuple[str, ...] = ()) -> RootfsResult:
    from minify.render import layer_size

    layer = layer_size([e.size for e in plan.entries])
    return RootfsResult(plan, out, plan.input_bytes, layer, differences, plan.warnings)


def _check_output(out: str, *, force: bool) -> None:
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutputError(f"{out}: exists and is not a folder")
    if os.path.islink(out):
        raise OutputError(f"{out}: is a symlink; give the real folder")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, LOCK_NAME)) and not force:
        raise OutputError(f"{out}: exists and was not written by minify (no {LOCK_NAME}); use --force to replace it")


def _swap_into_place(tmp: str, out: str) -> None:
    if not os.path.exists(out):
        os.rename(tmp, out)
        return
    old = tempfile.mkdtemp(prefix=".minify-old-", dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


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


def materialise(plan: ImagePlan, directory: str, *, progress: Callable[[int, int], None] | None = None) -> None:
    """Write the entries of ``plan`` under ``directory`` (which must not exist)."""
    os.mkdir(directory, 0o755)
    base = os.path.realpath(directory)
    total = len(plan.entries)
    for done, entry in enumerate(plan.entries, 1):
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
        else:
            assert entry.source is not None
            _copy(entry.source, dest, entry.mode)
        if progress is not None:
            progress(done, total)
    for entry in reversed(plan.entries):  # children first, so folder times stick
        os.utime(base + entry.path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
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


def _copy(source: str, dest: str, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst_fd = os.open(dest, flags, 0o600)
        try:
            with os.fdopen(src_fd, "rb", closefd=False) as src, os.fdopen(dst_fd, "wb", closefd=False) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.fchmod(dst_fd, mode)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)


# -- verification and --check --------------------------------------------------------


def verify_rootfs(rootfs: str) -> None:
    """The finished rootfs, checked with itself as the root (no cache, no host files):
    libraries, versions and symbols, as ``minify verify`` does."""
    from minify.verify import verify

    report = verify(rootfs)
    if not report.ok:
        raise VerificationFailed(tuple(_in_image(str(p)) for p in report.problems))


def _in_image(problem: str) -> str:
    return problem.replace(" not found in the rootfs", " not found in the image")


def check(options: RootfsOptions) -> RootfsResult:
    """``--check``: write nothing; list how OUT differs from what would be produced."""
    prepared = prepare(options)
    plan, dockerfile, lock = prepared.plan, prepared.dockerfile, prepared.lock
    out = os.path.abspath(options.output)
    differences: list[str] = []
    try:
        with open(os.path.join(out, "Dockerfile"), encoding="utf-8") as fh:
            if fh.read() != dockerfile:
                differences.append("Dockerfile differs")
    except OSError:
        differences.append("Dockerfile is missing")
    try:
        with open(os.path.join(out, LOCK_NAME), encoding="utf-8") as fh:
            if fh.read() != _dump(lock):
                differences.append(f"{LOCK_NAME} differs")
    except OSError:
        differences.append(f"{LOCK_NAME} is missing")
    differences.extend(_tree_differences(os.path.join(out, "rootfs"), lock["entries"]))
    result = _result(plan, out, tuple(differences))
    if differences:
        raise OutOfDate(tuple(differences))
    return result


def _tree_differences(rootfs: str, wanted: list[dict[str, Any]]) -> list[str]:
    want = {e["path"]: e for e in wanted}
    have: dict[str, dict[str, Any]] = {}
    if os.path.isdir(rootfs):
        for dirpath, dirnames, filenames in os.walk(rootfs):
            for name in dirnames + filenames:
                host = os.path.join(dirpath, name)
                inner = host[len(rootfs) :]
                st = os.lstat(host)
                have[inner] = _describe(host, st)
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


def _describe(host: str, st: os.stat_result) -> dict[str, Any]:
    if stat.S_ISLNK(st.st_mode):
        return {"type": "symlink", "target": os.readlink(host)}
    if stat.S_ISDIR(st.st_mode):
        return {"type": "dir"}
    return {"type": "file", "sha256": sha256_of(host), "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
