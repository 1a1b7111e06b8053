"""Unit tests of the pure pieces: ld.so.cache bytes, ld.so.conf, tokens, hwcaps, API."""

from __future__ import annotations

import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

import minify
from minify.loader import hwcaps, ldcache, ldconf
from minify.loader.arch import ARCHES
from minify.loader.tokens import Tokens, expand, musl_expand, split_glibc_path
from minify.root import Root

X86 = ARCHES[0]


def _strings(names: list[tuple[str, str]], base: int) -> tuple[bytes, list[tuple[int, int]]]:
    blob = b""
    offsets = []
    for key, value in names:
        k = base + len(blob)
        blob += key.encode() + b"\0"
        v = base + len(blob)
        blob += value.encode() + b"\0"
        offsets.append((k, v))
    return blob, offsets


def new_cache(entries: list[tuple[int, str, str, int]], hwcap_names: tuple[str, ...] = ()) -> bytes:
    """A glibc-ld.so.cache1.1 file, built by hand from the documented layout."""
    header = 48
    table = 24 * len(entries)
    blob, offsets = _strings([(k, v) for _, k, v, _ in entries], header + table)
    ext = b""
    ext_offset = 0
    if hwcap_names:
        names_at = header + table + len(blob)
        names_blob = b"".join(n.encode() + b"\0" for n in hwcap_names)
        idx = []
        pos = names_at
        for n in hwcap_names:
            idx.append(pos)
            pos += len(n) + 1
        blob += names_blob
        blob += b"\0" * (-len(blob) % 4)
        array_at = header + table + len(blob)
        blob += b"".join(struct.pack("<I", i) for i in idx)
        ext_offset = header + table + len(blob)
        blob += b"\0" * (-len(blob) % 4)
        ext_offset = header + table + len(blob)
        ext = struct.pack("<II", ldcache.EXTENSION_MAGIC, 1) + struct.pack("<IIII", 1, 0, array_at, 4 * len(idx))
    head = b"glibc-ld.so.cache" + b"1.1" + struct.pack("<IIB3xI12x", len(entries), len(blob), 2, ext_offset)
    rows = b"".join(
        struct.pack("<iIIIQ", flags, k, v, 0, hwcap)
        for (flags, _, _, hwcap), (k, v) in zip(entries, offsets, strict=True)
    )
    return head + rows + blob + ext


def old_cache(entries: list[tuple[int, str, str]]) -> bytes:
    blob, offsets = _strings([(k, v) for _, k, v in entries], 0)
    head = b"ld.so-1.7.0" + b"\0" + struct.pack("<I", len(entries))
    rows = b"".join(struct.pack("<iII", f, k, v) for (f, _, _), (k, v) in zip(entries, offsets, strict=True))
    return head + rows + blob


def test_new_format_and_flags_filter() -> None:
    data = new_cache(
        [
            (0x0003, "libfoo.so.1", "/lib32/libfoo.so.1", 0),
            (0x0303, "libfoo.so.1", "/lib64/libfoo.so.1", 0),
            (0x0303, "libfoo.so.1", "/other/libfoo.so.1", 0),
        ]
    )
    cache = ldcache.parse(data)
    assert cache.format == "new"
    assert cache.lookup("libfoo.so.1", X86.cache_flags, ()) == "/lib64/libfoo.so.1"
    assert cache.lookup("libfoo.so.1", (0x0003,), ()) == "/lib32/libfoo.so.1"
    assert cache.lookup("libbar.so", X86.cache_flags, ()) is None


def test_glibc_hwcaps_entries_are_preferred_by_level() -> None:
    ext = ldcache.HWCAP_EXTENSION
    data = new_cache(
        [
            (0x0303, "libhw.so.1", "/lib/glibc-hwcaps/x86-64-v2/libhw.so.1", ext | 1),
            (0x0303, "libhw.so.1", "/lib/glibc-hwcaps/x86-64-v3/libhw.so.1", ext | 0),
            (0x0303, "libhw.so.1", "/lib/libhw.so.1", 0),
        ],
        hwcap_names=("x86-64-v3", "x86-64-v2"),
    )
    cache = ldcache.parse(data)
    assert cache.lookup("libhw.so.1", (0x0303,), ("x86-64-v4", "x86-64-v3", "x86-64-v2")).endswith("v3/libhw.so.1")
    assert cache.lookup("libhw.so.1", (0x0303,), ("x86-64-v2",)).endswith("v2/libhw.so.1")
    assert cache.lookup("libhw.so.1", (0x0303,), ()) == "/lib/libhw.so.1"


