"""``minify rootfs``: plan the image, write it all-or-nothing, verify it, or check it.

The output folder holds ``rootfs/`` (exactly the closure), ``Dockerfile`` and
``minify.lock.json``. It is built in a temporary folder beside OUT and swapped into
place (``minify.write.output``) only after the finished rootfs has been analysed again with
itself as the root; any failure leaves OUT as it was. Every byte copied is read from
a descriptor opened inside the root, and the lock file's sha256 is that of exactly
those bytes.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from minify.analysis.closure import Analysis
from minify.analysis.target import Target
from minify.build.config import check_entrypoint, entrypoint_note, image_config, surprising_modes
from minify.build.gather import (
    extra_closures,
    gather_dlopen_notes,
    gather_extras,
    gather_trace,
    generated_files,
    hints_of,
    load_trace,
    maps_of,
    open_hints,
    preset_names,
    skipped_folders,
    skipped_warnings,
    split_scripts,
)
from minify.build.inputs import analyse_inputs, search_path
from minify.build.options import LAYOUT_REASON, Prepared, RootfsOptions, RootfsResult
from minify.elf.cache import FactCache, Key, key_of
from minify.errors import BadInput, DockerfileError, MinifyError, OutputError, PlanError, VerificationFailed
from minify.plan import presets
from minify.plan.embedded import embedded_hints
from minify.plan.image import Digests, Generated, ImagePlan, plan_digests
from minify.plan.loaderfiles import loader_files
from minify.plan.packagedata import left_out, program_data
from minify.plan.packages import APK_DB, apk_installed, ownership, spelt_entries, unreadable_databases
from minify.plan.planner import plan_image
from minify.plan.trace import TRACE_NAME
from minify.root import Root, remove_tree
from minify.text import layer_size, some
from minify.write import output
from minify.write.dockerfile import needs_dockerignore, render_dockerignore
from minify.write.dockerfile import render as render_dockerfile
from minify.write.output import LOCK_NAME, SBOM_NAME
from minify.write.rootfs import dump_lock, lock_data, materialise, write_base, write_owned, write_text
from minify.write.sbom import SBOM_PATH
from minify.write.sbom import document as spdx_document

if TYPE_CHECKING:
    from minify.sources.fromimage import Origin

__all__ = ["build", "prepare", "with_source"]


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
    skip = skipped_folders(view, out)
    search = search_path(origin)
    read = analyse_inputs(options, target, cwd, skip, origin)
    analysis, brought, options = read.analysis, read.brought, read.apply(options)
    first = analysis.programs[0].path if analysis.programs else None
    programs, scripts = split_scripts(analysis)
    analysis = replace(analysis, programs=programs)
    hints = hints_of(analysis)
    names, chosen = preset_names(options, hints)
    additions = presets.resolve(
        names, analysis, tz=options.tz, charsets=options.charsets, terms=options.terms, optional=chosen
    )
    gathered = gather_extras(options, analysis, additions, cwd, skip)
    trace = load_trace(options, view, out, origin)
    if trace is not None:
        gather_trace(trace, options, analysis, out, gathered, search)
    note_warnings = gather_dlopen_notes(analysis, gathered)
    generated, dirs = generated_files(options, additions, trace, view, origin, skip)
    extra, tree_warnings = extra_closures(options, analysis, gathered, cwd)
    maps = maps_of(options, cwd)
    config = image_config(options, first, maps, additions.env, origin)
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
    check_entrypoint(plan, config, options, origin)
    warnings = [*(origin.notes if origin else ()), *plan.warnings, *skipped_warnings(analysis, gathered, scripts)]
    given = len(analysis.programs) + len(scripts) - len(set(brought) - set(read.added))
    warnings.extend([*tree_warnings, *entrypoint_note(options, config, given), *brought.values(), *read.notes])
    warnings.extend(f"hint: {h}" for h in open_hints(hints, names, trace, plan, analysis, extra))
    warnings.extend([*additions.notes, *note_warnings, *gathered.warnings])
    plan = replace(plan, warnings=tuple(warnings))
    try:
        dockerfile = render_dockerfile(plan)
    except DockerfileError as exc:
        raise PlanError(str(exc)) from None
    return Prepared(plan, dockerfile, trace, out, sbom, digests, _source_report(origin, plan), target.reader.cache)


def _plan_notes(analysis: Analysis, plan: ImagePlan, presets_taken: tuple[str, ...]) -> list[str]:
    """What the planned image still lacks or should not have: the programs' package
    data left out (unless taken), the hints from their own bytes, surprising modes;
    and a cache this run could not use."""
    cache = analysis.target.reader.cache
    notes = [cache.note] if cache is not None and cache.note else []
    if "package-data" not in presets_taken:
        notes.extend(left_out(program_data(analysis, plan), plan))
    return [*notes, *embedded_hints(analysis, plan), *surprising_modes(plan)]


def _source_report(origin: Origin | None, plan: ImagePlan) -> dict[str, Any] | None:
    if origin is None:
        return None
    from minify.sources.fromimage import report

    return report(origin, plan)


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
    from minify.write.oci import source_date_epoch

    view, cache = analysis.target.root, analysis.target.reader.cache
    plan = layout(generated=generated)
    digests = plan_digests(plan, view, cache=cache)  # each file of the root read once at most, for all three uses
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


@contextlib.contextmanager
def with_source(options: RootfsOptions) -> Iterator[tuple[RootfsOptions, Origin | None]]:
    """With ``--from``, ``fromimage.opened`` (imported only then: reading images is
    not every run's cost); otherwise the options as they are."""
    if options.source is None:
        yield options, None
        return
    from minify.sources.fromimage import opened

    if options.root != "/":
        raise MinifyError("--from and --root name two roots; give one")
    with opened(options.source, options.platform, options.output, options.max_unpacked, bool(options.paths)) as (
        root,
        origin,
    ):
        paths = tuple(dict.fromkeys((*origin.programs, *options.paths)))
        yield replace(options, root=root, paths=paths), origin


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
            hashes, copy_warnings, _ = materialise(plan, rootfs, progress=progress, digests=prepared.digests)
            warnings.extend(copy_warnings)
            write_owned(plan, os.path.join(tmp, "owned"), rootfs)
            write_base(plan, os.path.join(tmp, "base"), rootfs)
            write_text(os.path.join(tmp, "Dockerfile"), prepared.dockerfile)
            if needs_dockerignore(plan):
                write_text(os.path.join(tmp, ".dockerignore"), render_dockerignore(plan))
            lock = lock_data(plan, prepared.dockerfile, hashes, prepared.report)
            write_text(os.path.join(tmp, LOCK_NAME), dump_lock(lock))
            if prepared.trace is not None:
                write_text(os.path.join(tmp, TRACE_NAME), prepared.trace.to_json())
            write_text(os.path.join(tmp, SBOM_NAME), prepared.sbom.decode("utf-8", "surrogateescape"))
            facts = copied_facts(rootfs, plan, prepared.digests, hashes, prepared.cache)
            warnings.extend(verify_rootfs(rootfs, plan, facts))
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
    return result_of(replace(plan, warnings=tuple(dict.fromkeys(warnings))), out.path, report=prepared.report)


def run_tests(options: RootfsOptions, plan: ImagePlan, rootfs: str, out: output.Destination) -> list[str]:
    """``--test``: each command runs in the finished rootfs and at the source, in a
    private folder beside OUT that is removed afterwards (a crash leaves it to the
    next run's clean-up, as every ``.minify-new-*``)."""
    if not options.tests:
        return []
    from minify.build.proof import prove

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


def result_of(
    plan: ImagePlan, out: str, differences: tuple[str, ...] = (), report: dict[str, Any] | None = None
) -> RootfsResult:
    layer = layer_size([e.size for e in plan.entries])
    return RootfsResult(plan, out, plan.input_bytes, layer, differences, plan.warnings, report)


def copied_facts(
    rootfs: str, plan: ImagePlan, digests: Mapping[str, Digests], hashes: Mapping[str, str], cache: FactCache | None
) -> FactCache | None:
    """The cache as it answers for the rootfs just written: a file whose written bytes
    have the sha256 of a source version the cache knows (``Digests.stamp``, the key
    its facts are stored under) has that version's facts."""
    if cache is None or not cache.enabled:
        return None
    sources: dict[Key, Key] = {}
    for entry in plan.files:
        known = digests.get(entry.path)
        if entry.content is None and known is not None and known.stamp and hashes.get(entry.path) == known.sha256:
            with contextlib.suppress(OSError):
                sources[key_of(os.lstat(rootfs + entry.path))] = known.stamp
    return cache.copied(sources)


def verify_rootfs(rootfs: str, plan: ImagePlan, facts: FactCache | None = None) -> list[str]:
    """The finished rootfs, checked with itself as the root (no cache, no host files):
    libraries, versions, symbols and links, as ``minify verify`` does.

    minify is no stricter than the system it reads: a problem the source root has as
    well (an ImageMagick coder with an undefined symbol on the host too, a link that
    dangles there too) is returned as a warning; only what the image lost fails."""
    from minify.analysis.verify import check_files, dangling_links, verify

    report = verify(rootfs, facts)
    if report.ok:
        return []
    source_of = {e.path: e.source or e.path for e in plan.entries}
    objects = sorted({source_of.get(p.path, p.path) for p in report.problems if p.kind != "dangling-link"})
    links = sorted({source_of.get(p.path, p.path) for p in report.problems if p.kind == "dangling-link"})
    try:
        source = Target(plan.root, cache=facts) if facts is not None else plan.root
        at_source = set(check_files(source, objects) if objects else []) | set(dangling_links(plan.root, links))
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
