"""What a Node.js app loads, read statically as Node's own resolver would.

For ``node FILE`` (an image's entrypoint, or a ``#!/usr/bin/env node`` script), the
``require``/``import`` graph is followed from the entry file: relative files, packages
in ``node_modules`` folders up the tree and in the global folders (``NODE_PATH``,
``$HOME/.node_modules``, ``PREFIX/lib/node``, and Debian's ``/usr/share/nodejs`` and
``/usr/lib/TRIPLET/nodejs``), a package's ``main`` or its ``exports`` map. Builtins
(``http``, ``node:fs``) are the binary's own. A package ships whole (it reads its own
files), with what its modules require; a ``.node`` addon brings its ELF closure.

Debian's nodejs is built with some builtins shared with other packages: libnode names
their files by absolute path (``/usr/share/nodejs/undici/undici-fetch.js``) and loads
them at start, so the JavaScript paths the binary and libnode spell out come too.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from dataclasses import dataclass, field

from minify.errors import MinifyError
from minify.root import Root
from minify.text import some

NODE_NAME = re.compile(r"(node|nodejs)(\d+)?$")
#: Node's builtin modules (``require('module').builtinModules``, Node 18 to 22).
BUILTINS = frozenset(
    "assert assert/strict async_hooks buffer child_process cluster console constants crypto dgram "
    "diagnostics_channel dns dns/promises domain events fs fs/promises http http2 https inspector "
    "inspector/promises module net os path path/posix path/win32 perf_hooks process punycode querystring "
    "readline readline/promises repl stream stream/consumers stream/promises stream/web string_decoder sys "
    "timers timers/promises tls trace_events tty url util util/types v8 vm wasi worker_threads zlib".split()
)
#: What ``require`` tries after the name itself, and what an index may be.
FILE_SUFFIXES = ("", ".js", ".json", ".node", ".mjs", ".cjs")
INDEXES = ("index.js", "index.json", "index.node", "index.mjs", "index.cjs")
#: The conditions of an ``exports`` map Node matches (both module systems: a package
#: may be required and imported).
CONDITIONS = frozenset({"node", "require", "import", "default", "module-sync", "node-addons"})
#: Bounds: modules read per run, bytes of one source, exports nesting.
MAX_MODULES = 20_000
MAX_SOURCE = 8 << 20
MAX_DEPTH = 32
#: A specifier in ``require('x')``, ``import('x')``, ``import 'x'`` and ``... from 'x'``.
_SPEC = re.compile(r"""(?:\brequire\s*\(\s*|\bimport\s*\(\s*|\bfrom\s*|\bimport\s+)(['"])([^'"\n\\]{1,512})\1""")
_COMMENT = re.compile(r"/\*.*?\*/|^\s*//[^\n]*", re.S | re.M)
#: An absolute JavaScript path spelt out in a binary (a NUL-terminated C string).
_JS_PATH = re.compile(rb"(/[\w.+@/-]{1,400}\.(?:js|mjs|cjs))\x00")
MAX_BINARY = 512 << 20
CHUNK = 16 << 20


@dataclass(frozen=True)
class NodeNeeds:
    """Files to ship (modules, whole packages, package.json scopes), the ``.node``
    addons among them (their closures come too), and notes."""

    files: tuple[str, ...] = ()
    addons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    why: dict[str, str] = field(default_factory=dict)  # path -> why, for the lock file


def is_node(path: str) -> bool:
    return NODE_NAME.fullmatch(posixpath.basename(path)) is not None


def command_line(argv: tuple[str, ...], workdir: str) -> tuple[list[str], list[str]]:
    """What ``node ARGS...`` runs: (the entry script, ``-r``/``--require``/``--import``
    preloads), per Node's option syntax. ``-e``/``-p`` code has no entry file."""
    args, preloads = list(argv[1:]), list[str]()
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-e", "--eval", "-p", "--print", "-c", "--check", "-i", "--interactive", "-"):
            return [], preloads
        if arg in ("-r", "--require", "--import", "--loader", "--experimental-loader") and i + 1 < len(args):
            preloads.append(args[i + 1])
            i += 2
            continue
        if arg.startswith(("--require=", "--import=")):
            preloads.append(arg.split("=", 1)[1])
        elif arg in ("--input-type", "--title", "--conditions", "-C", "--max-old-space-size"):
            i += 1  # takes a value
        if arg.startswith("-"):
            i += 1
            continue
        return [posixpath.normpath(posixpath.join(workdir, arg))], preloads
    return [], preloads


@dataclass
class _Resolver:
    view: Root
    globals: list[str]
    files: dict[str, str] = field(default_factory=dict)  # path -> why
    addons: dict[str, None] = field(default_factory=dict)
    packages: set[str] = field(default_factory=set)
    queue: list[tuple[str, bool]] = field(default_factory=list)  # (module, the app's own)
    missing: dict[str, str] = field(default_factory=dict)  # specifier -> the app file asking
    read: int = 0

    def is_file(self, path: str) -> bool:
        return _is(self.view, path, file=True)

    def is_dir(self, path: str) -> bool:
        return _is(self.view, path, file=False)

    def manifest(self, folder: str) -> dict[str, object] | None:
        """A package.json as a JSON object (None when missing or not one)."""
        path = f"{folder}/package.json"
        data = self.view.read_bytes(path, limit=1 << 20) if self.is_file(path) else None
        try:
            loaded = json.loads(data) if data is not None else None
        except (ValueError, RecursionError):
            return None
        return loaded if isinstance(loaded, dict) else None


def node_needs(
    view: Root, node: str, scripts: list[str], preloads: list[str], *, env: dict[str, str], binaries: list[str]
) -> NodeNeeds:
    """What ``node`` running ``scripts`` (paths in the root) with ``preloads`` loads,
    per the root's own files; ``binaries`` are node's and libnode's paths, whose
    spelt-out JavaScript files are its shared builtins."""
    real = view.realpath(node)
    prefix = posixpath.dirname(posixpath.dirname(real))
    home = env.get("HOME", "/root")
    found = [p for p in env.get("NODE_PATH", "").split(":") if p.startswith("/")]
    found += [f"{home}/.node_modules", f"{home}/.node_libraries", f"{prefix}/lib/node"]
    found += [f"/usr/lib/{n}/nodejs" for n in view.listdir("/usr/lib") if n.endswith("-linux-gnu") or "-linux-" in n]
    found += ["/usr/lib/nodejs", "/usr/share/nodejs"]
    resolver = _Resolver(view, [g for g in dict.fromkeys(found) if _is(view, g, file=False)])
    for path in _shared_builtins(view, binaries):
        resolver.files[path] = "node builtin (libnode names it)"
    base = posixpath.dirname(scripts[0]) if scripts else "/"
    for spec in preloads:
        _require(resolver, spec, f"{base}/[preload]", app=True)
    for script in scripts:
        if resolver.is_file(script):
            _take(resolver, script, "node app", app=True)
    _drain(resolver)
    notes = []
    if resolver.missing:
        named = [f"{spec} ({who})" for spec, who in resolver.missing.items()]
        notes.append(f"note: requires and imports nothing in the root resolves: {some(named, 8)}")
    if resolver.files:
        notes.append(f"note: {len(resolver.files)} Node.js modules, packages and builtin files come with the app")
    return NodeNeeds(tuple(resolver.files), tuple(resolver.addons), tuple(notes), dict(resolver.files))


def _is(view: Root, path: str, *, file: bool) -> bool:
    """A regular file (or a folder) of the root; a path that cannot be resolved is none."""
    try:
        found = view.resolve(path)
    except MinifyError:
        return False
    return found.is_file if file else found.is_dir


def _shared_builtins(view: Root, binaries: list[str]) -> list[str]:
    """The JavaScript files node's own binaries name by absolute path and the root
    has (Debian's ``NODE_SHARED_BUILTIN_*_PATH``)."""
    out: dict[str, None] = {}
    for binary in binaries:
        try:
            fd, st = view.open_file(view.resolve(binary).path, None)
        except MinifyError:
            continue
        try:
            offset, limit = 0, min(st.st_size, MAX_BINARY)
            while offset < limit:
                chunk = os.pread(fd, CHUNK + 512, offset)
                if not chunk:
                    break
                for match in _JS_PATH.finditer(chunk):
                    path = match.group(1).decode("ascii", "replace")
                    if "/../" not in path and "//" not in path:
                        out[path] = None
                offset += CHUNK
        finally:
            os.close(fd)
    return [p for p in out if _is(view, p, file=True)]


def _take(resolver: _Resolver, path: str, why: str, *, app: bool) -> None:
    """Ship a module file, its package scope's package.json, and read it (JavaScript)
    or bring its closure (an addon)."""
    if path in resolver.files:
        return
    resolver.files[path] = why
    scope = _scope(resolver, posixpath.dirname(path))
    if scope is not None:
        resolver.files.setdefault(f"{scope}/package.json", "node package scope (its type)")
    if path.endswith(".node"):
        resolver.addons[path] = None
    elif not path.endswith(".json") and len(resolver.files) < MAX_MODULES:
        resolver.queue.append((path, app))


def _scope(resolver: _Resolver, folder: str) -> str | None:
    """The nearest folder with a package.json (Node reads its "type" for every module)."""
    for _ in range(MAX_DEPTH * 8):
        if resolver.is_file(f"{folder}/package.json"):
            return folder
        if folder == "/" or posixpath.basename(folder) == "node_modules":
            return None
        folder = posixpath.dirname(folder)
    return None


def _drain(resolver: _Resolver) -> None:
    while resolver.queue and resolver.read < MAX_MODULES:
        path, app = resolver.queue.pop()
        resolver.read += 1
        data = resolver.view.read_bytes(path, limit=MAX_SOURCE)
        if data is None:
            continue
        text = _COMMENT.sub("", data.decode("utf-8", "replace"))
        for match in _SPEC.finditer(text):
            _require(resolver, match.group(2), path, app=app)


def _require(resolver: _Resolver, spec: str, source: str, *, app: bool) -> None:
    if spec.startswith("node:") or spec in BUILTINS:
        return
    folder = posixpath.dirname(source)
    if spec.startswith(("./", "../", "/")) or spec in (".", ".."):
        found = _as_file(resolver, posixpath.normpath(posixpath.join(folder, spec)))
    else:
        found = _package(resolver, spec, folder)
    if found is None:
        if app:
            resolver.missing.setdefault(spec, source)
        return
    _take(resolver, found, f"node require {spec}", app=app and "/node_modules/" not in found)


def _as_file(resolver: _Resolver, base: str) -> str | None:
    """LOAD_AS_FILE, then LOAD_AS_DIRECTORY (``main``, then an index)."""
    found = _first(resolver, [base + suffix for suffix in FILE_SUFFIXES])
    if found is not None or not resolver.is_dir(base):
        return found
    manifest = resolver.manifest(base)
    main = manifest.get("main") if manifest is not None else None
    if isinstance(main, str) and main:
        target = posixpath.normpath(posixpath.join(base, main))
        found = _first(resolver, [*(target + s for s in FILE_SUFFIXES), *(f"{target}/{i}" for i in INDEXES)])
    return found or _first(resolver, [f"{base}/{index}" for index in INDEXES])


def _first(resolver: _Resolver, paths: list[str]) -> str | None:
    return next((p for p in paths if resolver.is_file(p)), None)


def _package(resolver: _Resolver, spec: str, folder: str) -> str | None:
    """A bare specifier: ``node_modules`` folders from ``folder`` up, then the global
    folders; a package found ships whole."""
    parts = spec.split("/")
    count = 2 if spec.startswith("@") else 1
    name, sub = "/".join(parts[:count]), "/".join(parts[count:])
    if not name or any(p in ("", ".", "..") for p in parts):
        return None
    for where in (*_node_modules(folder), *resolver.globals):
        package = f"{where}/{name}"
        if resolver.is_dir(package):
            found = _in_package(resolver, package, sub)
            if found is not None:
                _whole(resolver, package)
                return found
        elif not sub and (found := _as_file(resolver, package)) is not None:
            return found
    return None


def _node_modules(folder: str) -> list[str]:
    out = []
    for _ in range(MAX_DEPTH * 8):
        if posixpath.basename(folder) != "node_modules":
            out.append(posixpath.join(folder, "node_modules"))
        if folder == "/":
            break
        folder = posixpath.dirname(folder)
    return out


def _in_package(resolver: _Resolver, package: str, sub: str) -> str | None:
    manifest = resolver.manifest(package)
    exports = manifest.get("exports") if manifest is not None else None
    if exports is None:
        return _as_file(resolver, f"{package}/{sub}" if sub else package)
    targets = _exported(exports, "./" + sub if sub else ".")
    found = [t for t in (posixpath.normpath(f"{package}/{t}") for t in targets) if resolver.is_file(t)]
    for extra in found[1:]:  # other conditions' files (import and require): shipped too
        _take(resolver, extra, f"node package {posixpath.basename(package)} (exports)", app=False)
    return found[0] if found else None


def _exported(exports: object, key: str) -> list[str]:
    """The files an ``exports`` map gives for ``key`` under any condition Node may
    match here, subpath patterns (``./*``) included."""
    if isinstance(exports, dict) and any(isinstance(k, str) and k.startswith(".") for k in exports):
        target = exports.get(key)
        if target is None:
            for pattern, value in exports.items():
                head, star, tail = str(pattern).partition("*")
                if star and key.startswith(head) and key.endswith(tail) and len(key) >= len(head) + len(tail):
                    middle = key[len(head) : len(key) - len(tail)]
                    return [t.replace("*", middle) for t in _conditioned(value, 0)]
            return []
        return _conditioned(target, 0)
    return _conditioned(exports, 0) if key == "." else []


def _conditioned(value: object, depth: int) -> list[str]:
    if depth > MAX_DEPTH:
        return []
    if isinstance(value, str):
        return [value] if value.startswith("./") else []
    if isinstance(value, list):
        return [t for v in value[:64] for t in _conditioned(v, depth + 1)]
    if isinstance(value, dict):
        return [t for k, v in value.items() if k in CONDITIONS for t in _conditioned(v, depth + 1)]
    return []


def _whole(resolver: _Resolver, package: str) -> None:
    """A package's every file, and what its JavaScript requires."""
    if package in resolver.packages:
        return
    resolver.packages.add(package)
    resolver.files.setdefault(package, f"node package {posixpath.basename(package)}")
    for item in resolver.view.walk(package):
        inner = item.path[len(package) :]
        if item.target is None and inner.endswith((".js", ".mjs", ".cjs")) and "/node_modules/" not in inner:
            if len(resolver.queue) + resolver.read < MAX_MODULES:
                resolver.queue.append((item.path, False))
        elif item.path.endswith(".node"):
            resolver.addons[item.path] = None
