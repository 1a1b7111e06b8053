"""The JVM's own layout (issue 20): what ``java`` needs that no ELF closure shows.

The ``java`` launcher finds ``lib/server/libjvm.so`` through ``lib/jvm.cfg`` and opens
it by full path, and the JVM then reads ``lib/modules`` (the class library), ``conf/``
(security policy, ``java.security``), ``lib/security/cacerts``, ``lib/tzdb.dat`` and
loads the JDK's own libraries from ``lib/`` by path as classes need them. So a ``java``
input (or entrypoint) brings its ``JAVA_HOME``'s ``lib/``, ``conf/`` and ``release``,
each library with its closure, less the libraries whose closure the root cannot give
(AWT, sound, splash screen need X11, ALSA, image libraries a headless JRE lacks: the
JVM loads them only for those features) and links that dangle in the root (Debian's
``src.zip``). Those left out are named.
"""

from __future__ import annotations

import posixpath
import stat
from dataclasses import dataclass

from minify.analysis.closure import analyze
from minify.analysis.target import Target
from minify.root import Root
from minify.text import some

#: Entries of a JAVA_HOME's lib/ read at most (a JDK has a few hundred).
MAX_ENTRIES = 20_000


@dataclass(frozen=True)
class JavaNeeds:
    files: tuple[str, ...]
    notes: tuple[str, ...]
    why: str = ""  # the lock file's reason for ``app``
    app: tuple[str, ...] = ()  # the app's own: its class path entries, jar or source file


def java_home(view: Root, program: str) -> str | None:
    """The JAVA_HOME of a ``java`` launcher: the folder above its ``bin/``, when that
    holds ``lib/jvm.cfg`` or ``lib/server/libjvm.so``."""
    real = view.realpath(program)
    if posixpath.basename(real) != "java":
        return None
    home = posixpath.dirname(posixpath.dirname(real))
    if view.resolve(f"{home}/lib/jvm.cfg").exists or view.resolve(f"{home}/lib/server/libjvm.so").is_file:
        return home
    return None


def java_needs(target: Target, home: str) -> JavaNeeds:
    """The files of ``home`` the JVM reads, and notes on what is left out."""
    view = target.root
    files: list[str] = []
    libraries: list[str] = []
    dangling: list[str] = []
    for count, item in enumerate(view.walk(f"{home}/lib")):
        if count >= MAX_ENTRIES:
            break
        if item.target is not None and not view.resolve(item.path).exists:
            dangling.append(item.path)
        elif posixpath.basename(item.path).endswith(".so") and view.resolve(item.path).is_file:
            libraries.append(item.path)
        elif item.target is not None or stat.S_ISREG(item.mode):
            files.append(item.path)
    incomplete = _incomplete(target, libraries)
    files += [lib for lib in libraries if lib not in incomplete]
    files += [p for p in (f"{home}/conf", f"{home}/release") if view.resolve(p).exists]
    notes = [f"note: {home}/lib, conf and release come with java, the JVM's own layout (libjvm.so is opened by path)"]
    if incomplete:
        named = [f"{posixpath.basename(lib)} (needs {some(need, 2)})" for lib, need in incomplete.items()]
        notes.append(f"note: JDK libraries left out, their closure is not in the root: {some(named, 6)}")
    if dangling:
        notes.append(f"note: links in {home}/lib that dangle in the root, left out: {some(dangling, 4)}")
    return JavaNeeds(tuple(files), tuple(notes))


def loaded_first(libraries: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The library the launcher opens by path before the others: ``lib/server/libjvm.so``
    (modelled as preloaded, its soname meets their need for it)."""
    return tuple(lib for lib in libraries if lib.endswith("/server/libjvm.so"))


def _incomplete(target: Target, libraries: list[str]) -> dict[str, tuple[str, ...]]:
    """The libraries whose closure misses a library, with what it misses. A name the
    JDK itself has is not missing: the JVM loads ``libjvm.so`` by path before
    ``libjava.so``, whose need for it the loaded soname then meets."""
    if not libraries:
        return {}
    own = {posixpath.basename(lib) for lib in libraries}
    analysis = analyze(libraries, root=target, cwd="/", hwcaps="baseline", cpuinfo="", preload=loaded_first(libraries))
    out = {}
    for program in analysis.programs:
        lacking = tuple(name for name in program.missing if name not in own)
        if lacking:
            out[program.path] = lacking
    return out


#: Launcher options that name class or module path entries, and all that take a value.
_PATHS = frozenset({"-cp", "-classpath", "--class-path", "-p", "--module-path"})
_VALUED = _PATHS | frozenset(
    "--upgrade-module-path --add-modules --limit-modules --add-reads --add-exports --add-opens --patch-module "
    "--source --enable-native-access".split()
)


def app_files(view: Root, argv: tuple[str, ...], workdir: str, env: dict[str, str]) -> JavaNeeds:
    """What a ``java ARGS...`` command line names as the app: its class path and
    module path entries (a ``dir/*`` entry is the folder's jars), a ``-jar`` file, or a
    source file (``java Hello.java``); with none given, ``CLASSPATH`` or the working
    folder (unless it is ``/``)."""
    paths = _named_paths(list(argv[1:]))
    if paths is None:
        paths = env["CLASSPATH"].split(":") if env.get("CLASSPATH") else ["."]
    found: list[str] = []
    for entry in paths:
        folder = entry[:-2] if entry.endswith("/*") else entry
        path = posixpath.normpath(posixpath.join(workdir, folder or "."))
        if path != "/" and view.resolve(path).exists:
            found.append(path)
    notes = (f"note: {some(found, 4)} come with java: the app's class path",) if found else ()
    return JavaNeeds((), notes, "java class path", tuple(found))


def _named_paths(args: list[str]) -> list[str] | None:
    """The paths the launcher's options name (None: no class path given)."""
    paths: list[str] | None = None
    i = 0
    while i < len(args):
        arg, value = args[i], args[i + 1] if i + 1 < len(args) else None
        if arg in _PATHS and value is not None:
            paths = [*(paths or []), *value.split(":")]
        elif arg.startswith(("--class-path=", "--module-path=")):
            paths = [*(paths or []), *arg.split("=", 1)[1].split(":")]
        elif arg == "-jar" and value is not None:
            return [*(paths or []), value]
        elif arg in ("-m", "--module") or not arg.startswith("-"):
            return [*(paths or []), arg] if arg.endswith(".java") else paths
        i += 2 if arg in _VALUED else 1
    return paths
