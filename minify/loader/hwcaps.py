"""Which hardware-capability subfolders the loader tries in each search directory.

glibc >= 2.33 tries ``DIR/glibc-hwcaps/<level>`` (best level first) before ``DIR``;
glibc <= 2.36 also tries the legacy subfolders built from "tls", AT_PLATFORM and the
"important" hwcap names (elf/dl-hwcaps.c, sysdeps/x86/cpu-features.c). glibc 2.37
removed the legacy ones. Which of them apply depends on the CPU, so this is modelled
for a named CPU: this host's, a baseline one (no subfolders at all), or a level.
"""

from __future__ import annotations

from dataclasses import dataclass

from minify.loader.arch import Arch

#: x86-64 psABI micro-architecture levels and the /proc/cpuinfo flags each one needs.
X86_LEVELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("x86-64-v2", frozenset({"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"})),
    ("x86-64-v3", frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})),
    ("x86-64-v4", frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})),
)
KNOWN_LEVELS: dict[str, tuple[str, ...]] = {
    "x86_64": tuple(name for name, _ in X86_LEVELS),
    "ppc64le": ("power9", "power10"),
    "s390x": ("z13", "z14", "z15", "z16"),
}


@dataclass(frozen=True)
class Hwcaps:
    """The subfolders one CPU makes the loader try, best first, and its $PLATFORM."""

    subdirs: tuple[str, ...]  # e.g. ("x86-64-v3", "x86-64-v2"), best first
    legacy: tuple[str, ...]  # e.g. ("tls/haswell/x86_64", ..., "x86_64"), "" excluded
    platform: str

    def candidates(self, directory: str, *, legacy_ok: bool) -> tuple[str, ...]:
        """Directories tried for ``directory``, in the loader's order, itself last."""
        base = directory.rstrip("/") or "/"
        joined = base if base != "/" else ""
        out = [f"{joined}/glibc-hwcaps/{sub}" for sub in self.subdirs]
        if legacy_ok:
            out.extend(f"{joined}/{sub}" for sub in self.legacy)
        out.append(base)
        return tuple(out)


def baseline(arch: Arch) -> Hwcaps:
    return Hwcaps((), (), arch.platform)


def at_level(arch: Arch, level: str) -> Hwcaps:
    """A CPU that supports ``level`` and every level below it, and no legacy folders."""
    levels = KNOWN_LEVELS.get(arch.name, ())
    if level not in levels:
        known = ", ".join(levels) or "none"
        raise ValueError(f"unknown hwcaps level {level!r} for {arch.name} (known: {known})")
    upto = levels[: levels.index(level) + 1]
    return Hwcaps(tuple(reversed(upto)), (), arch.platform)


def host(arch: Arch, cpuinfo: str) -> Hwcaps:
    """What this machine's CPU (``/proc/cpuinfo`` text) makes the loader try."""
    if arch.name != "x86_64":
        return baseline(arch)
    vendor, flags = _cpu(cpuinfo)
    subdirs = []
    for name, needs in X86_LEVELS:
        if not needs <= flags:
            break
        subdirs.append(name)
    platform, hwcap_names = _intel_platform(arch, vendor, flags)
    hwcap_names.append("x86_64")
    # AT_PLATFORM is always one of the parts (elf/dl-hwcaps.c _dl_important_hwcaps takes
    # GLRO(dl_platform), which the kernel sets to "x86_64" and only Intel CPUs replace):
    # an AMD EPYC's glibc 2.36 tries tls/x86_64/x86_64, tls/x86_64, tls/x86_64, tls, ...
    parts = ["tls", platform, *hwcap_names]
    return Hwcaps(tuple(reversed(subdirs)), _legacy_combinations(parts), platform)


def _cpu(cpuinfo: str) -> tuple[str, set[str]]:
    """The vendor and flags of the first CPU in ``/proc/cpuinfo`` text."""
    flags: set[str] = set()
    vendor = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "vendor_id" and not vendor:
            vendor = value.strip()
    return vendor, flags


def _intel_platform(arch: Arch, vendor: str, flags: set[str]) -> tuple[str, list[str]]:
    """sysdeps/x86/cpu-features.c (glibc 2.26-2.36): on Intel CPUs AT_PLATFORM becomes
    "haswell" or "xeon_phi", and AVX512 adds the "avx512_1" hwcap name."""
    platform = arch.platform
    hwcap_names: list[str] = []
    if vendor != "GenuineIntel":
        return platform, hwcap_names
    if "avx512cd" in flags:
        if "avx512er" in flags:
            if "avx512pf" in flags:
                platform = "xeon_phi"
        elif {"avx512bw", "avx512dq", "avx512vl"} <= flags:
            hwcap_names.append("avx512_1")
    if platform == arch.platform and {"avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "popcnt"} <= flags:
        platform = "haswell"
    return platform, hwcap_names


def _legacy_combinations(parts: list[str]) -> tuple[str, ...]:
    """Every ordered subset of ``parts``, in glibc's order, the empty one left out.

    elf/dl-hwcaps.c: subsets are enumerated as a binary counter counting down, the
    first part being the most significant bit: tls/a/b, tls/a, tls/b, tls, a/b, a, b.
    """
    n = len(parts)
    out = []
    for mask in range((1 << n) - 1, 0, -1):
        chosen = [parts[i] for i in range(n) if mask & (1 << (n - 1 - i))]
        out.append("/".join(chosen))
    return tuple(out)
