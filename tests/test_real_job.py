"""The image does the real job, or minify says what is missing (issue 19): real
programs of this machine, each from `minify rootfs PROG --trace JOB` alone, run in a
chroot with the host's output; without the trace, `--test JOB` fails, names the
missing paths and their packages, and the flags it names make the next run pass."""

from __future__ import annotations

import os
import shlex
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.conftest import Builder, chroot_run, cli, host_libc_into, need_tool, tree_listing

ZSH_JOB = "zmodload zsh/datetime && strftime %Y-%m-%d 86400"


HOME = {"HOME": os.environ.get("HOME", "/root")}  # as a runtime sets it; pandoc asks for it


def _host(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", **HOME})


def _flags(stderr: str) -> list[str]:
    """The flags the failed --test named (its "bring them with:" line)."""
    line = next(line for line in stderr.splitlines() if "bring them with: " in line)
    return shlex.split(line.split("bring them with: ", 1)[1])


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_tool("strace", "unshare", "chroot", "mount")


#: 5x7 glyphs for the text the OCR test draws.
GLYPHS = {
    "H": ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),
    "E": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "L": ("10000", "10000", "10000", "10000", "10000", "10000", "11111"),
    "O": ("01110", "10001", "10001", "10001", "10001", "10001", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    " ": ("00000",) * 7,
}


def draw_png(path: Path, text: str, scale: int = 6, pad: int = 20) -> Path:
    """A grey PNG of ``text`` in block letters, written with zlib alone."""
    width, height = len(text) * 6 * scale + 2 * pad, 7 * scale + 2 * pad
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            gx, gy = (x - pad) // scale, (y - pad) // scale
            char, col = divmod(gx, 6)
            on = x >= pad and 0 <= gy < 7 and char < len(text) and col < 5 and GLYPHS[text[char]][gy][col] == "1"
            row.append(0 if on else 255)
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def _job(name: str, tmp_path: Path) -> tuple[str, list[str]]:
    """The program and its real job, with the inputs the job reads made in tmp_path."""
    if name == "tesseract":
        return "/usr/bin/tesseract", ["tesseract", str(draw_png(tmp_path / "text.png", "HELLO 42")), "-"]
    if name == "pandoc":
        (tmp_path / "in.md").write_text("# Title\n\nSome *text*.\n")
        return "/usr/bin/pandoc", ["pandoc", "-s", "--metadata", "title=T", str(tmp_path / "in.md")]
    jobs = {
        "zsh": ("/usr/bin/zsh", ["zsh", "-c", ZSH_JOB]),  # a module it dlopen()s
        "file": ("/usr/bin/file", ["file", "-b", "/bin/true"]),  # magic.mgc through a symlink
        "Rscript": ("/usr/bin/Rscript", ["Rscript", "-e", "1+1"]),  # execs the bash script R
        "emacs": ("/usr/bin/emacs", ["emacs", "--batch", "--eval", '(princ (format "%d\n" (+ 1 2)))']),
        "nvim": ("/usr/bin/nvim", ["nvim", "--headless", "-u", "NONE", "-c", LUA, "-c", "qa!"]),
    }
    return jobs[name]


LUA = 'lua io.stdout:write(tostring(6 * 7) .. "\\n")'
JOBS = ("zsh", "file", "Rscript", "tesseract", "pandoc", "emacs", "nvim")


@pytest.mark.parametrize("name", JOBS)
def test_a_traced_job_runs_from_the_image(tmp_path: Path, name: str) -> None:
    program, job = _job(name, tmp_path)
    need_tool(program)
    host = _host(job)
    assert host.returncode == 0 and host.stdout, host.stderr
    out = tmp_path / "out"
    result = cli("rootfs", program, "-o", str(out), "--trace", shlex.join(job))
    assert result.returncode == 0, result.stderr
    ran = chroot_run(out / "rootfs", *job, env=HOME)
    assert (ran.returncode, ran.stdout) == (0, host.stdout), ran.stderr


def test_libreoffice_converts_text_to_pdf_from_a_traced_image(tmp_path: Path) -> None:
    need_tool("soffice")
    (tmp_path / "in.txt").write_text("hello from a text file\n")
    (tmp_path / "pdf").mkdir()
    profile = tmp_path / "profile"
    job = ["soffice", "--headless", f"-env:UserInstallation=file://{profile}", "--convert-to", "pdf"]
    job += ["--outdir", str(tmp_path / "pdf"), str(tmp_path / "in.txt")]
    out = tmp_path / "out"
    result = cli("rootfs", "/usr/bin/soffice", "-o", str(out), "--trace", shlex.join(job))
    assert result.returncode == 0, result.stderr
    shutil.rmtree(profile)
    (tmp_path / "pdf/in.pdf").unlink()
    host = _host(job)
    made = (tmp_path / "pdf/in.pdf").read_bytes()
    assert host.returncode == 0 and made.startswith(b"%PDF-"), host.stderr
    box = tmp_path / "box"
    ran = chroot_run(out / "rootfs", *job, env=HOME, keep=box, timeout=180)
    assert (ran.returncode, ran.stdout) == (0, host.stdout), ran.stderr
    inside = (box / str(tmp_path / "pdf/in.pdf").lstrip("/")).read_bytes()
    assert inside.startswith(b"%PDF-") and abs(len(inside) - len(made)) < len(made) // 10


def _converge(program: str, job: list[str], extra: list[str], out: Path, rounds: int) -> list[list[str]]:
    """--test JOB without a trace, then again with the flags each failure named, until
    it passes: the flags of each round (a job stops at the first thing it lacks, so
    a chain of lacks takes a round each)."""
    named: list[list[str]] = []
    flags = list(extra)
    for _ in range(rounds):
        done = cli("rootfs", program, "-o", str(out), "--test", shlex.join(job), "--test-output", *flags)
        if done.returncode == 0:
            assert "in the image, as at the source" in done.stderr
            return named
        assert done.returncode == 1, done.stderr
        assert " in the image, 0 at the source" in done.stderr and not out.exists()
        named.append(_flags(done.stderr))
        flags += named[-1]
    pytest.fail(f"{program}: still failing after {rounds} rounds of named flags: {named}")


@pytest.mark.parametrize(
    ("name", "rounds", "first"),
    [
        ("tesseract", 1, "--with package-data"),  # tesseract-ocr-eng's language data
        ("pandoc", 1, "--with package-data"),  # pandoc-data's templates
        ("Rscript", 3, "--with package-data"),  # R's own scripts, then bash, then sed and uname
        ("emacs", 3, "--with package-data"),  # emacs-common's lisp and charsets
    ],
)
def test_without_a_trace_the_named_flags_make_the_job_pass(tmp_path: Path, name: str, rounds: int, first: str) -> None:
    program, job = _job(name, tmp_path)
    need_tool(program)
    inputs = [f"--add={p}" for p in job if p.startswith(str(tmp_path))]  # the job's own input file
    named = _converge(program, job, inputs, tmp_path / "out", rounds + 1)
    assert named and len(named) <= rounds
    assert first in " ".join(named[0])


def test_without_the_trace_the_test_names_what_is_missing_and_the_flag(tmp_path: Path) -> None:
    """zsh's datetime module is dlopen()ed: the closure lacks it. --test fails before
    anything is written, names the package and the flag; with that flag it passes."""
    need_tool("zsh")
    out = tmp_path / "out"
    job = shlex.join(["/usr/bin/zsh", "-c", ZSH_JOB])
    failed = cli("rootfs", "/usr/bin/zsh", "-o", str(out), "--test", job)
    assert failed.returncode == 1, failed.stderr
    assert "exit status 1 in the image, 0 at the source" in failed.stderr
    assert "  zsh: " in failed.stderr and "datetime.so" in failed.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".minify")]
    flags = _flags(failed.stderr)
    assert "package-data" in flags
    passed = cli("rootfs", "/usr/bin/zsh", "-o", str(out), "--test", job, "--test-output", *flags)
    assert passed.returncode == 0, passed.stderr
    assert "exit status 0 in the image, as at the source" in passed.stderr
    ran = chroot_run(out / "rootfs", "/usr/bin/zsh", "-c", ZSH_JOB)
    assert ran.stdout == "1970-01-02\n", ran.stderr


