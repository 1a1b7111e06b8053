"""The loader's own files in the image: ``/etc/ld.so.cache`` (glibc) and
``/etc/ld-musl-ARCH.path`` (musl), cut down to what the image ships.

Without a cache, glibc's ld.so searches only its system folders, so a library that
only the cache finds (``/usr/local/lib`` after ``make install``, a folder named in
``/etc/ld.so.conf.d``) is "not found" in a scratch image, and ``ldconfig -p`` (which
``ctypes.util.find_library`` runs) lists nothing. The image gets the source root's
own cache, keeping exactly the entries whose files it ships: a subsequence of what
the root's ldconfig wrote, in its order (ld.so binary-searches the table), for the
root's architecture and byte order. So a sysroot of another architecture gets its
own kind of cache, and the same image always gets the same bytes.
"""

from __future__ import annotations

import posixpath

from minify.closure import Analysis
from minify.image import EntryType, Generated, ImagePlan
from minify.loader import ldcache, ldconf
from minify.loader.arch import ARCHES
from minify.loader.model import LoaderKind
from minify.loader.musl import MuslModel

CACHE = "/etc/ld.so.cache"
CONF = "/etc/ld.so.conf"


def loader_files(plan: ImagePlan, analysis: Analysis) -> tuple[Generated, ...]:
    """The loader files the image gets (none for a root that has none)."""
    kinds = {p.loader for p in analysis.programs}
    out: list[Generated] = []
    if LoaderKind.GLIBC in kinds:
        out.extend(_glibc(plan, analysis))
    if LoaderKind.MUSL in kinds:
        out.extend(_musl(plan, analysis))
    return tuple(out)


def _shipped(plan: ImagePlan, path: str) -> bool:
    entry = plan.lookup(path)
    return entry is not None and entry.type in (EntryType.FILE, EntryType.HARDLINK)


def _glibc(plan: ImagePlan, analysis: Analysis) -> list[Generated]:
    root = analysis.target.root
    data = root.read_bytes(CACHE)
    if data is None:
        return []
    try:
        cache = ldcache.parse(data)
    except ldcache.CacheFormatError:
        return []  # the analysis said so already; the image gets none
    kept = tuple(e for e in cache.entries if _shipped(plan, e.path))
    if not kept:
        return []
    out = [Generated(CACHE, ldcache.write(kept, big_endian=cache.big_endian), reason="the loader's cache of the image")]
    # the ld.so.conf lines that name the folders of shipped libraries, so that an
    # ldconfig run in the image (or a reader of ld.so.conf) finds them again
    folders = {posixpath.dirname(e.path) for e in kept}
    named = [d for d in ldconf.directories(root) if d in folders]
    if named:
        text = "# Written by minify: the folders of the root's ld.so.conf that hold the image's libraries.\n"
        lines = text + "".join(f"{d}\n" for d in named)
        out.append(Generated(CONF, lines.encode(), reason="ld.so.conf of the image"))
    return out


def _musl(plan: ImagePlan, analysis: Analysis) -> list[Generated]:
    """musl reads ``<prefix>/etc/ld-musl-ARCH.path`` instead of its default path: the
    root's file, with only the folders the image has."""
    root = analysis.target.root
    out: list[Generated] = []
    for program in analysis.programs:
        if program.loader is not LoaderKind.MUSL or program.interpreter is None:
            continue
        arch = next((a for a in ARCHES if a.name == program.machine), None)
        name = MuslModel.path_file_for(program.interpreter, arch.musl if arch else "")
        if any(g.path == name for g in out):
            continue
        data = root.read_bytes(name)
        if data is None:
            continue
        folders = [p for p in data.decode("utf-8", "surrogateescape").replace(":", "\n").splitlines() if p]
        kept = [f for f in dict.fromkeys(folders) if _is_dir(plan, f)]
        out.append(Generated(name, "".join(f"{f}\n" for f in kept).encode(), reason="musl's search path of the image"))
    return out


def _is_dir(plan: ImagePlan, path: str) -> bool:
    entry = plan.lookup(path)
    return entry is not None and entry.type is EntryType.DIR
