"""Servers traced to the end (issue 20): ``--trace-timeout`` ends a run that does not
end by itself, ``--probe`` makes the traced server serve requests first, inside its
own network namespace, and the image then serves the same page."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import MINIFY, cli, need_tool

PYTHON = "/usr/bin/python3"


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_tool("strace", "unshare", "nsenter", "curl", "chroot")


def _traced(out: Path) -> set[str]:
    return set(json.loads((out / "minify.trace").read_text())["files"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_probed_server_is_traced_in_its_own_network_and_the_image_serves(tmp_path: Path) -> None:
    """The port the traced server takes is also taken on this machine: it can only
    listen because it has a network of its own. The probe's request makes it read the
    page (and what serving reads), so the image serves the page too."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.html").write_text("<p>served from the image</p>\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = f"{PYTHON} -m http.server {port} --bind 127.0.0.1 --directory {site}"
        probe = f"curl -sf http://127.0.0.1:{port}/page.html"
        out = tmp_path / "out"
        args = ("rootfs", PYTHON, "-o", str(out), "--trace", server, "--trace-timeout", "120", "--probe", probe)
        started = time.monotonic()
        made = cli(*args)
    assert made.returncode == 0, made.stderr
    assert time.monotonic() - started < 100  # ended after the probe, not at the timeout
    assert "served from the image" in made.stderr  # the probe's output, shown
    traced = _traced(out)
    assert str(site / "page.html") in traced
    assert any(p.endswith("/http/server.py") for p in traced)
    rootfs = out / "rootfs"
    free = _free_port()
    argv = [PYTHON, "-m", "http.server", str(free), "--bind", "127.0.0.1", "--directory", str(site)]
    serving = subprocess.Popen(
        ["chroot", str(rootfs), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        got = _fetch(f"http://127.0.0.1:{free}/page.html", serving)
    finally:
        serving.kill()
        serving.wait()
    assert got == "<p>served from the image</p>\n"


def _fetch(url: str, server: subprocess.Popen[bytes]) -> str:
    for _ in range(200):
        got = subprocess.run(["curl", "-sf", url], capture_output=True, text=True)
        if got.returncode == 0:
            return got.stdout
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        time.sleep(0.1)
    raise AssertionError(f"nothing served {url}")


def test_trace_timeout_ends_a_run_that_never_ends(tmp_path: Path) -> None:
    """What the run read before minify ended it is kept; nothing it started is left."""
    data = tmp_path / "state.txt"
    data.write_text("x")
    marker = f"minify-sleeper-{os.getpid()}"
    job = f"{PYTHON} -c 'open(\"{data}\").read(); import time; time.sleep(900)' {marker}"
    out = tmp_path / "out"
    started = time.monotonic()
    made = cli("rootfs", PYTHON, "-o", str(out), "--trace", job, "--trace-timeout", "3")
    assert made.returncode == 0, made.stderr
    assert time.monotonic() - started < 60
    assert str(data) in _traced(out)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert left.stdout == "", left.stdout


def test_a_failing_probe_is_one_line(tmp_path: Path) -> None:
    port = _free_port()
    server = f"{PYTHON} -m http.server {port} --bind 127.0.0.1"
    made = cli(
        "rootfs", PYTHON, "-o", str(tmp_path / "out"), "--trace", server, "--trace-timeout", "60", "--probe", "false"
    )
    assert made.returncode != 0
    assert "minify: error: trace: --probe `false` exited with status 1" in made.stderr
    assert "Traceback" not in made.stderr
    assert not (tmp_path / "out").exists()


def test_probe_and_timeout_need_a_trace(tmp_path: Path) -> None:
    made = cli("rootfs", PYTHON, "-o", str(tmp_path / "out"), "--probe", "true")
    assert made.returncode == 2
    assert "--trace-timeout and --probe end a --trace run: give --trace too" in made.stderr


def test_ctrl_c_during_a_trace_ends_the_run_in_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """SIGINT while the traced command runs: exit 130 with one line, the traced command
    killed, no trace folder or OUT left."""
    marker = f"minify-interrupted-{os.getpid()}"
    job = f"{PYTHON} -c 'import time; time.sleep(600)' {marker}"
    before = {p.name for p in Path("/tmp").iterdir() if p.name.startswith("minify-trace-")}
    proc = subprocess.Popen(
        [*MINIFY, "rootfs", PYTHON, "-o", str(tmp_path / "out"), "--trace", job],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while subprocess.run(["pgrep", "-f", f"^{PYTHON} -c .*{marker}"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "minify: error: interrupted"
    assert "Traceback" not in err
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1
    after = {p.name for p in Path("/tmp").iterdir() if p.name.startswith("minify-trace-")}
    assert after <= before
    assert not (tmp_path / "out").exists()
