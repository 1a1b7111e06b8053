"""The modules a Python app imports, found statically as its interpreter would (issue 20).

``python3 /app/app.py`` in an image needs the standard library modules it (and the
interpreter's own start-up: ``site``, ``encodings``) imports, the packages it uses from
``dist-packages``/``site-packages``, and their extension modules' closures; none of it
is ELF that the closure could follow. This reads the root the way ``sys.path`` is built
(the script's folder, the interpreter's ``lib/pythonX.Y`` and ``lib-dynload``, the site
folders and their ``.pth`` lines) and follows ``import`` statements with ``ast``,
transitively, bounded. A standard library module ships alone; a third-party package
ships whole (its data files and lazily imported modules with it) with its metadata
(``.dist-info``, which ``importlib.metadata`` reads). Imports an app makes that nothing
on the path provides are named; ``importlib.import_module(name)`` with a name built at
run time cannot be followed, and ``--trace`` is the way to see those.
"""

from __future__ import annotations

import ast
import posixpath
import re
import sys
from dataclasses import dataclass, field

from minify.root import Root
from minify.text import some

PYTHON_NAME = re.compile(r"python(3)(?:\.(\d+))?$")
#: Modules the interpreter imports before the app runs (``site`` imports the rest).
STARTUP = ("site", "encodings", "encodings.aliases", "encodings.utf_8", "encodings.latin_1", "encodings.ascii")
#: Standard library packages that ship whole: codecs are looked up by name at run time,
#: from C too (``socket.getaddrinfo`` encodes a host name with ``idna``).
WHOLE = ("encodings",)
#: Source files read per run, and bytes read of one.
MAX_MODULES = 20_000
MAX_SOURCE = 4 << 20
MAX_PTH_LINES = 1_000


@dataclass(frozen=True)
class PythonNeeds:
    """Files to ship (modules, whole third-party packages, their metadata), and notes."""

    files: tuple[str, ...]
    notes: tuple[str, ...]
    why: dict[str, str] = field(default_factory=dict)  # path -> why, for the lock file


def is_python(path: str) -> bool:
    return PYTHON_NAME.match(posixpath.basename(path)) is not None


@dataclass
class _Finder:
    view: Root
    stdlib: list[str]
    site: list[str]
    files: dict[str, str] = field(default_factory=dict)  # path -> why (the lock file's reason)
    done: set[str] = field(default_factory=set)
    queue: list[tuple[str, str]] = field(default_factory=list)  # (source file, its package)
    missing: dict[str, str] = field(default_factory=dict)  # module -> the app file that imports it
    read: int = 0


def python_needs(view: Root, interpreter: str, scripts: list[str], modules: list[str], code: str = "") -> PythonNeeds:
    """What ``interpreter`` running ``scripts`` (paths in the root), ``-m`` ``modules``
    or ``-c`` ``code`` imports, per the root's own files."""
    real = view.realpath(interpreter)
    match = PYTHON_NAME.match(posixpath.basename(real))
    prefix = posixpath.dirname(posixpath.dirname(real))
    version = f"3.{match.group(2)}" if match and match.group(2) else _version(view, prefix)
    if version is None:
        return PythonNeeds((), (f"note: {interpreter}: no lib/python3.X beside it, so its imports were not followed",))
    stdlib = [f"{prefix}/lib/python{version}", f"{prefix}/lib/python{version}/lib-dynload"]
    site = _site_folders(view, prefix, version)
    app_dirs = list(dict.fromkeys(posixpath.dirname(s) for s in scripts))  # sys.path[0]: one module at a time
    finder = _Finder(view, [d for d in (*app_dirs, *stdlib) if view.resolve(d).is_dir], site)
    for name in (*STARTUP, *_pth_imports(view, site), *modules):
        _module(finder, name, app=None)
    for package in (f"{folder}/{name}" for folder in stdlib for name in WHOLE):
        if view.resolve(package).is_dir:
            finder.files[package] = "python start-up (codecs are looked up by name)"
            _queue_package(finder, package, posixpath.basename(package))
    for script in scripts:
        finder.files[script] = "python app"
        finder.queue.append((script, ""))
    if code:
        _imports_of(finder, code, "<-c>", "", app="-c")
    _drain(finder, app_files=set(scripts))
    notes = []
    if finder.missing:
        names = [f"{m} ({who})" for m, who in finder.missing.items()]
        notes.append(f"note: imports that no folder of the root's sys.path provides: {some(names, 8)}")
    return PythonNeeds(tuple(finder.files), tuple(notes), dict(finder.files))


