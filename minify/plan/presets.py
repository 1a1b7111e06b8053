"""``--with PRESET``: what a program loads or reads at run time that its DT_NEEDED
closure does not show, taken from the root being analysed (never invented), except
the few configuration files a scratch image must have and no root provides as such
(passwd and group with the distroless users, a files+dns nsswitch.conf, a hosts file).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from minify.analysis.closure import Analysis, ProgramClosure, dlopen_path
from minify.errors import MinifyError, PresetUnavailable
from minify.loader.arch import arch_of
from minify.loader.glibc import ldso_facts
from minify.loader.model import LoaderKind, ProgramKind
from minify.plan.image import Generated
from minify.root import Root
from minify.text import is_number

PRESETS = ("nss", "certs", "tzdata", "gconv", "locale", "libgcc_s", "terminfo", "tmp", "package-data")
#: ncurses' search order for compiled terminfo entries (after $TERMINFO and ~/.terminfo).
TERMINFO_DIRS = ("/etc/terminfo", "/lib/terminfo", "/usr/share/terminfo")
#: The terminals a container is most often run from: `docker run -t` sets xterm.
DEFAULT_TERMS = ("xterm", "xterm-256color", "screen", "tmux-256color", "linux")
CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Alpine, macOS-like
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
)
LOCALES = ("/usr/lib/locale/C.utf8", "/usr/lib/locale/C.UTF-8")
ZONEINFO = "/usr/share/zoneinfo"

NSSWITCH = """\
# Written by minify (--with nss): local files, then DNS for hosts.
passwd:     files
group:      files
shadow:     files
hosts:      files dns
networks:   files
protocols:  files
services:   files
ethers:     files
rpc:        files
"""
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
USERS = (("root", 0, "/root"), ("nobody", 65534, "/nonexistent"), ("nonroot", 65532, "/home/nonroot"))
NONROOT = "65532:65532"
#: distroless's nonroot home: owned by nonroot, so the program can write there.
NONROOT_HOME = ("/home/nonroot", 0o755, (65532, 65532))


@dataclass(frozen=True)
class Additions:
    """Everything the presets add to an image."""

    files: tuple[str, ...] = ()  # paths in the root: files, or folders copied whole
    preset_of: tuple[tuple[str, str], ...] = ()  # (file, the preset that added it)
    elf: tuple[str, ...] = ()  # ELF files among them whose closures are needed too
    generated: tuple[Generated, ...] = ()
    dirs: tuple[tuple[str, int, tuple[int, int]], ...] = ()  # (path, mode, owner) of empty folders
    env: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Request:
    """What a preset may look at: the root, the analysed programs, the subsets asked for."""

    root: Root
    analysis: Analysis
    tz: tuple[str, ...]
    charsets: tuple[str, ...]
    terms: tuple[str, ...] = ()


@dataclass
class _Collect:
    files: list[str] = field(default_factory=list)
    preset_of: dict[str, str] = field(default_factory=dict)
    elf: list[str] = field(default_factory=list)
    generated: list[Generated] = field(default_factory=list)
    dirs: list[tuple[str, int, tuple[int, int]]] = field(default_factory=list)
    env: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def marks(self) -> tuple[int, ...]:
        """Where each list ends now, to take back what a preset added."""
        return (len(self.files), len(self.elf), len(self.generated), len(self.dirs), len(self.env), len(self.notes))

    def rewind(self, marks: tuple[int, ...]) -> None:
        lists: tuple[list[Any], ...] = (self.files, self.elf, self.generated, self.dirs, self.env, self.notes)
        for items, mark in zip(lists, marks, strict=True):
            del items[mark:]

    def freeze(self) -> Additions:
        gen = {g.path: g for g in self.generated}
        return Additions(
            tuple(dict.fromkeys(self.files)),
            tuple(self.preset_of.items()),
            tuple(dict.fromkeys(self.elf)),
            tuple(gen.values()),
            tuple(dict.fromkeys(self.dirs)),
            tuple(dict.fromkeys(self.env)),
            tuple(self.notes),
        )


def parse_with(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--with a,b --with c`` -> ("a", "b", "c"); unknown names refused."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    for name in names:
        if name not in (*PRESETS, "auto"):
            raise MinifyError(f"--with {name}: unknown preset (known: {', '.join((*PRESETS, 'auto'))})")
    return tuple(dict.fromkeys(names))


def users_files(root: Root | None = None) -> tuple[Generated, ...]:
    """/etc/passwd and /etc/group with root, nobody (65534) and nonroot (65532).

    The names of ids the root's own files name are taken from them: group 65534 is
    "nogroup" on Debian and Ubuntu, "nobody" elsewhere (nginx's `user nobody nogroup`)."""
    users = {uid: name for name, uid, _ in USERS}
    groups = dict(users)
    if root is not None:
        users.update(_names(root, "/etc/passwd", users.keys()))
        groups.update(_names(root, "/etc/group", groups.keys()))
    passwd = "".join(f"{users[i]}:x:{i}:{i}:{users[i]}:{home}:/sbin/nologin\n" for _, i, home in USERS)
    group = "".join(f"{groups[i]}:x:{i}:\n" for _, i, _ in USERS)
    why = "users: " + ", ".join(f"{users[i]} ({i})" for _, i, _ in USERS)
    return (
        Generated("/etc/passwd", passwd.encode(), reason=why),
        Generated("/etc/group", group.encode(), reason=why),
    )


def _names(root: Root, path: str, ids: object) -> dict[int, str]:
    """Names the root's passwd or group file gives the ``ids`` (first entry wins)."""
    out: dict[int, str] = {}
    text = (root.read_bytes(path, limit=1 << 20) or b"").decode("utf-8", "replace")
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and is_number(fields[2]) and re.fullmatch(r"[a-z_][a-z0-9_.-]*", fields[0]):
            number = int(fields[2])
            if number in ids and number not in out:  # type: ignore[operator]
                out[number] = fields[0]
    return out


def resolve(
    names: tuple[str, ...],
    analysis: Analysis,
    *,
    tz: tuple[str, ...] = (),
    charsets: tuple[str, ...] = (),
    terms: tuple[str, ...] = (),
    optional: frozenset[str] = frozenset(),
) -> Additions:
    """The files, folders, generated files and environment the presets call for. A
    preset the root cannot serve fails the run when it was named; one in ``optional``
    (what ``--with auto`` chose) is left out with a note saying what the root lacks."""
    req = _Request(analysis.target.root, analysis, tz, charsets, terms)
    out = _Collect()
    missing: list[str] = []
    for name in names:
        marks = out.marks()
        problem = _PRESET_FUNCS[name](req, out)
        if problem and name in optional:
            out.rewind(marks)
            out.notes.append(f"note: --with auto: {name} left out: {problem}")
            continue
        for path in out.files[marks[0] :]:
            out.preset_of.setdefault(path, name)
        if problem:
            missing.append(f"--with {name}: {problem}")
    if missing:
        raise PresetUnavailable("; ".join(missing))
    return out.freeze()


def _certs(req: _Request, out: _Collect) -> str | None:
    for bundle in CA_BUNDLES:
        if req.root.resolve(bundle).is_file:
            out.files.append(bundle)
            out.env.append(("SSL_CERT_FILE", bundle))
            return None
    return f"no CA bundle in the root (looked for {', '.join(CA_BUNDLES)})"


_ZONE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_+.-]*(/[A-Za-z0-9_+-][A-Za-z0-9_+.-]*)*")


