"""``--from SOURCE``: an existing image becomes the root the rest of minify reads.

The image is read (``minify.sources.reader``) and flattened (``minify.sources.unpack``) into a private
temporary folder beside OUT (``.minify-from-OUT-*``, removed afterwards), which is
then analysed with the ordinary ``--root`` machinery, so no path of the host is read.
The program to keep is the one the image runs: its ``Entrypoint`` + ``Cmd``, resolved
the way a runtime does (through the ``PATH`` of its ``Env``, relative names from its
``WorkingDir``), and a ``#!`` script brings its interpreter (``/usr/bin/env NAME`` is
followed to NAME). The source's config is kept: ``Origin.config`` is what the new
image says.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import posixpath
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from minify.errors import ImageSourceError, OutputError
from minify.plan.image import Generated, ImageConfig, ImagePlan
from minify.plan.scripts import DEFAULT_PATH, interpreters, lookup
from minify.root import Root, remove_tree
from minify.shapes import GROUP, GROUP_SHAPES, PASSWD, PASSWD_SHAPES, colon_records
from minify.sources.reader import ImageSource, Platform, SourceImage, parse_platform, parse_source, read_image
from minify.sources.unpack import Unpacked, flatten
from minify.text import is_number

#: Folders listed as dropped in the report.
DROPPED_SHOWN = 12


@dataclass(frozen=True)
class Origin:
    """The source image: what it runs, what its config says, what it weighs."""

    source: ImageSource
    digest: str
    platform: Platform
    config: ImageConfig  # the source's, as the new image keeps it
    programs: tuple[str, ...]  # the entrypoint and its interpreters, paths in the image
    entry: str | None  # the entrypoint's program, resolved
    home: tuple[str, int, tuple[int, int]] | None  # the user's home folder (path, mode, owner)
    working_dir: tuple[str, int, tuple[int, int]] | None
    users: tuple[Generated, ...]  # /etc/passwd and /etc/group with the image's user
    files: int = 0  # regular files of the flattened source
    bytes: int = 0
    layers: int = 0
    folders: dict[str, tuple[int, int]] = field(default_factory=dict)  # folder -> (files, bytes), for the report
    notes: tuple[str, ...] = ()
    owners: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # Unpacked.owners
    user_ids: tuple[int, int] | None = None  # the image's User as uid and gid (None: root)


@contextlib.contextmanager
def opened(
    where: str, platform_name: str | None, output: str, max_unpacked: int, named: bool
) -> Iterator[tuple[str, Origin]]:
    """``--from SOURCE``: the image flattened into a private folder beside OUT, as the
    root the rest of the pipeline reads, and its Origin; the folder is removed
    afterwards. ``named``: the user named programs to keep (the image may then have
    no entrypoint)."""
    source = parse_source(where)
    platform = parse_platform(platform_name)
    work, held = _workspace(output)
    try:
        image, blobs = read_image(source, platform, work)
        try:
            unpacked = flatten(image, blobs, os.path.join(work, "root"), limit=max_unpacked)
        finally:
            blobs.close()
        yield unpacked.root, _origin(image, unpacked, named)
    finally:
        remove_tree(work, quiet=True)
        os.close(held)


def _workspace(output: str) -> tuple[str, int]:
    """A private folder beside OUT for the flattened image: on OUT's file system (an
    image is often bigger than a tmpfs /tmp), and nowhere else; and the descriptor
    that holds its lock.

    The folder is locked (``flock``) from before it has its name until the run ends,
    and the kernel drops the lock when the run dies, even by SIGKILL. So the folders
    of this OUT that are not locked are those of runs that are gone: they are removed
    first (with the whole image an interrupted run unpacked there)."""
    out = os.path.abspath(output or ".")
    parent = os.path.dirname(out)
    prefix = f".minify-from-{os.path.basename(out)}-"
    try:
        if not os.path.isdir(parent):
            os.makedirs(parent)
        _remove_orphans(parent, prefix)
        born = tempfile.mkdtemp(prefix=".minify-unpacking-", dir=parent)
        held = os.open(born, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(held, fcntl.LOCK_EX)
        work = os.path.join(parent, prefix + os.path.basename(born)[len(".minify-unpacking-") :])
        os.rename(born, work)  # named as this OUT's only once it is locked
    except OSError as exc:
        raise OutputError(f"{parent}: cannot write the unpacked image here ({exc.strerror})") from None
    return work, held


def _age(path: str) -> float:
    try:
        return time.time() - os.lstat(path).st_mtime
    except OSError:
        return 0.0


def _remove_orphans(parent: str, prefix: str) -> None:
    """Remove this OUT's private folders whose run is gone (their lock is free)."""
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        # a folder not yet named (killed between its birth and its lock) is any run's:
        # only one that has not changed for an hour is taken for an orphan
        unnamed = name.startswith(".minify-unpacking-") and _age(path) > 3600
        if not name.startswith(prefix) and not unnamed:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live run's
        try:
            remove_tree(path, quiet=True)
        finally:
            os.close(fd)


