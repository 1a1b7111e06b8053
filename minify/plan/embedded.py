"""What a program's own bytes name: data paths compiled into it, and the programs it
runs. The closure cannot see either: tesseract reads
``/usr/share/tesseract-ocr/5/tessdata``, a program that calls ``popen`` runs
``/bin/sh``. Each path that exists in the root and is not in the image becomes a hint
with its size and the flag that brings it.

Only the program's own code is read (the input, and the libraries it finds through its
own RPATH/RUNPATH): every libc names ``/etc/nsswitch.conf`` and ``/bin/sh``, which is
no evidence that this program uses them.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from dataclasses import dataclass

from minify.analysis.closure import Analysis, ProgramClosure
from minify.analysis.hints import own_objects
from minify.errors import MinifyError
from minify.loader.model import ProgramKind
from minify.plan.image import ImagePlan
from minify.plan.packagedata import LEFT_OUT
from minify.plan.scripts import executable
from minify.root import Root, within
from minify.text import human_size, some

#: Folders whose paths, compiled into a program, name data it may read at run time.
DATA_PREFIXES = ("/usr/share/", "/usr/lib/", "/usr/libexec/", "/etc/", "/var/lib/")
#: Folders of programs a program may run.
PROGRAM_PREFIXES = ("/bin/", "/sbin/", "/usr/bin/", "/usr/sbin/", "/usr/libexec/", "/usr/local/bin/")
_PATH = re.compile(
    rb"/(?:usr/share|usr/lib|usr/libexec|usr/local/bin|usr/bin|usr/sbin|etc|var/lib|bin|sbin)/[\w.+@/-]+"
)
#: Symbols that run another program; system and popen run /bin/sh.
RUNS = frozenset(
    {
        "system",
        "popen",
        "execl",
        "execle",
        "execlp",
        "execv",
        "execve",
        "execvp",
        "execvpe",
        "posix_spawn",
        "posix_spawnp",
    }
)
SHELL_RUNNERS = frozenset({"system", "popen"})
#: Bounds: bytes of one file read, distinct strings kept, files counted in a folder.
MAX_READ = 512 << 20
CHUNK = 16 << 20
MAX_STRINGS = 20_000
MAX_FOLDER_FILES = 5_000
SHOWN = 6


@dataclass(frozen=True)
class Named:
    """A path a program names that the root has and the image lacks."""

    path: str
    files: int
    size: int
    folder: bool


def embedded_hints(analysis: Analysis, plan: ImagePlan) -> list[str]:
    """Hints for every input program, from the strings of its own code."""
    out: list[str] = []
    for program in analysis.programs:
        if program.kind is not ProgramKind.DYNAMIC or program.error or not program.objects:
            continue
        own = sorted(own_objects(program))
        strings: set[str] = set()
        for path in own:
            strings |= _strings(analysis.target.root, path)
        out.extend(_data_hint(program, strings, analysis.target.root, plan))
        out.extend(_program_hint(program, own, strings, analysis, plan))
    return out


def _strings(root: Root, path: str) -> set[str]:
    """The absolute paths under the folders above that a file's bytes spell out."""
    try:
        fd, st = root.open_file(path, None)
    except MinifyError:
        return set()
    found: set[str] = set()
    try:
        offset = 0
        limit = min(st.st_size, MAX_READ)
        while offset < limit and len(found) < MAX_STRINGS:
            chunk = os.pread(fd, CHUNK + 4096, offset)  # the overlap catches a string cut in two
            if not chunk:
                break
            found.update(m.group().decode("ascii", "replace").rstrip("/.") for m in _PATH.finditer(chunk))
            offset += CHUNK
    finally:
        os.close(fd)
    return {s for s in found if s and "//" not in s and "/../" not in s and not s.endswith("/..")}


