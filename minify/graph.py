"""Pictures of a closure and of an image plan: DOT and GraphML text from the
``networkx`` graph, SVG and PNG drawn by Graphviz when it is installed.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from typing import TYPE_CHECKING

from minify.analysis.closure import Analysis
from minify.plan.image import Entry, ImagePlan
from minify.text import escape, human_size

if TYPE_CHECKING:
    import networkx as nx


def render_image(analysis: Analysis, fmt: str) -> bytes:
    """The DOT graph drawn by Graphviz's ``dot`` (through pydot) as SVG or PNG."""
    return draw(to_dot(analysis), fmt)


def draw(dot_text: str, fmt: str) -> bytes:
    """DOT text drawn by Graphviz's ``dot`` as ``fmt`` (svg, png); one line when
    Graphviz is not installed."""
    import shutil

    from minify.errors import MinifyError

    if shutil.which("dot") is None:
        raise MinifyError(
            f"drawing {fmt} needs Graphviz's dot: install the graphviz package (apt-get install graphviz)"
        )
    import pydot

    graphs = pydot.graph_from_dot_data(dot_text) or []
    if len(graphs) != 1:
        raise MinifyError("the graph could not be read back for drawing")
    data = graphs[0].create(prog="dot", format=fmt)
    return data if isinstance(data, bytes) else str(data).encode()


#: Why a file of a plan is there, by the first word of its first reason, as drawn.
PLAN_STYLE = {
    "input": ("#9ecae1", "#08519c"),
    "closure": ("#f0f0f0", "#525252"),
    "preset": ("#c7e9c0", "#238b45"),
    "added": ("#fdd0a2", "#a63603"),
    "traced": ("#dadaeb", "#54278f"),
    "generated": ("#ffffcc", "#b8860b"),
}


def _plan_kind(entry: Entry) -> str:
    reason = entry.reasons[0] if entry.reasons else ""
    if entry.content is not None:
        return "generated"
    if reason.startswith("input"):
        return "input"
    if reason.startswith("--with"):
        return "preset"
    if reason.startswith(("--add", "symlink in")):
        return "added"
    if reason.startswith(("traced", ".note.dlopen")):
        return "traced" if reason.startswith("traced") else "added"
    return "closure"


def plan_dot(plan: ImagePlan) -> str:
    """The plan drawn: every file of the image in a box per folder, coloured by why it
    is there (input, closure, preset, added, traced, generated), with the loader's
    requests between the objects as edges."""
    import pydot

    graph = pydot.Dot(graph_type="digraph", rankdir="LR", fontname="Helvetica", compound="true")
    clusters: dict[str, pydot.Subgraph] = {}
    for entry in plan.files:
        folder = posixpath.dirname(entry.path)
        cluster = clusters.get(folder)
        if cluster is None:
            name = "cluster_" + hashlib.sha256(folder.encode("utf-8", "surrogateescape")).hexdigest()[:12]
            cluster = pydot.Subgraph(name, label=_dot_quote(escape(folder)), style="rounded", color="#bdbdbd")
            clusters[folder] = cluster
        kind = _plan_kind(entry)
        fill, colour = PLAN_STYLE[kind]
        label = f"{escape(posixpath.basename(entry.path))}\n{human_size(entry.size)}"
        cluster.add_node(
            pydot.Node(
                _dot_quote(escape(entry.path)),
                label=_dot_quote(label),
                shape="box",
                style="filled",
                fillcolor=_dot_quote(fill),
                color=_dot_quote(colour),
                tooltip=_dot_quote(escape("; ".join(entry.reasons))),
                kind=kind,
            )
        )
    for folder in sorted(clusters):
        graph.add_subgraph(clusters[folder])
    for source, target, how in plan.requests:
        graph.add_edge(pydot.Edge(_dot_quote(escape(source)), _dot_quote(escape(target)), label=_dot_quote(how)))
    return str(graph.to_string())


