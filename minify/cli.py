"""The `minify` command: thin typer commands over the library.

Each command takes options, calls one library function, and renders its result.
Errors become one line on stderr and the exit code the error carries, here and only
here; ``--verbose`` shows the traceback as well.

Annotations are evaluated once, at definition (typer would compile string ones on every
run: a millisecond of a warm analysis); names imported only for type checking are quoted.
"""

import os
import signal
import sys
import traceback
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from minify.errors import (
    EXIT_BAD_INPUT,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Interrupted,
    MinifyError,
    ProofFailed,
)
from minify.flags import (
    AddOpt,
    AllOpt,
    AnalyzeHwcapsOpt,
    CheckOnlyOpt,
    CmdOpt,
    CompressionOpt,
    CwdOpt,
    DestOpt,
    EntrypointOpt,
    EnvOpt,
    ForceOpt,
    Format,
    FromOpt,
    GconvOpt,
    GraphOpt,
    HintsOpt,
    HwcapsOpt,
    ImageCheckOpt,
    ImageForceOpt,
    ImageFormat,
    ImageFormatOpt,
    LayersOpt,
    LibPathOpt,
    MapOpt,
    MaxUnpackedOpt,
    NoCacheOpt,
    NoPackageMetadataOpt,
    OutputOpt,
    PackagesOpt,
    PlatformOpt,
    PlatformRootOpt,
    PreloadOpt,
    ProbeOpt,
    RootfsPaths,
    RootOpt,
    SizesOpt,
    TagOpt,
    TermOpt,
    TestOpt,
    TestOutputOpt,
    TraceExcludeOpt,
    TraceOkExitOpt,
    TraceOpt,
    TraceTimeoutOpt,
    TraceUserOpt,
    TzOpt,
    UserOpt,
    VerboseOpt,
    VersionOpt,
    WithOpt,
    only_invoked,
    split_preload,
)
from minify.write.compress import Compression

if TYPE_CHECKING:
    from minify.analysis.closure import Analysis
    from minify.build.options import RootfsOptions, RootfsResult
    from minify.plan.image import ImagePlan
    from minify.render import Packages
    from minify.write.oci import ImageResult

T = TypeVar("T")
#: Hints read every object's symbol table; beyond this many inputs they are opt-in.
HINTS_AUTO_MAX = 20
Opts = TypeVar("Opts")


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help="Ship dynamic Linux binaries in the smallest images that still run.",
)


@app.callback()
def _main(version: VersionOpt = False) -> None:
    """Ship dynamic Linux binaries in the smallest images that still run."""


def _guard(verbose: bool, action: Callable[[], T]) -> T:
    """Run ``action``; turn minify's errors (and stray OS errors) into one line."""
    try:
        return action()
    except MinifyError as exc:
        if verbose:
            traceback.print_exc()
        for line in exc.report if isinstance(exc, ProofFailed) else ():
            _say("test", line)
        _say("error", str(exc))
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        if verbose:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        _say("error", f"{where}{exc.strerror or exc}")
        raise typer.Exit(EXIT_BAD_INPUT) from None


def _say(kind: str, message: str) -> None:
    """One line on stderr, with control characters from hostile names escaped."""
    from minify.text import escape

    typer.echo(f"minify: {kind}: {escape(message)}", err=True)


