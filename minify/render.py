"""Turn an ``Analysis`` into text: tree, ldd-style list, JSON, DOT, GraphML.

Everything here is a pure function of the analysis; JSON goes through one encoder
with sorted keys so the same analysis always prints the same bytes.
"""

from __future__ import annotations

import json
import posixpath
from typing import TYPE_CHECKING, Any

from minify.analysis.closure import Analysis, Dependency, LoadedObject, ProgramClosure
from minify.analysis.hints import Hint
from minify.loader.model import How
from minify.text import escape, human_size, layer_size, printable, some

if TYPE_CHECKING:
    from minify.plan.image import ImagePlan
    from minify.plan.packages import PackageUse

FORMATS = ("tree", "list", "json", "dot", "graphml", "svg", "png")
JSON_SCHEMA_VERSION = 1
#: What ``minify.plan.packages.packages_used`` returns.
Packages = tuple[tuple["PackageUse", ...], tuple[str, ...]]


Hints = dict[str, tuple[Hint, ...]]


def render(
    analysis: Analysis,
    fmt: str,
    hints: Hints | None = None,
    *,
    everything: bool = False,
    packages: Packages | None = None,
    sizes: bool = False,
    package_view: bool = True,
) -> str:
    """``packages`` (from ``minify.plan.packages.packages_used``) adds the packages view to
    the tree and JSON formats (unless not ``package_view``: then it only gives the
    sizes their totals per package), ``sizes`` where the bytes go."""
    if fmt == "tree":
        text = tree(analysis, hints or {}, everything=everything)
        extra = package_lines(packages) if packages and package_view else []
        extra += size_lines(analysis, packages) if sizes else []
        return printable(text + "".join(f"{line}\n" for line in extra))
    if fmt == "list":
        return printable(ldd_list(analysis))
    if fmt == "json":
        data = as_data(analysis, hints or {})
        if packages is not None and package_view:
            data["packages"] = packages_data(packages)
        if sizes:
            data["sizes"] = sizes_data(analysis, packages)
        return dumps(data)
    if fmt == "dot":
        from minify.graph import to_dot  # a picture's modules only when one is asked for

        return to_dot(analysis)
    if fmt == "graphml":
        from minify.graph import to_graphml

        return to_graphml(analysis)
    raise ValueError(f"unknown format {fmt!r}")


def _tag(dep: Dependency) -> str:
    if dep.how is None:
        return "not found"
    if dep.how in (How.RPATH, How.RUNPATH, How.LD_LIBRARY_PATH, How.MUSL_PATH):
        return f"{dep.how.value} {dep.via}"
    return dep.how.value


def tree(analysis: Analysis, hints: Hints | None = None, *, everything: bool = False) -> str:
    """Each program's dependency tree. Like libtree, a library and its subtree are
    shown once, where the loader first loads it; ``everything`` also shows every later
    request for an already loaded library (ldd -v style)."""
    out: list[str] = []
    for program in analysis.programs:
        out.extend(_program_tree(program, everything=everything))
        out.extend(f"hint: {h}" for h in (hints or {}).get(program.path, ()))
        out.append("")
    if analysis.skipped:
        out.append(f"skipped {len(analysis.skipped)} file(s) that are not ELF programs:")
        out.extend(f"  {s.path}: {s.reason}" for s in analysis.skipped[:20])
        if len(analysis.skipped) > 20:
            out.append(f"  ... and {len(analysis.skipped) - 20} more")
        out.append("")
    objects = analysis.objects()
    sizes = [o.size for o in objects.values()]
    if objects:
        out.append(
            f"summary: {len(analysis.programs)} input(s), {len(objects)} file(s), {human_size(sum(sizes))}; "
            f"a FROM scratch image of them: about {human_size(layer_size(sizes))}"
        )
    return "\n".join(out).rstrip("\n") + "\n"


