"""The data files of the shipped programs' own packages: what a closure leaves out
(tesseract's language data, pandoc's data files, zsh's modules), named from the
root's dpkg database, and brought by ``--with package-data``.

Documentation, manual pages, info, lintian overrides, bug scripts and translations are
never counted: a program does not need them to do its job.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from dataclasses import dataclass

from minify.analysis.closure import Analysis
from minify.errors import MinifyError
from minify.loader.model import ProgramKind
from minify.plan.image import ImagePlan
from minify.plan.packages import DPKG, DebPackage, installed, list_names, owners_of
from minify.root import Root, within
from minify.text import human_size

#: What a program never needs at run time.
LEFT_OUT = (
    "/usr/share/doc",
    "/usr/share/doc-base",
    "/usr/share/man",
    "/usr/share/info",
    "/usr/share/lintian",
    "/usr/share/bug",
    "/usr/share/locale",
    "/usr/share/menu",
)
#: Programs are inputs, not data: the package's other programs are not counted.
PROGRAM_FOLDERS = ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/games", "/usr/local/bin")
#: A package list is read up to this size (a big package lists some thousand paths).
MAX_LIST = 16 << 20
FOLDERS_SHOWN = 3


@dataclass(frozen=True)
class PackageData:
    """The files of one program's package that are not documentation."""

    package: str
    files: tuple[str, ...]  # paths of the root that are regular files (through links)
    sizes: tuple[int, ...]


def _listed(root: Root, package: DebPackage) -> list[str]:
    """The paths the package's list in ``info/`` names."""
    for suffix in list_names(package):
        data = root.read_bytes(f"{DPKG}/info/{suffix}.list", limit=MAX_LIST)
        if data is not None:
            return [line for line in data.decode("utf-8", "surrogateescape").splitlines() if line.startswith("/")]
    return []


def data_packages(root: Root, owners: set[str]) -> list[str]:
    """The packages that own the programs, and the architecture-independent packages
    they depend on directly: those hold a program's data (tesseract-ocr-eng's language
    data, pandoc-data, zsh-common's functions, emacs-common's lisp)."""
    if not owners:
        return []
    packages = installed(root)
    out = set(owners)
    for name in owners:
        package = packages.get(name)
        for dep in package.depends if package is not None else ():
            if dep in packages and packages[dep].architecture == "all":
                out.add(dep)
    return sorted(out)


def program_data(analysis: Analysis, plan: ImagePlan | None = None) -> tuple[PackageData, ...]:
    """The packages that hold the inputs' data, each with its data files in the root.
    The inputs' owners come from the ``plan`` when there is one (its entries name their
    package: the database is not read again), else from the root's database."""
    root = analysis.target.root
    programs = [p.realpath for p in analysis.programs if p.kind is not ProgramKind.NOT_ELF]
    if plan is not None:
        owners = {e.package for p in plan.programs if (e := plan.lookup(p)) is not None and e.package}
    else:
        owners = set(owners_of(root, programs).values()) if programs else set()
    packages = installed(root)
    out = []
    for package in data_packages(root, owners):
        if package not in packages:
            continue  # a status.d root (distroless) keeps no file lists
        files, sizes = [], []
        seen: set[tuple[int, int]] = set()  # a hard-linked file weighs once (git-core)
        for path in _listed(root, packages[package]):
            if any(within(path, folder) for folder in (*LEFT_OUT, *PROGRAM_FOLDERS)) or path in programs:
                continue
            try:
                resolved = root.resolve(path)
            except MinifyError:
                continue
            if resolved.is_file and resolved.path not in programs:
                files.append(path)
                sizes.append(0 if resolved.ident in seen else resolved.size)
                seen.add(resolved.ident or (0, 0))
        out.append(PackageData(package, tuple(files), tuple(sizes)))
    return tuple(out)


def left_out(data: tuple[PackageData, ...], plan: ImagePlan) -> list[str]:
    """A note per package on the data files the image does not have."""
    notes = []
    for item in data:
        absent = [(f, s) for f, s in zip(item.files, item.sizes, strict=True) if plan.lookup(f) is None]
        if not absent:
            continue
        folders = Counter(posixpath.dirname(f) for f, _ in absent).most_common(FOLDERS_SHOWN)
        where = ", ".join(f"{folder} ({count})" for folder, count in folders)
        size = sum(s for _, s in absent)
        notes.append(
            f"note: {item.package}: {len(absent)} data file(s), {human_size(size)}, not in the image, most in {where};"
            " --with package-data brings them"
        )
    return notes
