"""What the static closure cannot see, guessed from what the objects import.

A scratch image with the exact DT_NEEDED closure still fails at run time when the
program dlopen()s (NSS modules, gconv modules, libgcc_s, plugins) or reads data files
(CA certificates, zoneinfo, locales). Each hint says why, names the objects, and the
``--with`` preset that covers it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass

from minify.analysis.closure import Analysis, ProgramClosure
from minify.elf.notes import DlopenNote
from minify.errors import BadInput

#: (preset, imported symbols, why). preset None: no preset can cover it.
SYMBOL_RULES: tuple[tuple[str | None, frozenset[str], str], ...] = (
    (
        "nss",
        frozenset(
            {
                "getaddrinfo",
                "getnameinfo",
                "gethostbyname",
                "gethostbyname2",
                "gethostbyname_r",
                "gethostbyname2_r",
                "gethostbyaddr",
                "gethostbyaddr_r",
            }
        ),
        "host name lookups go through NSS: /etc/nsswitch.conf, /etc/hosts",
    ),
    (
        "nss",
        frozenset(
            {
                "getpwnam",
                "getpwuid",
                "getpwnam_r",
                "getpwuid_r",
                "getpwent",
                "getgrnam",
                "getgrgid",
                "getgrnam_r",
                "getgrgid_r",
                "getgrent",
                "initgroups",
                "getgrouplist",
                "getspnam",
            }
        ),
        "user and group lookups go through NSS: /etc/nsswitch.conf, /etc/passwd, /etc/group",
    ),
    ("gconv", frozenset({"iconv_open"}), "iconv loads gconv modules at run time"),
    (
        "libgcc_s",
        frozenset({"pthread_cancel", "pthread_exit"}),
        "glibc dlopens libgcc_s.so.1 to unwind threads that are cancelled or exit",
    ),
    (
        "tzdata",
        frozenset({"tzset", "localtime", "localtime_r", "mktime", "timelocal"}),
        "time zones are read from /usr/share/zoneinfo",
    ),
    ("locale", frozenset({"setlocale", "newlocale"}), "locales are read from /usr/lib/locale"),
    (
        "terminfo",
        frozenset({"setupterm", "tgetent", "initscr", "newterm", "tigetstr", "tigetflag", "tigetnum"}),
        "the terminal's capabilities are read from a terminfo entry (xterm, screen, ...)",
    ),
    (
        "tmp",
        frozenset(
            {"mkstemp", "mkstemp64", "mkstemps", "mkostemp", "mkostemps", "mkdtemp", "tmpfile", "tmpfile64", "tempnam"}
        ),
        "temporary files are made in /tmp, which a scratch image does not have",
    ),
    (
        None,
        frozenset({"dlopen", "dlmopen"}),
        "may load plugins at run time (dlopen): add them with --add, or record a run with --trace",
    ),
)
#: Every name some rule looks for: what hints gather from a closure's imports.
RULE_NAMES = frozenset().union(*(names for _, names, _ in SYMBOL_RULES))
#: Presets that weigh megabytes or change behaviour: hinted only when the program's own
#: code (the input, and libraries it finds through its own RPATH/RUNPATH) imports the
#: symbol. libstdc++ imports iconv_open, setlocale and localtime for every C++ program,
#: libidn2 and libunistring import iconv_open for every curl: UTF-8, UCS-4 and ASCII
#: conversions need no gconv module, and a container's C locale needs no locale data.
#: The configuration presets (nss, certs) weigh a few KB and are hinted from any object.
NEEDS_OWN_CODE = frozenset({"gconv", "locale", "tzdata", "libgcc_s"})
TLS_LIBRARIES = ("libssl.so", "libgnutls.so", "libnss3.so", "libmbedtls.so", "libwolfssl.so", "libcurl")


@dataclass(frozen=True)
class Hint:
    """Something a program may need at run time that no DT_NEEDED names, and the
    preset that brings it (``--with``), if there is one."""

    preset: str | None
    reason: str
    objects: tuple[str, ...]  # the objects (or symbols) that call for it

    def __str__(self) -> str:
        fix = f"; add --with {self.preset}" if self.preset else ""
        return f"{', '.join(self.objects)}: {self.reason}{fix}"


def hints_for(
    program: ProgramClosure,
    imports: Callable[[str], frozenset[str]],
    notes: Callable[[str], tuple[DlopenNote, ...]] = lambda _: (),
) -> tuple[Hint, ...]:
    """Hints for one program, from the names its closure's objects import (only those
    some rule looks for are gathered) and their dlopen notes."""
    if program.kind != "dynamic" or program.error:
        return ()
    imported: dict[str, list[str]] = {}
    for obj in program.objects:
        for name in imports(obj.realpath) & RULE_NAMES:
            imported.setdefault(name, []).append(obj.path)
    out = [*_symbol_hints(program, imported), *_library_hints(program)]
    for obj in program.objects:
        for note in notes(obj.realpath):
            if note.priority == "suggested":
                what = f"suggests dlopen of {', '.join(note.sonames)} ({note.feature}: {note.description})"
                out.append(Hint(None, what + " in its .note.dlopen; add it with --add if you want it", (obj.path,)))
    merged: dict[tuple[str | None, str], Hint] = {}
    for hint in out:
        merged.setdefault((hint.preset, hint.reason), hint)
    return tuple(merged.values())


def _symbol_hints(program: ProgramClosure, imported: dict[str, list[str]]) -> list[Hint]:
    """One hint per rule whose symbols the closure imports, naming who imports them."""
    own = own_objects(program)
    out = []
    for preset, names, reason in SYMBOL_RULES:
        by_object: dict[str, list[str]] = {}
        for name in sorted(names & imported.keys()):
            for path in imported[name]:
                if preset in NEEDS_OWN_CODE and path not in own:
                    continue  # a library every such program links is no evidence
                by_object.setdefault(posixpath.basename(path), []).append(name)
        users = [f"{obj} ({', '.join(dict.fromkeys(syms))})" for obj, syms in sorted(by_object.items())]
        if users:
            out.append(Hint(preset, reason, tuple(users[:4]) + (("...",) if len(users) > 4 else ())))
    return out


def _library_hints(program: ProgramClosure) -> list[Hint]:
    """Hints from the libraries loaded: C++ without libgcc_s, TLS without certificates."""
    out = []
    sonames = {posixpath.basename(o.path) for o in program.objects} | {o.soname or "" for o in program.objects}
    if any(s.startswith("libstdc++.so") for s in sonames) and "libgcc_s.so.1" not in sonames:
        out.append(Hint("libgcc_s", "C++ exceptions and thread exit unwind through libgcc_s.so.1", ("libstdc++",)))
    tls = sorted(s for s in sonames if s.startswith(TLS_LIBRARIES))
    if tls:
        out.append(Hint("certs", "a TLS library needs the CA certificates to verify peers", tuple(tls)))
    return out


def own_objects(program: ProgramClosure) -> set[str]:
    """The program's own code: the input, and what it finds through its own search
    paths (rpath, runpath, a path), not what the system's cache or folders give."""
    own = {program.objects[0].path} if program.objects else set()
    for dep in program.dependencies:
        if dep.target is not None and dep.how is not None and dep.how.value in ("rpath", "runpath", "direct path"):
            own.update(o.path for o in program.objects if o.realpath == dep.target)
    return own


def for_analysis(analysis: Analysis) -> dict[str, tuple[Hint, ...]]:
    """Hints for every program of an analysis, by program path. A file that cannot be
    read gives no hints (the analysis reports it)."""
    reader = analysis.target.reader

    def imports(inner: str) -> frozenset[str]:
        try:
            return reader.import_names(reader.root.resolve(inner))
        except BadInput:
            return frozenset()

    def notes(inner: str) -> tuple[DlopenNote, ...]:
        try:
            return reader.dlopen_notes(reader.root.resolve(inner))[0]
        except BadInput:
            return ()

    return {p.path: hints_for(p, imports, notes) for p in analysis.programs}


def presets_called_for(hints: tuple[Hint, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(h.preset for h in hints if h.preset))
