"""A Java program from the image (issue 20): `java` brings its JVM's layout (libjvm.so
is opened by path, the class library and security files are read), less the JDK's GUI
libraries whose closure a headless root lacks, and the program runs: java.time and a
MessageDigest, compiled and run by the source launcher."""

from __future__ import annotations

import glob
import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, IN_CI, chroot_run, cli


def _java() -> str:
    """Debian's OpenJDK 17 (the test command installs openjdk-17-jre-headless); its
    folder name carries the architecture, so it is found, not written down."""
    found = sorted(glob.glob("/usr/lib/jvm/java-17-openjdk-*/bin/java"))
    if not found:
        if IN_CI:
            pytest.fail("openjdk-17-jre-headless is missing: the test command installs it")
        pytest.skip("no OpenJDK 17")
    return found[0]


def test_java_brings_its_jvm_and_runs_a_program(tmp_path: Path) -> None:
    java = _java()
    source = tmp_path / "Hello.java"
    source.write_bytes((FIXTURES / "java/Hello.java").read_bytes())
    host = subprocess.run([java, str(source)], capture_output=True, text=True, timeout=120, check=True)
    out = tmp_path / "out"
    made = cli("rootfs", java, "-o", str(out), "--add", str(source))
    assert made.returncode == 0, made.stderr[-3000:]
    assert "the JVM's own layout" in made.stderr
    shipped = {e["path"] for e in json.loads((out / "minify.lock.json").read_text())["entries"]}
    home = str(Path(java).parent.parent)
    assert f"{home}/lib/server/libjvm.so" in shipped and f"{home}/lib/modules" in shipped
    ran = chroot_run(out / "rootfs", java, str(source), timeout=180)
    assert (ran.returncode, ran.stdout) == (0, host.stdout), ran.stderr
    assert host.stdout == "THURSDAY 7f50\n"
