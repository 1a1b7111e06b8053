"""One immutable description of an image, planned from an analysis before anything
touches disk: every path in it, what it is, where its bytes come from, and why.

Writers (``minify.rootfs`` for the folder and lock file, ``minify.dockerfile`` for the
Dockerfile) only ever read an ``ImagePlan``; a plan is complete and checked first, so a
failure never leaves half an image behind.
"""

from __future__ import annotations

import os
import posixpath
import stat
from dataclasses import dataclass, field, replace
from enum import StrEnum

from minify.closure import Analysis, LoadedObject, ProgramClosure
from minify.errors import EXIT_INCOMPLETE, MinifyError
from minify.loader.model import Role
from minify.root import Link, Root


class EntryType(StrEnum):
    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@dataclass(frozen=True)
class Entry:
    """One path of the image."""

    path: str  # absolute inside the image
    type: EntryType
    mode: int  # permission bits
    source: str | None = None  # host path of a file's bytes
    target: str | None = None  # symlink text, or the image path a hard link shares
    size: int = 0
    reasons: tuple[str, ...] = ()
    content: bytes | None = None  # a generated file's bytes (passwd, nsswitch.conf)


@dataclass(frozen=True)
class Extra:
    """Something added to the image beside the closures: ``--add`` and presets."""

    path: str  # in the root; a file or a folder (copied whole)
    dest: str | None = None  # where it goes in the image (default: the same path)
    reason: str = "added"
    private: bool = False  # belongs to the inputs: moves with them (--map, relative inputs)


@dataclass(frozen=True)
class Generated:
    """A file minify writes itself (the distroless passwd, a files+dns nsswitch.conf)."""

    path: str
    content: bytes
    mode: int = 0o644
    reason: str = "generated"


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ImagePlan:
    entries: tuple[Entry, ...]  # sorted by path; parents before children
    config: ImageConfig
    programs: tuple[str, ...]  # image paths of the ELF inputs, for verification
    scripts: tuple[str, ...] = ()  # image paths of script inputs
    warnings: tuple[str, ...] = ()
    input_bytes: int = 0  # what the inputs themselves weigh

    @property
    def files(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.type is EntryType.FILE)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.files)

    def entry(self, path: str) -> Entry | None:
        for e in self.entries:
            if e.path == path:
                return e
        return None


class PlanError(MinifyError):
    """The inputs cannot be laid out as one image (conflicts, bad inputs)."""


class IncompleteClosure(PlanError):
    """A library is missing or a version is not met: the image would not run."""

    exit_code = EXIT_INCOMPLETE


@dataclass(frozen=True)
class Mapping:
    """``--map SRC=DEST``: host paths under SRC go under DEST in the image."""

    source: str
    dest: str

    @classmethod
    def parse(cls, text: str) -> Mapping:
        src, sep, dest = text.partition("=")
        if not sep or not src.startswith("/") or not dest.startswith("/"):
            raise PlanError(f"--map {text!r}: expected SRC=DEST with two absolute paths")
        return cls(posixpath.normpath(src), posixpath.normpath(dest))

    def apply(self, path: str) -> str | None:
        if path == self.source:
            return self.dest
        prefix = self.source.rstrip("/") + "/"
        if path.startswith(prefix):
            return posixpath.join(self.dest, path[len(prefix) :])
        return None


