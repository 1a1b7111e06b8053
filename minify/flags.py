"""The options of the ``minify`` commands, as typer annotations: each flag's name,
help and metavar in one place, so a command's signature reads as the list of what it
takes and ``cli.py`` stays the thin layer that calls the library.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated

import typer

from minify.version import __version__
from minify.write.compress import Compression


class Format(StrEnum):
    tree = "tree"
    list = "list"
    json = "json"
    dot = "dot"
    graphml = "graphml"
    svg = "svg"
    png = "png"


RootOpt = Annotated[str, typer.Option("--root", help="The target root filesystem.", metavar="DIR")]
CwdOpt = Annotated[
    str | None,
    typer.Option("--cwd", help="Working directory assumed for relative names and empty path elements.", metavar="DIR"),
]
LibPathOpt = Annotated[str | None, typer.Option("--library-path", help="Model this LD_LIBRARY_PATH.", metavar="PATHS")]
PreloadOpt = Annotated[
    str | None, typer.Option("--preload", help="Model this LD_PRELOAD (':' or space separated).", metavar="PATHS")
]


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"minify {__version__}")
        raise typer.Exit()


VersionOpt = Annotated[
    bool,
    typer.Option("--version", help="Show minify's version and exit.", is_eager=True, callback=_show_version),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")]
NoCacheOpt = Annotated[
    bool,
    typer.Option("--no-cache", help="Parse every file again; do not use or fill the cache in ~/.cache/minify."),
]
AnalyzeHwcapsOpt = Annotated[
    str,
    typer.Option(
        "--hwcaps",
        help="host, baseline or a level such as x86-64-v3.  [default: host for this machine's architecture]",
        metavar="MODE",
        show_default=False,
    ),
]
HintsOpt = Annotated[
    bool | None,
    typer.Option("--hints/--no-hints", help="Hints from imported symbols (default: on for up to 20 inputs)."),
]
AllOpt = Annotated[
    bool, typer.Option("--all", help="Tree: also every request for a library already loaded (ldd -v style).")
]
PackagesOpt = Annotated[
    bool, typer.Option("--packages", help="Tree and JSON: the root's installed packages the closure loads files of.")
]
SizesOpt = Annotated[
    bool, typer.Option("--sizes", help="Tree and JSON: the heaviest files, their share and what pulled them in.")
]
# the options of `minify rootfs`
RootfsPaths = Annotated[
    list[str] | None,
    typer.Argument(
        help="Programs (or folders of them) to ship, the first of them the ENTRYPOINT; with --from, paths inside the "
        "image.",
        metavar="PATH...",
    ),
]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        help="Minify this image: oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:NAME:TAG], "
        "containers-storage:NAME. Its Entrypoint and Cmd name the program; its config is kept.",
        metavar="SOURCE",
    ),
]
PlatformOpt = Annotated[
    str | None,
    typer.Option(
        "--platform", help="The image of a multi-platform --from to use (default: this machine's).", metavar="OS/ARCH"
    ),
]
MaxUnpackedOpt = Annotated[
    str,
    typer.Option(
        "--max-unpacked-size", help="Refuse a --from image whose layers unpack to more (K, M, G, T).", metavar="SIZE"
    ),
]
OutputOpt = Annotated[
    str, typer.Option("--output", "-o", help="Output folder: rootfs/, Dockerfile, lock file.", metavar="OUT")
]
MapOpt = Annotated[
    list[str] | None,
    typer.Option("--map", help="Put the tree SRC at DEST in the image (repeat for more).", metavar="SRC=DEST"),
]
EntrypointOpt = Annotated[
    str | None, typer.Option("--entrypoint", help="Image path of the program to run.", metavar="PATH")
]
CmdOpt = Annotated[list[str] | None, typer.Option("--cmd", help="A CMD argument (repeat for more).", metavar="ARG")]
UserOpt = Annotated[
    str | None,
    typer.Option("--user", help="UID[:GID] to run as, or nonroot (65532:65532).", metavar="UID[:GID]|nonroot"),
]
EnvOpt = Annotated[
    list[str] | None,
    typer.Option("--env", help="An environment variable of the image (repeat for more).", metavar="K=V"),
]
HwcapsOpt = Annotated[
    str,
    typer.Option("--hwcaps", help="all (baseline + every glibc-hwcaps copy), baseline, or a level.", metavar="MODE"),
]
WithOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--with",
        help="Presets: nss, certs, tzdata, gconv, locale, libgcc_s, terminfo, tmp, auto (comma list).",
        metavar="PRESET,...",
    ),
]
TzOpt = Annotated[
    str | None,
    typer.Option("--tz", help="Only these time zones (comma list; implies --with tzdata).", metavar="ZONES"),
]
GconvOpt = Annotated[
    str | None,
    typer.Option("--gconv", help="Only these charsets (comma list; implies --with gconv).", metavar="CHARSETS"),
]
TermOpt = Annotated[
    str | None,
    typer.Option(
        "--term",
        help="Only these terminfo entries (comma list; implies --with terminfo).  "
        "[default: xterm,xterm-256color,screen,tmux-256color,linux]",
        metavar="TERMS",
    ),
]
AddOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--add",
        help="A file or folder of the root to add; its ELF files bring their closures.",
        metavar="PATH[:DEST]",
    ),
]
TraceOpt = Annotated[
    str | None,
    typer.Option(
        "--trace",
        help="RUNS this command under strace on this machine and adds what it read.",
        metavar='"CMD ARG..."',
    ),
]
TraceUserOpt = Annotated[
    str | None,
    typer.Option(
        "--trace-user",
        help="Run the --trace command as this user (initdb refuses root); with --from, one of the image's users.",
        metavar="USER",
    ),
]
TraceOkExitOpt = Annotated[
    bool, typer.Option("--trace-ok-exit", help="Accept a non-zero exit of the --trace command (with a warning).")
]
TraceTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--trace-timeout",
        help="End the --trace command (a server) after SECONDS, in its own namespaces; that counts as success.",
        metavar="SECONDS",
        min=0.1,
    ),
]
ProbeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--probe",
        help="Run CMD on this machine, in the traced server's network, once it listens on a port (repeat for more).",
        metavar='"CMD"',
    ),
]
GraphOpt = Annotated[
    str | None,
    typer.Option("--graph", help="Also draw the plan here (.svg, .png with Graphviz, or .dot).", metavar="FILE"),
]
NoPackageMetadataOpt = Annotated[
    bool,
    typer.Option(
        "--no-package-metadata",
        help="Leave out the dpkg status.d stanzas, os-release and the SBOM that scanners read in the image.",
    ),
]
TraceExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--trace-exclude", help="Traced paths to leave out: a glob or a folder (repeat for more).", metavar="GLOB"
    ),
]
CheckOnlyOpt = Annotated[
    bool, typer.Option("--check", help="Write nothing; exit 1 if OUT is not what would be produced.")
]
TestOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--test",
        help="Prove the image: run this command in it and at the source, and fail (naming what is missing and the "
        "flag that brings it) unless its exit status is the same (repeat for more).",
        metavar='"CMD ARG..."',
    ),
]
TestOutputOpt = Annotated[
    bool, typer.Option("--test-output", help="--test also compares what the command prints on stdout.")
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace OUT even if it holds files minify did not write (deleting them).")
]


class ImageFormat(StrEnum):
    text = "text"
    json = "json"


DestOpt = Annotated[
    str,
    typer.Option(
        "--output",
        "-o",
        help="oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:NAME:TAG], or FILE.tar.",
        metavar="DEST",
    ),
]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Name the image (where DEST does not).", metavar="NAME:TAG")]
ImageFormatOpt = Annotated[ImageFormat, typer.Option("--format", "-f", help="What to print when done.")]
PlatformRootOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--platform-root",
        metavar="PLATFORM=DIR",
        help="The image for PLATFORM (linux/arm64, linux/arm/v7...) from the root DIR; repeat it for an index of "
        "every platform (PATH is the same path in each root; --root is not used).",
    ),
]
ImageCheckOpt = Annotated[
    bool, typer.Option("--check", help="Write nothing; exit 1 if DEST is not the image that would be written.")
]
ImageForceOpt = Annotated[bool, typer.Option("--force", help="Replace DEST even if minify did not write it.")]
LayersOpt = Annotated[
    int,
    typer.Option(
        "--layers",
        metavar="1|2",
        help="2: a base layer (the loader, libc, the presets' files) that images from one root share, then the app; "
        "1: one layer.",
    ),
]
CompressionOpt = Annotated[
    Compression,
    typer.Option(
        "--compression",
        help="How the layer is stored: gzip (every engine) or zstd (podman, containerd, Docker 23 and later).",
    ),
]


def only_invoked(app: typer.Typer, argv: Sequence[str]) -> typer.Typer:
    """``app`` with only the command the line names, when it names one. Typer builds
    the click options of every command before it parses the line, and that is a fifth
    of a warm analysis's own time; the one command is built as in the whole app (same
    group, same usage line and errors). A line that names no command (``--help``, a
    typo) gets the whole app, so its help and "No such command" are unchanged."""
    wanted = argv[1] if len(argv) > 1 else ""
    chosen = [
        c
        for c in app.registered_commands
        if (c.name or typer.main.get_command_name(getattr(c.callback, "__name__", ""))) == wanted
    ]
    if not chosen:
        return app
    one = copy.copy(app)
    one.registered_commands = chosen
    return one


def split_preload(text: str | None) -> tuple[str, ...]:
    """``--preload``'s names, split as ld.so splits LD_PRELOAD (colons or spaces)."""
    return tuple(p for p in (text or "").replace(":", " ").split() if p)
