"""End to end: `podman build OUT` and run the image, with Debian's podman and runc.

crun fails on these machines (rlimits, hybrid cgroups), so every call uses
``--runtime runc`` and a containers.conf that the tests point to with CONTAINERS_CONF.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import Builder, Podman, cli, image_from, need_tool

pytestmark = pytest.mark.podman


def test_pausle_runs_detached_from_a_2mb_image(podman: Podman, tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["pausle"], tmp_path / "pausle-dynamic")
    assert cli("rootfs", "./pausle-dynamic", "-o", "out/", cwd=tmp_path).returncode == 0
    tag = image_from(podman, tmp_path / "out")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    assert size < 3_000_000, f"image is {size} bytes; the seed's is about 2.2 MB"
    cid = podman("run", "-d", tag).stdout.strip()
    try:
        time.sleep(1)
        state = podman("inspect", "--format", "{{.State.Running}}", cid).stdout.strip()
        assert state == "true", podman("logs", cid, check=False).stderr
    finally:
        podman("stop", "-t", "1", cid, check=False)
        podman("rm", "-f", cid, check=False)
    assert podman("inspect", "--format", "{{.State.Running}}", cid, check=False).stdout.strip() != "true"


def test_hello_prints_its_line(podman: Podman, tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["hello"], tmp_path / "hello")
    assert cli("rootfs", "./hello", "-o", "out", cwd=tmp_path).returncode == 0
    tag = image_from(podman, tmp_path / "out")
    proc = podman("run", "--rm", tag)
    assert proc.stdout == "hello from minify\n"


def test_origin_program_and_cxx_in_podman(podman: Podman, tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "app/lib/libapp.so.1", "app")
    builder.prog(tmp_path / "app/bin/tool", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    assert cli("rootfs", "./app/bin/tool", "-o", "out", cwd=tmp_path).returncode == 0
    assert podman("run", "--rm", image_from(podman, tmp_path / "out")).stdout == "hello from minify\n"
    need_tool("g++")
    builder.prog(tmp_path / "cxx", src="cxx_hello.cc")
    assert cli("rootfs", "./cxx", "-o", "cxxout", "--user", "65532:65532", cwd=tmp_path).returncode == 0
    assert podman("run", "--rm", image_from(podman, tmp_path / "cxxout")).stdout == "hello from c++\n"
