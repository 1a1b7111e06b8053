"""A shell script's commands, read statically (issue 20): a ``#!/bin/sh`` entrypoint
brings the programs it runs (found on PATH, with their closures), the files it
sources, and names what a static reading cannot settle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from minify.plan.shell import commands
from tests.conftest import chroot_run, cli, need_tool

SCRIPT = """#!/bin/sh
set -eu
. {lib}
# date, sed and gzip are found on PATH; greet is the sourced file's function
stamp="$(date -u -d @86400 +%Y-%m-%d)"
greet "$stamp" | sed 's/^/> /' | gzip -c | gzip -dc
head -n 1 {data}
command -v not-a-real-tool-xyz >/dev/null || true
{helper} 2>/dev/null || true
if [ -n "${{RUNNER:-}}" ]; then $RUNNER; fi
cat <<END
here-document text is not a command: rm -rf /
END
"""


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_tool("chroot", "date", "sed", "gzip")


def test_a_shell_script_brings_the_commands_it_runs_and_runs(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    lib = app / "lib.sh"
    lib.write_text("greet() { printf 'hello %s\\n' \"$1\"; }\n")
    helper = app / "helper"  # its interpreter is nowhere: left out with a note, not a failed run
    helper.write_text("#!/no/such/interpreter\n")
    helper.chmod(0o755)
    data = app / "data.txt"  # a file the script names by path comes with it
    data.write_text("data line\nsecond\n")
    script = app / "entrypoint.sh"
    script.write_text(SCRIPT.format(lib=lib, helper=helper, data=data))
    script.chmod(0o755)
    host = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    assert host.stdout == "> hello 1970-01-02\ndata line\nhere-document text is not a command: rm -rf /\n"
    out = tmp_path / "out"
    made = cli("rootfs", str(script), "-o", str(out))
    assert made.returncode == 0, made.stderr
    assert "skipped" not in made.stderr  # the script ships, with /bin/sh
    for name in ("date", "sed", "gzip"):
        assert f"/{name} comes with {script}, a command it runs" in made.stderr, made.stderr
    assert "not-a-real-tool-xyz" in made.stderr and "not in the root's PATH" in made.stderr
    assert "$RUNNER" in made.stderr and "a static reading cannot name" in made.stderr
    assert f"runs {helper}, left out: {helper}: its #! interpreter /no/such/interpreter is not in" in made.stderr
    lock = json.loads((out / "minify.lock.json").read_text())
    shipped = {e["path"] for e in lock["entries"]}
    assert str(lib) in shipped and str(data) in shipped
    why = {e["path"]: e.get("why") for e in lock["entries"]}
    assert why[str(lib)] == [f"sourced by {script}"] and why[str(data)] == [f"named by {script}"]
    assert f"note: {data} come with {script}, which names them" in made.stderr
    assert not any(p.endswith("/rm") for p in shipped)  # the here-document's words are not commands
    ran = chroot_run(out / "rootfs", str(script))
    assert (ran.returncode, ran.stdout) == (0, host.stdout), ran.stderr


@pytest.mark.parametrize(
    ("text", "names", "dynamic"),
    [
        ("a | b && c || d; e & f\n", ["a", "b", "c", "d", "e", "f"], []),
        ("X=1 Y=2 env -i Z=3 tool arg >out 2>&1\n", ["env", "tool"], []),
        ('case "$1" in (start) exec srv ;; stop|halt) kill -TERM 1 ;; *) "$@" ;; esac\n', ["srv"], ['"$@"']),
        ("f() { inner; }\nf\nfor x in a b; do echo $x; done\n", ["inner"], []),
        ('v=`hostname` w="$(uname -r)"\necho $((1 + 2))\n', ["hostname", "uname"], []),
        ("cat <<'EOF'\nnot run\nEOF\ntail -n1 <<-X\n\tnope\n\tX\n", ["cat", "tail"], []),
        ("if [ -f x ]; then ! grep -q y x; elif [[ -d z ]]; then :; fi\n", ["grep"], []),
        ("# only a comment: rm -rf /\n", [], []),
        ("case $1 in\n a) for x in 1 2; do run $x; done ;;\n b) stop ;;\nesac\n", ["run", "stop"], []),
    ],
)
def test_commands_in_command_position(text: str, names: list[str], dynamic: list[str]) -> None:
    found = commands(text)
    assert found.names == names
    assert found.dynamic == dynamic