def _version(view: Root, prefix: str) -> str | None:
    for name in sorted(view.listdir(f"{prefix}/lib"), reverse=True):
        if re.fullmatch(r"python3\.\d+", name):
            return name[len("python") :]
    return None


def _site_folders(view: Root, prefix: str, version: str) -> list[str]:
    """The site folders of Debian's and upstream's layouts, as ``site`` adds them,
    and the folders their ``.pth`` files name."""
    folders = [
        f"/usr/local/lib/python{version}/dist-packages",
        "/usr/lib/python3/dist-packages",
        f"/usr/lib/python{version}/dist-packages",
        f"{prefix}/lib/python{version}/site-packages",
    ]
    found = [f for f in dict.fromkeys(folders) if view.resolve(f).is_dir]
    for folder in list(found):
        for line in _pth_lines(view, folder):
            if not line.startswith(("import ", "import\t")):
                extra = posixpath.normpath(posixpath.join(folder, line))
                if view.resolve(extra).is_dir and extra not in found:
                    found.append(extra)
    return found


def _pth_lines(view: Root, folder: str) -> list[str]:
    lines: list[str] = []
    for name in sorted(view.listdir(folder)):
        if name.endswith(".pth"):
            data = view.read_bytes(f"{folder}/{name}", limit=1 << 20) or b""
            lines += [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return [ln for ln in lines[:MAX_PTH_LINES] if not ln.startswith("#")]


def _pth_imports(view: Root, site: list[str]) -> list[str]:
    """Modules the ``import`` lines of ``.pth`` files import at start-up."""
    out: list[str] = []
    for folder in site:
        for line in _pth_lines(view, folder):
            if line.startswith(("import ", "import\t")):
                out += [name for name, _level in _names(line, "<.pth>")]
    return out


def _drain(finder: _Finder, app_files: set[str]) -> None:
    while finder.queue and finder.read < MAX_MODULES:
        source, package = finder.queue.pop(0)
        finder.read += 1
        data = finder.view.read_bytes(source, limit=MAX_SOURCE)
        if data:
            app = source if source in app_files else None
            _imports_of(finder, data.decode("utf-8", "replace"), source, package, app=app)


def _imports_of(finder: _Finder, text: str, source: str, package: str, app: str | None) -> None:
    """Follow the imports of one source file: all of an app's, a library's eager ones."""
    for name, level in _names(text, source, lazy=app is not None):
        if level:
            base = package.rsplit(".", level - 1)[0] if level > 1 else package
            name = f"{base}.{name}".strip(".") if name else base
        _module(finder, name, app=app)


def _names(text: str, source: str, *, lazy: bool = True) -> list[tuple[str, int]]:
    """(module, relative level) of every import in ``text``: ``import a.b``, ``from
    a import b`` (a, and a.b in case b is a module), ``importlib.import_module("a")``
    and ``__import__("a")`` with a constant name. Without ``lazy``, only what runs at
    import time (module and class level, in ``if``/``try`` blocks too), not the imports
    inside functions: a library's lazy imports are mostly optional features."""
    try:
        tree = ast.parse(text, filename=source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    out: list[tuple[str, int]] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            out += [(a.name, 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            out.append((base, node.level))
            out += [(f"{base}.{a.name}" if base else a.name, node.level) for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and _is_import_call(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.append((arg.value, 0))
        if lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return out


def _is_import_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__") and bool(node.args)


def _module(finder: _Finder, name: str, app: str | None) -> None:
    """Ship module ``name`` and its parent packages, outermost first; queue their
    sources. A top-level module the app imports that nothing provides is named, unless
    it is one this Python's standard library has (it may be built into the interpreter).
    A loop, not recursion: a hostile ``import a.a.a...`` is as deep as it is long."""
    if not name or not re.fullmatch(r"[\w.]+", name):
        return
    parts = name.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if prefix in finder.done:
            continue
        finder.done.add(prefix)
        if depth > 1:
            _submodule(finder, parts[:depth])
        elif not _top(finder, prefix) and app is not None and prefix not in sys.stdlib_module_names:
            finder.missing.setdefault(prefix, posixpath.basename(app))


def _top(finder: _Finder, top: str) -> bool:
    """A top-level module: a file or package of the standard library (shipped one
    module at a time), or a third-party package (shipped whole)."""
    for folder in finder.stdlib:
        if _ship(finder, folder, top, top):
            return True
    return any(_third_party(finder, folder, top) for folder in finder.site)


def _submodule(finder: _Finder, parts: list[str]) -> None:
    """``a.b.c`` inside package ``a.b`` of the standard library (a third-party package
    ships whole, every module of it read)."""
    for folder in finder.stdlib:
        package = posixpath.join(folder, *parts[:-1])
        if finder.view.resolve(package).is_dir:
            _ship(finder, package, parts[-1], ".".join(parts))


def _ship(finder: _Finder, folder: str, leaf: str, name: str) -> bool:
    view = finder.view
    package = f"{folder}/{leaf}"
    init = f"{package}/__init__.py"
    if view.resolve(init).is_file:
        _add_source(finder, init, name, f"python import {name}")
        return True
    if view.resolve(f"{folder}/{leaf}.py").is_file:
        _add_source(finder, f"{folder}/{leaf}.py", name.rpartition(".")[0], f"python import {name}")
        return True
    for entry in view.listdir(folder) if view.resolve(folder).is_dir else ():
        if entry.startswith(f"{leaf}.") and entry.endswith(".so") and entry.count(".") <= 3:
            finder.files[f"{folder}/{entry}"] = f"python import {name}"  # an extension module: its closure follows
            return True
    return view.resolve(package).is_dir  # a namespace package


def _add_source(finder: _Finder, path: str, package: str, why: str) -> None:
    if path not in finder.files:
        finder.files[path] = why
        finder.queue.append((path, package))


def _third_party(finder: _Finder, folder: str, top: str) -> bool:
    """A site package: the whole folder (or module file) and its metadata folders."""
    view = finder.view
    names = view.listdir(folder)
    hits = [n for n in names if n in (top, f"{top}.py") or (n.startswith(f"{top}.") and n.endswith(".so"))]
    if not hits:
        return False
    key = top.lower().replace("_", "-")
    for name in names:
        stem = name.split("-", 1)[0].lower().replace("_", "-")
        if name.endswith((".dist-info", ".egg-info")) and stem == key:
            finder.files[f"{folder}/{name}"] = f"python import {top} (its metadata)"
    for hit in hits:
        path = f"{folder}/{hit}"
        finder.files[path] = f"python import {top}"
        if hit.endswith(".py"):
            finder.queue.append((path, ""))
        elif view.resolve(path).is_dir:
            _queue_package(finder, path, top)
    return True


def _queue_package(finder: _Finder, path: str, top: str) -> None:
    """Every source file of a shipped package is read for what it imports."""
    for item in finder.view.walk(path):
        if item.path.endswith(".py") and item.target is None and finder.read + len(finder.queue) < MAX_MODULES:
            inner = posixpath.relpath(posixpath.dirname(item.path), path)
            package = top if inner == "." else f"{top}.{inner.replace('/', '.')}"
            finder.queue.append((item.path, package))


def command_line(argv: tuple[str, ...], workdir: str) -> tuple[list[str], list[str], str]:
    """What a ``python3 ARGS...`` command line runs: (scripts, ``-m`` modules, ``-c``
    code), per CPython's option syntax (``-X``/``-W`` take a value)."""
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-m", "-c") and i + 1 < len(args):
            return ([], [args[i + 1]], "") if arg == "-m" else ([], [], args[i + 1])
        if arg.startswith(("-m", "-c")) and len(arg) > 2:
            return ([], [arg[2:]], "") if arg[1] == "m" else ([], [], arg[2:])
        if arg in ("-X", "-W", "--check-hash-based-pycs"):
            i += 2
            continue
        if arg.startswith("-") and arg != "-":
            i += 1
            continue
        return [posixpath.normpath(posixpath.join(workdir, arg))], [], ""
    return [], [], ""