@app.command()
def analyze(
    paths: Annotated[list[str], typer.Argument(help="Programs, libraries or folders to analyse.", metavar="PATH...")],
    root: RootOpt = "/",
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.tree,
    cwd: CwdOpt = None,
    library_path: LibPathOpt = None,
    preload: PreloadOpt = None,
    hwcaps: AnalyzeHwcapsOpt = "default",
    hints: HintsOpt = None,
    show_all: AllOpt = False,
    packages: PackagesOpt = False,
    sizes: SizesOpt = False,
    no_cache: NoCacheOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Show what the dynamic loader would load for each program, without running it."""
    from minify.analysis.closure import analyze as run_analysis
    from minify.analysis.hints import for_analysis
    from minify.render import render

    result = _guard(
        verbose,
        lambda: run_analysis(
            paths,
            root=root,
            cwd=cwd,
            library_path=library_path,
            preload=split_preload(preload),
            hwcaps=hwcaps,
            cache=not no_cache,
        ),
    )
    shown = hints if hints is not None else len(result.programs) <= HINTS_AUTO_MAX
    found = _guard(verbose, lambda: for_analysis(result)) if shown and fmt.value in ("tree", "json") else {}
    used = _guard(verbose, lambda: _packages_used(result)) if packages or sizes else None
    if fmt in (Format.svg, Format.png):
        _write_image(verbose, result, fmt)
    else:
        text = render(result, fmt.value, found, everything=show_all, packages=used, sizes=sizes, package_view=packages)
        sys.stdout.write(text)
    for program in result.programs:
        if program.error:
            _say("error", program.error)
    if result.has_errors:
        raise typer.Exit(EXIT_BAD_INPUT)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_INCOMPLETE)


@app.command()
def rootfs(
    output: OutputOpt,
    paths: RootfsPaths = None,
    from_: FromOpt = None,
    platform: PlatformOpt = None,
    max_unpacked_size: MaxUnpackedOpt = "8G",
    root: RootOpt = "/",
    cwd: CwdOpt = None,
    map_: MapOpt = None,
    entrypoint: EntrypointOpt = None,
    cmd: CmdOpt = None,
    user: UserOpt = None,
    env: EnvOpt = None,
    hwcaps: HwcapsOpt = "all",
    with_: WithOpt = None,
    tz: TzOpt = None,
    gconv: GconvOpt = None,
    term: TermOpt = None,
    add: AddOpt = None,
    trace: TraceOpt = None,
    trace_user: TraceUserOpt = None,
    trace_ok_exit: TraceOkExitOpt = False,
    trace_timeout: TraceTimeoutOpt = None,
    probe: ProbeOpt = None,
    trace_exclude: TraceExcludeOpt = None,
    test: TestOpt = None,
    test_output: TestOutputOpt = False,
    no_package_metadata: NoPackageMetadataOpt = False,
    graph: GraphOpt = None,
    check_only: CheckOnlyOpt = False,
    force: ForceOpt = False,
    no_cache: NoCacheOpt = False,
    platform_root: PlatformRootOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Write exactly the closure as a root filesystem and a FROM scratch Dockerfile."""
    from minify.build.check import check
    from minify.build.pipeline import build

    raw = dict(locals())
    options = _guard(verbose, lambda: _rootfs_options(raw, one_root=True))
    if check_only:
        checked = _guard(verbose, lambda: _print_differences(check, options))
        raise typer.Exit(_say_up_to_date(output, checked))
    _guard(verbose, lambda: _graph_format(graph))
    _note_trace(trace, from_)
    built = _guard(verbose, lambda: _with_progress(build, options))
    _report_rootfs(built, output)
    _guard(verbose, lambda: _write_graph(graph, built.plan))


@app.command()
def image(
    output: DestOpt,
    paths: RootfsPaths = None,
    from_: FromOpt = None,
    platform: PlatformOpt = None,
    max_unpacked_size: MaxUnpackedOpt = "8G",
    tag: TagOpt = None,
    fmt: ImageFormatOpt = ImageFormat.text,
    compression: CompressionOpt = Compression.GZIP,
    layers: LayersOpt = 2,
    platform_root: PlatformRootOpt = None,
    root: RootOpt = "/",
    cwd: CwdOpt = None,
    map_: MapOpt = None,
    entrypoint: EntrypointOpt = None,
    cmd: CmdOpt = None,
    user: UserOpt = None,
    env: EnvOpt = None,
    hwcaps: HwcapsOpt = "all",
    with_: WithOpt = None,
    tz: TzOpt = None,
    gconv: GconvOpt = None,
    term: TermOpt = None,
    add: AddOpt = None,
    trace: TraceOpt = None,
    trace_user: TraceUserOpt = None,
    trace_ok_exit: TraceOkExitOpt = False,
    trace_timeout: TraceTimeoutOpt = None,
    probe: ProbeOpt = None,
    trace_exclude: TraceExcludeOpt = None,
    test: TestOpt = None,
    test_output: TestOutputOpt = False,
    no_package_metadata: NoPackageMetadataOpt = False,
    graph: GraphOpt = None,
    check_only: ImageCheckOpt = False,
    force: ImageForceOpt = False,
    no_cache: NoCacheOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Write the same image as `minify rootfs` as an OCI image: no container engine,
    byte for byte the same from the same inputs (SOURCE_DATE_EPOCH sets every time)."""
    from minify.build.image import write_image
    from minify.write.oci import parse_dest

    raw = dict(locals())
    dest = _guard(verbose, lambda: parse_dest(output, tag, compression, layers))
    options = _guard(verbose, lambda: _rootfs_options(raw))
    _guard(verbose, lambda: _graph_format(graph))
    write = partial(write_image, dest=dest, roots=tuple(platform_root or ()))
    if check_only:
        checked = _guard(verbose, lambda: _print_differences(lambda o: write(o, check=True), options))
        typer.echo(f"{dest}: up to date ({checked.digest})")
        raise typer.Exit(EXIT_OK)
    _note_trace(trace, from_)
    result = _guard(verbose, lambda: _with_progress(write, options))
    _report_image(result, fmt)
    _guard(verbose, lambda: _write_graph(graph, result.plan))


def _report_image(result: "ImageResult", fmt: ImageFormat) -> None:
    """Warnings on stderr; the digest, the sizes and how to load or push it."""
    from minify.render import dumps
    from minify.write.oci import Transport

    _say_warnings(result.warnings)
    if fmt is ImageFormat.json:
        sys.stdout.write(dumps(result.as_data()))
        return
    _report_source(result.report)
    dest = result.dest
    typer.echo(f"wrote {dest}")
    typer.echo(f"digest: {result.digest}")
    typer.echo(result.sizes_text)
    name = f"REGISTRY/{dest.ref}" if dest.ref and ":" in dest.ref.rsplit("/", 1)[-1] else "REGISTRY/NAME:TAG"
    if dest.transport is Transport.OCI:
        typer.echo(f"push it with: skopeo copy {dest} docker://{name}")
    else:
        typer.echo(f"load it with: podman load -i {dest.path}")
        typer.echo(f"push it with: skopeo copy {dest.transport.value}:{dest.path} docker://{name}")


@app.command()
def verify(
    directory: Annotated[
        str, typer.Argument(help="OUT (as written by minify rootfs) or a root filesystem folder.", metavar="OUT|ROOTFS")
    ],
    verbose: VerboseOpt = False,
) -> None:
    """Check a rootfs as the loader would, without running anything: libraries,
    versions, and every undefined symbol (what `ldd -r` reports)."""
    from minify.analysis.verify import verify as run_verify

    report = _guard(verbose, lambda: run_verify(directory))
    for problem in report.problems:
        typer.echo(str(problem))
    typer.echo(
        f"{report.rootfs}: {len(report.checked)} ELF files checked, "
        + (f"{len(report.problems)} problem(s)" if report.problems else "all resolve")
    )
    raise typer.Exit(EXIT_OK if report.ok else EXIT_INCOMPLETE)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "allow_interspersed_args": False}
)
def trace(
    command: Annotated[
        list[str], typer.Argument(help="The command and its arguments (its options are its own).", metavar="CMD")
    ],
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Save the record here (JSON).", metavar="FILE")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Give up after this many seconds.", metavar="SECONDS")
    ] = 300.0,
    user: Annotated[str | None, typer.Option("--user", help="Run the command as this user.", metavar="USER")] = None,
    ok_exit: Annotated[bool, typer.Option("--ok-exit", help="Accept a non-zero exit (with a warning).")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """RUN a command on this machine under strace and list every file it loads or reads.

    Everything after the command is the command's: `minify trace prog -v` passes -v to
    prog. Its output goes to stderr; the record to stdout or -o FILE."""
    from minify.plan.trace import run_trace

    if command[:1] == ["--"]:
        command = command[1:]
    _say("note", f"running `{' '.join(command)}` on this machine under strace")
    record = _guard(verbose, lambda: run_trace(command, timeout=timeout, user=user, ok_exit=ok_exit))
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(record.to_json())
    else:
        sys.stdout.write(record.to_json())
    if record.exit_status:
        _say("warning", f"the command exited with status {record.exit_status}")
    _say("note", f"{len(record.files)} files recorded")


def _graph_format(path: str | None) -> str | None:
    """svg, png or dot, from the name ``--graph`` gives; checked before any work."""
    if path is None:
        return None
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in ("svg", "png", "dot"):
        raise MinifyError(f"--graph {path}: name a .svg, .png or .dot file")
    return fmt


def _write_graph(path: str | None, plan: "ImagePlan") -> None:
    """The plan's graph, drawn (svg, png) or as DOT text."""
    fmt = _graph_format(path)
    if path is None or fmt is None:
        return
    from minify.graph import draw, plan_dot

    text = plan_dot(plan)
    data = text.encode() if fmt == "dot" else draw(text, fmt)
    with open(path, "wb") as fh:
        fh.write(data)
    _say("note", f"the plan's graph: {path}")


def _write_image(verbose: bool, result: "Analysis", fmt: Format) -> None:
    """The graph drawn by Graphviz, as bytes on stdout."""
    from minify.graph import render_image

    drawn = _guard(verbose, lambda: render_image(result, fmt.value))
    sys.stdout.flush()
    sys.stdout.buffer.write(drawn)


def _packages_used(result: "Analysis") -> "Packages":
    from minify.plan.packages import packages_used

    return packages_used(result.target.root, {o.realpath: o.size for o in result.objects().values()})


def _rootfs_options(raw: dict[str, Any], *, one_root: bool = False) -> "RootfsOptions":
    """The typed options of `minify rootfs` and `minify image` from their CLI values
    (``raw``: the command's parameters by name)."""
    from minify.build.options import RootfsOptions
    from minify.plan.image import Mapping, env_pair, user_spec

    user = raw["user"]
    if one_root and raw["platform_root"]:
        raise MinifyError("--platform-root: a rootfs is one platform's; minify image writes an index of several")
    if not raw["paths"] and raw["from_"] is None:
        raise MinifyError("name the programs to ship (PATH...), or an image to minify (--from SOURCE)")
    if raw["trace"] is None and (raw["probe"] or raw["trace_timeout"] is not None):
        raise MinifyError("--trace-timeout and --probe end a --trace run: give --trace too")
    return RootfsOptions(
        paths=tuple(raw["paths"] or ()),
        output=raw["output"],
        root=raw["root"],
        cwd=raw["cwd"],
        maps=tuple(Mapping.parse(m) for m in raw["map_"] or ()),
        entrypoint=raw["entrypoint"],
        cmd=tuple(raw["cmd"] or ()),
        user=user_spec(user) if user is not None else None,
        env=tuple(env_pair(e) for e in raw["env"] or ()),
        hwcaps=raw["hwcaps"],
        force=raw["force"],
        with_=tuple(raw["with_"] or ()),
        tz=_commas(raw["tz"]),
        charsets=_commas(raw["gconv"]),
        terms=_commas(raw["term"]),
        add=tuple(raw["add"] or ()),
        trace=raw["trace"],
        trace_user=raw["trace_user"],
        trace_ok_exit=raw["trace_ok_exit"],
        trace_timeout=raw["trace_timeout"],
        probes=tuple(raw["probe"] or ()),
        trace_exclude=tuple(raw["trace_exclude"] or ()),
        cache=not raw["no_cache"],
        package_metadata=not raw["no_package_metadata"],
        source=raw["from_"],
        platform=raw["platform"],
        max_unpacked=_size(raw["max_unpacked_size"], "--max-unpacked-size"),
        tests=tuple(raw["test"] or ()),
        test_output=raw["test_output"],
    )


def _size(text: str, what: str) -> int:
    """``8G``, ``512M``, ``100000``: a size in bytes (K, M, G, T are powers of 1024)."""
    import re

    match = re.fullmatch(r"(\d+)([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if match is None:
        raise MinifyError(f"{what} {text!r}: expected a size such as 8G, 512M or 100000")
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2).upper() or " "))