def _clean_graph(analysis: Analysis) -> nx.DiGraph:
    """The graph with every name and value escaped: DOT and XML (GraphML) cannot hold
    control characters or bytes that are not UTF-8."""
    import networkx as nx

    g = analysis.graph
    mapping = {n: escape(str(n)) for n in g.nodes}
    clean = nx.relabel_nodes(g, mapping)
    for _, data in clean.nodes(data=True):
        for key, value in list(data.items()):
            data[key] = escape(value) if isinstance(value, str) else value
    for _, _, data in clean.edges(data=True):
        for key, value in list(data.items()):
            data[key] = escape(value) if isinstance(value, str) else value
    clean.graph = {k: escape(v) if isinstance(v, str) else v for k, v in g.graph.items()}
    _present(clean, analysis)
    return clean


#: How each role is drawn: shape, style, fill and line colour.
ROLE_STYLE = {
    "input": ("box", "filled,bold", "#9ecae1", "#08519c"),
    "interpreter": ("box", "filled", "#c7e9c0", "#238b45"),
    "library": ("box", "filled", "#f0f0f0", "#525252"),
    "filtee": ("box", "filled,dashed", "#fdd0a2", "#a63603"),
    "preload": ("box", "filled,dashed", "#fdd0a2", "#a63603"),
    "missing": ("box", "filled,dashed", "#fcbba1", "#cb181d"),
    "vdso": ("ellipse", "dotted", "#ffffff", "#737373"),
}


def _present(g: nx.DiGraph, analysis: Analysis) -> None:
    """Attributes for looking at the graph, beside the ones for tools: a label with the
    soname and size, a colour and shape by role, a line as heavy as the object's share
    of the bytes, and each edge labelled by how the loader found the name."""
    total = sum(data.get("size", 0) for _, data in g.nodes(data=True)) or 1
    g.graph.update(rankdir="LR", fontname="Helvetica")
    for node, data in g.nodes(data=True):
        role = data.get("role", "library")
        shape, style, fill, colour = ROLE_STYLE.get(role, ROLE_STYLE["library"])
        name = data.get("soname") or posixpath.basename(str(data.get("path") or data.get("requested") or node))
        size = int(data.get("size", 0))
        if role == "missing":
            data["label"] = f"{data.get('requested', name)}\nnot found"
            data["tooltip"] = f"searched: {data.get('searched') or 'nowhere'}"
        elif role == "vdso":
            data["label"] = f"{node}\n(kernel)"
            data["tooltip"] = "mapped by the kernel, not a file"
        else:
            data["label"] = f"{name}\n{human_size(size)}"
            data["tooltip"] = str(data.get("realpath", node))
        share = size / total
        data.update(shape=shape, style=style, fillcolor=fill, color=colour, fontname="Helvetica")
        data["penwidth"] = f"{1 + 5 * share:.2f}"
        data["share"] = f"{share:.4f}"
    origins = {o.realpath for p in analysis.programs for o in p.objects if "$ORIGIN" in (o.rpath or o.runpath or "")}
    for source, _, data in g.edges(data=True):
        how = str(data.get("how", ""))
        origin = " $ORIGIN" if source in origins and how in ("rpath", "runpath") else ""
        data["label"] = f"{how}{origin}"
        data["fontname"] = "Helvetica"
        if how == "not found":
            data.update(color="#cb181d", style="dashed")
        elif data.get("kind") == "vdso":
            data["style"] = "dotted"


def to_dot(analysis: Analysis) -> str:
    import networkx as nx

    g = _clean_graph(analysis)
    graph_attrs = dict(g.graph)
    # pydot treats ':' as a port separator and keywords specially: quote every name,
    # and escape quotes and backslashes inside.
    quoted = nx.relabel_nodes(g, {n: _dot_quote(n) for n in g.nodes})
    for _, data in quoted.nodes(data=True):
        for key, value in list(data.items()):
            data[key] = _dot_quote(value)
    for _, _, data in quoted.edges(data=True):
        for key, value in list(data.items()):
            data[key] = _dot_quote(value)
    quoted.graph = {}
    dot = nx.nx_pydot.to_pydot(quoted)
    for key, value in graph_attrs.items():
        if key in ("rankdir", "fontname"):
            dot.set(key, _dot_quote(value))
    return str(dot.to_string())


def _dot_quote(value: object) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def to_graphml(analysis: Analysis) -> str:
    import networkx as nx

    buf = io.BytesIO()
    g = _clean_graph(analysis)
    g.graph = {k: v for k, v in g.graph.items() if k in ("root",)}
    nx.write_graphml(g, buf)
    return buf.getvalue().decode("utf-8")