def test_old_and_compat_formats() -> None:
    old = old_cache([(0x0303, "libold.so.1", "/lib/libold.so.1")])
    cache = ldcache.parse(old)
    assert cache.format == "old" and cache.lookup("libold.so.1", (0x0303,), ()) == "/lib/libold.so.1"
    new = new_cache([(0x0303, "libnew.so.1", "/lib/libnew.so.1", 0)])
    # glibc dl-cache.c: in the compat format the new header follows the old entry
    # table at the next 8-byte boundary (the old strings live after it)
    table = old[: 16 + 12]
    compat = table + b"\0" * (-len(table) % 8) + new
    cache = ldcache.parse(compat)
    assert cache.format == "compat" and cache.lookup("libnew.so.1", (0x0303,), ()) == "/lib/libnew.so.1"


@pytest.mark.parametrize("blob", [b"", b"garbage", b"glibc-ld.so.cache1.1" + b"\xff" * 40])
def test_bad_cache_bytes_raise_a_format_error(blob: bytes) -> None:
    with pytest.raises(ldcache.CacheFormatError):
        ldcache.parse(blob)


def test_this_machines_cache_matches_ldconfig() -> None:
    """Every entry `ldconfig -p` prints for x86-64 is what our reader finds first."""
    cache = ldcache.parse(Path("/etc/ld.so.cache").read_bytes())
    listing = subprocess.run(["/sbin/ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    rows = re.findall(r"^\s+(\S+) \(libc6,x86-64[^)]*\) => (\S+)$", listing, re.M)
    assert len(rows) > 50
    seen: set[str] = set()
    for name, path in rows:
        if name in seen:
            continue
        seen.add(name)
        assert cache.lookup(name, X86.cache_flags, ()) == path, name


def test_ldconf_includes_globs_relative_and_sorted(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "ld.so.conf.d").mkdir(parents=True)
    (etc / "ld.so.conf").write_text("# comment\n/opt/first\ninclude ld.so.conf.d/*.conf /etc/extra.conf\n")
    (etc / "ld.so.conf.d/b.conf").write_text("/opt/b\n")
    (etc / "ld.so.conf.d/a.conf").write_text("/opt/a  /opt/a2\n/opt/first\n")
    (etc / "extra.conf").write_text("/opt/extra/\n")
    assert ldconf.directories(Root(str(tmp_path))) == ("/opt/first", "/opt/a", "/opt/a2", "/opt/b", "/opt/extra")


def test_tokens() -> None:
    tokens = Tokens(origin="/app/bin", lib="lib/x86_64-linux-gnu", platform="haswell")
    assert expand("$ORIGIN/../lib", tokens) == "/app/bin/../lib"
    assert expand("${ORIGIN}/x:$LIB:$PLATFORM", tokens) == "/app/bin/x:lib/x86_64-linux-gnu:haswell"
    assert expand("$ORIGINAL/$UNKNOWN", tokens) == "$ORIGINAL/$UNKNOWN"
    assert split_glibc_path("/a::/b/;", "/cwd") == ("/a", "/cwd", "/b", "/cwd")
    assert musl_expand("$ORIGIN/lib", "/o") == "/o/lib"
    assert musl_expand("$LIB/x", "/o") is None


def _host_glibc() -> tuple[int, int]:
    major, minor = os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2]  # type: ignore[union-attr]
    return int(major), int(minor)


def test_legacy_hwcaps_order_matches_the_loader(tmp_path: Path) -> None:
    """The subfolders we try, in order, are the ones this machine's ld.so prints,
    whatever its CPU vendor."""
    if os.uname().machine != "x86_64":
        pytest.skip("the x86-64 hwcaps model is checked against an x86-64 loader")
    model = hwcaps.host(X86, Path("/proc/cpuinfo").read_text())
    env = {"LD_DEBUG": "libs", "LD_LIBRARY_PATH": str(tmp_path)}
    out = subprocess.run(["/bin/true"], capture_output=True, text=True, env=env).stderr
    match = re.search(r"search path=(\S+)\s+\(LD_LIBRARY_PATH\)", out)
    assert match, out
    legacy_ok = _host_glibc() <= (2, 36)
    assert ":".join(model.candidates(str(tmp_path), legacy_ok=legacy_ok)) == match.group(1)


