#!/usr/bin/env python3
"""`minify image --from` against umoci unpack: paired, interleaved runs, exit codes checked.

The source is an OCI layout of one gzip layer made here from this machine's files:
curl, its C library folder whole (/usr/lib/<triplet>) and /usr/share/doc, with
Entrypoint ["curl"]. Each round runs, in a shuffled order:

- `minify image --from oci:SRC -o oci:OUT`: the whole job (read and check every blob,
  flatten, analyse, plan, write and verify the new image);
- `umoci unpack --rootless`: flattening alone, by the OCI project's own tool.

The figures are the median of the rounds with the spread; the ratio is the median of
the per-round ratios; peak memory (ru_maxrss of the child) is printed per tool.

    python3 benchmarks/from_image.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TRIPLET = f"{os.uname().machine}-linux-gnu"
PARTS = ["/usr/bin/curl", f"/usr/lib/{TRIPLET}", "/usr/share/doc"]


def _layout(work: str) -> tuple[str, int]:
    """The source layout; returns its path and the layer's unpacked size."""
    tar = os.path.join(work, "layer.tar")
    names = [p.lstrip("/") for p in PARTS] + [
        n for n in ("bin", "lib", "lib64", "usr/lib64") if os.path.lexists("/" + n)
    ]
    subprocess.run(["tar", "--numeric-owner", "-C", "/", "-cf", tar, *names], check=True)
    layout = os.path.join(work, "src")
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)
    plain, stored = hashlib.sha256(), hashlib.sha256()
    gz = os.path.join(work, "layer.gz")
    with open(tar, "rb") as src, open(gz, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        while chunk := src.read(1 << 20):  # streamed: this process stays small (its children's peaks start from it)
            plain.update(chunk)
            out.write(chunk)
    size = os.path.getsize(tar)
    os.unlink(tar)
    with open(gz, "rb") as fh:
        while chunk := fh.read(1 << 20):
            stored.update(chunk)
    layer_digest = stored.hexdigest()
    os.rename(gz, os.path.join(blobs, layer_digest))

    def blob(content: bytes) -> dict[str, object]:
        digest = hashlib.sha256(content).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as fh:
            fh.write(content)
        return {"digest": f"sha256:{digest}", "size": len(content)}

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = {
        "architecture": arch,
        "os": "linux",
        "config": {"Entrypoint": ["curl"], "Cmd": ["--version"], "Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{plain.hexdigest()}"]},
    }
    layer = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": f"sha256:{layer_digest}",
        "size": os.path.getsize(os.path.join(blobs, layer_digest)),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(json.dumps(config).encode())},
        "layers": [layer],
    }
    described = {"mediaType": manifest["mediaType"], **blob(json.dumps(manifest).encode())}
    described["annotations"] = {"org.opencontainers.image.ref.name": "src"}
    with open(os.path.join(layout, "index.json"), "w") as fh:
        json.dump({"schemaVersion": 2, "manifests": [described]}, fh)
    with open(os.path.join(layout, "oci-layout"), "w") as fh:
        json.dump({"imageLayoutVersion": "1.0.0"}, fh)
    return layout, size


#: Runs the command as its own child and reports that child's peak memory on the
#: descriptor named first: a child forked from this (large) benchmark process would
#: carry this process's resident size into its own ru_maxrss, as Linux keeps the
#: high-water mark across fork and exec; forked from this small interpreter it does not.
_MEASURE = """
import os, sys
report = int(sys.argv[1])
os.set_inheritable(report, False)
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        os.write(2, f"{exc}\\n".encode())
    os._exit(127)  # a command that cannot be run: the child never goes on below
_, status, usage = os.wait4(pid, 0)
os.write(report, str(usage.ru_maxrss).encode())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _timed(cmd: list[str], cwd: str) -> tuple[float, int]:
    """Seconds and the command's own peak memory (KB, from wait4 in a small parent);
    a failing run stops the benchmark."""
    read, write = os.pipe()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _MEASURE, str(write), *cmd],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=(write,),
    )
    os.close(write)
    err = proc.communicate()[1]
    took = time.perf_counter() - start
    with os.fdopen(read, "rb") as peak:
        reported = peak.read()
    if proc.returncode != 0 or not reported:
        sys.exit(f"{' '.join(cmd)}: exit {proc.returncode}: {err.decode(errors='replace').strip()[-400:]}")
    return took, int(reported)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    minify = os.path.join(os.path.dirname(sys.executable), "minify")
    umoci = shutil.which("umoci")
    if umoci is None:
        sys.exit("umoci is not installed (apt-get install umoci)")
    with tempfile.TemporaryDirectory(prefix="minify-bench-", dir=os.getcwd()) as work:
        layout, size = _layout(work)
        print(f"source: one layer, {size / 1e6:.0f} MB unpacked")
        times: dict[str, list[float]] = {"minify": [], "umoci": []}
        peaks: dict[str, int] = {}
        for _ in range(args.rounds):
            jobs = {
                "minify": [minify, "image", "--from", f"oci:{layout}:src", "-o", "oci:out", "--force"],
                "umoci": [umoci, "unpack", "--rootless", "--image", f"{layout}:src", "bundle"],
            }
            for name in random.sample(list(jobs), len(jobs)):
                shutil.rmtree(os.path.join(work, "bundle"), ignore_errors=True)
                took, peak = _timed(jobs[name], work)
                times[name].append(took)
                peaks[name] = max(peaks.get(name, 0), peak)
        ratios = [m / u for m, u in zip(times["minify"], times["umoci"], strict=True)]
        for name, values in times.items():
            print(f"{name:7s} median {statistics.median(values):6.2f} s (spread {min(values):.2f}-{max(values):.2f})")
        print(f"minify --from / umoci unpack: {statistics.median(ratios):.2f}x (median of {args.rounds} rounds)")
        print("peak memory: " + ", ".join(f"{name} {kb / 1024:.0f} MB" for name, kb in peaks.items()))


if __name__ == "__main__":
    main()
