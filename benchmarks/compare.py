#!/usr/bin/env python3
"""minify against ldd, lddtree and libtree on one corpus, in one run.

Corpus: every regular ELF file under /usr/bin, /usr/sbin and /usr/lib/<triplet>.
minify analyses the whole corpus in one call; the others are run once per file, as a
user of them would. Prints wall times and the ratios, `minify --help` start-up, and
minify's peak memory against the largest single file.

    python3 benchmarks/compare.py [--sample N] [--tools libtree,lddtree,ldd]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time

CORPUS = ["/usr/bin", "/usr/sbin", f"/usr/lib/{os.uname().machine}-linux-gnu"]


def corpus_files() -> list[str]:
    files = []
    for top in CORPUS:
        for dirpath, _, names in os.walk(top):
            for name in names:
                path = os.path.join(dirpath, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                try:
                    with open(path, "rb") as fh:
                        if fh.read(4) == b"\x7fELF":
                            files.append(path)
                except OSError:
                    continue
    return sorted(files)


def per_file(cmd: list[str], files: list[str]) -> float:
    start = time.perf_counter()
    for path in files:
        subprocess.run([*cmd, path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def minify_once(files: list[str] | None) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one `minify analyze` over the corpus."""
    args = files if files is not None else [d for d in CORPUS if os.path.isdir(d)]
    cmd = [sys.executable, "-m", "minify.cli", "analyze", "--format", "json", *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, max(peak, before)


def help_time() -> float:
    # the console script beside this interpreter (a version manager's shim on PATH
    # would add its own start-up to the figure)
    exe = os.path.join(os.path.dirname(sys.executable), "minify")
    if not os.path.exists(exe):
        exe = shutil.which("minify") or ""
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "minify.cli", "--help"]
    samples = []
    for _ in range(10):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=False)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=0, help="only N random files (0: all)")
    parser.add_argument("--tools", default="libtree,lddtree,ldd")
    args = parser.parse_args()
    files = corpus_files()
    whole = args.sample == 0
    if not whole:
        files = sorted(random.Random(1).sample(files, min(args.sample, len(files))))
    largest = max(os.path.getsize(f) for f in files)
    print(f"corpus: {len(files)} ELF files, {sum(os.path.getsize(f) for f in files) / 1e6:.0f} MB,")
    print(f"        largest {largest / 1e6:.1f} MB ({', '.join(CORPUS)})")
    elapsed, peak_kib = minify_once(None if whole else files)
    print(f"minify   one call, whole corpus: {elapsed:8.2f} s   peak RSS {peak_kib / 1024:.0f} MiB")
    tools = {
        "libtree": ["libtree"],
        "lddtree": ["lddtree"],
        "ldd": ["ldd"],
    }
    for name in args.tools.split(","):
        cmd = tools.get(name)
        if cmd is None or shutil.which(cmd[0]) is None:
            print(f"{name:8} not installed")
            continue
        took = per_file(cmd, files)
        print(f"{name:8} once per file:          {took:8.2f} s   minify is {took / elapsed:5.1f}x faster")
    print(f"minify --help (median of 10):     {help_time() * 1000:6.0f} ms  (goal < 150 ms)")
    print(f"peak RSS / largest file:          {peak_kib * 1024 / largest:6.2f}")


if __name__ == "__main__":
    main()
