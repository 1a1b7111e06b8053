"""Which installed package owns each file of an image, read from the root's own dpkg
database, and the metadata that lets scanners see those packages in the image.

An image made by copying files is invisible to syft, grype and trivy: they find
packages through a package database, not through files. distroless keeps one dpkg
stanza per package in ``/var/lib/dpkg/status.d/`` with its ``.md5sums``; minify writes
the same, for exactly the packages one of whose files it copies, with only those
files, and the distribution's identity (``/etc/os-release``, ``/etc/debian_version``).

Everything is read from the root being analysed (never the host's database, never by
running dpkg): ``var/lib/dpkg/status`` with ``info/PKG[:ARCH].list`` and ``.md5sums``,
or ``status.d/`` for a root that is itself distroless-style. Paths are compared as the
lists spell them, through the root's top-level symlinks into /usr, so
``/lib/x86_64-linux-gnu/libc.so.6`` listed and ``/usr/lib/x86_64-linux-gnu/libc.so.6``
copied (usrmerge) are one file.
A broken stanza, an unreadable list, a package name that cannot be a file name: a
warning naming the file and the line, and nothing invented.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from minify.errors import PathError
from minify.plan.image import Digests, Entry, EntryType, Generated, ImagePlan
from minify.shapes import APK_NAME, DPKG_STANZA, OS_RELEASE_KEY, OS_RELEASE_VALUE, PACKAGE_NAME
from minify.text import is_number

if TYPE_CHECKING:
    from minify.root import Root

DPKG = "/var/lib/dpkg"
STATUS_D = f"{DPKG}/status.d"
#: The fields a status.d stanza keeps (distroless keeps these; Conffiles would name
#: files the image does not have).
KEPT_FIELDS = ("Package", "Status", "Source", "Version", "Architecture", "Maintainer", "Homepage")
_NAME = re.compile(PACKAGE_NAME)
#: Bounds on what a hostile root can make us read.
MAX_DB_BYTES = 256 << 20
MAX_PACKAGES = 100_000
MAX_OS_RELEASE_LINES = 1000


@dataclass(frozen=True)
class DebPackage:
    """One installed package of a status file. Its stanza's fields are kept as read
    and the rest is worked out when asked for: a status file of 200,000 stanzas has
    few packages that a closure uses."""

    name: str
    version: str
    architecture: str
    raw: dict[str, str] = field(default_factory=dict, compare=False, repr=False)  # the stanza's one-line fields

    @cached_property
    def fields(self) -> tuple[tuple[str, str], ...]:
        """The kept fields, in the order of KEPT_FIELDS."""
        return tuple((k, self.raw[k]) for k in KEPT_FIELDS if k in self.raw)

    @cached_property
    def source(self) -> str | None:
        """The source package, without its version."""
        return self.raw.get("Source", "").split(" ", 1)[0] or None

    @cached_property
    def installed_size(self) -> int:
        """Bytes (Installed-Size is in KiB)."""
        size = self.raw.get("Installed-Size", "")
        return int(size) * 1024 if is_number(size) else 0

    @cached_property
    def depends(self) -> tuple[str, ...]:
        """Pre-Depends and Depends, by name (first alternative)."""
        return _depends(self.raw.get("Pre-Depends", "") + "," + self.raw.get("Depends", ""))

    @property
    def stanza(self) -> str:
        return "".join(f"{key}: {value}\n" for key, value in self.fields)


@dataclass
class PackageDb:
    """The root's installed packages, who owns which file, and their md5sums."""

    packages: dict[str, DebPackage] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)  # normalised path -> package
    md5: dict[str, str] = field(default_factory=dict)  # normalised path -> md5 (hex)
    warnings: list[str] = field(default_factory=list)


class _Spellings:
    """The ways a package list may spell a path of the root: as it is, and through
    the root's top-level symlinks into /usr (usrmerge lists ``/lib/...`` for what is
    at ``/usr/lib/...``)."""

    def __init__(self, root: Root) -> None:
        self.links: list[tuple[str, str]] = []  # (real folder, top-level link to it)
        for name in root.listdir("/"):
            try:
                resolved = root.resolve(f"/{name}")
            except PathError:
                continue
            if resolved.links and resolved.is_dir and resolved.path != f"/{name}":
                self.links.append((resolved.path, f"/{name}"))

    def of(self, path: str) -> set[str]:
        out = {path}
        for real, link in self.links:
            if path.startswith(real + "/"):
                out.add(link + path[len(real) :])
            if path.startswith(link + "/"):
                out.add(real + path[len(link) :])
        return out


