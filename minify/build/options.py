"""What ``minify rootfs`` and ``minify image`` are asked (``RootfsOptions``) and
what they give back: the options every stage of the build reads, in one place, so a
stage takes them without importing the stages before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from minify.elf.cache import FactCache
from minify.plan.image import Digests, ImagePlan, Mapping
from minify.plan.trace import Trace
from minify.write import output

#: Why a runtime's own files (the JVM's lib/) are in the image.
LAYOUT_REASON = "the runtime's layout"


#: ``--max-unpacked-size``: a ``--from`` image that unpacks to more is refused.
DEFAULT_MAX_UNPACKED = 8 << 30


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
    cache: FactCache | None = None  # the facts cache the analysis used (verification reads it)
