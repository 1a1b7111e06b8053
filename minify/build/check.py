"""``--check``: write nothing, run nothing; say how OUT differs from what a build
would write now (Dockerfile, lock file, SBOM and every path of the rootfs).
"""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from minify.build.options import RootfsOptions, RootfsResult
from minify.build.pipeline import prepare, result_of, with_source
from minify.errors import OutOfDate
from minify.plan.trace import TRACE_NAME
from minify.root import hash_fd, read_host_file
from minify.write import output
from minify.write.output import LOCK_NAME, SBOM_NAME
from minify.write.rootfs import dump_lock, lock_data

if TYPE_CHECKING:
    from minify.sources.fromimage import Origin


def _sha256_fd(fd: int) -> str:
    return hash_fd(fd, "sha256")[0]


def check(options: RootfsOptions) -> RootfsResult:
    """``--check``: write nothing, run nothing; list how OUT differs from what would
    be produced (a saved trace is reused, never run again)."""
    with with_source(options) as (inner, origin):
        return _check(inner, origin)


def _check(options: RootfsOptions, origin: Origin | None) -> RootfsResult:
    prepared = prepare(replace(options, trace=None), origin=origin)
    plan, dockerfile, out = prepared.plan, prepared.dockerfile, prepared.out.path
    differences: list[str] = []
    if options.trace is not None:
        if prepared.trace is None:
            differences.append(f"{TRACE_NAME} is missing (--check never runs --trace)")
        elif prepared.trace.command != tuple(shlex.split(options.trace)):
            differences.append(f"{TRACE_NAME} records another command than --trace")
    hashes = {path: d.sha256 for path, d in prepared.digests.items()}
    lock = lock_data(plan, dockerfile, hashes, prepared.report)
    sbom = prepared.sbom.decode("utf-8", "surrogateescape")
    for name, want in (("Dockerfile", dockerfile), (LOCK_NAME, dump_lock(lock)), (SBOM_NAME, sbom)):
        have = read_host_file(os.path.join(out, name))
        if have is None:
            differences.append(f"{name} is missing")
        elif have != want.encode("utf-8", "surrogateescape"):
            differences.append(f"{name} differs")
    differences.extend(_tree_differences(os.path.join(out, "rootfs"), lock["entries"]))
    result = result_of(plan, out, tuple(differences), prepared.report)
    if differences:
        raise OutOfDate(tuple(differences))
    return result


def _tree_differences(rootfs: str, wanted: list[dict[str, Any]]) -> list[str]:
    want = {e["path"]: e for e in wanted}
    have: dict[str, dict[str, Any]] = {}
    if os.path.isdir(rootfs) and not os.path.islink(rootfs):
        for path, kind in output.listing(rootfs):
            have[path] = _describe(rootfs + path, kind)
    out = []
    for path in sorted(want.keys() | have.keys()):
        w, h = want.get(path), have.get(path)
        if h is None:
            out.append(f"missing: {path}")
        elif w is None:
            out.append(f"unexpected: {path}")
        else:
            kind = "file" if w["type"] == "hardlink" else w["type"]
            if kind != h["type"]:
                out.append(f"changed: {path} is a {h['type']}, should be a {w['type']}")
            elif kind == "symlink" and w["target"] != h["target"]:
                out.append(f"changed: {path} -> {h['target']}, should point to {w['target']}")
            elif kind == "file" and w["type"] == "file" and (w["sha256"] != h["sha256"] or w["mode"] != h["mode"]):
                out.append(f"changed: {path} (contents or mode)")
    return out


def _describe(host: str, kind: str) -> dict[str, Any]:
    """What is at a path of OUT: special files (a FIFO) are named, never opened."""
    if kind == "symlink":
        return {"type": "symlink", "target": os.readlink(host)}
    if kind != "file":
        return {"type": kind}
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {"type": "special"}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {"type": "special"}
        return {"type": "file", "sha256": _sha256_fd(fd), "mode": f"{stat.S_IMODE(st.st_mode):04o}"}
    finally:
        os.close(fd)