def read_dpkg(root: Root, wanted: set[str] | None = None) -> PackageDb | None:
    """The root's dpkg database, or None when it has none. With ``wanted`` (paths as a
    package list may spell them), only the owners and md5sums of those are kept."""
    status = root.read_bytes(f"{DPKG}/status", limit=MAX_DB_BYTES)
    has_status_d = root.resolve(STATUS_D).is_dir
    if status is None and not has_status_d:
        return None
    status_d = root.listdir(STATUS_D) if has_status_d else []
    db = PackageDb()
    if status is not None:
        # one listing of info/, then only the lists that exist are opened: a status
        # file of 200,000 stanzas would otherwise cost 400,000 failed look-ups
        lists = {n for n in root.listdir(f"{DPKG}/info") if n.endswith(".list")}
        for package in _stanzas(status, f"{DPKG}/status", db.warnings):
            _add(db, package)
            for suffix in list_names(package):
                if f"{suffix}.list" not in lists:
                    continue
                listed = root.read_in(f"{DPKG}/info", f"{suffix}.list", limit=MAX_DB_BYTES)
                if listed is not None:
                    # a package's md5sums name files its list names: none wanted, none to read
                    if _own(db, package.name, listed, wanted) or wanted is None:
                        sums = root.read_in(f"{DPKG}/info", f"{suffix}.md5sums", limit=MAX_DB_BYTES)
                        _md5sums(db, sums, wanted)
                    break
    for name in sorted(n for n in status_d if not n.endswith(".md5sums")):
        where = f"{STATUS_D}/{name}"
        for package in _stanzas(root.read_bytes(where, limit=MAX_DB_BYTES) or b"", where, db.warnings):
            _add(db, package)
            sums = root.read_bytes(f"{STATUS_D}/{name}.md5sums", limit=MAX_DB_BYTES)
            _md5sums(db, sums, wanted, owner=package.name)
    return db


def _add(db: PackageDb, package: DebPackage) -> None:
    if len(db.packages) < MAX_PACKAGES:
        db.packages.setdefault(package.name, package)


#: Status files parsed in this process, by digest: a run reads the root's database for
#: ownership, the programs' packages and their data; each parse of a big status file
#: (200,000 stanzas) costs about a second.
_PARSED: dict[tuple[bytes, str], tuple[list[DebPackage], list[str]]] = {}


def _stanzas(data: bytes, where: str, warnings: list[str]) -> list[DebPackage]:
    """Installed packages of a status file (parsed once per content), and its warnings."""
    key = (hashlib.sha256(data).digest(), where)
    if key not in _PARSED:
        found: list[str] = []
        if len(_PARSED) >= 4:
            _PARSED.clear()
        _PARSED[key] = (_parse_stanzas(data, where, found), found)
    packages, said = _PARSED[key]
    warnings.extend(said)
    return packages


def _parse_stanzas(data: bytes, where: str, warnings: list[str]) -> list[DebPackage]:
    """Installed packages of a status file, in the Debian control format."""
    out = []
    line_no = 0
    for block in data.decode("utf-8", "replace").split("\n\n"):
        start = line_no + 1
        line_no += block.count("\n") + 2
        fields = _fields(block, where, start, warnings)
        if fields is None:
            continue
        if not fields.get("Status", "").endswith(" installed") or "Version" not in fields:
            continue
        wrong = DPKG_STANZA.first(fields)
        if wrong is not None:
            wrong = f"the stanza {wrong}" if wrong.startswith("has ") else wrong
            warnings.append(f"{where}:{start}: {wrong}; skipped")
            continue
        out.append(DebPackage(fields["Package"], fields["Version"], fields.get("Architecture", ""), fields))
    return out


def _depends(text: str) -> tuple[str, ...]:
    """``libc6 (>= 2.34), foo | bar, baz:any`` -> ("libc6", "foo", "baz")."""
    names = []
    for clause in text.split(","):
        first = clause.split("|", 1)[0].strip().split(" ", 1)[0].split(":", 1)[0].split("(", 1)[0]
        if _NAME.fullmatch(first):
            names.append(first)
    return tuple(dict.fromkeys(names))


