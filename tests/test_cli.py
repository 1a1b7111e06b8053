"""The command line: every output format, through typer's runner and the installed command."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pydot
import pytest
from typer.testing import CliRunner

from minify.cli import app
from minify.flags import only_invoked
from tests.conftest import HOST_INTERP, HOST_LIBC

runner = CliRunner()


def test_list_format_matches_ldd_line_for_line() -> None:
    for program in ("/usr/bin/ls", "/usr/bin/python3"):
        ours = runner.invoke(app, ["analyze", "--format", "list", program])
        assert ours.exit_code == 0, ours.output
        ldd = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
        theirs = [line.split(" (0x")[0] for line in ldd.splitlines()]
        assert [line.replace(" (kernel)", "") for line in ours.output.splitlines()] == theirs


def test_json_schema(built: dict[str, Path]) -> None:
    result = runner.invoke(app, ["analyze", "--format", "json", str(built["hello"])])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["schema"] == 1
    (entry,) = data["inputs"]
    assert set(entry) == {
        "path",
        "realpath",
        "kind",
        "loader",
        "interpreter",
        "machine",
        "closure",
        "missing",
        "version_errors",
        "error",
        "notes",
        "vdso",
        "hints",
    }
    assert entry["kind"] == "dynamic" and entry["loader"] == "glibc" and entry["error"] is None
    assert entry["closure"] == sorted(entry["closure"]) and len(entry["closure"]) == 3
    assert {o["realpath"] for o in data["objects"]} == set(entry["closure"])
    assert all({"from", "to", "name", "how", "via", "kind", "searched"} <= set(e) for e in data["edges"])
    again = runner.invoke(app, ["analyze", "--format", "json", str(built["hello"])])
    assert again.output == result.output


def test_json_explains_a_missing_library(tmp_path: Path, builder) -> None:  # type: ignore[no-untyped-def]
    lib = builder.lib(tmp_path / "gone/libgone.so.1", "gone")
    prog = builder.prog(tmp_path / "prog", links=[lib], runpath=f"{tmp_path}/nowhere")
    result = runner.invoke(app, ["analyze", "--format", "json", str(prog)])
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["inputs"][0]["missing"] == ["libgone.so.1"]
    (edge,) = [e for e in data["edges"] if e["name"] == "libgone.so.1"]
    assert edge["to"] is None
    sources = [s["source"] for s in edge["searched"]]
    assert sources[0].startswith("RUNPATH of") and "system dir" in sources
    tree = runner.invoke(app, ["analyze", str(prog)])
    assert "missing: libgone.so.1" in tree.output and f"{tmp_path}/nowhere: not found" in tree.output


def test_dot_and_graphml(built: dict[str, Path]) -> None:
    dot = runner.invoke(app, ["analyze", "--format", "dot", str(built["hello"])])
    assert dot.exit_code == 0
    (graph,) = pydot.graph_from_dot_data(dot.output)
    assert len(graph.get_edges()) >= 3
    gml = runner.invoke(app, ["analyze", "--format", "graphml", str(built["hello"])])
    g = nx.read_graphml(io.StringIO(gml.output))
    assert g.nodes["linux-vdso.so.1"]["role"] == "vdso"
    assert g.nodes[str(built["hello"])]["role"] == "input"


def test_tree_names_interpreter_vdso_and_summary(built: dict[str, Path]) -> None:
    result = runner.invoke(app, ["analyze", str(built["pausle"])])
    assert f"libc.so.6 => {HOST_LIBC} [ld.so.cache]" in result.output
    assert "linux-vdso.so.1 [kernel" in result.output
    assert f"interpreter {HOST_INTERP}" in result.output
    assert "summary: 1 input(s), 3 file(s)" in result.output


def test_static_program(tmp_path: Path, builder) -> None:  # type: ignore[no-untyped-def]
    prog = builder.prog(tmp_path / "static", src="pausle.c", flags=["-static"])
    result = runner.invoke(app, ["analyze", "--format", "json", str(prog)])
    assert result.exit_code == 0
    entry = json.loads(result.output)["inputs"][0]
    assert entry["kind"] == "static" and entry["closure"] == [str(prog)]
    listing = runner.invoke(app, ["analyze", "--format", "list", str(prog)])
    assert "statically linked" in listing.output


def test_installed_command_and_help_is_fast_enough_to_call() -> None:
    exe = shutil.which("minify")
    assert exe is not None
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True)
    assert "analyze" in proc.stdout and "rootfs" in proc.stdout
    proc = subprocess.run([exe, "analyze", "-f", "list", "/bin/true"], capture_output=True, text=True)
    assert proc.returncode == 0 and "libc.so.6" in proc.stdout
    assert os.path.exists(exe)


COMMANDS = ("analyze", "rootfs", "image", "verify", "trace")


@pytest.mark.parametrize(
    "line",
    [[name, "--help"] for name in COMMANDS]
    + [["analyze", "--bogus"], ["rootfs"], ["verify", "/nonexistent-rootfs"], ["analyze", "-f", "nope", "/bin/true"]],
)
def test_the_invoked_command_alone_answers_as_the_whole_app(line: list[str]) -> None:
    """minify builds only the command a line names (typer would build all five);
    that command's help, usage errors and results are the whole app's, byte for byte."""
    one = only_invoked(app, ["minify", *line])
    assert [c.callback.__name__ if c.callback else "" for c in one.registered_commands] == [line[0]]
    assert len(app.registered_commands) == len(COMMANDS)  # the app itself is left whole
    alone, whole = runner.invoke(one, line), runner.invoke(app, line)
    assert (alone.exit_code, alone.output) == (whole.exit_code, whole.output)
    assert whole.output.strip()


@pytest.mark.parametrize("line", [[], ["--help"], ["anlyze", "/bin/true"], ["--version"]])
def test_a_line_naming_no_command_gets_the_whole_app(line: list[str]) -> None:
    assert only_invoked(app, ["minify", *line]) is app


def test_version_is_the_installed_distribution_s() -> None:
    """`minify --version` says the version pip installed, and exits 0 at once."""
    from importlib.metadata import version

    exe = shutil.which("minify")
    assert exe is not None
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"minify {version('minify')}\n", "")


GC_PROBE = """
import gc, sys
import minify.cli
print(gc.isenabled(), gc.get_freeze_count())
seen = []
minify.cli.main = lambda: seen.append((gc.isenabled(), gc.get_freeze_count()))
import minify.__main__
minify.__main__.main()
print(*seen[0])
"""


def test_the_command_starts_with_the_collector_paused_and_runs_with_it_on() -> None:
    """The console script pauses the cycle collector while typer and the command line
    are imported, freezes what that made, and runs the command with the collector on;
    importing minify.cli as a library leaves the collector as it was."""
    done = subprocess.run([sys.executable, "-c", GC_PROBE], capture_output=True, text=True, timeout=120, check=True)
    as_library, in_command = done.stdout.splitlines()
    assert as_library == "True 0"
    enabled, frozen = in_command.split()
    assert enabled == "True" and int(frozen) > 10_000
