#!/usr/bin/env python3
"""`minify rootfs` and `minify image` of big closures, against the tools that copy the
same files: paired, interleaved runs, exit codes checked (issue 22's goals).

For each program (gdalinfo, pandoc and curl, those installed):
- `minify rootfs P -o OUT` against `lddtree --copy-to-tree DIR P` (pax-utils, run with
  the system Python that has pyelftools), which copies the closure and nothing else:
  no verification, no package metadata, no SBOM;
- `minify image P -o X.tar` (gzip on every core) against `minify rootfs` followed by
  `tar -C OUT/rootfs -c . | gzip -6` of its rootfs, what a user would script;
- `minify image --compression zstd`, for the record.
minify's cache is warm (one run of each command before the rounds, in a private
XDG_CACHE_HOME). Every round runs every command once, in a shuffled order; the figures
are the median of the rounds with the spread, and each ratio is the median of the
per-round ratios. Peak memory is measured once per minify command by /usr/bin/time
(a small parent: the harness's own memory is not counted).

    python3 benchmarks/rootfs.py [--rounds 5] [--markdown FILE]
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import time

from _common import arguments, emit, minify_exe

PROGRAMS = [
    p for p in os.environ.get("MINIFY_BENCH_PROGRAMS", "/usr/bin/gdalinfo /usr/bin/pandoc /usr/bin/curl").split()
]
SYSTEM_PYTHON = "/usr/bin/python3"  # pax-utils' lddtree needs the system's pyelftools


def shell_run(script: str, env: dict[str, str]) -> float:
    """Wall time of one ``sh -c`` script; a failure ends the benchmark with its error."""
    started = time.perf_counter()
    done = subprocess.run(["sh", "-ec", script], capture_output=True, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {script}\n{done.stderr.decode(errors='replace')[-2000:]}")
    return elapsed


def lddtree_works(program: str) -> bool:
    lddtree = shutil.which("lddtree")
    if lddtree is None or not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = subprocess.run([SYSTEM_PYTHON, lddtree, program], capture_output=True)
    return probe.returncode == 0


def commands(program: str, work: str, minify: str) -> dict[str, str]:
    """Each command as a shell script that starts from nothing (its output removed first)."""
    out, tree = f"{work}/out", f"{work}/tree"
    rootfs = f"rm -rf {out} && {minify} rootfs {program} -o {out} >/dev/null 2>&1"
    found = {
        "minify rootfs": rootfs,
        "minify image": f"rm -f {work}/i.tar && {minify} image {program} -o {work}/i.tar >/dev/null 2>&1",
        "minify image --compression zstd": (
            f"rm -f {work}/z.tar && {minify} image {program} -o {work}/z.tar --compression zstd >/dev/null 2>&1"
        ),
        "minify rootfs + tar | gzip -6": f"{rootfs} && tar -C {out}/rootfs -c . | gzip -6 > {work}/r.tar.gz",
    }
    if lddtree_works(program):
        lddtree = shutil.which("lddtree")
        found["lddtree --copy-to-tree"] = (
            f"rm -rf {tree} && {SYSTEM_PYTHON} {lddtree} --copy-to-tree {tree} {program} >/dev/null 2>&1"
        )
    return found


def peak_mib(script: str, env: dict[str, str]) -> float:
    """Peak RSS of the one minify process of ``script``, by /usr/bin/time."""
    report = tempfile.NamedTemporaryFile(suffix=".time", delete=False).name
    first, _, rest = script.partition(" && ")
    subprocess.run(["sh", "-ec", first], check=True)
    timed = rest.replace(">/dev/null 2>&1", "").split(" && ")[0]
    subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", report, "sh", "-ec", f"{timed} >/dev/null 2>&1"], check=True, env=env
    )
    with open(report, encoding="utf-8") as fh:
        kib = int(fh.read().split()[-1])
    os.unlink(report)
    return kib / 1024


def measure(program: str, rounds: int, work: str, env: dict[str, str]) -> list[str]:
    scripts = commands(program, work, minify_exe())
    for script in scripts.values():  # warm the cache and the page cache
        shell_run(script, env)
    times: dict[str, list[float]] = {name: [] for name in scripts}
    for _ in range(rounds):
        order = list(scripts)
        random.shuffle(order)
        for name in order:
            times[name].append(shell_run(scripts[name], env))
    closure = subprocess.run(["du", "-sb", f"{work}/out/rootfs"], capture_output=True, text=True, check=True)
    size = int(closure.stdout.split()[0]) / 1e6
    lines = [
        f"### {program} (rootfs {size:.0f} MB)",
        "",
        "| command | median s | spread s | peak MiB |",
        "|---|---|---|---|",
    ]
    for name, got in times.items():
        spread = f"{min(got):.2f}-{max(got):.2f}"
        peak = f"{peak_mib(scripts[name], env):.0f}" if name.startswith("minify") and "+" not in name else ""
        cell = name.replace("|", "\\|")
        lines.append(f"| `{cell}` | {statistics.median(got):.2f} | {spread} | {peak} |")
    lines.append("")
    for name, base in (("minify rootfs", "lddtree --copy-to-tree"), ("minify image", "minify rootfs + tar | gzip -6")):
        if base in times:
            ratios = [a / b for a, b in zip(times[name], times[base], strict=True)]
            lines.append(
                f"- `{name}` / `{base}`: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            )
    if "lddtree --copy-to-tree" not in times:
        lines.append("- lddtree: not timed (not installed, or it fails on this program)")
    return [*lines, ""]


def main() -> None:
    args = arguments(__doc__ or "")
    work = tempfile.mkdtemp(prefix="minify-rootfs-bench-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["XDG_CACHE_HOME"] = os.path.join(work, "cache")
    cpu = platform.processor() or platform.machine()
    head = [
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{args.rounds} rounds, warm cache",
        "",
    ]
    body: list[str] = []
    try:
        for program in PROGRAMS:
            if os.path.exists(program):
                body += measure(program, args.rounds, work, env)
            else:
                body += [f"### {program}: not installed", ""]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit("\n".join(head + body), args.markdown)


if __name__ == "__main__":
    main()
