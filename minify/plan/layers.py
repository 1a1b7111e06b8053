"""The image's layers: a base that two programs of the same root share, then the app.

The base holds what every program of one root and one set of presets gets alike: the
interpreter (and the links that lead to it), the C library it comes with, and what the
presets bring (``--with``: certificates, zoneinfo, NSS modules...), with the folders
above them. Its bytes depend only on the root and the presets, never on the program,
so two images from the same root share the base layer's digest: a registry stores it
once, a node pulls it once. Everything else is the app layer.

What the base leaves out on purpose: the rest of the C library's package (libm,
libresolv...) goes with the programs that load it, not into every image; the package
metadata (``status.d``) lists the files of this image, so it differs between
programs and stays in the app layer.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from minify.plan.image import Entry, EntryType, ImagePlan

#: glibc's C library (libc.so.6) and musl's (libc.musl-ARCH.so.1).
LIBC = re.compile(r"libc\.so(\.\d+)?|libc\.musl-[\w-]+\.so\.\d+")
BASE_REASONS = ("interpreter of ", "--with ")


@dataclass(frozen=True)
class Layer:
    """One layer of the image: its name and its entries, sorted by path."""

    name: str
    entries: tuple[Entry, ...]


def split(plan: ImagePlan, count: int) -> tuple[Layer, ...]:
    """``count`` layers (1 or 2) of the plan's entries; the root folder is in none."""
    entries = tuple(sorted((e for e in plan.entries if e.path != "/"), key=lambda e: e.path))
    if count == 1:
        return (Layer("image", entries),)
    base = _base_paths(plan)
    if not base:
        return (Layer("app", entries),)
    app = {e.path for e in entries if e.path not in base}
    app |= _folders_above(plan, app)
    return (
        Layer("base", tuple(e for e in entries if e.path in base)),
        Layer("app", tuple(e for e in entries if e.path in app)),
    )


def base_entries(plan: ImagePlan) -> tuple[Entry, ...]:
    """The entries of the base layer (empty when the plan has none)."""
    layers = split(plan, 2)
    return layers[0].entries if len(layers) == 2 else ()


def _in_base(entry: Entry) -> bool:
    if entry.owned:  # an owned tree is copied with its owner, after everything else
        return False
    if any(reason.startswith(BASE_REASONS) for reason in entry.reasons):
        return True
    return (
        entry.type is EntryType.FILE
        and LIBC.fullmatch(posixpath.basename(entry.path)) is not None
        and any(reason.startswith("needed by ") for reason in entry.reasons)
    )


def _base_paths(plan: ImagePlan) -> set[str]:
    """The base's paths: its own entries, a hard link and its target together (a tar
    link must find its file in its layer), and the folders above them."""
    base = {e.path for e in plan.entries if e.path != "/" and _in_base(e)}
    for entry in plan.entries:
        if entry.type is EntryType.HARDLINK and entry.target is not None:
            if entry.path in base or entry.target in base:
                base |= {entry.path, entry.target}
    return base | _folders_above(plan, base) if base else base


def _folders_above(plan: ImagePlan, paths: set[str]) -> set[str]:
    """The folders of the plan above ``paths`` (each layer carries its own, with the
    same mode and owner, so either layer unpacks alone)."""
    out: set[str] = set()
    for path in paths:
        parent = posixpath.dirname(path)
        while parent not in ("/", "") and parent not in out:
            entry = plan.entry(parent)
            if entry is not None and entry.type is EntryType.DIR:
                out.add(parent)
            parent = posixpath.dirname(parent)
    return out