# /proc/cpuinfo flags of three kinds of CPU, and the search path glibc 2.36 prints for
# `LD_DEBUG=libs LD_LIBRARY_PATH=DIR /bin/true` on them (the AMD one recorded on an
# AMD EPYC; the Intel ones follow sysdeps/x86/cpu-features.c and elf/dl-hwcaps.c).
AMD_EPYC = (
    "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c"
    " lahf_lm abm bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl\n"
)
AMD_EPYC_PATH = (
    "DIR/glibc-hwcaps/x86-64-v4:DIR/glibc-hwcaps/x86-64-v3:DIR/glibc-hwcaps/x86-64-v2:DIR/tls/x86_64/x86_64:"
    "DIR/tls/x86_64:DIR/tls/x86_64:DIR/tls:DIR/x86_64/x86_64:DIR/x86_64:DIR/x86_64:DIR"
)
INTEL_HASWELL = (
    "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt xsave avx f16c"
    " lahf_lm abm bmi1 avx2 bmi2\n"
)
INTEL_SKYLAKE_AVX512 = INTEL_HASWELL.replace("bmi2", "bmi2 avx512f avx512dq avx512cd avx512bw avx512vl")
NO_AVX = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 ssse3 cx16 sse4_1 sse4_2 popcnt lahf_lm\n"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        (AMD_EPYC, AMD_EPYC_PATH),
        (
            INTEL_HASWELL,
            "DIR/glibc-hwcaps/x86-64-v3:DIR/glibc-hwcaps/x86-64-v2:DIR/tls/haswell/x86_64:DIR/tls/haswell:"
            "DIR/tls/x86_64:DIR/tls:DIR/haswell/x86_64:DIR/haswell:DIR/x86_64:DIR",
        ),
        (
            INTEL_SKYLAKE_AVX512,
            "DIR/glibc-hwcaps/x86-64-v4:DIR/glibc-hwcaps/x86-64-v3:DIR/glibc-hwcaps/x86-64-v2:"
            "DIR/tls/haswell/avx512_1/x86_64:DIR/tls/haswell/avx512_1:DIR/tls/haswell/x86_64:DIR/tls/haswell:"
            "DIR/tls/avx512_1/x86_64:DIR/tls/avx512_1:DIR/tls/x86_64:DIR/tls:DIR/haswell/avx512_1/x86_64:"
            "DIR/haswell/avx512_1:DIR/haswell/x86_64:DIR/haswell:DIR/avx512_1/x86_64:DIR/avx512_1:DIR/x86_64:DIR",
        ),
        (
            NO_AVX,
            "DIR/glibc-hwcaps/x86-64-v2:DIR/tls/x86_64/x86_64:DIR/tls/x86_64:DIR/tls/x86_64:DIR/tls:"
            "DIR/x86_64/x86_64:DIR/x86_64:DIR/x86_64:DIR",
        ),
    ],
    ids=["amd-epyc", "intel-haswell", "intel-avx512", "no-avx"],
)
def test_legacy_hwcaps_order_on_recorded_cpus(cpuinfo: str, expected: str) -> None:
    """glibc 2.36's legacy subfolders on CPUs other than this one: AT_PLATFORM is
    always a part, and only Intel CPUs turn it into haswell or xeon_phi."""
    model = hwcaps.host(X86, cpuinfo)
    assert ":".join(model.candidates("DIR", legacy_ok=True)) == expected
    assert model.candidates("DIR", legacy_ok=False) == (*tuple(expected.split(":")[: len(model.subdirs)]), "DIR")


def test_levels() -> None:
    assert hwcaps.at_level(X86, "x86-64-v3").subdirs == ("x86-64-v3", "x86-64-v2")
    with pytest.raises(ValueError, match="unknown hwcaps level"):
        hwcaps.at_level(X86, "x86-64-v9")
    assert hwcaps.baseline(X86).candidates("/lib", legacy_ok=True) == ("/lib",)