def _program_tree(p: ProgramClosure, *, everything: bool = False) -> list[str]:
    if p.error:
        return [f"{p.path}: error: {p.error}"]
    if p.kind == "static":
        return [f"{p.path} [static: no interpreter, no libraries] ({p.machine})"]
    head = f"{p.path} ({p.loader}, {p.machine}, interpreter {p.interpreter})"
    if p.realpath != p.path:
        head += f" -> {p.realpath}"
    children, hidden = _children(p, everything=everything)
    lines = [head, *_Tree(p, children).lines()]
    if p.vdso:
        lines.append(f"└── {p.vdso} [kernel: mapped by the kernel, not a file]")
    if p.interpreter:
        lines.append(f"interpreter: {p.interpreter} [PT_INTERP]")
    if hidden:
        what = "request for a library" if hidden == 1 else "requests for libraries"
        lines.append(f"({hidden} more {what} already loaded: --all shows them)")
    lines.extend(_missing_lines(p))
    lines.extend(f"error: {e}" for e in p.version_errors)
    lines.extend(f"note: {n}" for n in p.notes)
    return [line for line in lines if line]


def _children(p: ProgramClosure, *, everything: bool) -> tuple[dict[str, list[Dependency]], int]:
    """Each object's requests, and how many were left out: a library already loaded
    is shown where it was first loaded, unless ``everything``."""
    children: dict[str, list[Dependency]] = {}
    hidden = 0
    for dep in p.dependencies:
        if dep.kind == "interpreter":
            continue
        if not everything and dep.how in (How.ALREADY_LOADED, How.INTERPRETER) and dep.requester != p.realpath:
            hidden += 1
            continue
        children.setdefault(dep.requester, []).append(dep)
    return children, hidden


class _Tree:
    """The requests drawn as a tree, each object expanded once, where first loaded."""

    def __init__(self, p: ProgramClosure, children: dict[str, list[Dependency]]) -> None:
        self.p = p
        self.children = children
        self.paths = {o.realpath: o.path for o in p.objects}
        self.expanded: set[str] = {p.realpath}
        self.out: list[str] = []

    def lines(self) -> list[str]:
        self._walk(self.p.realpath, "")
        return self.out

    def _walk(self, real: str, prefix: str) -> None:
        deps = self.children.get(real, [])
        for i, dep in enumerate(deps):
            last = i == len(deps) - 1 and not (real == self.p.realpath and self.p.vdso)
            branch = "└── " if last else "├── "
            if dep.target is None:
                self.out.append(f"{prefix}{branch}{dep.name} [not found]")
                continue
            shown = self.paths.get(dep.target, dep.target)
            label = f"{dep.name} => {shown}" if dep.name != shown else shown
            kind = "" if dep.kind == "needed" else f" ({dep.kind})"
            self.out.append(f"{prefix}{branch}{label} [{_tag(dep)}]{kind}")
            fresh = dep.how not in (How.ALREADY_LOADED, How.SAME_FILE, How.INTERPRETER)
            if fresh and dep.target not in self.expanded:
                self.expanded.add(dep.target)
                self._walk(dep.target, prefix + ("    " if last else "│   "))


def _missing_lines(p: ProgramClosure) -> list[str]:
    """Each name not found, with every place the loader looked."""
    paths = {o.realpath: o.path for o in p.objects}
    lines = []
    for dep in p.dependencies:
        if dep.target is None and dep.kind not in ("auxiliary", "preload"):
            lines.append(f"missing: {dep.name} (needed by {paths.get(dep.requester, dep.requester)}); searched:")
            if not dep.searched:
                lines.append("    nowhere: no search path applies")
            lines.extend(
                f"    {s.source}: {s.directory + ': ' if s.directory else ''}{s.outcome}" for s in dep.searched
            )
    return lines


def ldd_list(analysis: Analysis) -> str:
    out: list[str] = []
    many = len(analysis.programs) > 1
    for p in analysis.programs:
        if many:
            out.append(f"{p.path}:")
        out.extend(_ldd_lines(p))
    return "\n".join(out) + "\n"


