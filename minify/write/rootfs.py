"""The rootfs folder and the lock file, written from a plan and nothing else.

Every byte copied is read from a descriptor opened inside the root (the very inode
the analysis saw), every path is checked to land inside the folder, and the lock
file's sha256 is that of exactly the bytes written. Times are fixed, so the same
inputs give the same tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections.abc import Callable, Mapping
from typing import Any

from minify.elf.cache import key_of
from minify.errors import BadInput, PlanError
from minify.plan.image import Digests, Entry, EntryType, ImagePlan, owned_trees
from minify.plan.layers import base_entries
from minify.root import Root
from minify.version import __version__
from minify.write.output import LOCK_SCHEMA

#: Every file gets this mtime, so the same inputs give the same image layer.
FIXED_MTIME = 0


COPY_CHUNK = 1 << 20


def _entry_data(entry: Entry, sha: str | None, layer: str) -> dict[str, Any]:
    owner = {"owner": f"{entry.owner[0]}:{entry.owner[1]}"} if entry.owned else {}
    package = {"package": entry.package} if entry.package else {}
    return {
        **owner,
        **package,
        "path": entry.path,
        "type": entry.type.value,
        "mode": f"{entry.mode:04o}",
        "size": entry.size,
        "sha256": sha,
        "target": entry.target,
        "why": list(entry.reasons),
        "layer": layer,
    }


def lock_data(
    plan: ImagePlan, dockerfile: str, hashes: dict[str, str], report: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The lock file: every entry, with the sha256 of the bytes written (``hashes``)
    and its layer (base or app, as ``minify image`` writes them by default), and for
    ``--from`` the report on the source image."""
    base = {e.path for e in base_entries(plan)}  # the layer each entry is in (minify.plan.layers)
    entries = [_entry_data(e, hashes.get(e.path), "base" if e.path in base else "app") for e in plan.entries]
    source = {"source": report} if report is not None else {}
    return {
        **source,
        "schema": LOCK_SCHEMA,
        "minify": __version__,
        "programs": list(plan.programs),
        "scripts": list(plan.scripts),
        "entrypoint": list(plan.config.entrypoint),
        "dockerfile_sha256": hashlib.sha256(dockerfile.encode()).hexdigest(),
        "entries": entries,
    }


