"""ld.so.conf, read to explain a miss when a root has no ld.so.cache.

ld.so itself never reads ld.so.conf (ldconfig compiles it into the cache), so its
folders are never searched; a library that only they hold is named on the search trail
with the command that would write the cache, and the image's loader files (issue 19)
list them. ``include`` takes glob
patterns (several per line), relative ones relative to the including file's folder,
and the matches are read in sorted order, as ldconfig does.
"""

from __future__ import annotations

import fnmatch
import posixpath

from minify.root import Root

MAX_DEPTH = 16
#: Paths one include pattern may match at any level; a glob through self-links
#: (``d -> .``) would otherwise grow without end.
MAX_MATCHES = 4096


def directories(root: Root, conf: str = "/etc/ld.so.conf") -> tuple[str, ...]:
    """The library folders an ``ld.so.conf`` in ``root`` lists, in order, once each."""
    out: list[str] = []
    _read(root, conf, out, set(), 0)
    return tuple(dict.fromkeys(out))


def _read(root: Root, path: str, out: list[str], seen: set[str], depth: int) -> None:
    real = root.realpath(path)
    if depth > MAX_DEPTH or real in seen:
        return
    seen.add(real)
    data = root.read_bytes(path)
    if data is None:
        return
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("include") and line[7:8] in (" ", "\t"):
            for pattern in line[8:].split():
                if not pattern.startswith("/"):
                    pattern = posixpath.join(posixpath.dirname(path), pattern)
                for match in _glob(root, pattern):
                    _read(root, match, out, seen, depth + 1)
        elif line and not line.startswith(("hwcap ", "hwcap\t")):
            out.extend(_folders(line))


def _folders(line: str) -> list[str]:
    """The folders of one line ("dir=TYPE" is an old libc5 annotation; only the
    folder matters)."""
    folders = (item.split("=", 1)[0].rstrip("/") or "/" for item in line.replace(",", " ").split())
    return [f for f in folders if f.startswith("/")]


def _glob(root: Root, pattern: str) -> list[str]:
    """Glob ``pattern`` inside the root, one path component at a time, sorted. A folder
    reached again by another name (a self-link) is walked once: it can only match the
    same files, which are read once anyway."""
    matches = ["/"]
    for part in [p for p in pattern.split("/") if p][: MAX_DEPTH * 4]:
        nxt: dict[str, str] = {}
        for base in matches:
            if any(ch in part for ch in "*?["):
                names = [n for n in root.listdir(base) if fnmatch.fnmatchcase(n, part)]
            else:
                names = [part]
            for n in names:
                path = posixpath.join(base, n)
                nxt.setdefault(root.realpath(path), path)
                if len(nxt) > MAX_MATCHES:
                    break
        matches = sorted(nxt.values())[:MAX_MATCHES]
    return sorted(m for m in matches if root.resolve(m).is_file)
