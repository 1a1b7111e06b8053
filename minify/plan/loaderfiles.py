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

from minify.analysis.closure import Analysis
from minify.loader import ldcache, ldconf
from minify.loader.glibc import GlibcModel
from minify.loader.musl import MuslModel
from minify.plan.image import EntryType, Generated, ImagePlan

CACHE = "/etc/ld.so.cache"
CONF = "/etc/ld.so.conf"


def loader_files(plan: ImagePlan, analysis: Analysis) -> tuple[Generated, ...]:
    """The loader files the image gets (none for a root that has none), from what the
    run's loader models read of the root: its parsed cache, musl's path files."""
    models = analysis.target.models()
    cache = next((m.cache for m in models if isinstance(m, GlibcModel) and m.cache is not None), None)
    out = _glibc(plan, analysis, cache) if cache is not None else []
    seen: set[str] = set()
    for model in models:
        if isinstance(model, MuslModel) and model.system_source == model.path_file and model.path_file not in seen:
            seen.add(model.path_file)
            out.append(_musl(plan, model))
    return tuple(out)


def _shipped(plan: ImagePlan, path: str) -> bool:
    entry = plan.lookup(path)
    return entry is not None and entry.type in (EntryType.FILE, EntryType.HARDLINK)


def _glibc(plan: ImagePlan, analysis: Analysis, cache: ldcache.LdCache) -> list[Generated]:
    kept = tuple(e for e in cache.entries if _shipped(plan, e.path))
    if not kept:
        return []
    out = [Generated(CACHE, ldcache.write(kept, big_endian=cache.big_endian), reason="the loader's cache of the image")]
    # the ld.so.conf lines that name the folders of shipped libraries, so that an
    # ldconfig run in the image (or a reader of ld.so.conf) finds them again
    folders = {posixpath.dirname(e.path) for e in kept}
    named = [d for d in ldconf.directories(analysis.target.root) if d in folders]
    if named:
        text = "# Written by minify: the folders of the root's ld.so.conf that hold the image's libraries.\n"
        lines = text + "".join(f"{d}\n" for d in named)
        out.append(Generated(CONF, lines.encode(), reason="ld.so.conf of the image"))
    return out


def _musl(plan: ImagePlan, model: MuslModel) -> Generated:
    """musl reads ``<prefix>/etc/ld-musl-ARCH.path`` instead of its default path: the
    root's file (as its model read it), with only the folders the image has."""
    kept = [f for f in dict.fromkeys(model.system_path) if _is_dir(plan, f)]
    text = "".join(f"{f}\n" for f in kept)
    return Generated(model.path_file, text.encode(), reason="musl's search path of the image")


def _is_dir(plan: ImagePlan, path: str) -> bool:
    entry = plan.lookup(path)
    return entry is not None and entry.type is EntryType.DIR
