#!/usr/bin/env python3
"""minify against libtree, ldd and lddtree: paired, interleaved runs, exit codes checked.

Batch: the regular ELF files at the top level of /usr/bin, /usr/sbin and
/usr/lib/<triplet> (no recursion). minify analyses them in one call (tree output, no
hints); the others run once per file, as a user of them would (`libtree -vv`, which
prints every dependency as minify does, not plain `libtree`, which skips the libc and
ld.so subtrees). One program: `minify analyze PROG` (tree with hints) against `ldd PROG`, against
itself with `--no-hints` (what the hints cost), and against `python -c "import typer"` in
minify's environment (the floor of a typer CLI).
minify runs twice in every round: cold (`--no-cache`: every file parsed by LIEF) and
warm (its persistent cache, in a private XDG_CACHE_HOME filled once before the rounds).
Python's bytecode is compiled before timing, as an installed package has it.
Every round runs every tool once, in a shuffled order; the figures are the median of
the rounds, with the spread, and the ratio is the median of the per-round ratios.
A tool whose runs fail is reported as failing, never timed as if it had worked.

    python3 benchmarks/compare.py [--rounds 5] [--sample N] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

TRIPLET = f"{os.uname().machine}-linux-gnu"
CORPUS = ["/usr/bin", "/usr/sbin", f"/usr/lib/{TRIPLET}"]
#: pandoc (a 172 MB program that exports much) is where hints used to cost 27x the
#: analysis: issue 22's goal is at most 1.5x ``--no-hints`` and 120 MB, warm.
PROGRAMS = ["/usr/bin/curl", "/usr/bin/python3", "/usr/bin/git", "/usr/bin/pandoc"]


def corpus_files() -> list[str]:
    """Regular ELF files at the top level of the corpus folders, sorted."""
    files = []
    for top in CORPUS:
        for entry in sorted(os.scandir(top), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                with open(entry.path, "rb") as fh:
                    if fh.read(4) == b"\x7fELF":
                        files.append(entry.path)
            except OSError:
                continue
    return files


def minify_exe() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "minify")
    return exe if os.path.exists(exe) else shutil.which("minify") or "minify"


@dataclass
class Timed:
    seconds: list[float] = field(default_factory=list)
    failures: int = 0  # runs (or files) whose exit status says the tool failed
    peak_kib: int = 0


#: minify's environment: a private cache folder, and bytecode written (a pip install
#: compiles it; PYTHONDONTWRITEBYTECODE would make every run compile every module).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run_once(argv: list[str], ok: tuple[int, ...]) -> tuple[float, bool, int]:
    """Wall time, whether the exit status is one the tool gives on success, peak RSS."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    return elapsed, code in ok, usage.ru_maxrss


def per_file(tool: list[str], files: list[str], ok: tuple[int, ...]) -> tuple[float, int]:
    """One run of ``tool FILE`` per file: total wall time, and how many failed."""
    total = 0.0
    failed = 0
    for path in files:
        elapsed, good, _ = run_once([*tool, path], ok)
        total += elapsed
        failed += not good
    return total, failed


def env_python() -> str:
    """The Python of minify's environment (beside its ``minify`` script)."""
    beside = os.path.join(os.path.dirname(minify_exe()), "python")
    return beside if os.path.exists(beside) else sys.executable


def works(tool: list[str], probe: str) -> bool:
    """A tool that fails on a plain program (lddtree without pyelftools) is not timed."""
    return shutil.which(tool[0]) is not None and run_once([*tool, probe], (0,))[1]


def batch(files: list[str], rounds: int) -> dict[str, Timed]:
    minify = minify_exe()
    tools: dict[str, list[str]] = {
        "minify warm": [minify, "analyze", "--no-hints"],
        "minify cold": [minify, "analyze", "--no-hints", "--no-cache"],
    }
    run_once([*tools["minify warm"], *files], (0, 1))  # fills the cache
    for name, argv in (("libtree -vv", ["libtree", "-vv"]), ("ldd", ["ldd"]), ("lddtree", ["lddtree"])):
        if works(argv, "/bin/true"):
            tools[name] = argv
        else:
            print(f"  {name}: not timed (missing, or fails on /bin/true)")
    results = {name: Timed() for name in tools}
    for _ in range(rounds):
        order = list(tools)
        random.shuffle(order)
        for name in order:
            if name.startswith("minify"):
                # exit 1 means the analysis worked and some library is missing
                elapsed, good, peak = run_once([*tools[name], *files], (0, 1))
                results[name].failures += not good
                results[name].peak_kib = max(results[name].peak_kib, peak)
            else:
                # libtree and ldd exit non-zero for files they cannot resolve
                elapsed, failed = per_file(tools[name], files, (0,))
                results[name].failures = failed
            results[name].seconds.append(elapsed)
    return results


