"""How the kernel and a shell run a ``#!`` script, read inside a root: the chain of
interpreters a script needs (``#!/usr/bin/env python3`` needs env and python3 as PATH
finds it), a name looked up through PATH as a runtime does, and the commands a shell
script runs (``shell_needs``).

Shared by ``--from`` (the image's entrypoint) and ``--trace`` (every script the run
executed: the kernel opens the interpreter itself, so strace never shows an open).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from minify.errors import MinifyError
from minify.loader.model import Reader
from minify.plan.sensitive import why_secret
from minify.plan.shell import MAX_SCRIPT, commands
from minify.root import Root
from minify.text import some

#: A script's interpreter may be a script in turn; the kernel allows a few levels.
MAX_INTERPRETERS = 4
#: runc's PATH when an image's config has none.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def executable(view: Root, path: str) -> str | None:
    """``path`` if it is an executable regular file of the root (a path that loops or
    leaves the root is none)."""
    try:
        res = view.resolve(path)
    except MinifyError:
        return None
    if res.is_file and res.mode is not None and res.mode & 0o111:
        return path
    return None


def lookup(view: Root, name: str, search: str, workdir: str) -> str | None:
    """``name`` as a runtime finds it: a name with a slash from the working folder, a
    bare name in each folder of PATH in turn."""
    if "\0" in name or not name:
        return None
    if "/" in name:
        return executable(view, posixpath.normpath(posixpath.join(workdir, name)))
    for folder in search.split(":"):
        folder = posixpath.join(workdir, folder or ".")
        found = executable(view, posixpath.normpath(posixpath.join(folder, name)))
        if found is not None:
            return found
    return None


def interpreters(view: Root, program: str, search: str) -> tuple[list[str], str | None]:
    """The interpreters a script needs, in order, and what is missing (None when
    nothing is): ``#!/usr/bin/env python3`` gives /usr/bin/env and python3 as PATH
    finds it; a non-script gives none."""
    reader = Reader(view)
    found: list[str] = []
    current = program
    for _ in range(MAX_INTERPRETERS):
        line = reader.shebang(view.resolve(current))
        if line is None:
            return found, None
        interp, arg = line
        resolved = executable(view, interp)
        if resolved is None:
            return found, f"{program}: its #! interpreter {interp} is not in the image"
        found.append(resolved)
        current = resolved
        if posixpath.basename(interp) == "env" and arg:
            name = next((w for w in arg.split() if not w.startswith("-") and "=" not in w), None)
            target = lookup(view, name, search, "/") if name else None
            if name and target is None:
                return found, f"{program}: #!{interp} {arg}: {name} is not in the image's PATH"
            if target is not None:
                found.append(target)
                current = target
    return found, None


#: Interpreters whose scripts are read for the commands they run.
SHELLS = frozenset({"sh", "dash", "bash", "ash", "ksh", "mksh", "busybox"})
#: Scripts (entrypoints, the scripts they run, the files they source) read per run.
MAX_SCRIPTS = 32


@dataclass(frozen=True)
class ScriptNeeds:
    """What shell scripts need beside their interpreters: the programs they run, found
    on PATH (by the script that runs each), the files they source, and notes on what a
    static reading cannot settle."""

    programs: dict[str, str]
    sourced: tuple[str, ...]
    notes: tuple[str, ...]
    files: tuple[str, ...] = ()  # files of the root the scripts name by absolute path
    why: dict[str, str] = field(default_factory=dict)  # sourced and named files -> why


@dataclass
class _Reading:
    """The state of ``shell_needs``: what was found, and the scripts still to read."""

    view: Root
    search: str
    workdir: str
    given: list[str]
    programs: dict[str, str] = field(default_factory=dict)
    sourced: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    queue: list[str] = field(default_factory=list)  # shell scripts and sourced files to read

    def command(self, script: str, name: str) -> bool:
        """Take the command ``name`` that ``script`` runs (read in turn when it is a
        shell script); False when PATH lacks it."""
        program = lookup(self.view, name, self.search, self.workdir)
        if program is None:
            return False
        if program not in self.programs and program not in self.given:
            chain, problem = interpreters(self.view, program, self.search)
            if problem is not None:  # a command is not worth failing the run for
                self.notes.append(f"note: {script} runs {program}, left out: {problem}")
            else:
                self.programs[program] = script
                if _is_shell(chain):
                    self.queue.append(program)
        return True

    def source(self, script: str, name: str) -> bool:
        file = posixpath.normpath(posixpath.join(self.workdir, name))
        if not self.view.resolve(file).is_file:
            return False
        self.why.setdefault(file, f"sourced by {script}")
        self.sourced.append(file)
        self.queue.append(file)
        return True


def shell_needs(view: Root, scripts: list[str], search: str, workdir: str) -> ScriptNeeds:
    """Read each shell script among ``scripts`` (and those they run or source, up to
    ``MAX_SCRIPTS``) for its commands (``minify.plan.shell``): a command PATH finds in the
    root is needed; one it does not find, or one built at run time, is named."""
    shells = [path for path in scripts if _is_shell(interpreters(view, path, search)[0])]
    reading = _Reading(view, search, workdir, scripts, queue=shells)
    seen: set[str] = set()
    while reading.queue and len(seen) < MAX_SCRIPTS:
        path = reading.queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        data = view.read_bytes(path, limit=MAX_SCRIPT)
        found = commands(data.decode("utf-8", "replace") if data else "")
        missing = [n for n in found.names if not reading.command(path, n)]
        missing += [f". {n}" for n in found.sourced if not reading.source(path, n)]
        if missing:
            reading.notes.append(
                f"note: {path} runs commands that are not in the root's PATH ({search}): {some(missing, 8)}"
            )
        named = [p for p in found.paths if p not in reading.sourced and _named_file(view, p)]
        for file in named:
            reading.why.setdefault(file, f"named by {path}")
        if named:
            reading.files.extend(named)
            reading.notes.append(f"note: {some(named, 6)} come with {path}, which names them")
        if found.dynamic:
            reading.notes.append(
                f"hint: {path} runs commands it builds at run time ({some(found.dynamic, 4)}), which a static "
                "reading cannot name: add them as inputs, or --trace the script"
            )
    sourced = tuple(dict.fromkeys(reading.sourced))
    files = tuple(f for f in dict.fromkeys(reading.files) if f not in sourced and f not in reading.programs)
    return ScriptNeeds(reading.programs, sourced, tuple(reading.notes), files, reading.why)


def _named_file(view: Root, path: str) -> bool:
    """A regular file of the root that is not a known secret place (a script that
    reads /etc/shadow does not ship it unless you --add it)."""
    try:
        return view.resolve(path).is_file and why_secret(path) is None
    except MinifyError:
        return False


def _is_shell(chain: list[str]) -> bool:
    """A script's interpreter chain ends in a shell (``#!/usr/bin/env bash`` too)."""
    return bool(chain) and posixpath.basename(chain[-1]) in SHELLS
