"""The planner: closures, extras and generated files placed as the entries of an
``ImagePlan``, each with why it is there; a closure the loader could not complete is
refused before anything is placed.
"""

from __future__ import annotations

import posixpath
import stat
from dataclasses import dataclass, field, replace

from minify.analysis.closure import Analysis, LoadedObject, ProgramClosure
from minify.errors import IncompleteClosure, PlanError
from minify.loader.model import Role
from minify.plan.image import (
    Entry,
    EntryType,
    Extra,
    Generated,
    ImageConfig,
    ImagePlan,
    Mapping,
    clean_path,
    follow_links,
)
from minify.root import Link, Root, kind_of, within


@dataclass
class _Planner:
    """Collects entries, refusing two different things at one path."""

    root: Root
    maps: tuple[Mapping, ...]
    entries: dict[str, Entry] = field(default_factory=dict)
    by_inode: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    skip: tuple[str, ...] = ()  # folders of the root never copied (OUT)
    _followed: set[str] = field(default_factory=set)  # added paths (realpaths) already taken in

    def place(self, path: str, private: bool, *, added: bool = False) -> str:
        """Where a path inside the root goes in the image.

        The program's own files (inputs, and libraries it finds through its own
        RPATH/RUNPATH or by path) move with a mapping, and added files move with an
        explicit one; system libraries stay where the loader expects them.
        """
        if private or added:
            best: tuple[int, str] | None = None
            for m in self.maps:
                if not private and not m.explicit:
                    continue
                moved = m.apply(path)
                if moved is not None and (best is None or len(m.source) > best[0]):
                    best = (len(m.source), moved)
            if best is not None:
                return best[1]
        return path

    def add(self, entry: Entry) -> None:
        """Add one entry. Its folders go through the symlinks the image already has
        (``/lib/x`` lands in ``usr/lib`` when ``/lib -> usr/lib``), as on a usrmerged
        system, where the loader opening ``/lib/x`` reaches the same file."""
        path = follow_links(self.entries, clean_path(entry.path, "image path"), final=False)
        if path == "/":
            return
        if path != entry.path:
            entry = replace(entry, path=path)
        old = self.entries.get(path)
        if old is None:
            self._parents(path)
            self.entries[path] = entry
            return
        if old.type is EntryType.DIR and entry.type is EntryType.DIR and (entry.mode != 0o755 or entry.owned):
            # an explicit mode (/tmp 1777) or owner (/home/nonroot) wins over a parent's default
            old = replace(old, mode=entry.mode, owner=entry.owner)
        same = (old.type, old.target, old.source, old.content) == (
            entry.type,
            entry.target,
            entry.source,
            entry.content,
        )
        if not same and not (old.type is EntryType.DIR and entry.type is EntryType.DIR):
            raise PlanError(
                f"{path}: two different things would be here: {_describe(old)} and {_describe(entry)}; "
                "put one of them elsewhere with --map SRC=DEST"
            )
        reasons = tuple(dict.fromkeys(old.reasons + entry.reasons))
        self.entries[path] = replace(old, reasons=reasons)

    def _parents(self, path: str) -> None:
        parent = posixpath.dirname(path)
        while parent != "/":
            old = self.entries.get(parent)
            if old is None:
                # a source image's own folder keeps its owner and mode on the way to a file
                uid, gid, mode = self.root.owners.get(parent, (0, 0, 0o755))
                self.entries[parent] = Entry(parent, EntryType.DIR, mode & 0o1777, owner=(uid, gid))
            elif old.type is not EntryType.DIR:
                raise PlanError(f"{path}: its folder {parent} is a {old.type.value} in the image ({_describe(old)})")
            parent = posixpath.dirname(parent)

    def add_links(self, links: tuple[Link, ...], private: bool, reason: str, *, added: bool = False) -> None:
        for link in links:
            self.add(
                Entry(
                    self.place(link.path, private, added=added),
                    EntryType.SYMLINK,
                    0o777,
                    target=link.target,
                    reasons=(reason,),
                )
            )

    def add_file(self, realpath: str, private: bool, reason: str, image_path: str | None = None) -> str:
        resolved = self.root.resolve(realpath)
        if not resolved.is_file or resolved.ident is None or resolved.mode is None:
            what = f"a {kind_of(resolved.mode)}" if resolved.mode is not None else "missing"
            raise PlanError(f"{realpath}: {what}, not a regular file (only regular files are copied)")
        image_path = clean_path(image_path or self.place(realpath, private), "image path")
        owner, mode = self.root.owner(resolved.path, resolved.mode)
        if mode & (stat.S_ISUID | stat.S_ISGID):
            self.warnings.append(f"{image_path}: setuid/setgid bits dropped")
            mode &= ~(stat.S_ISUID | stat.S_ISGID)
        self.add(
            Entry(
                image_path,
                EntryType.FILE,
                mode,
                source=resolved.path,
                size=resolved.size,
                reasons=(reason,),
                ident=resolved.ident,
                owner=owner,
            )
        )
        placed = follow_links(self.entries, image_path, final=False)
        group = self.by_inode.setdefault(resolved.ident, [])
        if placed not in group:
            group.append(placed)
        return placed

    def add_extra(self, extra: Extra) -> None:
        """A file or folder of the root, with the symlinks on its way (unless moved).

        In a folder, a symlink whose target lies outside the folder brings its target
        (``/etc/ssl/certs/*.pem -> /usr/share/ca-certificates/...``), so the image has
        no link the source does not resolve."""
        resolved = self.root.resolve(extra.path)
        if not resolved.exists:
            raise PlanError(f"{extra.path}: no such file or folder in the root")
        if extra.dest is None:
            # the links on the way, also when the target was taken in already (a traced
            # sites-enabled/default whose target sorts before it)
            self.add_links(resolved.links, extra.private, extra.reason, added=True)
        if resolved.path in self._followed:
            return
        self._followed.add(resolved.path)
        top = extra.dest or self.place(resolved.path, extra.private, added=True)
        if not resolved.is_dir:
            self.add_file(resolved.path, extra.private, extra.reason, image_path=top)
            return
        self.add(self._folder(top, resolved.path, resolved.mode, extra.reason))
        base = resolved.path.rstrip("/")
        for item in self.root.walk(resolved.path, skip=self.skip):
            image = top.rstrip("/") + item.path[len(base) :]
            if item.target is not None:
                self.add(Entry(image, EntryType.SYMLINK, 0o777, target=item.target, reasons=(extra.reason,)))
                self._follow(item.path, base, extra)
            elif stat.S_ISDIR(item.mode):
                self.add(self._folder(image, item.path, item.mode, extra.reason))
            elif stat.S_ISREG(item.mode):
                self.add_file(item.path, False, extra.reason, image_path=image)
            else:
                self.warnings.append(f"{item.path}: a {kind_of(item.mode)} in {extra.path}, not copied")

    def add_folder(self, path: str, mode: int, owner: tuple[int, int]) -> None:
        """An empty folder (a preset's /tmp, a folder a trace wrote into). One the root
        reaches through links (/var/run/postgresql -> /run/postgresql) comes with them."""
        found = self.root.resolve(path) if path.startswith("/") else None
        if found is not None and found.is_dir and found.path != path and path not in self.entries:
            self.add_links(found.links, False, "traced")
            path = found.path
        self.add(Entry(path, EntryType.DIR, mode, reasons=("preset",), owner=owner))

    def _folder(self, image_path: str, path: str, mode: int | None, reason: str) -> Entry:
        """An added folder with the owner and mode the source gives it (a data folder
        postgres owns, 0700), less setuid and setgid."""
        owner, bits = self.root.owner(path, mode if mode is not None else 0o755)
        return Entry(image_path, EntryType.DIR, bits & 0o1777, reasons=(reason,), owner=owner)

    def _follow(self, link: str, base: str, extra: Extra) -> None:
        """Bring the target of a link in an added folder when it lies outside it."""
        target = self.root.resolve(link)
        # every hop must land in the image: a link may leave the folder and come back
        # (zoneinfo/localtime -> /etc/localtime -> zoneinfo/Etc/UTC)
        if not target.exists or (within(target.path, base) and all(within(hop.path, base) for hop in target.links)):
            return  # dangling in the source too (verify says so), or already copied
        if target.is_dir and (target.path == "/" or base.startswith(target.path.rstrip("/") + "/")):
            self.warnings.append(f"{link}: links to {target.path}, a folder above it; not followed")
            return
        self.add_extra(Extra(link, None, f"{extra.reason} (target of {link})", extra.private))

    def add_generated(self, item: Generated) -> None:
        """A file minify writes, unless the user's own file is there already (added,
        traced): the user's file wins, and a note says so."""
        old = self.entries.get(follow_links(self.entries, clean_path(item.path, "image path"), final=False))
        if old is not None and old.type is not EntryType.DIR and old.content is None:
            # the root's own file, or a link to it (a traced /etc/os-release ->
            # ../usr/lib/os-release): the program read that one, so it stays
            why = old.reasons[0] if old.reasons else old.type.value
            self.warnings.append(f"note: {item.path} is the root's own ({why}), not minify's {item.reason}")
            return
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

    def finish(self) -> tuple[Entry, ...]:
        """Entries sorted by path; of the paths that share one inode, the first in that
        order holds the bytes and the others are hard links to it, so a writer that
        goes in order always finds a link's target already written."""
        entries = dict(self.entries)
        for paths in self.by_inode.values():
            files = sorted(p for p in paths if p in entries and entries[p].type is EntryType.FILE)
            if len(files) < 2:
                continue
            first = files[0]
            for other in files[1:]:
                old = entries[other]
                entries[other] = replace(old, type=EntryType.HARDLINK, source=None, target=first, size=0, ident=None)
        return tuple(sorted(entries.values(), key=lambda e: e.path))