def _origin(image: SourceImage, unpacked: Unpacked, named: bool) -> Origin:
    view = Root(unpacked.root)
    run = image.run
    config = source_config(run, image.platform)
    search = environment(config)["PATH"]
    workdir = config.working_dir or "/"
    argv = (*config.entrypoint, *config.cmd)
    programs: list[str] = []
    entry = None
    if argv:
        entry = lookup(view, argv[0], search, workdir)
        if entry is None:
            raise ImageSourceError(
                f"{image.source}: the entrypoint {argv[0]!r} is not an executable file in the image (PATH={search})"
            )
        chain, problem = interpreters(view, entry, search)
        if problem is not None:
            raise ImageSourceError(problem)
        programs = [entry, *chain]
    elif not named:
        raise ImageSourceError(
            f"{image.source}: the image has no Entrypoint and no Cmd; name the programs to keep as PATH arguments"
        )
    files, size, folders = _weigh(view)
    home, users = _user(view, config.user, unpacked.owners)
    return Origin(
        image.source,
        image.digest,
        image.platform,
        config,
        tuple(programs),
        entry,
        home,
        _folder(workdir, unpacked.owners) if config.working_dir else None,
        users,
        files,
        size,
        unpacked.layers,
        folders,
        tuple(unpacked.notes),
        unpacked.owners,
        user_ids(view, config.user),
    )


def source_config(run: dict[str, Any], platform: Platform) -> ImageConfig:
    """The fields of the source's config the new image keeps (their shape is checked
    as the config is read: ``minify.shapes.RUN``)."""

    def strings(key: str) -> tuple[str, ...]:
        return tuple(run.get(key) or ())

    def text(key: str) -> str | None:
        return run.get(key) or None

    labels = run.get("Labels") or {}
    return ImageConfig(
        entrypoint=strings("Entrypoint"),
        cmd=strings("Cmd"),
        user=text("User"),
        env=tuple(_split_env(e) for e in strings("Env")),
        labels=tuple(sorted(labels.items())),
        working_dir=text("WorkingDir"),
        exposed_ports=tuple(sorted(run.get("ExposedPorts") or ())),
        volumes=tuple(sorted(run.get("Volumes") or ())),
        stop_signal=text("StopSignal"),
        platform=tuple(
            (k, v)
            for k, v in (("os", platform.os), ("architecture", platform.architecture), ("variant", platform.variant))
            if v
        ),
    )


def environment(config: ImageConfig) -> dict[str, str]:
    """What the image's process gets: its Env, with the runtimes' PATH where it sets none."""
    return {"PATH": DEFAULT_PATH, **dict(config.env)}


