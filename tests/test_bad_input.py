"""Bad input: one clear line on stderr naming the file, exit 2, no traceback, no hang."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minify
from minify.elf.reader import read_elf
from minify.errors import MinifyError
from minify.render import render

MINIFY = [sys.executable, "-m", "minify.cli"]


def minify_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MINIFY, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("minify: error:"), lines[0]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture()
def real_elf(built: dict[str, Path]) -> bytes:
    return built["hello"].read_bytes()


def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert_one_line_error(minify_cli("analyze", str(fifo)), "FIFO")


def test_device(tmp_path: Path) -> None:
    assert_one_line_error(minify_cli("analyze", "/dev/null"), "/dev/null: is a device")


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert_one_line_error(minify_cli("analyze", str(empty)), "too short")


def test_text_and_random_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    assert_one_line_error(minify_cli("analyze", str(text)), "not an ELF file")
    noise = tmp_path / "noise"
    noise.write_bytes(random.Random(7).randbytes(5000))
    assert_one_line_error(minify_cli("analyze", str(noise)), "not an ELF file")


def test_truncated_elf(tmp_path: Path, real_elf: bytes) -> None:
    cut = tmp_path / "cut"
    cut.write_bytes(real_elf[:3000])
    assert_one_line_error(minify_cli("analyze", str(cut)), "outside the file")


def test_dynamic_section_outside_the_file(tmp_path: Path, real_elf: bytes) -> None:
    # keep the headers, drop the tail where PT_DYNAMIC points
    cut = tmp_path / "nodyn"
    cut.write_bytes(real_elf[: len(real_elf) // 2])
    assert_one_line_error(minify_cli("analyze", str(cut)), f"{cut}: dynamic section lies outside the file")


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    assert_one_line_error(minify_cli("analyze", str(tmp_path / "a")), "symbolic links")


def test_huge_sparse_file(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as fh:
        fh.write(b"\x7fELF\x02\x01\x01")
        fh.truncate(3 << 30)
    assert_one_line_error(minify_cli("analyze", str(big)), "larger than")


def test_missing_path(tmp_path: Path) -> None:
    assert_one_line_error(minify_cli("analyze", str(tmp_path / "nope")), "no such file")


def test_walked_folder_counts_non_elf_and_notes_scripts(tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["hello"], tmp_path / "hello")
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "data.txt").write_text("data\n")
    analysis = minify.analyze([str(tmp_path)])
    assert [p.path for p in analysis.programs] == [str(tmp_path / "hello")]
    reasons = {Path(s.path).name: s.reason for s in analysis.skipped}
    assert "script for /bin/sh" in reasons["run.sh"]
    assert reasons["data.txt"] == "not ELF"


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    proc = minify_cli("analyze", "--verbose", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr


@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_elf_never_tracebacks(tmp_path: Path, built: dict[str, Path], data: st.DataObject) -> None:
    """Flip bytes of a real ELF and cut it short: minify reports or analyses, never crashes."""
    blob = bytearray(built["hello"].read_bytes())
    for _ in range(data.draw(st.integers(1, 12))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    target = tmp_path / "mutant"
    target.write_bytes(bytes(blob))
    try:
        facts = read_elf(str(target))
    except MinifyError as exc:
        facts = None
        assert str(exc).startswith(f"{target}: ")  # one line naming the file
    (program,) = minify.analyze([str(target)]).programs
    if facts is None:
        assert program.error is not None and program.objects in ((), program.objects[:1])
    elif program.error is None:
        # an analysis that worked describes this very file, as read
        assert program.objects[0].realpath == str(target) and program.objects[0].needed == facts.needed
    render(minify.analyze([str(target)]), "json")  # every result renders