def program(path: str, rounds: int) -> dict[str, Timed]:
    minify = minify_exe()
    tools = {
        "minify warm": [minify, "analyze", path],
        "minify cold": [minify, "analyze", "--no-cache", path],
        "ldd": ["ldd", path],
        "no hints (minify warm --no-hints)": [minify, "analyze", "--no-hints", path],
        # the floor of the design's CLI, in minify's own environment (issue 22: 1.5x at most)
        "import typer": [env_python(), "-c", "import typer"],
    }
    run_once(tools["minify warm"], (0, 1))  # fills the cache
    results = {name: Timed() for name in tools}
    for _ in range(rounds):
        order = list(tools)
        random.shuffle(order)
        for name in order:
            elapsed, good, peak = run_once(tools[name], (0,) if name in ("ldd", "import typer") else (0, 1))
            results[name].seconds.append(elapsed)
            results[name].failures += not good
            results[name].peak_kib = max(results[name].peak_kib, peak)
    return results


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.3f} s ({min(values):.3f}-{max(values):.3f})"


def ratio(mine: list[float], theirs: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(mine, theirs, strict=True))


def report(results: dict[str, Timed], lines: list[str], label: str) -> None:
    mine = {name: t for name, t in results.items() if name.startswith("minify")}
    for name, timed in results.items():
        failed = f"; {timed.failures} failed" if timed.failures else ""
        relative = ""
        if name not in mine:
            relative = "".join(f"; {m} / {name} = {ratio(t.seconds, timed.seconds):.2f}" for m, t in mine.items())
        peak = f"; peak {timed.peak_kib / 1024:.0f} MiB" if name in mine else ""
        line = f"| {label} | {name} | {spread(timed.seconds)}{peak}{relative}{failed} |"
        lines.append(line)
        print(line)


def main() -> None:
    cache = tempfile.mkdtemp(prefix="minify-bench-cache-")
    ENV["XDG_CACHE_HOME"] = cache
    subprocess.run([sys.executable, "-m", "compileall", "-q", minify_package()], check=False, env=ENV)
    try:
        measure()
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def minify_package() -> str:
    """The installed minify package folder (its bytecode is compiled before timing)."""
    found = subprocess.run(
        [sys.executable, "-c", "import minify, os; print(os.path.dirname(minify.__file__))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.strip()


def measure() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="paired rounds (median shown)")
    parser.add_argument("--sample", type=int, default=0, help="only N random files of the batch (0: all)")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()
    files = corpus_files()
    if args.sample:
        files = sorted(random.Random(1).sample(files, min(args.sample, len(files))))
    size = sum(os.path.getsize(f) for f in files)
    largest = max(os.path.getsize(f) for f in files)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    header = [
        f"machine: {cpu}, {os.cpu_count()} cores; {platform.platform()}; {time.strftime('%Y-%m-%d')}",
        f"batch: {len(files)} ELF files, {size / 1e6:.0f} MB, largest {largest / 1e6:.1f} MB "
        f"(top level of {', '.join(CORPUS)}); {args.rounds} paired rounds",
        "",
        "| what | tool | median (min-max), ratio |",
        "|---|---|---|",
    ]
    print("\n".join(header))
    lines = list(header)
    results = batch(files, args.rounds)
    report(results, lines, "batch")
    for prog in PROGRAMS:
        if os.path.exists(prog):
            report(program(prog, args.rounds), lines, os.path.basename(prog))
    help_times = [run_once([minify_exe(), "--help"], (0,))[0] for _ in range(max(10, args.rounds))]
    lines.append(f"| start-up | minify --help | {spread(help_times)} |")
    print(lines[-1])
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