def _tzdata(req: _Request, out: _Collect) -> str | None:
    zoneinfo = req.root.resolve(ZONEINFO)
    if not zoneinfo.is_dir:
        return f"no {ZONEINFO} in the root"
    if not req.tz:
        out.files.append(ZONEINFO)
        return None
    bad = [zone for zone in req.tz if not _ZONE.fullmatch(zone) or ".." in zone.split("/")]
    if bad:
        return f"--tz: not time zone names: {', '.join(repr(z) for z in bad)} (like Europe/Paris or UTC)"
    absent = []
    for zone in req.tz:
        found = req.root.resolve(f"{ZONEINFO}/{zone}")
        if not found.is_file or not found.path.startswith(zoneinfo.path + "/"):
            absent.append(zone)
    if absent:
        return f"--tz: time zones not in {ZONEINFO}: {', '.join(absent)}"
    out.files.extend(f"{ZONEINFO}/{zone}" for zone in req.tz)
    return None


_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def _terminfo(req: _Request, out: _Collect) -> str | None:
    """The compiled terminfo entries of the terminals asked for (``--term``), where
    ncurses looks for them; by default the common ones this root has."""
    wanted = req.terms or DEFAULT_TERMS
    bad = [t for t in wanted if not _TERM.fullmatch(t)]
    if bad:
        return f"--term: not terminal names: {', '.join(repr(t) for t in bad)}"
    absent = []
    for term in wanted:
        found = next(
            (f"{d}/{term[0]}/{term}" for d in TERMINFO_DIRS if req.root.resolve(f"{d}/{term[0]}/{term}").is_file), None
        )
        if found is None:
            absent.append(term)
        else:
            out.files.append(found)
    if req.terms and absent:
        return f"--term: no terminfo entry in the root for {', '.join(absent)} (looked in {', '.join(TERMINFO_DIRS)})"
    if len(absent) == len(wanted):
        return f"no terminfo entries in the root (looked in {', '.join(TERMINFO_DIRS)})"
    if absent:
        out.notes.append(f"note: terminfo: the root has no entry for {', '.join(absent)}")
    return None