def test_public_api_is_pinned() -> None:
    assert sorted(minify.__all__) == sorted(
        [
            "Analysis",
            "Dependency",
            "How",
            "LoadedObject",
            "LoaderKind",
            "MinifyError",
            "ProgramClosure",
            "ProgramKind",
            "Request",
            "Role",
            "RootfsOptions",
            "Skipped",
            "Step",
            "Target",
            "Transport",
            "__version__",
            "analyze",
            "parse_dest",
            "write_image",
        ]
    )
    for name in minify.__all__:
        assert getattr(minify, name) is not None
    assert [k.value for k in minify.LoaderKind] == ["glibc", "musl"]
    assert [k.value for k in minify.ProgramKind] == ["dynamic", "static", "not-elf"]
    assert [k.value for k in minify.Request] == ["needed", "filter", "auxiliary", "preload", "interpreter"]
    target = minify.Target("/", cache=False)
    analysis = minify.analyze(["/bin/true"], root=target)
    assert analysis.target is target  # one target per run, carried on the result
    program = analysis.programs[0]
    assert program.kind is minify.ProgramKind.DYNAMIC
    assert program.loader is minify.LoaderKind.GLIBC
    assert {d.kind for d in program.dependencies} <= set(minify.Request)
    graph = analysis.graph
    assert analysis.graph is graph  # built once
    assert graph.nodes[os.path.realpath("/bin/true")]["role"] == "input"
    assert "linux-vdso.so.1" in graph


def test_no_function_of_minify_is_over_60_lines() -> None:
    """The complexity rules (ruff C901, PLR0912, PLR0915) are on; this is their
    companion: a function that does not fit on a screen is split into named steps."""
    import ast

    package = Path(minify.__file__).parent
    long = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(package)}:{node.lineno} {node.name} ({length} lines)")
    assert len(list(package.rglob("*.py"))) > 20  # the package was found
    assert long == []


def _imports_of_minify() -> dict[str, set[str]]:
    """Each module of the package and the modules of it that it imports anywhere: at
    the top, under TYPE_CHECKING and inside functions (``from minify.x import y``
    counts as importing ``minify.x.y`` when that is a module, else ``minify.x``)."""
    import ast

    package = Path(minify.__file__).parent
    names = {
        ".".join(("minify", *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__"): p
        for p in package.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for module, path in names.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name in names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module in names:
                subs = {f"{node.module}.{a.name}" for a in node.names} & names.keys()
                found.update(subs or {node.module})
                if len(subs) < len(node.names):
                    found.add(node.module)
        graph[module] = found - {module}
    return graph


def test_no_import_cycle_anywhere_in_the_package() -> None:
    """The pipeline reads one way (lint-imports checks the layers between the
    subpackages); inside a layer, too, no module imports one that imports it back,
    not even from inside a function. A package's ``__init__`` that only holds a
    docstring is no edge; the public API module imports lazily and is left out."""
    import networkx as nx

    graph = _imports_of_minify()
    assert len(graph) > 40 and "minify.build.pipeline" in graph  # the walk found the package
    edges = nx.DiGraph([(a, b) for a, targets in graph.items() if a != "minify" for b in targets if b != "minify"])
    assert list(nx.simple_cycles(edges)) == []


def test_no_module_of_minify_is_over_600_lines() -> None:
    package = Path(minify.__file__).parent
    sizes = {
        str(p.relative_to(package)): len(p.read_text(encoding="utf-8").splitlines()) for p in package.rglob("*.py")
    }
    assert len(sizes) > 40
    assert {name: n for name, n in sizes.items() if n > 600} == {}


def test_cache_strings_are_read_at_any_offset_and_bounded() -> None:
    """The loader reads a key or value at whatever offset the entry gives: the middle
    of another string reads its tail, a string whose NUL lies past the string area
    (in the extension) still reads whole, and one longer than MAX_STRING is refused."""
    data = bytearray(new_cache([(0x0303, "libfoo.so.1", "/lib/libfoo.so.1", 0)]))
    (value,) = struct.unpack_from("<I", data, 48 + 8)
    struct.pack_into("<I", data, 48 + 8, value + len("/lib"))  # the value's tail
    assert ldcache.parse(bytes(data)).entries[0].path == "/libfoo.so.1"
    head = bytes(data[:48]) + bytes(data[48:72])
    tail = bytes(data[72:])
    # the string area is declared to end in the middle of the value: its NUL is past it
    short = bytearray(head + tail)
    struct.pack_into("<I", short, 24, len(tail) - 3)
    assert ldcache.parse(bytes(short)).entries[0].path == "/libfoo.so.1"
    long = bytearray(head + b"x" * ldcache.MAX_STRING + b"\0")
    struct.pack_into("<I", long, 48 + 4, 72)
    with pytest.raises(ldcache.CacheFormatError, match="no string"):
        ldcache.parse(bytes(long))