def _note_trace(trace: str | None, source: str | None) -> None:
    if trace is not None and source is not None:
        what = f"`{trace}`" if trace else "the image's entrypoint"
        _say("note", f"running {what} inside {source} (its files, unpacked) under strace, to record what it reads")
    elif trace is not None:
        _say("note", f"running `{trace}` on this machine under strace, to record what it reads")


def _say_up_to_date(output: str, result: "RootfsResult") -> int:
    typer.echo(f"{output}: up to date ({len(result.plan.files)} files)")
    return EXIT_OK


def _report_rootfs(result: "RootfsResult", output: str) -> None:
    """Warnings and notes on stderr; what was written, and how to build it."""
    from minify.render import plan_size_lines
    from minify.text import human_size

    _say_warnings(result.warnings)
    _report_source(result.report)
    files = len(result.plan.files)
    typer.echo(
        f"{result.output}: {files} files, {human_size(result.plan.total_size)}; "
        f"image layer about {human_size(result.layer_bytes)} "
        f"(the inputs alone: {human_size(result.input_bytes)}); verified: every program resolves in the rootfs"
    )
    typer.echo("the heaviest files:")
    for line in plan_size_lines(result.plan):
        typer.echo(line)
    typer.echo(f"build it with: podman build {output}")


def _report_source(report: dict[str, Any] | None) -> None:
    if report is None:
        return
    from minify.render import source_lines

    for line in source_lines(report):
        typer.echo(line)