@dataclass
class _Planner:
    """Collects entries, refusing two different things at one path."""

    root: Root
    maps: tuple[Mapping, ...]
    entries: dict[str, Entry] = field(default_factory=dict)
    by_inode: dict[tuple[int, int], str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def place(self, path: str, private: bool) -> str:
        """Where a host path (inside the root) goes in the image.

        Only the program's own files (inputs, and libraries it finds through its own
        RPATH/RUNPATH or by path) move with a mapping; system libraries stay where the
        loader expects them.
        """
        if private:
            best: tuple[int, str] | None = None
            for m in self.maps:
                moved = m.apply(path)
                if moved is not None and (best is None or len(m.source) > best[0]):
                    best = (len(m.source), moved)
            if best is not None:
                return best[1]
        return path

    def add(self, entry: Entry) -> None:
        if entry.path == "/":
            return
        old = self.entries.get(entry.path)
        if old is None:
            self._parents(entry.path)
            self.entries[entry.path] = entry
            return
        if old.type is EntryType.DIR and entry.type is EntryType.DIR and entry.mode != 0o755:
            old = replace(old, mode=entry.mode)  # an explicit mode (/tmp 1777) wins over a parent's default
        same = (old.type, old.target, old.source, old.content) == (
            entry.type,
            entry.target,
            entry.source,
            entry.content,
        )
        if not same and not (old.type is EntryType.DIR and entry.type is EntryType.DIR):
            raise PlanError(
                f"{entry.path}: needed both as {old.type.value} ({old.target or old.source}) "
                f"and as {entry.type.value} ({entry.target or entry.source})"
            )
        reasons = tuple(dict.fromkeys(old.reasons + entry.reasons))
        self.entries[entry.path] = replace(old, reasons=reasons)

    def _parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent not in ("/", ""):
            old = self.entries.get(parent)
            if old is None:
                self.entries[parent] = Entry(parent, EntryType.DIR, 0o755)
            elif old.type is not EntryType.DIR:
                # a folder symlink such as /lib -> usr/lib: the path runs through it
                # only if the plan resolves it, which add_object guarantees.
                raise PlanError(f"{path}: its folder {parent} is a {old.type.value} in the image")
            parent = posixpath.dirname(parent)

    def add_links(self, links: tuple[Link, ...], private: bool, reason: str) -> None:
        for link in links:
            self.add(
                Entry(self.place(link.path, private), EntryType.SYMLINK, 0o777, target=link.target, reasons=(reason,))
            )

    def add_file(self, realpath: str, private: bool, reason: str, image_path: str | None = None) -> str:
        host = self.root.host_path(realpath)
        st = os.stat(host)
        image_path = image_path or self.place(realpath, private)
        mode = stat.S_IMODE(st.st_mode)
        if mode & (stat.S_ISUID | stat.S_ISGID):
            self.warnings.append(f"{image_path}: setuid/setgid bits dropped")
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        key = (st.st_dev, st.st_ino)
        first = self.by_inode.get(key)
        if first is not None and first != image_path:
            self.add(Entry(image_path, EntryType.HARDLINK, mode, target=first, size=0, reasons=(reason,)))
        else:
            self.by_inode[key] = image_path
            self.add(Entry(image_path, EntryType.FILE, mode, source=host, size=st.st_size, reasons=(reason,)))
        return image_path

    def add_extra(self, extra: Extra) -> None:
        """A file or folder of the root, with the symlinks on its way (unless moved)."""
        resolved = self.root.resolve(extra.path)
        if not resolved.exists:
            raise PlanError(f"{extra.path}: no such file or folder in the root")
        if extra.dest is None:
            self.add_links(resolved.links, extra.private, extra.reason)
        top = extra.dest or self.place(resolved.path, extra.private)
        if not resolved.is_dir:
            self.add_file(resolved.path, extra.private, extra.reason, image_path=top)
            return
        self.add(Entry(top, EntryType.DIR, 0o755, reasons=(extra.reason,)))
        base = self.root.host_path(resolved.path)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            inner_dir = resolved.path.rstrip("/") + dirpath[len(base) :]
            image_dir = top.rstrip("/") + dirpath[len(base) :]
            for name in sorted(dirnames + filenames):
                host = os.path.join(dirpath, name)
                st = os.lstat(host)
                image = posixpath.join(image_dir, name)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(host)
                    self.add(Entry(image, EntryType.SYMLINK, 0o777, target=target, reasons=(extra.reason,)))
                elif stat.S_ISDIR(st.st_mode):
                    self.add(Entry(image, EntryType.DIR, 0o755, reasons=(extra.reason,)))
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(posixpath.join(inner_dir, name), False, extra.reason, image_path=image)

    def add_generated(self, item: Generated) -> None:
        self.add(
            Entry(
                item.path,
                EntryType.FILE,
                item.mode,
                size=len(item.content),
                reasons=(item.reason,),
                content=item.content,
            )
        )


def _private(program: ProgramClosure, obj: LoadedObject) -> bool:
    """A program's own file: the input itself, or found through its own search paths."""
    if obj.role is Role.INPUT:
        return True
    for dep in program.dependencies:
        if dep.target == obj.realpath and dep.how is not None:
            return dep.how.value in ("rpath", "runpath", "direct path", "LD_LIBRARY_PATH")
    return False


def plan_image(
    analysis: Analysis,
    *,
    maps: tuple[Mapping, ...] = (),
    extra: tuple[ProgramClosure, ...] = (),
    config: ImageConfig = ImageConfig(),
    scripts: tuple[tuple[str, str], ...] = (),
    extras: tuple[Extra, ...] = (),
    generated: tuple[Generated, ...] = (),
    dirs: tuple[tuple[str, int], ...] = (),
) -> ImagePlan:
    """Lay out every program's closure as image entries.

    Each object goes where the loader opened it, with the symlinks on the way
    recreated (``/lib -> usr/lib``, soname link -> real file) and its bytes at its
    realpath; a hard-linked inode becomes one file plus hard links.
    ``extra`` closures (hwcaps variants) are added the same way. ``scripts`` are
    (host path, interpreter) pairs copied as plain files.
    """
    errors = [p.error for p in analysis.programs if p.error]
    if errors:
        raise PlanError("; ".join(errors))
    problems: list[str] = []
    for program in analysis.programs:
        problems.extend(f"{name}: not found (needed by {program.path})" for name in program.missing)
        problems.extend(program.version_errors)
    if problems:
        raise IncompleteClosure("; ".join(problems))
    root = Root(analysis.root)
    planner = _Planner(root, maps)
    programs: list[str] = []
    script_paths: list[str] = []
    for program in (*analysis.programs, *extra):
        for obj in program.objects:
            private = _private(program, obj)
            reason = _reason(program, obj)
            planner.add_links(obj.links, private, reason)
            planner.add_file(obj.realpath, private, reason)
        if program in analysis.programs:
            programs.append(planner.place(program.path, True))
    for host, interpreter in scripts:
        inner = root.contains_host_path(host) or host
        resolved = root.resolve(inner)
        planner.add_links(resolved.links, True, "input (script)")
        planner.add_file(resolved.path, True, f"input (script for {interpreter})")
        script_paths.append(planner.place(inner, True))
    for extra_item in extras:
        planner.add_extra(extra_item)
    for item in generated:
        planner.add_generated(item)
    for path, mode in dirs:
        planner.add(Entry(path, EntryType.DIR, mode, reasons=("preset",)))
    entries = tuple(sorted(planner.entries.values(), key=lambda e: e.path))
    input_bytes = sum(p.objects[0].size for p in analysis.programs if p.objects)
    input_bytes += sum(os.path.getsize(host) for host, _ in scripts)
    return ImagePlan(
        entries, config, tuple(programs), tuple(script_paths), tuple(planner.warnings), input_bytes=input_bytes
    )


def _reason(program: ProgramClosure, obj: LoadedObject) -> str:
    if obj.role is Role.INPUT:
        return "input"
    if obj.role is Role.INTERPRETER:
        return f"interpreter of {program.path}"
    for dep in program.dependencies:
        if dep.target == obj.realpath and dep.requester != obj.realpath:
            requester = next((o.path for o in program.objects if o.realpath == dep.requester), dep.requester)
            return f"{dep.kind} by {requester}"
    return obj.role.value