def _ldd_lines(p: ProgramClosure) -> list[str]:
    if p.error:
        return [f"\terror: {p.error}"]
    if p.kind == "static":
        return ["\tstatically linked"]
    lines = [f"\t{p.vdso} (kernel)"] if p.vdso else []
    paths = {o.realpath: o.path for o in p.objects}
    for dep in p.dependencies:
        if dep.kind == "interpreter":
            continue
        if dep.target is None:
            if dep.kind not in ("auxiliary", "preload"):
                lines.append(f"\t{dep.name} => not found")
        elif dep.how in (How.ALREADY_LOADED, How.SAME_FILE, How.INTERPRETER):
            continue
        elif "/" in dep.name:
            lines.append(f"\t{paths[dep.target]}")
        else:
            lines.append(f"\t{dep.name} => {paths[dep.target]}")
    if p.interpreter:
        lines.append(f"\t{p.interpreter}" + ("" if p.interpreter not in p.missing else " => not found"))
    return lines


def as_data(analysis: Analysis, hints: Hints | None = None) -> dict[str, Any]:
    """The documented JSON schema (see README, "JSON output")."""
    hints = hints or {}
    objects = sorted(analysis.objects().values(), key=lambda o: o.realpath)
    return {
        "schema": JSON_SCHEMA_VERSION,
        "root": analysis.root,
        "inputs": [_input_data(p, hints.get(p.path, ())) for p in analysis.programs],
        "objects": [_object_data(o) for o in objects],
        "edges": _edges_data(analysis),
        "skipped": [{"path": s.path, "reason": s.reason} for s in analysis.skipped],
    }


def _input_data(p: ProgramClosure, hints: tuple[Hint, ...]) -> dict[str, Any]:
    return {
        "path": p.path,
        "realpath": p.realpath,
        "kind": p.kind,
        "loader": p.loader,
        "interpreter": p.interpreter,
        "machine": p.machine,
        "closure": list(p.closure),
        "missing": list(p.missing),
        "version_errors": list(p.version_errors),
        "error": p.error,
        "notes": list(p.notes),
        "vdso": p.vdso,
        "hints": [{"preset": h.preset, "reason": h.reason, "objects": list(h.objects)} for h in hints],
    }


def _object_data(o: LoadedObject) -> dict[str, Any]:
    return {
        "realpath": o.realpath,
        "path": o.path,
        "soname": o.soname,
        "size": o.size,
        "role": o.role.value,
        "needed": list(o.needed),
        "rpath": o.rpath,
        "runpath": o.runpath,
    }


def _edges_data(analysis: Analysis) -> list[dict[str, Any]]:
    """Every distinct request of every program, sorted; a miss with its search trail."""
    edges = []
    seen = set()
    for p in analysis.programs:
        for d in p.dependencies:
            key = (d.requester, d.name, d.target)
            if key in seen:
                continue
            seen.add(key)
            searched = [{"source": s.source, "directory": s.directory, "outcome": s.outcome} for s in d.searched]
            edges.append(
                {
                    "from": d.requester,
                    "to": d.target,
                    "name": d.name,
                    "kind": d.kind,
                    "how": d.how.value if d.how else None,
                    "via": d.via,
                    "searched": searched if d.target is None else [],
                }
            )
    edges.sort(key=lambda e: (e["from"], e["name"], e["to"] or ""))
    return edges


