"""How the kernel and a shell run a ``#!`` script, read inside a root: the chain of
interpreters a script needs (``#!/usr/bin/env python3`` needs env and python3 as PATH
finds it), and a name looked up through PATH as a runtime does.

Shared by ``--from`` (the image's entrypoint) and ``--trace`` (every script the run
executed: the kernel opens the interpreter itself, so strace never shows an open).
"""

from __future__ import annotations

import posixpath

from minify.errors import MinifyError
from minify.loader.model import Reader
from minify.root import Root

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