def list_names(package: DebPackage) -> tuple[str, str]:
    """The names dpkg gives a package's files in ``info/`` (before ``.list`` and
    ``.md5sums``): NAME:ARCH for a multi-arch package, else NAME."""
    return f"{package.name}:{package.architecture}", package.name


def installed(root: Root) -> dict[str, DebPackage]:
    """The root's installed packages from its status file alone (no file lists)."""
    status = root.read_bytes(f"{DPKG}/status", limit=MAX_DB_BYTES)
    packages: dict[str, DebPackage] = {}
    for package in _stanzas(status or b"", f"{DPKG}/status", []):
        if len(packages) < MAX_PACKAGES:
            packages.setdefault(package.name, package)
    return packages


def _fields(block: str, where: str, start: int, warnings: list[str]) -> dict[str, str] | None:
    """A stanza's one-line fields (multi-line values, Description and Conffiles, are
    not kept). A stanza with a line that is not of the form is read again line by
    line, to say which line is wrong."""
    fields: dict[str, str] = {}
    for line in block.split("\n"):
        if line[:1] in (" ", "\t"):
            if not fields:
                break
            continue
        key, sep, value = line.partition(":")
        if not sep or not key or " " in key:
            break
        fields[key] = value.strip()
    else:
        return fields or None
    return _fields_slowly(block, where, start, warnings)


def _fields_slowly(block: str, where: str, start: int, warnings: list[str]) -> dict[str, str] | None:
    fields: dict[str, str] = {}
    last = None
    for offset, line in enumerate(block.split("\n")):
        if not line.strip():
            continue
        if line[0] in " \t":
            if last is None:
                warnings.append(
                    f"{where}:{start + offset}: a continuation line with no field before it; stanza skipped"
                )
                return None
            continue  # multi-line values (Description, Conffiles) are not kept
        key, sep, value = line.partition(":")
        if not sep or not key or " " in key:
            warnings.append(f"{where}:{start + offset}: not a 'Field: value' line; stanza skipped")
            return None
        last = key
        fields[key] = value.strip()
    return fields or None


def _own(db: PackageDb, name: str, listed: bytes, wanted: set[str] | None) -> bool:
    """The paths a package's list names (of ``wanted`` only, when given): whether any."""
    lines = listed.decode("utf-8", "surrogateescape").splitlines()
    found = [raw for raw in lines if raw.startswith("/")] if wanted is None else wanted.intersection(lines)
    for raw in found:
        db.owner.setdefault(raw, name)
    return bool(found)


def _md5sums(db: PackageDb, data: bytes | None, wanted: set[str] | None, *, owner: str | None = None) -> None:
    """``MD5  path`` lines (paths without the leading slash)."""
    for raw in (data or b"").decode("utf-8", "surrogateescape").splitlines():
        digest, _, path = raw.partition("  ")
        path = "/" + path.lstrip("/")
        if len(digest) == 32 and len(path) > 1 and (wanted is None or path in wanted):
            db.md5.setdefault(path, digest)
            if owner is not None:
                db.owner.setdefault(path, owner)


# -- what the image carries --------------------------------------------------------


@dataclass(frozen=True)
class Ownership:
    """Who owns each file of a plan, and the metadata files for the image."""

    owners: dict[str, str]  # image path -> package (files and symlinks a package lists)
    packages: tuple[DebPackage, ...]  # those with at least one file in the image, sorted
    generated: tuple[Generated, ...]
    warnings: tuple[str, ...]
    distro: dict[str, str]  # os-release fields (ID, VERSION_ID, ...)
    found: bool = True  # the root has a dpkg database


