"""The closure as a picture and as numbers: DOT that people can read (and tools still
parse), SVG and PNG drawn by Graphviz, the plan's graph, and where the bytes go."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import networkx as nx
import pydot
import pytest

from tests.conftest import MINIFY, Builder, cli, need_tool


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory, builder: Builder) -> dict[str, Path]:
    """A program with an $ORIGIN library, and one whose library is gone."""
    base = tmp_path_factory.mktemp("graph")
    lib = builder.lib(base / "app/lib/libapp.so.1", "app")
    origin = builder.prog(base / "app/bin/tool", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    gone = builder.lib(base / "gone/libgone.so.1", "gone")
    missing = builder.prog(base / "broken", src="hello.c", links=[gone], runpath=str(base / "gone"))
    gone.unlink()
    return {"origin": origin, "missing": missing, "curl": Path("/usr/bin/curl")}


def dot_of(path: Path) -> tuple[pydot.Dot, nx.DiGraph]:
    done = cli("analyze", str(path), "--format", "dot")
    assert done.returncode in (0, 1), done.stderr
    graphs = pydot.graph_from_dot_data(done.stdout)
    assert graphs is not None and len(graphs) == 1
    return graphs[0], nx.nx_pydot.from_pydot(graphs[0])


def unquote(value: object) -> str:
    return str(value).strip('"')


@pytest.mark.parametrize("name", ["origin", "missing", "curl"])
def test_dot_is_made_to_be_looked_at_and_still_parses(programs: dict[str, Path], name: str) -> None:
    dot, g = dot_of(programs[name])
    assert unquote(dot.get("rankdir")) == "LR"
    roles = {unquote(d["role"]) for _, d in g.nodes(data=True)}
    assert {"input", "interpreter", "vdso"} <= roles
    for _, data in g.nodes(data=True):
        label = unquote(data["label"])
        role = unquote(data["role"])
        assert unquote(data["fillcolor"]).startswith("#") and unquote(data["shape"]) in ("box", "ellipse")
        if role in ("input", "library", "interpreter"):
            size = int(unquote(data["size"]))
            assert "\n" in label and label.split("\n")[0] in (
                unquote(data["soname"]),
                os.path.basename(unquote(data["path"])),
            )
            assert size > 0 and float(unquote(data["penwidth"])) >= 1
    hows = {unquote(d["label"]) for _, _, d in g.edges(data=True)}
    assert "interpreter" in hows
    if name == "origin":
        assert "runpath $ORIGIN" in hows
    if name == "curl":
        assert "ld.so.cache" in hows
        sonames = {unquote(d["soname"]) for _, d in g.nodes(data=True) if unquote(d.get("soname", ""))}
        assert "libcurl.so.4" in sonames
    if name == "missing":
        (missing,) = [d for _, d in g.nodes(data=True) if unquote(d["role"]) == "missing"]
        assert unquote(missing["color"]) == "#cb181d" and "dashed" in unquote(missing["style"])
        assert "libgone.so.1" in unquote(missing["label"])
        assert "searched:" in unquote(missing["tooltip"]) and "RUNPATH" in unquote(missing["tooltip"])


def test_graphml_keeps_the_same_attributes(programs: dict[str, Path]) -> None:
    done = cli("analyze", str(programs["origin"]), "--format", "graphml")
    assert done.returncode == 0, done.stderr
    g = nx.parse_graphml(done.stdout)
    data = next(d for _, d in g.nodes(data=True) if d["role"] == "input")
    assert data["fillcolor"] == "#9ecae1" and "\n" in data["label"]
    assert any(d["label"] == "runpath $ORIGIN" for _, _, d in g.edges(data=True))


def png_size(data: bytes) -> tuple[int, int]:
    """Read a PNG the long way: chunks, IHDR, and every IDAT inflated to the size that
    width, height and colour type imply."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat, header = 8, b"", None
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind = data[at + 4 : at + 8]
        body = data[at + 8 : at + 8 + length]
        assert zlib.crc32(kind + body) == struct.unpack(">I", data[at + 8 + length : at + 12 + length])[0]
        if kind == b"IHDR":
            header = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        at += 12 + length
    assert header is not None
    width, height, depth, colour = header
    channels = {2: 3, 6: 4, 0: 1, 4: 2}[colour]
    assert len(zlib.decompress(idat)) == height * (1 + width * channels * depth // 8)
    return width, height


def test_svg_and_png_are_drawn_by_graphviz(programs: dict[str, Path], tmp_path: Path) -> None:
    need_tool("dot")
    svg = cli("analyze", "/usr/bin/curl", "--format", "svg")
    assert svg.returncode == 0, svg.stderr
    tree = ET.fromstring(svg.stdout.encode())
    text = " ".join(t.text or "" for t in tree.iter("{http://www.w3.org/2000/svg}text"))
    _, g = dot_of(programs["curl"])
    sonames = {unquote(d["soname"]) for _, d in g.nodes(data=True) if unquote(d.get("soname", ""))}
    assert sonames and all(s in text for s in sonames)
    png = subprocess.run([*MINIFY, "analyze", "/usr/bin/curl", "--format", "png"], capture_output=True, timeout=300)
    assert png.returncode == 0, png.stderr
    width, height = png_size(png.stdout)
    assert width > 100 and height > 100


def test_without_graphviz_one_line_names_the_package(programs: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    done = subprocess.run(
        [sys.executable, "-m", "minify.cli", "analyze", str(programs["origin"]), "--format", "svg"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "minify: error: drawing svg needs Graphviz's dot: install the graphviz package (apt-get install graphviz)"
    ]


def test_sizes_add_up_and_chains_are_paths_of_the_graph() -> None:
    done = cli("analyze", "/usr/bin/curl", "--sizes", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    sizes = data["sizes"]
    by_path = {o["realpath"]: o["size"] for o in data["objects"]}
    assert sizes["total"] == sum(by_path.values()) and sizes["files"] == len(by_path)
    edges = {(e["from"], e["to"]) for e in data["edges"]}
    heaviest = sizes["heaviest"]
    assert [h["size"] for h in heaviest] == sorted((h["size"] for h in heaviest), reverse=True)
    assert heaviest[0]["size"] == max(by_path.values())
    for item in heaviest:
        assert item["size"] == by_path[item["realpath"]]
        assert abs(item["share"] - item["size"] / sizes["total"]) < 1e-4
        chain = item["chain"]
        assert chain[0] == data["inputs"][0]["realpath"] and chain[-1] == item["realpath"]
        assert all((a, b) in edges for a, b in itertools.pairwise(chain))
    assert sum(p["size"] for p in sizes["packages"]) + sizes["no_package"] == sizes["total"]
    tree = cli("analyze", "/usr/bin/curl", "--sizes")
    assert "sizes: " in tree.stdout and " -> libcurl.so.4 -> " in tree.stdout


def test_rootfs_draws_its_plan_by_folder(tmp_path: Path) -> None:
    need_tool("dot")
    done = cli(
        "rootfs", "/usr/bin/curl", "--with", "certs", "-o", str(tmp_path / "out"), "--graph", str(tmp_path / "plan.svg")
    )
    assert done.returncode == 0, done.stderr
    assert "the heaviest files:" in done.stdout and " -> libcurl.so.4" in done.stdout
    tree = ET.parse(tmp_path / "plan.svg")
    ns = "{http://www.w3.org/2000/svg}"
    clusters = [g for g in tree.iter(f"{ns}g") if g.get("class") == "cluster"]
    titles = {t.text for g in clusters for t in g.iter(f"{ns}title")}
    text = " ".join(t.text or "" for t in tree.iter(f"{ns}text"))
    assert "ca-certificates.crt" in text and "curl" in text  # the preset's file and the program
    assert len(clusters) >= 3 and titles
    dot = cli("rootfs", "/usr/bin/curl", "-o", str(tmp_path / "out2"), "--graph", str(tmp_path / "plan.dot"))
    assert dot.returncode == 0, dot.stderr
    graphs = pydot.graph_from_dot_data((tmp_path / "plan.dot").read_text())
    assert graphs is not None and graphs[0].get_subgraphs()
    bad = cli("rootfs", "/usr/bin/curl", "-o", str(tmp_path / "out3"), "--graph", str(tmp_path / "plan.gif"))
    assert bad.returncode == 2 and "name a .svg, .png or .dot file" in bad.stderr
    assert not (tmp_path / "out3").exists()
    shutil.rmtree(tmp_path / "out2")
