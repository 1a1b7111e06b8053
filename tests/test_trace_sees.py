"""A trace that sees everything the run used (issue 19): the interpreters of the
scripts it executed, every link on the way to what it opened, the folders it only
looked at, files minify would also write, and never the files minify's own caller
redirected its output to."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MINIFY, chroot_run, cli, need_tool


@pytest.fixture(autouse=True)
def _strace() -> None:
    need_tool("strace", "unshare", "chroot")


def _rootfs(tmp_path: Path, command: str, *extra: str) -> Path:
    out = tmp_path / "out"
    result = cli("rootfs", "/bin/true", "-o", str(out), "--trace", command, *extra)
    assert result.returncode == 0, result.stderr
    return out


def test_an_executed_script_brings_its_interpreters(tmp_path: Path) -> None:
    """The kernel opens a #! script's interpreter itself, so strace never shows an
    open of it: /bin/sh for the first script, /usr/bin/env (and sh, which env execs
    and the trace sees) for the second, which the first runs."""
    app = tmp_path / "app"
    app.mkdir()
    inner = app / "inner"
    inner.write_text("#!/usr/bin/env sh\necho inner ran\n")
    outer = app / "outer"
    outer.write_text(f"#!/bin/sh\n{inner}\necho outer ran\n")
    for script in (inner, outer):
        script.chmod(0o755)
    out = _rootfs(tmp_path, str(outer))
    rootfs = out / "rootfs"
    assert (rootfs / "usr/bin/env").exists()
    lock = json.loads((out / "minify.lock.json").read_text())
    why = {e["path"]: e["why"] for e in lock["entries"]}
    assert any("interpreter of" in w for w in why["/usr/bin/env"])
    ran = chroot_run(rootfs, str(outer))
    assert (ran.returncode, ran.stdout) == (0, "inner ran\nouter ran\n"), ran.stderr


def test_a_link_is_shipped_when_its_target_sorts_before_it(tmp_path: Path) -> None:
    """nginx's sites-enabled/default: the run opens the link and its target; the
    target sorts first, and the link must still be in the image."""
    data = tmp_path / "data"
    (data / "available").mkdir(parents=True)
    (data / "available/default").write_text("server\n")
    (data / "enabled").mkdir()
    (data / "enabled/default").symlink_to("../available/default")
    out = _rootfs(tmp_path, f"/bin/cat {data}/available/default {data}/enabled/default")
    link = out / "rootfs" / str(data / "enabled/default").lstrip("/")
    assert link.is_symlink() and os.readlink(link) == "../available/default"
    ran = chroot_run(out / "rootfs", "/bin/cat", str(data / "enabled/default"))
    assert (ran.returncode, ran.stdout) == (0, "server\n"), ran.stderr


def test_folders_the_run_only_looked_at_exist(tmp_path: Path) -> None:
    """emacs checks etc/charsets before it reads anything: a folder the run only
    stat()s is in the image, empty."""
    charsets = tmp_path / "share/etc/charsets"
    charsets.mkdir(parents=True)
    (charsets / "unused.map").write_text("x\n")
    out = _rootfs(tmp_path, f"/usr/bin/test -d {charsets}")
    inside = out / "rootfs" / str(charsets).lstrip("/")
    assert inside.is_dir() and not inside.is_symlink()
    assert list(inside.iterdir()) == []
    ran = chroot_run(out / "rootfs", "/usr/bin/test", "-d", str(charsets))
    assert ran.returncode == 0, ran.stderr


def test_a_traced_file_minify_would_write_is_the_roots_own(tmp_path: Path) -> None:
    """A traced /etc/os-release (a link to ../usr/lib/os-release on Debian) is not a
    conflict with the os-release minify writes for scanners: the root's is shipped."""
    if not os.path.exists("/etc/os-release"):
        pytest.fail("this machine has no /etc/os-release")
    out = tmp_path / "out"
    result = cli("rootfs", "/bin/true", "-o", str(out), "--trace", "/bin/cat /etc/os-release")
    assert result.returncode == 0, result.stderr
    assert "/etc/os-release is the root's own" in result.stderr
    ran = chroot_run(out / "rootfs", "/bin/cat", "/etc/os-release")
    assert ran.stdout == Path("/etc/os-release").read_text()


def test_the_files_minify_was_redirected_to_are_not_traced(tmp_path: Path) -> None:
    """`minify ... 2>logs/x.err`: the traced command writes to that file (its output
    goes to minify's stderr) and cat fstat()s it; it is not a file the run needed."""
    logs = tmp_path / "logs"
    logs.mkdir()
    err = logs / "x.err"
    data = tmp_path / "in.txt"
    data.write_text("data\n")
    out = tmp_path / "out"
    with err.open("w") as sink:
        proc = subprocess.run(
            [*MINIFY, "rootfs", "/bin/true", "-o", str(out), "--trace", f"/bin/cat {data}"],
            stderr=sink,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
    assert proc.returncode == 0, err.read_text()
    record = json.loads((out / "minify.trace").read_text())
    assert str(err) not in record["files"]
    assert not (out / "rootfs" / str(err).lstrip("/")).exists()
    assert (out / "rootfs" / str(data).lstrip("/")).read_text() == "data\n"


def test_a_preset_hint_is_dropped_when_the_trace_brought_its_files(tmp_path: Path) -> None:
    """date looks up time zones: without a trace the tzdata hint shows; a trace that
    read the zone it used brought that file, so the hint is answered."""
    need_tool("date")
    bare = cli("rootfs", "/bin/date", "-o", str(tmp_path / "bare"))
    assert bare.returncode == 0, bare.stderr
    assert "add --with tzdata" in bare.stderr
    traced = cli("rootfs", "/bin/date", "-o", str(tmp_path / "out"), "--trace", "env TZ=Europe/Paris /bin/date")
    assert traced.returncode == 0, traced.stderr
    assert (tmp_path / "out/rootfs/usr/share/zoneinfo/Europe/Paris").exists()
    assert "add --with tzdata" not in traced.stderr


def test_hints_ask_the_final_closure_too(tmp_path: Path) -> None:
    """Hints read what the image ships, not only the inputs: env asks for no user
    lookup, but id, added beside it, does (getpwuid through NSS), so the hint shows."""
    need_tool("env", "id")
    alone = cli("rootfs", "/usr/bin/env", "-o", str(tmp_path / "alone"))
    assert alone.returncode == 0, alone.stderr
    assert "add --with nss" not in alone.stderr
    added = cli("rootfs", "/usr/bin/env", "--add", "/usr/bin/id", "-o", str(tmp_path / "added"))
    assert added.returncode == 0, added.stderr
    assert "user and group lookups go through NSS" in added.stderr and "add --with nss" in added.stderr
