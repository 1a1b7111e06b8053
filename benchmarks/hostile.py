#!/usr/bin/env python3
"""Bounded, and how fast: minify on inputs a hostile root or image can make large.

Two goals of issue 21, measured here rather than in timed tests:

- a `--from` image whose one layer holds 300,000 empty files in 300 folders: the
  whole `minify rootfs --from` (read, check, flatten, report, plan, write, clean up),
  goal at most 10 s and 150 MB;
- a root whose dpkg status holds 200,000 stanzas (no file lists): `minify rootfs` of a
  static program there (the database is read to attribute files), goal at most 3 s.

Each is run ``--rounds`` times; the median wall time with its spread and the peak
memory (ru_maxrss of the child) are printed, with the exit status checked.

    python3 benchmarks/hostile.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

sys.path.insert(0, HERE)

from from_image import _timed as timed  # noqa: E402  (one timer for the benchmarks)

from tests.layouts import write_layout  # noqa: E402  (the tests' own OCI layout writer)

MINIFY = [sys.executable, "-m", "minify.cli"]


def _static_hello(work: str) -> str:
    out = os.path.join(work, "hello")
    src = os.path.join(os.path.dirname(HERE), "fixtures", "hello.c")
    subprocess.run(["gcc", "-static", "-O2", src, "-o", out], check=True)
    return out


def _many_members(work: str, hello: str, count: int) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(hello, "bin/hello")
        for folder in range(count // 1000):
            info = tarfile.TarInfo(f"d{folder}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for number in range(count):
            tar.addfile(tarfile.TarInfo(f"d{number // 1000}/f{number}"), io.BytesIO(b""))
    source = os.path.join(work, "src")
    write_layout(Path(source), [buffer.getvalue()], {"Entrypoint": ["/bin/hello"]})
    return source


def _many_stanzas(work: str, hello: str, count: int) -> str:
    root = os.path.join(work, "root")
    os.makedirs(os.path.join(root, "var/lib/dpkg/info"))
    shutil.copy(hello, os.path.join(root, "hello"))
    with open(os.path.join(root, "var/lib/dpkg/status"), "w") as fh:
        for number in range(count):
            fh.write(
                f"Package: pkg{number}\nStatus: install ok installed\nVersion: 1.{number}\n"
                "Architecture: amd64\nMaintainer: M <m@example.org>\nDescription: d\n more\n\n"
            )
    return root


def _timed(cmd: list[str], cwd: str, out: str) -> tuple[float, int]:
    """Wall seconds and peak KB of one run (from_image's timer), OUT removed first."""
    shutil.rmtree(out, ignore_errors=True)
    return timed(cmd, cwd)


def _report(name: str, goal: str, runs: list[tuple[float, int]]) -> None:
    times = [t for t, _ in runs]
    median = statistics.median(times)
    spread = (max(times) - min(times)) / 2
    peak = max(m for _, m in runs) / 1024
    print(f"{name}: {median:.2f} s ± {spread:.2f} (median of {len(runs)}), peak {peak:.0f} MB; goal {goal}")


def _tar_floor(work: str, out: str) -> tuple[float, int]:
    """The same layer unpacked by GNU tar, then removed: what this machine's kernel
    takes to make and delete the files, whoever asks (paired with minify's runs)."""
    layer = max(
        (os.path.join(work, "src/blobs/sha256", n) for n in os.listdir(os.path.join(work, "src/blobs/sha256"))),
        key=os.path.getsize,
    )
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    script = f"gzip -dc {layer} | tar -x -C {out} && rm -rf {out}"
    return timed(["sh", "-c", script], work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="minify-bench-hostile-", dir=os.getcwd())
    try:
        hello = _static_hello(work)
        _many_members(work, hello, 300_000)
        root = _many_stanzas(work, hello, 200_000)
        members, floor = [], []
        for _ in range(args.rounds):  # paired: minify, then tar on the same disk
            members.append(
                _timed([*MINIFY, "rootfs", "--from", "oci:src", "-o", "out-from"], work, os.path.join(work, "out-from"))
            )
            floor.append(_tar_floor(work, os.path.join(work, "out-tar")))
        _report("--from, 300,000 members", "<= 10 s, <= 150 MB", members)
        _report("  GNU tar -x of the same layer, then rm -rf", "(this disk's floor)", floor)
        ratios = sorted(m[0] / f[0] for m, f in zip(members, floor, strict=True))
        rounds = ", ".join(f"{r:.2f}" for r in ratios)
        print(f"  ratio minify / tar: {statistics.median(ratios):.2f}x (per round: {rounds})")
        stanzas = [
            _timed([*MINIFY, "rootfs", "/hello", "--root", root, "-o", "out-db"], work, os.path.join(work, "out-db"))
            for _ in range(args.rounds)
        ]
        _report("dpkg status, 200,000 stanzas", "<= 3 s", stanzas)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