def _say_warnings(warnings: tuple[str, ...]) -> None:
    """A plan's warnings on stderr: "note: ..." and "hint: ..." as themselves, the rest
    as warnings."""
    for warning in warnings:
        kind, _, rest = warning.partition(": ")
        if kind in ("note", "hint"):
            _say(kind, rest)
        else:
            _say("warning", warning)


def _commas(text: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (text or "").split(",") if p.strip())


#: Differences ``--check`` lists before it counts the rest.
SHOWN_DIFFERENCES = 20


def _print_differences(check: Callable[[Opts], T], options: Opts) -> T:
    """Run ``check``; list what differs on stdout before the error line."""
    from minify.errors import OutOfDate

    try:
        return check(options)
    except OutOfDate as exc:
        for line in exc.differences[:SHOWN_DIFFERENCES]:
            typer.echo(line)
        if len(exc.differences) > SHOWN_DIFFERENCES:
            typer.echo(f"... and {len(exc.differences) - SHOWN_DIFFERENCES} more")
        raise


def _with_progress(build: Callable[..., T], options: object) -> T:
    """A progress bar on a terminal when there is enough to wait for."""
    if not sys.stderr.isatty():
        return build(options)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("writing rootfs", total=None)

        def tick(done: int, total: int) -> None:
            if total >= 200:
                bar.update(task, completed=done, total=total)

        return build(options, progress=tick)


def main() -> None:
    # Names from ELF files are bytes to the loader; undecodable ones travel as
    # surrogate escapes and go back out as the same bytes.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="surrogateescape")
    signal.signal(signal.SIGINT, _interrupted)
    try:
        only_invoked(app, sys.argv)()
    except Interrupted:
        _say("error", "interrupted")
        _exit(EXIT_INTERRUPTED)
    except SystemExit as done:
        _exit(done.code if isinstance(done.code, int) else (0 if done.code is None else EXIT_BAD_INPUT))
    _exit(EXIT_OK)


def _interrupted(signum: int, frame: object) -> None:
    raise Interrupted


def _exit(code: int) -> None:
    """Flush, then leave without the interpreter's teardown: with LIEF loaded it takes
    a tenth of a second to free what the process is about to drop anyway. Every file
    minify writes is closed (and renamed into place) before a command returns."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe (`| head`): the reader left
        code = code or EXIT_BAD_INPUT
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