def _split_env(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")  # NAME=VALUE: its shape is checked
    return key, value


# -- the program the image runs -------------------------------------------------------


# -- the user, the working folder ------------------------------------------------------


def _folder(path: str, owners: dict[str, tuple[int, int, int]]) -> tuple[str, int, tuple[int, int]]:
    uid, gid, mode = owners.get(posixpath.normpath(path), (0, 0, 0o755))
    return posixpath.normpath(path), mode, (uid, gid)


def _user(
    view: Root, user: str | None, owners: dict[str, tuple[int, int, int]]
) -> tuple[tuple[str, int, tuple[int, int]] | None, tuple[Generated, ...]]:
    """The home folder and the passwd and group lines of the image's ``User``: the
    runtime looks a name up in /etc/passwd, and so may the program."""
    if user is None:
        return None, ()
    name, _, group = user.partition(":")  # USER[:GROUP]: its shape is checked
    passwd = _accounts(view, "/etc/passwd")
    groups = _accounts(view, "/etc/group")
    entry = next((f for f in passwd if name in (f[0], f[2])), None)
    if entry is None:
        if not is_number(name):
            raise ImageSourceError(f"the image's User {name!r} is not in its /etc/passwd")
        return None, ()
    gid = entry[3]
    root = [f for f in passwd if f[2] == "0"][:1]
    kept_users = [*root, entry] if entry not in root else root
    kept_groups = [f for f in groups if f[2] in ("0", gid) or (group and group in (f[0], f[2]))]
    why = f"the image's User {user}"
    files = (
        Generated("/etc/passwd", _join(kept_users), reason=why),
        Generated("/etc/group", _join(kept_groups), reason=why),
    )
    home = entry[5] or None
    if home is None or home == "/" or not view.resolve(home).is_dir:
        return None, files
    path, mode, _ = _folder(home, owners)
    return (path, mode, (int(entry[2]), int(gid))), files


def user_ids(view: Root, user: str | None, what: str = "the image's User") -> tuple[int, int] | None:
    """``USER[:GROUP]`` as the runtime resolves it in the image: a name or uid from its
    /etc/passwd (the group from there too), a uid it lacks as that uid and group 0, a
    group by name or gid. None for root, who needs nothing changed."""
    if user is None or user in ("root", "0", "0:0", "root:root"):
        return None
    name, _, group = user.partition(":")
    entry = next((f for f in _accounts(view, "/etc/passwd") if name in (f[0], f[2])), None)
    if entry is not None:
        uid, gid = int(entry[2]), int(entry[3])
    elif is_number(name):
        uid, gid = int(name), 0
    else:
        raise ImageSourceError(f"{what} {name!r} is not in the image's /etc/passwd")
    if group:
        found = next((f for f in _accounts(view, "/etc/group") if group in (f[0], f[2])), None)
        if found is None and not is_number(group):
            raise ImageSourceError(f"{what}'s group {group!r} is not in the image's /etc/group")
        gid = int(found[2]) if found is not None else int(group)
    if max(uid, gid) >= 1 << 32:
        raise ImageSourceError(f"{what} {user!r}: an id beyond 32 bits")
    return (uid, gid) if (uid, gid) != (0, 0) else None


def _accounts(view: Root, path: str) -> list[list[str]]:
    """The image's /etc/passwd or /etc/group, each line checked for its shape."""
    names, shapes = (PASSWD, PASSWD_SHAPES) if path == "/etc/passwd" else (GROUP, GROUP_SHAPES)
    return colon_records(f"the image's {path}", view.read_bytes(path, limit=4 << 20) or b"", names, shapes)


def _join(lines: list[list[str]]) -> bytes:
    return "".join(":".join(f) + "\n" for f in lines).encode("utf-8", "surrogateescape")


# -- the report -----------------------------------------------------------------------------


def _weigh(view: Root) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """Regular files of the source (hard links once) and their bytes, in all and per
    folder (three levels deep at most)."""
    files = size = 0
    folders: dict[str, list[int]] = {}
    seen: set[tuple[int, int]] = set()
    for item in view.walk("/"):
        if not stat.S_ISREG(item.mode) or item.ident in seen:
            continue  # a hard link's bytes are stored once
        seen.add(item.ident)
        files += 1
        size += item.size
        folder = _top(item.path)
        counts = folders.setdefault(folder, [0, 0])
        counts[0] += 1
        counts[1] += item.size
    return files, size, {k: (v[0], v[1]) for k, v in folders.items()}


def _top(path: str) -> str:
    parts = posixpath.dirname(path).strip("/").split("/")
    return "/" + "/".join(p for p in parts[:3] if p)


def report(origin: Origin, plan: ImagePlan) -> dict[str, Any]:
    """What the source held, what the new image keeps, and the biggest folders dropped."""
    kept: dict[str, list[int]] = {}
    for entry in plan.files:
        if entry.source is not None:
            counts = kept.setdefault(_top(entry.source), [0, 0])
            counts[0] += 1
            counts[1] += entry.size
    left: list[tuple[int, str, int]] = []
    for folder, (files, size) in origin.folders.items():
        have = kept.get(folder, [0, 0])
        if size - have[1] > 0:
            left.append((-(size - have[1]), folder, files - have[0]))
    dropped = [{"folder": f, "files": n, "bytes": -b} for b, f, n in sorted(left)]
    reasons: dict[str, int] = {}
    for entry in plan.files:
        kind = "written by minify" if entry.source is None else _reason_kind(entry.reasons[0] if entry.reasons else "")
        reasons[kind] = reasons.get(kind, 0) + 1
    return {
        "source": str(origin.source),
        "digest": origin.digest,
        "platform": str(origin.platform),
        "layers": origin.layers,
        "files": origin.files,
        "bytes": origin.bytes,
        "kept": {"files": len(plan.files), "bytes": plan.total_size, "why": dict(sorted(reasons.items()))},
        "dropped": dropped[:DROPPED_SHOWN],
    }


def _reason_kind(reason: str) -> str:
    for prefix, kind in (
        ("input", "program"),
        ("interpreter", "loader"),
        ("--with", "preset"),
        ("--add", "--add"),
        ("traced", "trace"),
        ("the image's User", "users"),
    ):
        if reason.startswith(prefix):
            return kind
    if " by " in reason:
        return "needed by a program"
    return "other"