def test_a_file_the_job_reads_is_named_with_its_package(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = "/bin/cat /usr/share/common-licenses/GPL-3"
    failed = cli("rootfs", "/bin/cat", "-o", str(out), "--test", job)
    assert failed.returncode == 1
    assert "base-files: /usr/share/common-licenses/GPL-3" in failed.stderr
    assert _flags(failed.stderr) == ["--add", "/usr/share/common-licenses"]
    passed = cli("rootfs", "/bin/cat", "-o", str(out), "--test", job, "--test-output", *_flags(failed.stderr))
    assert passed.returncode == 0, passed.stderr


def test_in_a_root_both_runs_are_sandboxed_as_the_images_user(tmp_path: Path, builder: Builder) -> None:
    """With --root, the job runs in the sandbox at both places, as the image's user,
    with a writable /tmp, and writes nothing into the root or the rootfs."""
    root = tmp_path / "root"
    host_libc_into(root)
    builder.prog(root / "usr/bin/uidjob", src="uidjob.c")
    before = tree_listing(root)
    out = tmp_path / "out"
    args = ["rootfs", "/usr/bin/uidjob", "--root", str(root), "-o", str(out), "--user", "1234:5678"]
    result = cli(*args, "--test", "uidjob", "--test-output")
    assert result.returncode == 0, result.stderr
    assert tree_listing(root) == before
    assert not (out / "rootfs/tmp").exists() and not (out / "rootfs/proc").exists()
    # a program the image lacks: 127 in the image, as at the source (the root lacks it too)
    absent = cli(*args, "--test", "/bin/sh -c true")
    assert absent.returncode == 0 and "exit status 127 in the image, as at the source" in absent.stderr


def test_several_inputs_the_first_is_the_entrypoint(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("rootfs", "/bin/cat", "/bin/true", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert 'ENTRYPOINT ["/bin/cat"]' in (out / "Dockerfile").read_text()
    assert "the ENTRYPOINT is /bin/cat, the first of 2 inputs" in result.stderr
    helped = cli("rootfs", "--help")
    assert "[PATH...]" in helped.stdout


def test_package_data_is_named_and_the_preset_brings_it(tmp_path: Path) -> None:
    """Without any trace: the note names zsh's data files left out; --with
    package-data brings them (its modules with their closures), and the job runs."""
    need_tool("zsh")
    out = tmp_path / "out"
    plain = cli("rootfs", "/usr/bin/zsh", "-o", str(out))
    assert plain.returncode == 0, plain.stderr
    note = next(line for line in plain.stderr.splitlines() if "note: zsh: " in line)
    assert "--with package-data brings them" in note and "/zsh/5" in note
    job = shlex.join(["/usr/bin/zsh", "-c", ZSH_JOB])
    full = cli("rootfs", "/usr/bin/zsh", "-o", str(out), "--with", "package-data", "--test", job, "--test-output")
    assert full.returncode == 0, full.stderr
    assert "note: zsh: " not in full.stderr
    assert not [p for p in (out / "rootfs/usr/share").rglob("*") if "/doc/" in str(p) or "/man/" in str(p)]


def test_hints_name_compiled_in_paths_programs_run_and_tmp(tmp_path: Path, builder: Builder) -> None:
    """A program whose strings name a data folder and a program it runs (through
    system(), so /bin/sh too), and that makes a temporary file: each is a hint with
    the flag; the flags make --test pass."""
    root = tmp_path / "root"
    libdir = host_libc_into(root)
    builder.prog(root / "usr/bin/datauser", src="datauser.c")
    builder.prog(root / "usr/bin/helper-tool", src="hello.c")
    (root / "usr/share/datauser").mkdir(parents=True)
    (root / "usr/share/datauser/table.txt").write_text("row one\n")
    (root / "usr/share/datauser/other.txt").write_text("row two\n")
    shell = Path("/bin/dash").resolve()
    (root / "bin").mkdir()  # the root's /bin/sh: the host's dash, whose only library is libc
    (root / "bin/sh").write_bytes(shell.read_bytes())
    (root / "bin/sh").chmod(0o755)
    assert libdir.is_dir()
    out = tmp_path / "out"
    plain = cli("rootfs", "/usr/bin/datauser", "--root", str(root), "-o", str(out))
    assert plain.returncode == 0, plain.stderr
    want = "names paths it may read that the image lacks: /usr/share/datauser/table.txt (8 B);"
    assert f"{want} add them with --add /usr/share/datauser/table.txt" in plain.stderr
    runs = next(line for line in plain.stderr.splitlines() if "runs other programs" in line)
    assert "(system)" in runs and "/bin/sh, /usr/bin/helper-tool" in runs
    assert "(mkstemp): temporary files are made in /tmp" in plain.stderr and "add --with tmp" in plain.stderr
    job = ["--test", "/usr/bin/datauser", "--test-output"]
    failed = cli("rootfs", "/usr/bin/datauser", "--root", str(root), "-o", str(out), *job)
    assert failed.returncode == 1
    fixed = cli(
        "rootfs",
        "/usr/bin/datauser",
        "/bin/sh",
        "/usr/bin/helper-tool",
        "--root",
        str(root),
        "-o",
        str(out),
        "--add",
        "/usr/share/datauser/table.txt",
        "--with",
        "auto",
        *job,
    )
    assert fixed.returncode == 0, fixed.stderr
    assert "exit status 0 in the image, as at the source" in fixed.stderr


@pytest.mark.parametrize("name", ["tesseract", "pandoc"])
def test_package_data_alone_makes_the_job_run(tmp_path: Path, name: str) -> None:
    """No trace: --with package-data brings tesseract-ocr-eng's language data and
    pandoc-data's templates (Architecture: all packages the programs depend on)."""
    program, job = _job(name, tmp_path)
    need_tool(program)
    inputs = [f"--add={p}" for p in job if p.startswith(str(tmp_path))]
    out = tmp_path / "out"
    done = cli("rootfs", program, "-o", str(out), "--with", "package-data", *inputs, "--test", shlex.join(job))
    assert done.returncode == 0, done.stderr
    ran = chroot_run(out / "rootfs", *job, env=HOME)
    assert (ran.returncode, ran.stdout) == (0, _host(job).stdout), ran.stderr


def test_check_never_runs_a_test_and_image_takes_it(tmp_path: Path) -> None:
    job = "/bin/cat /usr/share/common-licenses/GPL-3"
    out = tmp_path / "out"
    assert cli("rootfs", "/bin/cat", "-o", str(out)).returncode == 0
    # up to date: --check says so without running the failing test
    checked = cli("rootfs", "/bin/cat", "-o", str(out), "--check", "--test", job)
    assert checked.returncode == 0, checked.stderr
    assert "minify: test:" not in checked.stderr
    dest = tmp_path / "cat.tar"
    failed = cli("image", "/bin/cat", "-o", str(dest), "--test", job)
    assert failed.returncode == 1 and "base-files: /usr/share/common-licenses/GPL-3" in failed.stderr
    assert not dest.exists()
    passed = cli("image", "/bin/cat", "-o", str(dest), "--test", job, "--add", "/usr/share/common-licenses")
    assert passed.returncode == 0 and dest.is_file(), passed.stderr
