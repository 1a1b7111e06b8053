"""The tools beyond the closure as people use them on real programs (issue: trace,
presets, --add): binary output, written files and secrets, trace controls, --check that
runs nothing, the user's own files, the root's own user names, subsets that imply
their preset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import HOST_INTERP, MINIFY, Builder, chroot_pty, chroot_run, cli, need_tool


def test_trace_passes_binary_output_through(tmp_path: Path) -> None:
    need_tool("strace", "gzip")
    gzip = shutil.which("gzip")
    proc = subprocess.run([*MINIFY, "trace", "--", gzip, "-c", "/etc/hostname"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert b"\x1f\x8b" in proc.stderr  # gzip's own bytes, shown, never decoded
    assert "/etc/hostname" in json.loads(proc.stdout)["files"]


def test_options_after_the_command_are_the_commands(tmp_path: Path) -> None:
    need_tool("strace")
    echo = shutil.which("echo")
    assert echo
    proc = subprocess.run([*MINIFY, "trace", echo, "-v", "hi"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "-v hi" in proc.stderr
    assert json.loads(proc.stdout)["command"] == [echo, "-v", "hi"]


def test_a_trace_leaves_out_what_the_command_wrote(tmp_path: Path) -> None:
    need_tool("strace")
    cp = shutil.which("cp")
    assert cp
    (tmp_path / "made").mkdir()
    out = tmp_path / "out"
    proc = cli("rootfs", cp, "-o", str(out), "--trace", f"{cp} -r /etc/hostname {tmp_path}/copy")
    assert proc.returncode == 0, proc.stderr
    traced = json.loads((out / "minify.trace").read_text())["files"]
    assert "/etc/hostname" in traced and f"{tmp_path}/copy" not in traced
    assert (out / "rootfs/etc/hostname").is_file() and not (out / f"rootfs{tmp_path}/copy").exists()
    assert "not ELF objects: /etc/hostname" in proc.stderr


def test_trace_exclude(tmp_path: Path) -> None:
    need_tool("strace")
    cat = shutil.which("cat")
    assert cat
    out = tmp_path / "out"
    command = f"{cat} /etc/hostname /etc/os-release"
    proc = cli(
        "rootfs", cat, "-o", str(out), "--trace", command, "--trace-exclude", "/etc/os-*", "--no-package-metadata"
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "rootfs/etc/hostname").is_file() and not (out / "rootfs/etc/os-release").exists()


def test_trace_user_and_ok_exit(tmp_path: Path, builder: Builder) -> None:
    need_tool("strace")
    shared = Path(tempfile.mkdtemp(prefix="minify-trace-user-", dir="/tmp"))  # pytest's folders are 0700
    try:
        _trace_user_and_ok_exit(shared, tmp_path, builder)
    finally:
        shutil.rmtree(shared)


def _trace_user_and_ok_exit(shared: Path, tmp_path: Path, builder: Builder) -> None:
    shared.chmod(0o755)
    prog = builder.prog(shared / "notroot", src="runtime/notroot.c")
    (shared / "data.txt").write_text("data")
    (shared / "data.txt").chmod(0o644)
    out = tmp_path / "out"
    refused = cli("rootfs", str(prog), "-o", str(out), "--trace", f"{prog} {shared}/data.txt")
    assert refused.returncode == 2 and "exited with status 1" in refused.stderr and "--trace-ok-exit" in refused.stderr
    assert "refuses to run as root" in refused.stderr  # the command's own output is shown
    proc = cli("rootfs", str(prog), "-o", str(out), "--trace", f"{prog} {shared}/data.txt", "--trace-user", "nobody")
    assert proc.returncode == 0, proc.stderr
    assert "ran as 65534" in proc.stderr
    assert (out / f"rootfs{shared}/data.txt").read_text() == "data"
    accepted = cli("rootfs", str(prog), "-o", str(tmp_path / "o2"), "--trace", f"{prog} x", "--trace-ok-exit")
    assert accepted.returncode == 0, accepted.stderr
    assert "exited with status 1" in accepted.stderr
    unknown = cli("rootfs", str(prog), "-o", str(tmp_path / "o3"), "--trace", str(prog), "--trace-user", "no-such-user")
    assert unknown.returncode == 2 and "no such user" in unknown.stderr


def test_check_with_trace_runs_nothing(tmp_path: Path) -> None:
    need_tool("strace")
    sh, cat = shutil.which("sh"), shutil.which("cat")
    assert sh and cat
    log = tmp_path / "runs.log"
    command = f"{sh} -c 'echo ran >> {log}; {cat} /etc/hostname'"
    out = tmp_path / "out"
    assert cli("rootfs", cat, "-o", str(out), "--trace", command).returncode == 0
    assert log.read_text() == "ran\n"
    proc = cli("rootfs", cat, "-o", str(out), "--trace", command, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert log.read_text() == "ran\n"
    assert "running" not in proc.stderr


def test_the_users_own_files_win_over_generated_ones(tmp_path: Path, builder: Builder) -> None:
    prog = builder.prog(tmp_path / "getpwnam", src="runtime/getpwnam.c")
    out = tmp_path / "out"
    proc = cli("rootfs", str(prog), "-o", str(out), "--with", "nss", "--add", "/etc/passwd", "--add", "/etc/group")
    assert proc.returncode == 0, proc.stderr
    assert (out / "rootfs/etc/passwd").read_bytes() == Path("/etc/passwd").read_bytes()
    assert "is the root's own" in proc.stderr
    assert (out / "rootfs/etc/nsswitch.conf").is_file()  # the rest of the preset stays


def test_generated_users_take_the_roots_names(tmp_path: Path, builder: Builder) -> None:
    names = {}
    for line in Path("/etc/group").read_text().splitlines():
        fields = line.split(":")
        names.setdefault(fields[2], fields[0])
    prog = builder.prog(tmp_path / "prog", src="hello.c")
    out = tmp_path / "out"
    assert cli("rootfs", str(prog), "-o", str(out), "--user", "nonroot").returncode == 0
    group = (out / "rootfs/etc/group").read_text()
    assert f"{names.get('65534', 'nobody')}:x:65534:" in group  # nogroup on Debian
    assert "nonroot:x:65532:" in group


def test_tz_and_gconv_subsets_imply_their_preset(tmp_path: Path, builder: Builder) -> None:
    prog = builder.prog(tmp_path / "localtime", src="runtime/localtime.c")
    out = tmp_path / "out"
    proc = cli("rootfs", str(prog), "-o", str(out), "--tz", "Europe/Paris", "--gconv", "ISO-8859-1")
    assert proc.returncode == 0, proc.stderr
    assert (out / "rootfs/usr/share/zoneinfo/Europe/Paris").is_file()
    assert any(p.name.startswith("ISO8859-1") for p in out.glob("rootfs/usr/lib/*/gconv/*"))
    run = chroot_run(out / "rootfs", str(prog))
    assert run.returncode == 0, run.stderr


def test_map_moves_every_entry_under_its_source(tmp_path: Path, builder: Builder) -> None:
    app = tmp_path / "app"
    builder.prog(app / "bin/prog", src="hello.c")
    (app / "pyvenv.cfg").write_text("home = /usr/bin\n")
    out = tmp_path / "out"
    proc = cli(
        "rootfs", str(app / "bin/prog"), "-o", str(out), "--add", str(app / "pyvenv.cfg"), "--map", f"{app}=/app"
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "rootfs/app/pyvenv.cfg").read_text() == "home = /usr/bin\n"
    assert (out / "rootfs/app/bin/prog").is_file() and not (out / f"rootfs{app}").exists()
    assert chroot_run(out / "rootfs", "/app/bin/prog").stdout == "hello from minify\n"


def test_add_of_a_runtime_tree_brings_its_extension_modules_closures(tmp_path: Path) -> None:
    """python3's standard library in one flag: its extension modules (lib-dynload)
    need libssl, libsqlite3, libffi... which come with them."""
    python = "/usr/bin/python3"
    stdlib = Path(os.path.realpath(python)).name  # python3.11
    out = tmp_path / "out"
    proc = cli("rootfs", python, "-o", str(out), "--add", f"/usr/lib/{stdlib}")
    assert proc.returncode == 0, proc.stderr
    script = "import ssl, sqlite3, decimal, ctypes, json; print(ssl.OPENSSL_VERSION.split()[0], 42)"
    run = chroot_run(out / "rootfs", python, "-c", script)
    assert run.returncode == 0 and run.stdout == "OpenSSL 42\n", run.stderr


def test_add_of_ruby_library_tree(tmp_path: Path) -> None:
    need_tool("ruby")
    ruby = os.path.realpath(shutil.which("ruby") or "")
    version = subprocess.run([ruby, "-e", "print RbConfig::CONFIG['ruby_version']"], capture_output=True, text=True)
    libdir = subprocess.run([ruby, "-e", "print RbConfig::CONFIG['rubylibdir']"], capture_output=True, text=True)
    archdir = subprocess.run([ruby, "-e", "print RbConfig::CONFIG['archdir']"], capture_output=True, text=True)
    assert version.returncode == 0
    out = tmp_path / "out"
    args = ["rootfs", ruby, "-o", str(out), "--add", libdir.stdout, "--add", archdir.stdout]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    run = chroot_run(out / "rootfs", ruby, "-e", 'require "date"; require "fiddle"; puts Date.new(2026, 11, 28).yday')
    assert run.returncode == 0 and run.stdout == "332\n", run.stderr


def test_links_in_an_added_tree_bring_their_targets(tmp_path: Path, builder: Builder) -> None:
    prog = builder.prog(tmp_path / "prog", src="hello.c")
    out = tmp_path / "out"
    proc = cli("rootfs", str(prog), "-o", str(out), "--add", "/etc/ssl/certs")
    assert proc.returncode == 0, proc.stderr
    links = [p for p in (out / "rootfs/etc/ssl/certs").iterdir() if p.is_symlink()]
    assert links and all(p.resolve().is_relative_to(out / "rootfs") or p.exists() for p in links)
    assert cli("verify", str(out)).returncode == 0


def test_verify_reports_a_dangling_link(tmp_path: Path, builder: Builder) -> None:
    prog = builder.prog(tmp_path / "prog", src="hello.c")
    out = tmp_path / "out"
    assert cli("rootfs", str(prog), "-o", str(out)).returncode == 0
    (out / "rootfs/dangling").symlink_to("/nowhere")
    (out / "rootfs/mounts").symlink_to("/proc/self/mounts")  # the runtime provides /proc
    proc = cli("verify", str(out))
    assert proc.returncode == 1 and "/dangling: dangling symlink" in proc.stdout and "/mounts" not in proc.stdout


def test_a_problem_the_source_has_too_is_a_warning(tmp_path: Path, builder: Builder) -> None:
    """An ImageMagick coder has an undefined symbol on the host too (ldd -r shows it):
    the image cannot be stricter than the source. What the image lost still fails."""
    plugins = tmp_path / "coders"
    (tmp_path / "undefined.c").write_text(
        "int not_defined_anywhere(void);\nint coder(void) { return not_defined_anywhere(); }\n"
    )
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            str(tmp_path / "undefined.c"),
            "-Wl,--no-as-needed",
            "-lc",
            "-o",
            str(tmp_path / "mat.so"),
        ],
        check=True,
    )
    plugins.mkdir()
    shutil.move(tmp_path / "mat.so", plugins / "mat.so")
    (plugins / "dangling.xml").symlink_to("/nowhere/at/all")
    prog = builder.prog(tmp_path / "prog", src="hello.c")
    out = tmp_path / "out"
    proc = cli("rootfs", str(prog), "-o", str(out), "--add", str(plugins))
    assert proc.returncode == 0, proc.stderr
    assert "undefined symbol: not_defined_anywhere (in the source root too)" in proc.stderr
    assert "dangling symlink" in proc.stderr and "(in the source root too)" in proc.stderr
    assert cli("verify", str(out)).returncode == 1  # verify alone still reports it


def test_terminfo_lets_less_use_the_terminal(tmp_path: Path) -> None:
    need_tool("less")
    less = shutil.which("less")
    assert less
    hint = cli("analyze", less)
    assert "--with terminfo" in hint.stdout
    bare = tmp_path / "bare"
    assert cli("rootfs", less, "-o", str(bare), "--add", "/etc/hostname").returncode == 0
    assert "terminal is not fully functional" in chroot_pty(bare / "rootfs", less, "/etc/hostname", keys=b"\nq")
    out = tmp_path / "out"
    proc = cli("rootfs", less, "-o", str(out), "--add", "/etc/hostname", "--with", "terminfo")
    assert proc.returncode == 0, proc.stderr
    shown = chroot_pty(out / "rootfs", less, "/etc/hostname")
    assert "not fully functional" not in shown and Path("/etc/hostname").read_text().strip() in shown
    subset = cli("rootfs", less, "-o", str(tmp_path / "o2"), "--term", "xterm")
    assert subset.returncode == 0, subset.stderr
    assert [p.name for p in (tmp_path / "o2/rootfs").rglob("terminfo/*/*")] == ["xterm"]
    missing = cli("rootfs", less, "-o", str(tmp_path / "o3"), "--term", "no-such-terminal")
    assert missing.returncode == 1 and "no terminfo entry" in missing.stderr


def test_auto_adds_no_gconv_or_locale_to_a_cxx_hello(tmp_path: Path, builder: Builder) -> None:
    """libstdc++ imports iconv_open, setlocale and localtime for every C++ program: no
    evidence that this one converts charsets or needs a locale."""
    prog = builder.prog(tmp_path / "hello", src="cxx_hello.cc")
    out = tmp_path / "out"
    proc = cli("rootfs", str(prog), "-o", str(out), "--with", "auto")
    assert proc.returncode == 0, proc.stderr
    assert not list(out.glob("rootfs/usr/lib/*/gconv")) and not (out / "rootfs/usr/lib/locale").exists()
    assert not (out / "rootfs/usr/share/zoneinfo").exists()
    assert chroot_run(out / "rootfs", str(prog)).returncode == 0
    curl = cli("analyze", shutil.which("curl") or "/usr/bin/curl")
    assert "--with gconv" not in curl.stdout and "--with certs" in curl.stdout and "--with nss" in curl.stdout
    git = cli("analyze", shutil.which("git") or "/usr/bin/git")
    assert "git (iconv_open)" in git.stdout  # git itself re-encodes commit messages


def test_the_tree_shows_each_library_once(tmp_path: Path) -> None:
    curl = shutil.which("curl") or "/usr/bin/curl"
    short = cli("analyze", curl).stdout
    full = cli("analyze", "--all", curl).stdout
    assert "[already loaded]" not in short and "--all shows them" in short
    assert full.count("[already loaded]") > 10
    assert len(full.splitlines()) > len(short.splitlines())
    assert f"\ninterpreter: {HOST_INTERP} [PT_INTERP]" in short
    assert "(getaddrinfo, gethostbyname, getnameinfo)" in short or "(getaddrinfo" in short
    help_text = cli("rootfs", "--help").stdout
    assert "nonroot" in help_text and "[default: default]" not in cli("analyze", "--help").stdout
    assert "--map SRC=DEST" in help_text and "<list[str]> " not in help_text.split("Options")[-1]


def test_the_lock_file_says_which_preset_and_what_traced_a_library(tmp_path: Path, builder: Builder) -> None:
    need_tool("strace")
    prog = builder.prog(tmp_path / "localtime", src="runtime/localtime.c")
    out = tmp_path / "out"
    proc = cli("rootfs", str(prog), "-o", str(out), "--with", "tzdata", "--tz", "UTC", "--with", "nss")
    assert proc.returncode == 0, proc.stderr
    entries = {e["path"]: e for e in json.loads((out / "minify.lock.json").read_text())["entries"]}
    assert entries["/usr/share/zoneinfo/UTC"]["why"] == ["--with tzdata"]
    assert "minify: note: nss: files and dns are built into this glibc" in proc.stderr
    python = "/usr/bin/python3"
    traced = cli("rootfs", python, "-o", str(tmp_path / "py"), "--trace", f"{python} -c 'import _ssl'")
    assert traced.returncode == 0, traced.stderr
    entries = {e["path"]: e for e in json.loads((tmp_path / "py/minify.lock.json").read_text())["entries"]}
    ssl = [p for p in entries if "lib-dynload/_ssl" in p]
    assert ssl and entries[ssl[0]]["why"] == ["traced"]


def test_nonroot_can_write_its_home(tmp_path: Path, podman: object) -> None:
    from tests.conftest import image_from

    touch = shutil.which("touch")
    assert touch
    out = tmp_path / "out"
    proc = cli("rootfs", touch, "-o", str(out), "--user", "nonroot", "--cmd", "/home/nonroot/written")
    assert proc.returncode == 0, proc.stderr
    home = out / "rootfs/home/nonroot"
    assert (home.stat().st_uid, home.stat().st_gid) == (65532, 65532)
    entries = {e["path"]: e for e in json.loads((out / "minify.lock.json").read_text())["entries"]}
    assert entries["/home/nonroot"]["owner"] == "65532:65532" and "owner" not in entries["/home"]
    assert "COPY --chown=65532:65532 owned/home/nonroot /home/nonroot" in (out / "Dockerfile").read_text()
    tag = image_from(podman, out)  # type: ignore[arg-type]
    run = podman("run", "--rm", tag, check=False)  # type: ignore[operator]
    assert run.returncode == 0, run.stderr
    assert (
        cli(
            "rootfs", touch, "-o", str(out), "--user", "nonroot", "--cmd", "/home/nonroot/written", "--check"
        ).returncode
        == 0
    )


def test_initdb_traced_as_postgres_ships_no_data_folder(tmp_path: Path) -> None:
    """postgres' initdb refuses root (--trace-user), and writes a new data folder of
    about a thousand files: none of them is part of what it needs."""
    need_tool("strace")
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        pytest.fail("initdb is missing: the test command installs postgresql")
    initdb = str(found[-1])
    shared = Path(tempfile.mkdtemp(prefix="minify-initdb-", dir="/tmp"))
    try:
        shared.chmod(0o777)
        data = shared / "data"
        out = tmp_path / "out"
        as_root = cli("rootfs", initdb, "-o", str(out), "--trace", f"{initdb} -D {data}")
        assert as_root.returncode == 2 and "exited with status 1" in as_root.stderr
        proc = cli("rootfs", initdb, "-o", str(out), "--trace", f"{initdb} -D {data}", "--trace-user", "postgres")
        assert proc.returncode == 0, proc.stderr
        assert len(list(data.rglob("*"))) > 500  # initdb really ran
        entries = [e["path"] for e in json.loads((out / "minify.lock.json").read_text())["entries"]]
        traced = json.loads((out / "minify.trace").read_text())["files"]
        assert not [p for p in entries + traced if p.startswith(str(data))]
        assert any(p.startswith("/usr/share/postgresql") for p in entries)  # what it read: its templates
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_a_folder_input_does_not_warn_about_files_also_added(tmp_path: Path, builder: Builder) -> None:
    app = tmp_path / "app"
    builder.prog(app / "prog", src="hello.c")
    (app / "config.txt").write_text("x")
    (app / "notes.txt").write_text("y")
    proc = cli("rootfs", "./app", "-o", "out", "--entrypoint", "/app/prog", "--add", "./app/config.txt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "config.txt" not in proc.stderr and "skipped /" in proc.stderr and "notes.txt" in proc.stderr
    assert (tmp_path / "out/rootfs/app/config.txt").read_text() == "x"