def dumps(data: Any) -> str:
    """One line of JSON, keys sorted: deterministic, and written by the C encoder
    (``indent`` would switch json to its pure-Python encoder, 5x slower on a corpus)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"


def to_json(analysis: Analysis, hints: Hints | None = None) -> str:
    return dumps(as_data(analysis, hints))


def sizes_data(analysis: Analysis, packages: Packages | None = None, *, top: int = 10) -> dict[str, Any]:
    """Where the bytes go: the heaviest objects with their share of the total and the
    chain of requests that pulled each in, and (with ``packages``) the bytes per package."""
    import networkx as nx

    objects = analysis.objects()
    total = sum(o.size for o in objects.values())
    g = analysis.graph
    starts = [p.realpath for p in analysis.programs if p.realpath in g]
    heaviest = []
    for obj in sorted(objects.values(), key=lambda o: (-o.size, o.realpath))[:top]:
        chain: list[str] = []
        for start in starts:
            try:
                path = nx.shortest_path(g, start, obj.realpath)
            except (nx.NetworkXNoPath, nx.NodeNotFound):
                continue
            if not chain or len(path) < len(chain):
                chain = path
        share = obj.size / total if total else 0.0
        heaviest.append({"realpath": obj.realpath, "size": obj.size, "share": round(share, 4), "chain": chain})
    out: dict[str, Any] = {"total": total, "files": len(objects), "heaviest": heaviest}
    if packages is not None:
        uses, orphans = packages
        out["packages"] = sorted(
            ({"name": u.name, "size": u.copied} for u in uses), key=lambda p: (-p["size"], p["name"])
        )
        out["no_package"] = sum(objects[p].size for p in orphans if p in objects)
    return out


def size_lines(analysis: Analysis, packages: Packages | None = None) -> list[str]:
    data = sizes_data(analysis, packages)
    names = {o.realpath: o.soname or posixpath.basename(o.path) for o in analysis.objects().values()}
    lines = [f"sizes: {data['files']} file(s), {human_size(data['total'])}; the heaviest:"]
    for item in data["heaviest"]:
        chain = " -> ".join(names.get(step, posixpath.basename(step)) for step in item["chain"])
        lines.append(f"  {human_size(item['size']):>9} {100 * item['share']:5.1f}%  {chain}")
    if "packages" in data:
        by_package = some([f"{p['name']} {human_size(p['size'])}" for p in data["packages"]], 8)
        lines.append(f"  by package: {by_package}; no package: {human_size(data['no_package'])}")
    return lines


def plan_size_lines(plan: ImagePlan, top: int = 3) -> list[str]:
    """The heaviest files of a plan, their share, and the requests that bring each in."""
    total = plan.total_size or 1
    loads: dict[str, list[str]] = {}
    for source, target, _ in plan.requests:
        loads.setdefault(source, []).append(target)
    chains = {p: [p] for p in plan.programs}
    queue = list(plan.programs)
    while queue:  # breadth first: the shortest chain to each file
        here = queue.pop(0)
        for there in loads.get(here, []):
            if there not in chains:
                chains[there] = [*chains[here], there]
                queue.append(there)
    lines = []
    for entry in sorted(plan.files, key=lambda e: (-e.size, e.path))[:top]:
        chain = " -> ".join(posixpath.basename(p) for p in chains.get(entry.path, [entry.path]))
        lines.append(f"  {human_size(entry.size):>9} {100 * entry.size / total:5.1f}%  {escape(chain)}")
    return lines


def package_lines(packages: Packages) -> list[str]:
    """One summary line, then a line per package: what of it the closure loads."""
    uses, orphans = packages
    installed = sum(u.installed for u in uses)
    copied = sum(u.copied for u in uses)
    share = f" ({100 * copied // installed}%)" if installed else ""
    lines = [
        f"packages: {len(uses)}, {human_size(installed)} installed; the closure loads {human_size(copied)} "
        f"of them{share}; {len(orphans)} file(s) of no package"
    ]
    for use in uses:
        lines.append(
            f"  {use.name} {use.version}: {len(use.files)} file(s), {human_size(use.copied)} "
            f"of {human_size(use.installed)}"
        )
    lines.extend(f"  (no package) {path}" for path in orphans)
    return lines


def packages_data(packages: Packages) -> dict[str, Any]:
    uses, orphans = packages
    return {
        "installed": [
            {
                "name": u.name,
                "version": u.version,
                "installed_size": u.installed,
                "copied_size": u.copied,
                "files": list(u.files),
            }
            for u in uses
        ],
        "no_package": list(orphans),
    }


def source_lines(report: dict[str, Any]) -> list[str]:
    """``--from``: the source image, what the new one keeps of it and why, and the
    biggest folders left out (what would be missing, if something is)."""
    kept = report["kept"]
    share = 100 * kept["bytes"] / (report["bytes"] or 1)
    why = ", ".join(f"{n} {kind}" for kind, n in kept["why"].items())
    lines = [
        f"source: {report['source']} ({report['digest'][:19]}), {report['platform']}, {report['layers']} layer(s): "
        f"{report['files']} files, {human_size(report['bytes'])}",
        f"kept: {kept['files']} files, {human_size(kept['bytes'])} ({share:.1f}% of the source): {why}",
    ]
    if report["dropped"]:
        lines.append("dropped, the biggest folders:")
        lines.extend(f"  {d['folder']}: {d['files']} files, {human_size(d['bytes'])}" for d in report["dropped"])
    return lines
