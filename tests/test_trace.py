"""minify trace / rootfs --trace: opt-in, runs the program under strace, and is saved
so later runs and --check reuse it without running anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Podman, chroot_run, cli, image_from, need_tool, tree_listing

PYTHON = "/usr/bin/python3"
SCRIPT = "import json, ssl, sqlite3, decimal; print(42)"


@pytest.fixture(scope="module")
def python_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("strace")
    if not os.path.exists(PYTHON):
        pytest.fail(f"{PYTHON} is missing: the test command installs python3")
    out = tmp_path_factory.mktemp("py") / "out"
    proc = cli("rootfs", PYTHON, "-o", str(out), "--trace", f"{PYTHON} -c '{SCRIPT}'")
    assert proc.returncode == 0, proc.stderr
    assert "on this machine under strace" in proc.stderr
    return out


def test_python_runs_its_traced_command_in_the_image(python_image: Path) -> None:
    run = chroot_run(python_image / "rootfs", PYTHON, "-c", SCRIPT)
    assert (run.returncode, run.stdout) == (0, "42\n"), run.stderr
    record = json.loads((python_image / "minify.trace").read_text())
    assert any(f.endswith("/json/__init__.py") or "json" in f for f in record["files"])
    assert any("lib-dynload/_ssl" in f for f in record["files"])


@pytest.mark.podman
def test_python_image_in_podman(podman: Podman, python_image: Path) -> None:
    tag = image_from(podman, python_image)
    assert podman("run", "--rm", tag, "-c", SCRIPT).stdout == "42\n"


def test_saved_trace_is_reused_without_running_anything(python_image: Path, tmp_path: Path) -> None:
    # no strace on PATH: had minify tried to trace again, it would fail
    env = dict(os.environ, PATH=str(tmp_path))
    check = subprocess.run(
        [shutil.which("minify") or "minify", "rootfs", PYTHON, "-o", str(python_image), "--check"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    before = tree_listing(python_image)
    again = subprocess.run(
        [shutil.which("minify") or "minify", "rootfs", PYTHON, "-o", str(python_image)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    assert tree_listing(python_image) == before


def test_a_failing_or_hanging_command_writes_nothing(tmp_path: Path) -> None:
    need_tool("strace")
    failing = cli("rootfs", "/bin/true", "-o", str(tmp_path / "out"), "--trace", "sh -c 'echo oops >&2; exit 3'")
    assert failing.returncode == 2
    assert "exited with status 3" in failing.stderr and "oops" in failing.stderr
    assert not (tmp_path / "out").exists()
    hanging = cli("trace", "--timeout", "1", "--", "sleep", "30")
    assert hanging.returncode == 2 and "timed out" in hanging.stderr


def test_trace_command_lists_files(tmp_path: Path) -> None:
    need_tool("strace")
    record = tmp_path / "rec.json"
    proc = cli("trace", "-o", str(record), "--", "/bin/cat", "/etc/hostname")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(record.read_text())
    assert "/etc/hostname" in data["files"]
    assert data["command"] == ["/bin/cat", "/etc/hostname"]