def ownership(
    plan: ImagePlan, root: Root, digests: dict[str, Digests], names: dict[str, set[str]] | None = None
) -> Ownership:
    """The owners of the plan's entries (``names``: ``spelt_entries`` of the plan) from
    the root's own database, the status.d stanzas, the md5sums of the copied files
    (checked against their bytes, ``digests``) and the OS identity."""
    said: list[str] = []
    distro_files, distro = _distribution(root, said)
    names = spelt_entries(plan, root) if names is None else names
    db = read_dpkg(root, set().union(*names.values()) if names else set())
    if db is None:
        return Ownership({}, (), (), tuple(said), distro, found=False)
    owners: dict[str, str] = {}
    sums: dict[str, list[str]] = {}
    warnings = [*said, *db.warnings]
    for path, spellings in names.items():
        spelt = sorted(spellings)
        name = next((db.owner[p] for p in spelt if p in db.owner and db.owner[p] in db.packages), None)
        if name is None:
            continue
        owners[path] = name
        digest = next((db.md5[p] for p in spelt if p in db.md5), None)
        if path in digests and digest is not None:
            if digests[path].md5 != digest:
                warnings.append(f"{path}: its md5 differs from {name}'s md5sums (changed after installation)")
            sums.setdefault(name, []).append(f"{digest}  {path.lstrip('/')}\n")
    packages = tuple(db.packages[n] for n in sorted(set(owners.values())))
    generated = list(distro_files)
    for package in packages:
        generated.append(Generated(f"{STATUS_D}/{package.name}", package.stanza.encode(), reason="package metadata"))
        if package.name in sums:
            body = "".join(sorted(sums[package.name])).encode("utf-8", "surrogateescape")
            generated.append(Generated(f"{STATUS_D}/{package.name}.md5sums", body, reason="package metadata"))
    return Ownership(owners, packages, tuple(generated), tuple(warnings), distro)


def owners_of(root: Root, paths: list[str]) -> dict[str, str]:
    """The installed package that owns each of ``paths`` (of the root, however its
    package lists spell them: ``/lib/...`` for what is at ``/usr/lib/...``), where one
    does; an empty answer for a root with no dpkg database."""
    spellings = _Spellings(root)
    names = {p: spellings.of(p) for p in paths}
    db = read_dpkg(root, set().union(*names.values()) if names else set())
    if db is None:
        return {}
    out = {}
    for path, spelt in names.items():
        owner = next((db.owner[s] for s in sorted(spelt) if s in db.owner), None)
        if owner is not None:
            out[path] = owner
    return out


def spelt_entries(plan: ImagePlan, root: Root) -> dict[str, set[str]]:
    """The plan's files from the root, and its symlinks to files, each with every way
    a package database may spell it (from its source and its image path)."""
    spellings = _Spellings(root)
    return {
        e.path: spellings.of(e.source or e.path) | spellings.of(e.path)
        for e in plan.entries
        if e.content is None and _attributable(e, root)
    }


def _attributable(entry: Entry, root: Root) -> bool:
    """Files, and symlinks to files: a folder (or a link to one, /lib -> usr/lib) is
    listed by every package with a file below it, so it has no one owner."""
    if entry.type is EntryType.FILE:
        return True
    if entry.type is not EntryType.SYMLINK:
        return False
    try:
        return root.resolve(entry.source or entry.path).is_file
    except PathError:
        return False


def _distribution(root: Root, warnings: list[str]) -> tuple[list[Generated], dict[str, str]]:
    """/etc/os-release as a real file (the root may have a link to ../usr/lib/os-release),
    and /etc/debian_version or /etc/lsb-release where the root has them."""
    files = []
    distro: dict[str, str] = {}
    for path in ("/etc/os-release", "/etc/debian_version", "/etc/lsb-release"):
        data = root.read_bytes(path, limit=1 << 16)
        if data is None and path == "/etc/os-release":
            data = root.read_bytes("/usr/lib/os-release", limit=1 << 16)
        if data is None:
            continue
        files.append(Generated(path, data, reason="distribution identity, for scanners"))
        if path == "/etc/os-release":
            distro = os_release(data, path, warnings)
    return files, distro


def os_release(data: bytes, where: str, warnings: list[str]) -> dict[str, str]:
    """``KEY=value`` lines of os-release (values unquoted); a line that is neither
    that, a comment nor blank is skipped with a warning naming it."""
    distro: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines()[:MAX_OS_RELEASE_LINES], 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip().strip("\"'")
        wrong = OS_RELEASE_KEY.problem(key) if sep else "is not a KEY=value line"
        wrong = wrong or (f"{key} {OS_RELEASE_VALUE.problem(value)}" if OS_RELEASE_VALUE.problem(value) else None)
        if wrong is not None:
            warnings.append(f"{where}:{number}: {wrong}; skipped")
            continue
        distro[key] = value
    return distro


# -- which packages a closure comes from ----------------------------------------------


@dataclass(frozen=True)
class PackageUse:
    """One installed package a closure takes files from, and how much of it."""

    name: str
    version: str
    installed: int  # the package's Installed-Size, in bytes
    copied: int  # the bytes of its files that the closure loads
    files: tuple[str, ...]  # those files (realpaths in the root)