def _locale(req: _Request, out: _Collect) -> str | None:
    for folder in LOCALES:
        if req.root.resolve(folder).is_dir:
            out.files.append(folder)
            out.env.append(("LANG", "C.UTF-8"))
            return None
    return f"no C.UTF-8 locale in the root (looked for {', '.join(LOCALES)})"


def _tmp(req: _Request, out: _Collect) -> str | None:
    del req  # /tmp needs nothing from the root
    out.dirs.append(("/tmp", 0o1777, (0, 0)))
    return None


def _programs(analysis: Analysis) -> list[ProgramClosure]:
    return [
        p for p in analysis.programs if p.kind is ProgramKind.DYNAMIC and p.loader is LoaderKind.GLIBC and not p.error
    ]


def _libgcc_s(req: _Request, out: _Collect) -> str | None:
    return _dlopened(req, out, ("libgcc_s.so.1",))


def _dlopened(req: _Request, out: _Collect, sonames: tuple[str, ...]) -> str | None:
    programs = _programs(req.analysis)
    if not programs:
        return "no glibc program among the inputs"
    for soname in sonames:
        found = dlopen_path(req.analysis, programs[0], soname)
        if found is None:
            return f"{soname} not found where the loader would look"
        out.files.append(found)
        out.elf.append(found)
    return None


def _glibc_version(req: _Request) -> tuple[int, int] | None:
    """The release of the programs' glibc, read from their ld.so."""
    for program in _programs(req.analysis):
        header = req.analysis.target.reader.header(req.root.resolve(program.realpath))
        arch = arch_of(header)
        if arch is not None and program.interpreter:
            return ldso_facts(req.root, program.interpreter, arch, req.analysis.target.reader).version
    return None


def _nss(req: _Request, out: _Collect) -> str | None:
    out.generated.append(Generated("/etc/nsswitch.conf", NSSWITCH.encode(), reason="--with nss"))
    out.generated.extend(users_files(req.root))
    out.generated.append(Generated("/etc/hosts", HOSTS.encode(), reason="--with nss"))
    out.dirs.append(NONROOT_HOME)
    version = _glibc_version(req)
    if version is not None and version < (2, 34):
        # before glibc 2.34 the files and dns services were modules, not part of libc
        return _dlopened(req, out, ("libnss_files.so.2", "libnss_dns.so.2", "libresolv.so.2"))
    out.notes.append("note: nss: files and dns are built into this glibc (>= 2.34); no libnss_* modules needed")
    return None


