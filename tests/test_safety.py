"""Nothing lost, nothing escapes, nothing hangs: minify attacked as a hostile user and a
hostile root would attack it, and interrupted as a crash or a signal would interrupt
it. Each test reproduces one way it failed before; strace is the witness for escapes,
signal injection for the swap, and timeouts turn a hang into a failure."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from minify.loader import ldcache
from tests.conftest import (
    HOST_INTERP,
    MINIFY,
    Builder,
    chroot_run,
    cli,
    host_libc_into,
    need_tool,
    strace_minify,
    syscalls,
    written_paths,
)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The run failed with minify's one line, never a traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("minify: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def lock_entries(out: Path) -> dict[str, dict[str, object]]:
    return {e["path"]: e for e in json.loads((out / "minify.lock.json").read_text())["entries"]}


# -- 1, 2: never delete what minify did not write ------------------------------------------


def test_a_folder_with_a_foreign_lock_file_is_not_replaced(tmp_path: Path, built: dict[str, Path]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.tex").write_text("x")
    (docs / "minify.lock.json").write_text("{}")
    line = one_error_line(cli("rootfs", str(built["hello"]), "-o", str(docs)))
    assert "did not write" in line
    assert (docs / "thesis.tex").read_text() == "x"


def test_files_a_user_adds_to_out_are_named_and_kept(tmp_path: Path, built: dict[str, Path]) -> None:
    out = tmp_path / "out"
    assert cli("rootfs", str(built["hello"]), "-o", str(out)).returncode == 0
    (out / "README").write_text("mine")
    (out / ".git").mkdir()
    (out / "rootfs/notes.txt").write_text("mine too")
    line = one_error_line(cli("rootfs", str(built["hello"]), "-o", str(out)))
    assert "README" in line and ".git" in line and "notes.txt" in line and "--force" in line
    assert (out / "README").read_text() == "mine" and (out / "rootfs/notes.txt").exists()
    forced = cli("rootfs", str(built["hello"]), "-o", str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert not (out / "README").exists() and not (out / "rootfs/notes.txt").exists()


@pytest.mark.parametrize("where", [".", "..", "/", "app", "root", "above-root"])
def test_out_is_never_a_folder_that_holds_what_is_being_read(tmp_path: Path, builder: Builder, where: str) -> None:
    work = tmp_path / "work"
    (work / "app").mkdir(parents=True)
    builder.prog(work / "app/prog", src="hello.c")
    root = tmp_path / "above-root/root"
    root.mkdir(parents=True)
    (work / "keep").write_text("precious")
    out = {"root": str(root), "above-root": str(tmp_path / "above-root")}.get(where, where)
    args = ["rootfs", "./app/prog", "-o", out, "--force"]
    if where in ("root", "above-root"):
        shutil.copytree(work / "app", root / "app")
        args = ["rootfs", "--root", str(root), "/app/prog", "-o", out, "--force"]
    line = one_error_line(cli(*args, cwd=work))
    assert "OUT cannot be" in line
    assert (work / "keep").read_text() == "precious" and (work / "app/prog").is_file()
    assert root.is_dir()


# -- 3, 4: OUT is whole at every instant; one run at a time; leftovers tidied -------------


def test_a_signal_during_the_swap_leaves_a_whole_out(tmp_path: Path, built: dict[str, Path]) -> None:
    need_tool("strace")
    out = tmp_path / "out"
    assert cli("rootfs", str(built["hello"]), "-o", str(out)).returncode == 0
    before = (out / "minify.lock.json").read_text()
    for when in ("1", "2"):
        proc = subprocess.run(
            [
                *("strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=rename,renameat,renameat2"),
                *("-e", f"inject=rename,renameat,renameat2:signal=SIGINT:when={when}"),
                *(*MINIFY, "rootfs", str(built["hello"]), "-o", str(out), "--with", "tmp"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "Traceback" not in proc.stderr
        assert (out / "minify.lock.json").is_file() and (out / "rootfs").is_dir()
        assert cli("verify", str(out)).returncode == 0
    assert cli("rootfs", str(built["hello"]), "-o", str(out)).returncode == 0
    assert (out / "minify.lock.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".minify-")] == []


def test_leftovers_of_an_interrupted_run_are_tidied_and_nothing_else(tmp_path: Path, built: dict[str, Path]) -> None:
    out = tmp_path / "out"
    assert cli("rootfs", str(built["hello"]), "-o", str(out)).returncode == 0
    # an interrupted two-rename swap: OUT aside, the new one never moved in
    os.rename(out, tmp_path / ".minify-old-out-abcd1234")
    (tmp_path / ".minify-new-out-zz99_x0q" / "rootfs").mkdir(parents=True)
    (tmp_path / ".minify-new-other-abcd1234").mkdir()  # another OUT's: not ours to judge
    (tmp_path / ".minify-notes").write_text("a user's file")
    proc = cli("rootfs", str(built["hello"]), "-o", str(out), "--check")
    assert proc.returncode == 1  # --check writes nothing, so OUT is still aside
    proc = cli("rootfs", str(built["hello"]), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "put back" in proc.stderr and "interrupted run" in proc.stderr
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".minify-new-other-abcd1234", ".minify-notes", "out"]


def test_a_run_waits_for_another_writing_beside_out(tmp_path: Path, built: dict[str, Path]) -> None:
    out = tmp_path / "out"
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        run = subprocess.Popen([*MINIFY, "rootfs", str(built["hello"]), "-o", str(out)], stderr=subprocess.PIPE)
        time.sleep(3)
        assert run.poll() is None, "did not wait for the lock"
        assert not out.exists()
    finally:
        os.close(fd)
    assert run.wait(timeout=120) == 0
    assert (out / "minify.lock.json").is_file()


def test_two_runs_at_once_on_one_out(tmp_path: Path, built: dict[str, Path]) -> None:
    out = tmp_path / "out"
    runs = [
        subprocess.Popen([*MINIFY, "rootfs", str(built["hello"]), "-o", str(out), *extra], stderr=subprocess.PIPE)
        for extra in ((), ("--with", "tmp"))
    ]
    assert [r.wait(timeout=120) for r in runs] == [0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert cli("verify", str(out)).returncode == 0


# -- 5: a root that changes during the run --------------------------------------------------


@pytest.fixture()
def small_root(tmp_path: Path, builder: Builder) -> Path:
    """A root with its own libc and ld.so, and /bin/prog needing /opt/d/libd.so.1."""
    root = tmp_path / "root"
    host_libc_into(root)
    lib = builder.lib(root / "opt/d/libd.so.1", "inroot")
    builder.prog(root / "bin/prog", links=[lib], runpath="/opt/d")
    return root


def test_a_folder_swapped_for_a_host_symlink_never_ships_a_host_file(
    tmp_path: Path, builder: Builder, small_root: Path
) -> None:
    host = builder.lib(tmp_path / "host/libd.so.1", "HOSTSECRET")
    inroot = (small_root / "opt/d/libd.so.1").read_bytes()
    d, aside = small_root / "opt/d", small_root / "opt/d-real"
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            os.rename(d, aside)
            d.symlink_to(host.parent)
            time.sleep(0.001)
            d.unlink()
            os.rename(aside, d)
            time.sleep(0.001)

    swapper = threading.Thread(target=swap)
    swapper.start()
    outcomes = []
    try:
        for i in range(13):
            out = tmp_path / f"out{i}"
            proc = cli("rootfs", "--root", str(small_root), "/bin/prog", "-o", str(out))
            if proc.returncode != 0:
                one_error_line(proc)
                outcomes.append("refused")
                continue
            shipped = (out / "rootfs/opt/d/libd.so.1").read_bytes()
            assert b"HOSTSECRET" not in shipped and shipped == inroot
            assert lock_entries(out)["/opt/d/libd.so.1"]["sha256"] == hashlib.sha256(shipped).hexdigest()
            outcomes.append("built")
    finally:
        stop.set()
        swapper.join()
    assert len(outcomes) == 13


def test_strace_sees_no_read_outside_a_changing_root(tmp_path: Path, builder: Builder, small_root: Path) -> None:
    host = builder.lib(tmp_path / "host/libd.so.1", "HOSTSECRET")
    stop = threading.Event()
    d, aside = small_root / "opt/d", small_root / "opt/d-real"

    def swap() -> None:
        while not stop.is_set():
            os.rename(d, aside)
            d.symlink_to(host.parent)
            d.unlink()
            os.rename(aside, d)

    swapper = threading.Thread(target=swap)
    swapper.start()
    try:
        log = tmp_path / "log"
        strace_minify(["rootfs", "--root", str(small_root), "/bin/prog", "-o", str(tmp_path / "out")], log)
    finally:
        stop.set()
        swapper.join()
    looked_at = {p for _, paths in syscalls(log) for p in paths}
    assert any(p.startswith(str(small_root / "bin/prog")) for p in looked_at)
    assert not any(p.startswith(str(host.parent)) for p in looked_at)
    assert not any(p.startswith(str(tmp_path / "host")) for p in written_paths(log))


# -- 6, 7: values that name files are checked like paths -------------------------------------


def test_an_edited_trace_cannot_ship_a_secret_or_crash(tmp_path: Path, built: dict[str, Path]) -> None:
    out = tmp_path / "out"
    assert cli("rootfs", str(built["hello"]), "-o", str(out)).returncode == 0
    trace = out / "minify.trace"
    trace.write_text(json.dumps({"command": ["x"], "files": ["/etc/shadow", "/etc/hostname"], "dirs": []}))
    proc = cli("rootfs", str(built["hello"]), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "/etc/shadow" in proc.stderr and "left out" in proc.stderr
    assert not (out / "rootfs/etc/shadow").exists() and (out / "rootfs/etc/hostname").is_file()
    for files in (["/etc/hostname\u0000x"], [42], ["relative/path"], ["/etc/../etc/shadow"]):
        out.joinpath("minify.trace").write_text(json.dumps({"command": ["x"], "files": files}))
        line = one_error_line(cli("rootfs", str(built["hello"]), "-o", str(out)))
        assert "not a minify trace" in line


def test_a_fresh_trace_leaves_secrets_out_unless_added(tmp_path: Path, built: dict[str, Path]) -> None:
    need_tool("strace")
    key = tmp_path / "home/.ssh/id_test"
    key.parent.mkdir(parents=True)
    key.write_text("PRIVATE KEY")
    cat = shutil.which("cat")
    assert cat
    out = tmp_path / "out"
    proc = cli("rootfs", cat, "-o", str(out), "--trace", f"{cat} {key}")
    assert proc.returncode == 0, proc.stderr
    assert str(key) in proc.stderr and not (out / f"rootfs{key}").exists()
    proc = cli("rootfs", cat, "-o", str(out), "--trace", f"{cat} {key}", "--add", str(key))
    assert proc.returncode == 0, proc.stderr
    assert (out / f"rootfs{key}").read_text() == "PRIVATE KEY"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--tz", "../../../etc/shadow"), ("--tz", "/etc/shadow"), ("--add", "")],
)
def test_values_that_name_files_are_checked(tmp_path: Path, built: dict[str, Path], option: str, value: str) -> None:
    extra = ["--with", "tzdata"] if option == "--tz" else []
    line = one_error_line(cli("rootfs", str(built["hello"]), "-o", str(tmp_path / "out"), option, value, *extra))
    assert "shadow" not in "".join(os.listdir(tmp_path)) and option in line


# -- 8 to 12: ends in seconds, with one line or a result -------------------------------------


def test_a_large_folder_with_one_corrupt_file_and_a_linker_script(tmp_path: Path, built: dict[str, Path]) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(70):
        shutil.copy(built["hello"], folder / f"prog{i:02d}")
    data = bytearray(built["hello"].read_bytes())
    (folder / "corrupt").write_bytes(bytes(data[:64]) + b"\xff" * 200)
    (folder / "libc.so").write_text("/* GNU ld script */\nGROUP ( /lib/x86_64-linux-gnu/libc.so.6 )\n")
    proc = subprocess.run([*MINIFY, "analyze", str(folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "corrupt" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.count("/many/prog") >= 70


@pytest.mark.parametrize("kind", ["add", "map", "add-inner"])
def test_double_slashes_end(tmp_path: Path, built: dict[str, Path], kind: str) -> None:
    """posixpath.dirname("//") is "//": a plan walking up from //y must still end."""
    args = {
        "add": ["--add", "/etc/hostname://y"],
        "map": ["--map", f"{built['hello'].parent}=//d"],
        "add-inner": ["--add", "/etc/hostname:/a//b"],
    }[kind]
    proc = subprocess.run(
        [*MINIFY, "rootfs", str(built["hello"]), "-o", str(tmp_path / "out"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    expected = {"add": "y", "map": "d/hello", "add-inner": "a/b"}[kind]
    assert (tmp_path / "out/rootfs" / expected).is_file()


def test_special_files_never_block(tmp_path: Path, built: dict[str, Path]) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [*MINIFY, "rootfs", str(built["hello"]), "-o", str(tmp_path / "out"), "--add", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "FIFO" in one_error_line(proc)
    out = tmp_path / "out"
    assert cli("rootfs", str(built["hello"]), "-o", str(out)).returncode == 0
    os.mkfifo(out / "rootfs/fifo")
    proc = subprocess.run(
        [*MINIFY, "rootfs", str(built["hello"]), "-o", str(out), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and "unexpected: /fifo" in proc.stdout


def test_a_folder_given_with_add_warns_about_what_it_cannot_copy(tmp_path: Path, built: dict[str, Path]) -> None:
    extra = tmp_path / "data"
    extra.mkdir()
    (extra / "a.txt").write_text("a")
    os.mkfifo(extra / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(extra / "sock"))
    try:
        proc = cli("rootfs", str(built["hello"]), "-o", str(tmp_path / "out"), "--add", str(extra))
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr
    assert "a FIFO in" in proc.stderr and "a socket in" in proc.stderr
    assert (tmp_path / f"out/rootfs{extra}/a.txt").read_text() == "a"


def test_hostile_sizes_end_in_seconds(tmp_path: Path, builder: Builder) -> None:
    root = tmp_path / "root"
    (root / HOST_INTERP.lstrip("/")).parent.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / HOST_INTERP.lstrip("/")).write_bytes(b"/" * 200_000 + b"\0" + b"/\0" * 500_000)
    builder.prog(root / "bin/prog", src="hello.c")
    conf = root / "etc/ld.so.conf.d"
    conf.mkdir(parents=True)
    for name in "abcd":
        (conf / name).symlink_to(".")
    (root / "etc/ld.so.conf").write_text("include " + "/".join(["/etc/ld.so.conf.d"] + ["*"] * 12) + "/*.conf\n")
    (conf / "x.conf").write_text("/opt/lib\n")
    started = time.monotonic()
    proc = subprocess.run(
        [*MINIFY, "analyze", "--root", str(root), "/bin/prog"], capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - started < 30
    assert "Traceback" not in proc.stderr and proc.returncode in (1, 2)


def test_a_long_rpath_is_linear(tmp_path: Path, builder: Builder) -> None:
    """5,000 RPATH folders that exist: each is looked at once per run, not once per
    name and hwcaps subfolder, and a search trail is not kept for names found."""
    for i in range(5000):
        (tmp_path / "r" / str(i)).mkdir(parents=True)
    dirs = ":".join(f"$ORIGIN/r/{i}" for i in range(5000))  # 70 KB: one argument may be 128 KB
    libs = ["-lm", "-lz", "-lpthread", "-ldl", "-lrt", "-lutil", "-lresolv", "-lcrypt"]
    prog = builder.prog(tmp_path / "prog", src="hello.c", rpath=dirs, flags=["-Wl,--no-as-needed", *libs])
    # VmHWM is this process's own peak: ru_maxrss after fork and exec keeps the peak of
    # the forked copy of pytest, whatever its size.
    script = (
        "import minify;"
        f"p = minify.analyze([{str(prog)!r}]).programs[0];"
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0];"
        "print(p.ok, hwm)"
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    ok, rss_kb = proc.stdout.split()
    assert ok == "True" and int(rss_kb) < 300_000
    assert time.monotonic() - started < 20


def _cache(extension: bytes, ext_offset: int) -> bytes:
    header = ldcache.NEW_MAGIC + struct.pack("<IIB3xI12x", 0, 0, 2, ext_offset)
    return header + extension


def test_a_hostile_ld_so_cache_is_refused_in_linear_time() -> None:
    huge = struct.pack("<II", ldcache.EXTENSION_MAGIC, 1) + struct.pack("<IIII", 1, 0, 72, 32 << 20)
    with pytest.raises(ldcache.CacheFormatError, match="glibc-hwcaps"):
        ldcache.parse(_cache(huge + b"\0" * (1 << 20), 48))
    outside = struct.pack("<II", ldcache.EXTENSION_MAGIC, 1) + struct.pack("<IIII", 1, 0, 1 << 30, 8)
    with pytest.raises(ldcache.CacheFormatError):
        ldcache.parse(_cache(outside, 48))
    started = time.monotonic()
    many = ldcache.NEW_MAGIC + struct.pack("<IIB3xI12x", 200_000, 0, 2, 0)
    entries = struct.pack("<iIIIQ", 0x303, 48 + 200_000 * 24, 48 + 200_000 * 24, 0, 0) * 200_000
    with pytest.raises(ldcache.CacheFormatError, match="no string"):
        ldcache.parse(many + entries + b"x" * (8 << 20))
    assert time.monotonic() - started < 5


def test_a_folder_input_never_takes_in_its_own_out(tmp_path: Path, built: dict[str, Path]) -> None:
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(built["hello"], app / "hello")
    counts = []
    for _ in range(3):
        proc = cli("rootfs", "./app", "-o", "app/out", "--entrypoint", "/app/hello", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        counts.append(len(lock_entries(app / "out")))
    assert counts[0] == counts[1] == counts[2]
    assert not any("/out/" in path for path in lock_entries(app / "out"))


# -- 13, 14: output that is what was asked ---------------------------------------------------


def test_env_values_reach_the_container_exactly(tmp_path: Path, podman: object) -> None:
    from tests.conftest import image_from

    printenv = shutil.which("printenv")
    assert printenv
    values = {"A": "$HOME", "B": "${A}x", "C": "é ü", "D": 'it\'s "quoted" \\ back\\', "E": " spaced  "}
    args = ["rootfs", printenv, "-o", str(tmp_path / "out")]
    for key, value in values.items():
        args += ["--env", f"{key}={value}"]
    for key in values:
        args += ["--cmd", key]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    tag = image_from(podman, tmp_path / "out")  # type: ignore[arg-type]
    run = podman("run", "--rm", tag)  # type: ignore[operator]
    assert run.stdout.split("\n")[:-1] == list(values.values())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--env", "A=line\nbreak"], "line break"),
        (["--user", "1000\n"], "--user"),
        (["--user", "nobody"], "--user"),
        (["--env", "1A=x"], "NAME=VALUE"),
    ],
)
def test_values_a_dockerfile_cannot_carry_are_refused(
    tmp_path: Path, built: dict[str, Path], args: list[str], words: str
) -> None:
    line = one_error_line(cli("rootfs", str(built["hello"]), "-o", str(tmp_path / "out"), *args))
    assert words in line
    assert not (tmp_path / "out").exists()


def test_a_program_name_that_is_not_utf8_is_refused(tmp_path: Path, built: dict[str, Path]) -> None:
    name = os.fsencode(str(tmp_path)) + b"/prog\xff"
    shutil.copy(built["hello"], name)
    proc = subprocess.run([*MINIFY, "rootfs", name, "-o", str(tmp_path / "out")], capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and "not valid UTF-8" in err and "Traceback" not in err


def test_hard_links_are_written_whatever_their_order(tmp_path: Path, built: dict[str, Path]) -> None:
    shutil.copy(built["hello"], tmp_path / "b")
    os.link(tmp_path / "b", tmp_path / "a")
    proc = cli("rootfs", "./b", "./a", "-o", "out", "--entrypoint", "/b", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    a, b = tmp_path / "out/rootfs/a", tmp_path / "out/rootfs/b"
    assert os.stat(a).st_ino == os.stat(b).st_ino
    entries = lock_entries(tmp_path / "out")
    assert entries["/a"]["type"] == "file" and entries["/b"] == {**entries["/b"], "type": "hardlink", "target": "/a"}
    assert chroot_run(tmp_path / "out/rootfs", "/b").stdout == "hello from minify\n"


# -- 15, 16: renderers and copies that say what they do ---------------------------------------


def test_hostile_names_are_escaped_in_every_format(tmp_path: Path, builder: Builder) -> None:
    import xml.dom.minidom

    import pydot

    lib = builder.lib(tmp_path / "libx.so.1", "x", soname="lib\x1b[31mred\xe9.so")
    prog = builder.prog(tmp_path / "prog", links=[lib])
    lib.unlink()  # now missing: the name is printed in the report
    tree = subprocess.run([*MINIFY, "analyze", str(prog)], capture_output=True, timeout=60)
    assert tree.returncode == 1 and b"\x1b" not in tree.stdout + tree.stderr
    assert b"lib\\x1b[31mred" in tree.stdout
    listing = subprocess.run([*MINIFY, "analyze", "-f", "list", str(prog)], capture_output=True, timeout=60)
    assert b"\x1b" not in listing.stdout and b"not found" in listing.stdout
    dot = subprocess.run([*MINIFY, "analyze", "-f", "dot", str(prog)], capture_output=True, text=True, timeout=60)
    assert dot.returncode == 1 and "Traceback" not in dot.stderr
    (graph,) = pydot.graph_from_dot_data(dot.stdout)
    assert any("missing" in str(n.get("role")) for n in graph.get_nodes())
    graphml = subprocess.run([*MINIFY, "analyze", "-f", "graphml", str(prog)], capture_output=True, timeout=60)
    document = xml.dom.minidom.parseString(graphml.stdout)
    assert "\\x1b" in document.toxml()


def test_file_capabilities_dropped_with_a_warning(tmp_path: Path, built: dict[str, Path]) -> None:
    need_tool("setcap")
    prog = tmp_path / "capable"
    shutil.copy(built["hello"], prog)
    subprocess.run(["setcap", "cap_net_bind_service+ep", str(prog)], check=True)
    proc = cli("rootfs", str(prog), "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "file capabilities (security.capability) dropped" in proc.stderr


def test_a_huge_pt_interp_is_refused_as_the_kernel_does(tmp_path: Path, built: dict[str, Path]) -> None:
    import lief  # a fixture-making step: the loader and the kernel judge the result

    big = tmp_path / "big"
    binary = lief.ELF.parse(str(built["hello"]))
    binary.interpreter = "/" * 200_000
    binary.write(str(big))
    big.chmod(0o755)
    with pytest.raises(OSError, match="Exec format error"):  # ENOEXEC: the kernel refuses it
        subprocess.run([str(big)], capture_output=True)
    started = time.monotonic()
    line = one_error_line(subprocess.run([*MINIFY, "analyze", str(big)], capture_output=True, text=True, timeout=60))
    assert "PT_INTERP of 200001 bytes" in line and time.monotonic() - started < 20


def test_files_a_user_adds_to_base_or_owned_are_named_and_kept(tmp_path: Path, built: dict[str, Path]) -> None:
    """base/ and owned/ (the Dockerfile's other COPYs) are checked against the lock file
    as rootfs/ is: what a user put there is never deleted without --force."""
    out = tmp_path / "out"
    args = ("rootfs", str(built["hello"]), "-o", str(out), "--user", "nonroot")
    assert cli(*args).returncode == 0
    assert cli(*args).returncode == 0  # its own base/ and owned/ are no reason to refuse
    for tree in ("base", "owned"):
        assert (out / tree).is_dir()
        mine = out / tree / "mine.txt"
        mine.write_text("mine")
        line = one_error_line(cli(*args))
        assert f"{tree}/mine.txt" in line and "--force" in line
        assert mine.read_text() == "mine"
        mine.unlink()
    assert cli(*args, "--force").returncode == 0