def _weigh(root: Root, path: str) -> Named | None:
    """What ``path`` is in the root: a file, or a folder with its files and bytes
    (None for a folder too big to suggest whole, or anything else)."""
    try:
        resolved = root.resolve(path)
    except MinifyError:
        return None
    if resolved.is_file:
        return Named(path, 1, resolved.size, folder=False)
    if not resolved.is_dir:
        return None
    files = size = 0
    try:
        for item in root.walk(resolved.path):
            if stat.S_ISREG(item.mode):
                files += 1
                size += item.size
                if files > MAX_FOLDER_FILES:
                    return None
    except MinifyError:
        return None
    return Named(path, files, size, folder=True) if files else None


def _data_hint(program: ProgramClosure, strings: set[str], root: Root, plan: ImagePlan) -> list[str]:
    candidates = sorted(
        s for s in strings if s.startswith(DATA_PREFIXES) and s.count("/") >= 3 and not s.startswith(PROGRAM_PREFIXES)
    )
    named: list[Named] = []
    for path in candidates:
        if plan.lookup(path) is not None or _below_named(path, named) or any(within(path, d) for d in LEFT_OUT):
            continue
        found = _weigh(root, path)
        if found is not None and not _lib_folder(found, plan):
            named.append(found)
    named = _by_folder(named, root, plan)
    if not named:
        return []
    shown = some([_describe(n) for n in named], SHOWN)
    flags = " ".join(f"--add {n.path}" for n in named[:SHOWN])
    return [f"hint: {program.path} names paths it may read that the image lacks: {shown}; add them with {flags}"]


def _by_folder(named: list[Named], root: Root, plan: ImagePlan) -> list[Named]:
    """Files that share a folder the image lacks are named by that folder (zsh's
    /etc/zsh/zshenv, zshrc, ...: --add /etc/zsh)."""
    parents: dict[str, int] = {}
    for item in named:
        if not item.folder:
            parents[posixpath.dirname(item.path)] = parents.get(posixpath.dirname(item.path), 0) + 1
    out: list[Named] = []
    for item in named:
        parent = posixpath.dirname(item.path)
        if item.folder or parents.get(parent, 0) < 2 or plan.lookup(parent) is not None:
            out.append(item)
            continue
        whole = _weigh(root, parent)
        if whole is None:
            out.append(item)
        elif all(o.path != parent for o in out):
            out.append(whole)
    return out


def _below_named(path: str, named: list[Named]) -> bool:
    return any(n.folder and path.startswith(n.path + "/") for n in named)


def _lib_folder(found: Named, plan: ImagePlan) -> bool:
    """A folder the image already has some of (a library folder): not a data tree."""
    return found.folder and plan.lookup(posixpath.join(found.path, ".")) is not None


def _describe(named: Named) -> str:
    size = human_size(named.size)
    return f"{named.path} ({named.files} files, {size})" if named.folder else f"{named.path} ({size})"


def _program_hint(
    program: ProgramClosure, own: list[str], strings: set[str], analysis: Analysis, plan: ImagePlan
) -> list[str]:
    """A program that runs others: the ones its strings name (and /bin/sh for system
    and popen) that the root has and the image lacks."""
    reader, root = analysis.target.reader, analysis.target.root
    calls: set[str] = set()
    for path in own:
        try:
            imports = reader.imports(root.resolve(path))
        except MinifyError:
            continue
        calls |= {ref.name for ref in imports} & RUNS
    if not calls:
        return []
    wanted = {s for s in strings if s.startswith(PROGRAM_PREFIXES)}
    if calls & SHELL_RUNNERS:
        wanted.add("/bin/sh")
    missing = sorted(p for p in wanted if plan.lookup(p) is None and executable(root, p) is not None)
    if not missing:
        return []
    shown = some(missing, SHOWN)
    return [
        f"hint: {program.path} runs other programs ({', '.join(sorted(calls))}); these it names are not in the image:"
        f" {shown}; add them as inputs (minify rootfs {program.path} {' '.join(missing[:SHOWN])} ...)"
    ]