def dump_lock(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_text(path: str, text: str) -> None:
    _write(text.encode("utf-8", "surrogateescape"), path, 0o644)


def _inside(base: str, path: str) -> str:
    """``base`` + image ``path``, refusing anything that would land outside ``base``."""
    norm = posixpath.normpath(path)
    if not norm.startswith("/") or ".." in norm.split("/"):
        raise PlanError(f"{path}: not a clean absolute path")
    dest = base + norm
    parent = os.path.realpath(os.path.dirname(dest))
    if parent != base and not parent.startswith(base + "/"):
        raise PlanError(f"{path}: would be written outside {base}")
    return dest


def materialise(
    plan: ImagePlan,
    directory: str,
    *,
    progress: Callable[[int, int], None] | None = None,
    digests: Mapping[str, Digests] | None = None,
) -> tuple[dict[str, str], list[str], dict[str, bytes]]:
    """Write the entries of ``plan`` under ``directory`` (which must not exist).

    Returns the sha256 of every file written (of the very bytes written), warnings
    (file capabilities that a plain copy drops), and those capabilities
    (``security.capability``) by image path, for a writer that can keep them. A file
    whose ``digests`` were read from the source as it still is (``Digests.stamp``) is
    copied by the kernel, and not read again."""
    os.mkdir(directory, 0o755)
    base = os.path.realpath(directory)
    root = Root(plan.root)
    hashes: dict[str, str] = {}
    warnings: list[str] = []
    capabilities: dict[str, bytes] = {}
    total = len(plan.entries)
    for done, entry in enumerate(plan.entries, 1):
        sha, capability = _materialise_entry(root, base, entry, (digests or {}).get(entry.path))
        if sha is not None:
            hashes[entry.path] = sha
        if capability:
            capabilities[entry.path] = capability
            warnings.append(f"{entry.path}: file capabilities (security.capability) dropped")
        if progress is not None:
            progress(done, total)
    if os.geteuid() == 0:  # only root may give files away; the Dockerfile does it anyway
        for entry in plan.entries:
            if entry.owned:
                os.lchown(base + entry.path, *entry.owner)
    for entry in reversed(plan.entries):  # children first, so folder times stick
        os.utime(base + entry.path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(base, (FIXED_MTIME, FIXED_MTIME))
    return hashes, warnings, capabilities


def _materialise_entry(root: Root, base: str, entry: Entry, known: Digests | None) -> tuple[str | None, bytes | None]:
    """Write one entry; the sha256 of a file's bytes, and the file capability a copy
    of it dropped."""
    dest = _inside(base, entry.path)
    if entry.type is EntryType.DIR:
        os.mkdir(dest, 0o700)
        os.chmod(dest, entry.mode)
    elif entry.type is EntryType.SYMLINK:
        assert entry.target is not None
        os.symlink(entry.target, dest)
    elif entry.type is EntryType.HARDLINK:
        assert entry.target is not None
        os.link(_inside(base, entry.target), dest, follow_symlinks=False)
    elif entry.content is not None:
        _write(entry.content, dest, entry.mode)
        return hashlib.sha256(entry.content).hexdigest(), None
    else:
        assert entry.source is not None
        return _copy(root, entry, dest, known)
    return None, None


def write_base(plan: ImagePlan, directory: str, rootfs: str) -> None:
    """``base/``: the base layer's entries (``minify.plan.layers``) for the Dockerfile's
    ``COPY base/ /``, so that ``podman build`` layers the image as ``minify image``
    does. Files are hard links to the written rootfs (same bytes, no second copy)."""
    entries = base_entries(plan)
    if not entries:
        return
    os.mkdir(directory, 0o755)
    base, rootfs = os.path.realpath(directory), os.path.realpath(rootfs)
    for entry in entries:  # sorted by path: a folder before what it holds
        dest = _inside(base, entry.path)
        if entry.type is EntryType.DIR:
            os.mkdir(dest, 0o700)
            os.chmod(dest, entry.mode)
        elif entry.type is EntryType.SYMLINK:
            os.symlink(entry.target or "", dest)
        else:
            os.link(_inside(rootfs, entry.path), dest, follow_symlinks=False)
    for entry in reversed(entries):
        os.utime(base + entry.path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(base, (FIXED_MTIME, FIXED_MTIME))


def write_owned(plan: ImagePlan, directory: str, rootfs: str) -> None:
    """``owned/``: the owned trees (``dockerfile.owned_trees``) for the Dockerfile's
    ``COPY --chown`` (a COPY makes everything 0:0, and ``--chown`` changes a folder only
    when it creates it, so ``.dockerignore`` keeps them out of ``COPY rootfs/ /``).
    Files are hard links to the written rootfs (same bytes, no second copy)."""
    owned = owned_trees(plan)
    if not owned:
        return
    os.mkdir(directory, 0o755)
    base, rootfs = os.path.realpath(directory), os.path.realpath(rootfs)
    for entry in owned:
        dest = _inside(base, entry.path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if entry.type is EntryType.DIR:
            os.mkdir(dest, entry.mode)
            os.chmod(dest, entry.mode)
        elif entry.type is EntryType.HARDLINK and entry.target is not None and os.path.lexists(base + entry.target):
            os.link(base + entry.target, dest, follow_symlinks=False)
        else:
            os.link(_inside(rootfs, entry.path), dest, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(base, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(base, (FIXED_MTIME, FIXED_MTIME))


def _write(content: bytes, dest: str, mode: int) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _open_source(root: Root, entry: Entry) -> int:
    """The source file of an entry, opened inside the root: the very inode the
    analysis saw, a regular file, no symlink followed."""
    assert entry.source is not None
    try:
        fd, _ = root.open_file(entry.source, entry.ident)
    except BadInput as exc:
        raise PlanError(str(exc)) from None
    return fd


def _copy(root: Root, entry: Entry, dest: str, known: Digests | None) -> tuple[str, bytes | None]:
    """Copy one file from the root; the sha256 of what was written, and the source's
    file capabilities (which a plain copy drops). When the source is as it was when its
    digests were read (inode, size, mtime and ctime, before and after the copy), the
    kernel copies it and the known sha256 stands; otherwise every byte is hashed as it
    is written."""
    src_fd = _open_source(root, entry)
    try:
        try:
            capability = os.getxattr(src_fd, "security.capability") or None
        except OSError:
            capability = None
        dst_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            sha = _copied_as_known(src_fd, dst_fd, known)
            if sha is None:
                os.ftruncate(dst_fd, 0)
                sha = _copy_hashing(src_fd, dst_fd)
            os.fchmod(dst_fd, entry.mode)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return sha, capability


def _copied_as_known(src_fd: int, dst_fd: int, known: Digests | None) -> str | None:
    """The known sha256, once the kernel has copied a source that did not change since
    it was hashed; None when that cannot be said (then nothing is trusted)."""
    stamp = key_of(os.fstat(src_fd))
    if known is None or known.stamp != stamp:
        return None
    size, offset = stamp[2], 0
    try:
        while offset < size:
            done = os.copy_file_range(src_fd, dst_fd, size - offset, offset, offset)
            if done <= 0:
                return None
            offset += done
    except OSError:  # EXDEV on older kernels, a filesystem without it: copy by hand
        return None
    return known.sha256 if key_of(os.fstat(src_fd)) == stamp and os.fstat(dst_fd).st_size == size else None


def _copy_hashing(src_fd: int, dst_fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(src_fd, COPY_CHUNK, offset):
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.pwrite(dst_fd, view, offset + len(chunk) - len(view)) :]
        offset += len(chunk)
    return digest.hexdigest()
