#!/usr/bin/env python3
"""What a cold start costs with each LIEF release the project accepts (lief>=0.15.1).

Each release is installed with ``pip install --target`` into a folder of its own, put
first on PYTHONPATH in front of the environment that runs minify (which has minify's
other dependencies); then, in shuffled rounds: ``import lief`` alone, a cold
``minify analyze --no-cache /usr/bin/curl`` (every file parsed by LIEF) and
``minify --help`` (which imports nothing heavy). Median of the rounds, with the spread;
exit codes checked.

    python3 benchmarks/lief_versions.py [--rounds 5] [--versions 0.15.1 0.16.7 ...] [--markdown FILE]
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

from _common import arguments, emit

VERSIONS = ["0.15.1", "0.16.7", "0.17.6", "1.0.0"]
PROGRAM = "/usr/bin/curl"


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')[-1500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--versions", nargs="*", default=VERSIONS)
    args = arguments(__doc__ or "", parser)
    work = tempfile.mkdtemp(prefix="minify-lief-bench-")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    envs: dict[str, dict[str, str]] = {}
    try:
        for version in args.versions:
            target = os.path.join(work, version)
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, f"lief=={version}"],
                check=True,
            )
            envs[version] = {**base, "PYTHONPATH": f"{target}:{here}", "XDG_CACHE_HOME": os.path.join(work, "c")}
        commands = {
            "import lief": [sys.executable, "-c", "import lief"],
            "minify analyze --no-cache": [sys.executable, "-m", "minify.cli", "analyze", "--no-cache", PROGRAM],
            "minify --help": [sys.executable, "-m", "minify.cli", "--help"],
        }
        pairs = [(v, name) for v in envs for name in commands]
        for version, name in pairs:  # bytecode compiled, files in the page cache
            timed(commands[name], envs[version])
        times: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
        for _ in range(args.rounds):
            random.shuffle(pairs)
            for version, name in pairs:
                times[(version, name)].append(timed(commands[name], envs[version]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{args.rounds} rounds, {PROGRAM}",
        "",
        "| LIEF | " + " | ".join(f"`{name}` s" for name in commands) + " |",
        "|---|" + "---|" * len(commands),
    ]
    for version in envs:
        cells = []
        for name in commands:
            got = times[(version, name)]
            cells.append(f"{statistics.median(got):.3f} ({min(got):.3f}-{max(got):.3f})")
        lines.append(f"| {version} | " + " | ".join(cells) + " |")
    emit("\n".join(lines), args.markdown)


if __name__ == "__main__":
    main()
