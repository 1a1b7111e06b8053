#!/usr/bin/env python3
"""`minify image` against `minify rootfs` + `podman build`, for the seed and for curl.

Both give an image with the same files: one writes an OCI archive itself, the other
writes a build context and has podman (with runc and the README's containers.conf)
build it. Paired rounds in a shuffled order, the median with its spread, every exit
status checked; the persistent cache is warm for both.

    python3 benchmarks/image.py [--rounds 5] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONTAINERS_CONF = """[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
"""
SEED = "#include <unistd.h>\nint main(void){return pause();}\n"


def minify_exe() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "minify")
    return exe if os.path.exists(exe) else shutil.which("minify") or "minify"


def timed(steps: list[list[str]], env: dict[str, str], cwd: str) -> float:
    started = time.perf_counter()
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, env=env, cwd=cwd)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="minify-image-bench-")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["CONTAINERS_CONF"] = os.path.join(work, "containers.conf")
    env["XDG_CACHE_HOME"] = os.path.join(work, "cache")
    with open(env["CONTAINERS_CONF"], "w", encoding="utf-8") as fh:
        fh.write(CONTAINERS_CONF)
    with open(os.path.join(work, "pausle.c"), "w", encoding="utf-8") as fh:
        fh.write(SEED)
    subprocess.run(["gcc", "-Os", "pausle.c", "-o", "pausle"], cwd=work, check=True)
    minify = minify_exe()
    lines = ["| program | way | median (min-max) |", "|---|---|---|"]
    try:
        for label, program in (("pausle", "./pausle"), ("curl", "/usr/bin/curl")):
            ways = {
                "minify image": [[minify, "image", program, "-o", "img.tar", "--tag", "localhost/bench:1"]],
                "minify rootfs + podman build": [
                    [minify, "rootfs", program, "-o", "out"],
                    ["podman", "--runtime", "runc", "build", "-q", "-t", "localhost/bench:2", "out"],
                ],
            }
            timed(ways["minify image"], env, work)  # warms the cache
            seconds: dict[str, list[float]] = {way: [] for way in ways}
            for _ in range(args.rounds):
                order = list(ways)
                random.shuffle(order)
                for way in order:
                    seconds[way].append(timed(ways[way], env, work))
            for way, values in seconds.items():
                med = statistics.median(values)
                line = f"| {label} | {way} | {med:.2f} s ({min(values):.2f}-{max(values):.2f}) |"
                lines.append(line)
                print(line)
    finally:
        subprocess.run(["podman", "rmi", "-f", "localhost/bench:2"], capture_output=True, env=env)
        shutil.rmtree(work, ignore_errors=True)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
