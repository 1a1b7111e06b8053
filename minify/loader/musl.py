"""musl's loader rules (ldso/dynlink.c load_library, path_open, fixup_rpath).

Differences from glibc that matter: reuse is by the requested name (the basename a
library was found under) and by inode, never by DT_SONAME; LD_LIBRARY_PATH comes
first; RUNPATH (or RPATH when there is no RUNPATH) is inherited from every object up the
chain; the default path comes from <prefix>/etc/ld-musl-<arch>.path; no class or
machine check: the first file that opens wins.
"""

from __future__ import annotations

import posixpath
import re

from minify.errors import NotRegularFile
from minify.loader.arch import Arch
from minify.loader.glibc import Settings, _step
from minify.loader.model import Candidate, How, LoaderKind, Node, Reader, SearchResult, Step, dlopen_caller
from minify.loader.tokens import musl_expand
from minify.root import Resolved, Root

#: ldso/dynlink.c: "c.pthread.rt.m.dl.util.xnet." after "lib" names the loader itself
_RESERVED = ("c.", "pthread.", "rt.", "m.", "dl.", "util.", "xnet.")
DEFAULT_PATH: tuple[str, ...] = ("/lib", "/usr/local/lib", "/usr/lib")


class MuslModel:
    kind = LoaderKind.MUSL

    def __init__(self, root: Root, arch: Arch, interpreter: str, settings: Settings, reader: Reader) -> None:
        self.root = root
        self.arch = arch
        self.interpreter = interpreter
        self.settings = settings
        self.reader = reader
        self.notes: list[str] = []
        self.path_file = self._path_file_name()
        data = root.read_bytes(self.path_file)
        if data is None:
            self.system_path = DEFAULT_PATH
            self.system_source = "musl default path"
        else:
            text = data.decode("utf-8", "replace")
            self.system_path = tuple(p for p in re.split(r"[:\n]", text) if p)
            self.system_source = self.path_file

    def _path_file_name(self) -> str:
        """<prefix>/etc/ld-musl-<arch>.path, prefix = dirname(dirname(PT_INTERP))."""
        prefix = posixpath.dirname(posixpath.dirname(self.interpreter))
        prefix = "" if prefix == "/" else prefix
        name = posixpath.basename(self.interpreter)
        arch = name[len("ld-musl-") :].split(".so", 1)[0] if name.startswith("ld-musl-") else self.arch.musl
        return f"{prefix}/etc/ld-musl-{arch}.path"

    def origin_of_program(self, resolved: Resolved) -> str:
        return posixpath.dirname(resolved.path)

    def reserved(self, name: str) -> bool:
        if name == self.interpreter:
            return True
        return name.startswith("lib") and name[3:].startswith(_RESERVED)

    def reuse_keys(self, node: Node) -> tuple[str, ...]:
        """musl matches only the names libraries were searched under (their
        "shortname"), never DT_SONAME; closure.py adds those names."""
        return ()

    def preloads(self) -> list[tuple[str, str]]:
        return [(name, "LD_PRELOAD") for name in self.settings.preload]

    def find_dlopen(self, name: str, program: Node) -> SearchResult:
        """Where a dlopen() by the C library finds ``name`` for ``program``."""
        return self.find(name, dlopen_caller(program))

    def find(self, name: str, requester: Node) -> SearchResult:
        steps: list[Step] = []
        if "/" in name:
            path = name if name.startswith("/") else posixpath.join(self.settings.cwd, name)
            resolved = self.root.resolve(path)
            if resolved.exists:
                self.check(resolved)
                return SearchResult(Candidate(path, resolved, How.DIRECT_PATH, path), ())
            return SearchResult(None, (Step("direct path", path, "no such file"),))
        if self.settings.library_path is not None:
            dirs = tuple(p for p in re.split(r"[:\n]", self.settings.library_path) if p)
            hit = self._in_dirs(name, dirs, How.LD_LIBRARY_PATH, "LD_LIBRARY_PATH", steps)
            if hit:
                return SearchResult(hit, tuple(steps))
        for node in requester.chain():
            raw = node.info.runpath if node.info.runpath is not None else node.info.rpath
            if not raw:
                continue
            kind = "RUNPATH" if node.info.runpath is not None else "RPATH"
            source = f"{kind} of {node.path}"
            text = musl_expand(raw, node.origin)
            if text is None:
                steps.append(Step(source, None, "ignored: musl drops a path with a $ other than $ORIGIN"))
                continue
            dirs = tuple(p for p in re.split(r"[:\n]", text) if p)
            how = How.RUNPATH if kind == "RUNPATH" else How.RPATH
            hit = self._in_dirs(name, dirs, how, source, steps)
            if hit:
                return SearchResult(hit, tuple(steps))
        hit = self._in_dirs(name, self.system_path, How.MUSL_PATH, self.system_source, steps)
        return SearchResult(hit, tuple(steps))

    def _in_dirs(self, name: str, dirs: tuple[str, ...], how: How, source: str, steps: list[Step]) -> Candidate | None:
        for directory in dict.fromkeys(dirs):
            path = f"{directory.rstrip('/')}/{name}"
            absolute = path if path.startswith("/") else posixpath.join(self.settings.cwd, path)
            resolved = self.root.resolve(absolute)
            if resolved.exists:
                self.check(resolved)
                return Candidate(absolute, resolved, how, directory)
            _step(steps, Step(source, directory, "not found"))
        return None

    def check(self, resolved: Resolved) -> str | None:
        """musl takes the first file that opens; mapping it is what fails."""
        if resolved.is_dir:
            raise NotRegularFile(self.root.host_path(resolved.path), "is a directory, not a library")
        return None