def _describe(entry: Entry) -> str:
    why = f", {entry.reasons[0]}" if entry.reasons else ""
    if entry.type is EntryType.FILE:
        what = f"generated file{why}" if entry.content is not None else f"the file {entry.source}{why}"
        return what
    if entry.type is EntryType.SYMLINK:
        return f"a symlink to {entry.target}{why}"
    if entry.type is EntryType.HARDLINK:
        return f"a hard link to {entry.target}{why}"
    return f"a folder{why}"


#: Found through the program's own search paths: such a library moves with the program.
PRIVATE_HOWS = ("rpath", "runpath", "direct path", "LD_LIBRARY_PATH")


def _private(program: ProgramClosure, obj: LoadedObject) -> bool:
    """A program's own file: the input itself, or found through its own search paths."""
    if obj.role is Role.INPUT:
        return True
    for dep in program.dependencies:
        if dep.target == obj.realpath and dep.how is not None:
            return dep.how.value in PRIVATE_HOWS
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
    dirs: tuple[tuple[str, int, tuple[int, int]], ...] = (),
    skip: tuple[str, ...] = (),
) -> ImagePlan:
    """Lay out every program's closure as image entries.

    Each object goes where the loader opened it, with the symlinks on the way
    recreated (``/lib -> usr/lib``, soname link -> real file) and its bytes at its
    realpath; a hard-linked inode becomes one file plus hard links. Every other name
    the loader opens a loaded file under (a second DT_NEEDED name for the same file)
    is kept too. The system's folder symlinks are laid first, so a program's own
    files go through them as they do on the source system.
    ``extra`` closures (hwcaps variants) are added the same way. ``scripts`` are
    (path in the root, interpreter) pairs copied as plain files.
    """
    _refuse_incomplete(analysis)
    root = analysis.target.root
    planner = _Planner(root, maps, skip=skip)
    closures = (*analysis.programs, *extra)
    inputs = set(analysis.programs)
    _place_closures(planner, closures, inputs, {e.path: e.reason for e in extras})
    _place_aliases(planner, closures, inputs)
    programs = [planner.place(p.path, True) for p in analysis.programs]
    script_paths, script_bytes = _place_scripts(planner, scripts)
    for extra_item in extras:
        planner.add_extra(extra_item)
    for item in generated:
        planner.add_generated(item)
    for path, mode, owner in dirs:
        planner.add_folder(path, mode, owner)
    entries = planner.finish()
    return ImagePlan(
        entries,
        config,
        root.directory,
        tuple(programs),
        tuple(script_paths),
        tuple(planner.warnings),
        input_bytes=sum(p.objects[0].size for p in analysis.programs if p.objects) + script_bytes,
        machines=tuple(sorted({p.machine for p in analysis.programs if p.machine})),
        requests=_requests(entries, closures),
    )