def _gconv(req: _Request, out: _Collect) -> str | None:
    folder = _gconv_folder(req.root, req.analysis)
    if folder is None:
        return "no gconv folder next to the C library in the root"
    names = req.root.listdir(folder)
    configs = [f"{folder}/{n}" for n in names if n.startswith("gconv-modules")]
    out.files.extend(configs)
    if not req.charsets:
        modules = [f"{folder}/{n}" for n in names if n.endswith(".so")]
    else:
        wanted, unknown = _modules_for(req.root, folder, req.charsets)
        if unknown:
            return f"charsets with no gconv module: {', '.join(unknown)}"
        modules = [f"{folder}/{m}.so" for m in sorted(wanted)]
    gconv = req.root.resolve(folder).path
    for module in modules:
        found = req.root.resolve(module)
        # a module name from gconv-modules is a file of the gconv folder, nothing else
        if found.is_file and found.path.startswith(gconv + "/") and ".." not in module.split("/"):
            out.files.append(module)
            out.elf.append(module)
    return None


def _gconv_folder(root: Root, analysis: Analysis) -> str | None:
    for program in _programs(analysis):
        for obj in program.objects:
            if (obj.soname or "").startswith("libc.so"):
                folder = posixpath.join(posixpath.dirname(obj.path), "gconv")
                if root.resolve(folder).is_dir:
                    return folder
    return None


_UTF = {"UTF-8", "UTF8", "ISO-10646/UTF8", "ISO-10646/UTF-8", "INTERNAL", "UCS-4", "UCS4", "ANSI_X3.4-1968", "ASCII"}


def _modules_for(root: Root, folder: str, charsets: tuple[str, ...]) -> tuple[set[str], list[str]]:
    """Module files (without .so) that convert to or from the named charsets, from
    gconv-modules and gconv-modules.d/*.conf (glibc iconv/gconv_conf.c syntax)."""
    alias: dict[str, str] = {}
    modules: list[tuple[str, str, str]] = []
    texts = [root.read_bytes(f"{folder}/gconv-modules") or b""]
    texts.extend(
        root.read_bytes(f"{folder}/gconv-modules.d/{n}") or b"" for n in root.listdir(f"{folder}/gconv-modules.d")
    )
    for text in texts:
        for line in text.decode("utf-8", "replace").splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 3 and words[0] == "alias":
                alias[words[1].upper()] = words[2].upper()
            elif len(words) >= 4 and words[0] == "module":
                modules.append((words[1].upper(), words[2].upper(), words[3]))
    wanted: set[str] = set()
    unknown: list[str] = []
    for charset in charsets:
        key = re.sub(r"/*$", "", charset.upper()) + "//"
        key = alias.get(key, key)
        if key.rstrip("/") in _UTF:
            continue  # built into libc
        hits = {m for a, b, m in modules if key in (a, b)}
        if not hits:
            unknown.append(charset)
        wanted |= hits
    return wanted, unknown


def _package_data(req: _Request, out: _Collect) -> str | None:
    """The data files of the programs' own packages (``minify.plan.packagedata``)."""
    from minify.plan.packagedata import program_data

    data = program_data(req.analysis)
    if not data:
        return "no package of the root's dpkg database owns the programs"
    for item in data:
        out.files.extend(item.files)
    return None


_PRESET_FUNCS = {
    "package-data": _package_data,
    "nss": _nss,
    "certs": _certs,
    "tzdata": _tzdata,
    "gconv": _gconv,
    "locale": _locale,
    "libgcc_s": _libgcc_s,
    "terminfo": _terminfo,
    "tmp": _tmp,
}