def packages_used(root: Root, objects: dict[str, int]) -> tuple[tuple[PackageUse, ...], tuple[str, ...]]:
    """The packages that own the loaded files (``objects``: realpath -> size), and the
    files no package owns (the user's own)."""
    spellings = _Spellings(root)
    names = {path: spellings.of(path) for path in objects}
    db = read_dpkg(root, set().union(*names.values()) if names else set())
    owned: dict[str, list[str]] = {}
    orphans = []
    for path in sorted(objects):
        owner = None
        if db is not None:
            owner = next(
                (db.owner[p] for p in sorted(names[path]) if p in db.owner and db.owner[p] in db.packages), None
            )
        if owner is None:
            orphans.append(path)
        else:
            owned.setdefault(owner, []).append(path)
    uses = []
    for name, files in sorted(owned.items()):
        package = db.packages[name] if db is not None else None
        assert package is not None
        uses.append(
            PackageUse(name, package.version, package.installed_size, sum(objects[f] for f in files), tuple(files))
        )
    return tuple(uses), tuple(orphans)


# -- Alpine's apk database, and roots scanners cannot read ---------------------------

APK_DB = "/lib/apk/db/installed"
RPM_DBS = ("/var/lib/rpm/rpmdb.sqlite", "/var/lib/rpm/Packages", "/usr/lib/sysimage/rpm/rpmdb.sqlite")


def apk_installed(
    plan: ImagePlan, root: Root, names: dict[str, set[str]] | None = None
) -> tuple[tuple[Generated, ...], tuple[str, ...], dict[str, str]]:
    """The root's ``lib/apk/db/installed`` cut down to the packages one of whose files
    the image holds, each with only those files (F: folder, R: file and their a:/Z:
    lines); the owners by image path; warnings."""
    data = root.read_bytes(APK_DB, limit=MAX_DB_BYTES)
    if data is None:
        return (), (), {}
    wanted: dict[str, str] = {}  # as apk spells it (no leading /) -> image path
    for path, spellings in (spelt_entries(plan, root) if names is None else names).items():
        for spelt in spellings:
            wanted.setdefault(spelt.lstrip("/"), path)
    kept: list[str] = []
    owners: dict[str, str] = {}
    warnings: list[str] = []
    for number, block in enumerate(data.decode("utf-8", "surrogateescape").split("\n\n"), 1):
        lines = [line for line in block.split("\n") if line]
        if not lines:
            continue
        name = next((line[2:] for line in lines if line.startswith("P:")), "")
        wrong = APK_NAME.problem(name)
        if wrong is not None:
            warnings.append(f"{APK_DB}: package #{number}: P: {wrong}; skipped")
            continue
        filtered = _apk_files(lines, wanted, owners, name)
        if filtered is not None:
            kept.append("\n".join(filtered) + "\n")
    if not kept:
        return (), tuple(warnings), owners
    body = "\n".join(kept).encode("utf-8", "surrogateescape") + b"\n"
    generated = [Generated(APK_DB, body, reason="package metadata")]
    release = root.read_bytes("/etc/alpine-release", limit=1 << 12)
    if release is not None:
        generated.append(Generated("/etc/alpine-release", release, reason="distribution identity, for scanners"))
    return tuple(generated), tuple(warnings), owners


def _apk_files(lines: list[str], wanted: dict[str, str], owners: dict[str, str], name: str) -> list[str] | None:
    """One package's lines with only the wanted files; None when it has none."""
    head: list[str] = []
    files: list[str] = []
    folder: str | None = None
    folder_line: str | None = None
    keep = False
    for line in lines:
        key = line[:2]
        if key == "F:":
            folder, folder_line, keep = line[2:], line, False
        elif key == "R:":
            path = f"{folder}/{line[2:]}" if folder else line[2:]
            keep = path in wanted
            if keep:
                owners[wanted[path]] = name
                if folder_line is not None:
                    files.append(folder_line)
                    folder_line = None
                files.append(line)
        elif key in ("a:", "Z:"):
            if keep:
                files.append(line)
        elif key in ("M:",):  # a folder's mode line
            continue
        elif folder is None:
            head.append(line)
    return head + files if files else None


def unreadable_databases(root: Root) -> list[str]:
    """Package databases minify does not read (RPM): said plainly, not guessed at."""
    return [
        f"note: {path} is an RPM database, which minify does not read: scanners will see no packages in the image"
        for path in RPM_DBS
        if root.resolve(path).is_file
    ][:1]