def _requests(entries: tuple[Entry, ...], closures: tuple[ProgramClosure, ...]) -> tuple[tuple[str, str, str], ...]:
    """The loader's requests between files of the image, at their image paths."""
    by_source = {e.source: e.path for e in entries if e.source and e.type is EntryType.FILE}
    found = {
        (by_source[d.requester], by_source[d.target], d.how.value)
        for c in closures
        for d in c.dependencies
        if d.target in by_source and d.requester in by_source and d.how is not None and d.target != d.requester
    }
    return tuple(sorted(found))


def _refuse_incomplete(analysis: Analysis) -> None:
    """An image whose programs cannot load is not planned at all."""
    errors = [p.error for p in analysis.programs if p.error]
    if errors:
        raise PlanError("; ".join(errors))
    problems: list[str] = []
    for program in analysis.programs:
        problems.extend(f"{name}: not found (needed by {program.path})" for name in program.missing)
        problems.extend(program.version_errors)
    if problems:
        raise IncompleteClosure("; ".join(problems))


def _place_closures(
    planner: _Planner, closures: tuple[ProgramClosure, ...], inputs: set[ProgramClosure], why_added: dict[str, str]
) -> None:
    """Every loaded object at its realpath, the symlinks on the way first (the
    system's before the programs' own). An input's own files move with every mapping;
    an added file's (a plugin and the libraries beside it) only with the explicit
    ones, as the added file itself does."""
    given_of = [(program, program in inputs) for program in closures]  # hashing a closure is not cheap
    placed = [(program, obj, _private(program, obj), given) for program, given in given_of for obj in program.objects]
    for private_pass in (False, True):
        for program, obj, private, given in placed:
            if private is private_pass:
                planner.add_links(obj.links, private and given, _reason(program, obj, why_added), added=private)
    for program, obj, private, given in placed:
        image = planner.place(obj.realpath, private and given, added=private)
        planner.add_file(obj.realpath, False, _reason(program, obj, why_added), image_path=image)


def _place_aliases(planner: _Planner, closures: tuple[ProgramClosure, ...], inputs: set[ProgramClosure]) -> None:
    """Another name the loader opened an already loaded file under is kept too."""
    for program in closures:
        given = program in inputs
        for dep in program.dependencies:
            if dep.opened is None:
                continue
            private = dep.opened.how.value in PRIVATE_HOWS
            planner.add_links(dep.opened.links, private and given, f"{dep.kind} {dep.name}", added=private)
            image = planner.place(dep.opened.path, private and given, added=private)
            planner.add_file(dep.opened.path, False, f"{dep.kind} {dep.name}", image_path=image)


def _place_scripts(planner: _Planner, scripts: tuple[tuple[str, str], ...]) -> tuple[list[str], int]:
    """Scripts given as inputs, copied as plain files; their image paths and bytes."""
    paths: list[str] = []
    size = 0
    for inner, interpreter in scripts:
        resolved = planner.root.resolve(inner)
        planner.add_links(resolved.links, True, "input (script)")
        planner.add_file(resolved.path, True, f"input (script for {interpreter})")
        paths.append(planner.place(inner, True))
        size += resolved.size
    return paths, size


def _reason(program: ProgramClosure, obj: LoadedObject, why_added: dict[str, str]) -> str:
    """Why an object is in the image: an input, an added or traced file (and what
    added it), or needed by which object."""
    if obj.role is Role.INPUT:
        return why_added.get(program.path, "input")
    if obj.role is Role.INTERPRETER:
        return f"interpreter of {program.path}"
    for dep in program.dependencies:
        if dep.target == obj.realpath and dep.requester != obj.realpath:
            requester = next((o.path for o in program.objects if o.realpath == dep.requester), dep.requester)
            return f"{dep.kind} by {requester}"
    return obj.role.value
