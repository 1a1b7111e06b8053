"""The persistent cache of parsed facts: a warm run never imports LIEF, and a file
that changed, a damaged entry, two runs at once or ``--no-cache`` never give an
answer other than a fresh parse's."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minify.elf.cache import FactCache, Kind, key_of
from minify.elf.files import read_header
from minify.elf.reader import read_elf
from tests.conftest import HOST_LIBC, MINIFY, Builder

#: Runs an analysis in a fresh interpreter and says whether LIEF was imported.
PROBE = """
import json, sys
from minify.analysis.closure import analyze
from minify.render import render
analysis = analyze(sys.argv[2:], cache=sys.argv[1] == "cache")
print(json.dumps({"lief": "lief" in sys.modules, "out": render(analysis, "json", {})}))
"""


def probe(cache_home: Path, *paths: Path, cache: bool = True) -> dict[str, object]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "cache" if cache else "no", *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def entries(cache_home: Path) -> list[Path]:
    return sorted(p for p in (cache_home / "minify").rglob("*.json") if p.is_file())


def minify(cache_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    return subprocess.run([*MINIFY, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def program(tmp_path: Path, builder: Builder) -> Path:
    """A program that needs a library of its own (found through its RUNPATH)."""
    lib = builder.lib(tmp_path / "lib" / "libaa.so", "aa")
    return builder.prog(tmp_path / "bin" / "app", links=[lib], runpath="$ORIGIN/../lib")


def test_a_warm_run_reads_the_cache_and_never_imports_lief(tmp_path: Path, program: Path) -> None:
    home = tmp_path / "cache"
    cold = probe(home, program)
    assert cold["lief"] is True
    assert entries(home), "the cold run stored nothing"
    warm = probe(home, program)
    assert warm["lief"] is False
    fresh = probe(home, program, cache=False)
    assert fresh["lief"] is True
    assert warm["out"] == cold["out"] == fresh["out"]
    assert "libaa.so" in str(warm["out"])


def test_a_file_changed_in_place_is_parsed_again(tmp_path: Path, builder: Builder) -> None:
    """Same inode, same size, mtime put back: only its ctime tells, and that is enough."""
    home = tmp_path / "cache"
    libs = tmp_path / "lib"
    first = builder.prog(tmp_path / "a", links=[builder.lib(libs / "libaa.so", "aa")], runpath=str(libs))
    second = builder.prog(tmp_path / "b", links=[builder.lib(libs / "libbb.so", "bb")], runpath=str(libs))
    assert first.stat().st_size == second.stat().st_size  # names of equal length
    app = tmp_path / "bin" / "app"
    app.parent.mkdir()
    app.write_bytes(first.read_bytes())
    app.chmod(0o755)
    before = app.stat()
    assert "libaa.so" in str(probe(home, app)["out"])
    with open(app, "r+b") as fh:  # rewrite in place: the same inode
        fh.write(second.read_bytes())
    os.utime(app, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = app.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    again = probe(home, app)
    assert "libbb.so" in str(again["out"]) and "libaa.so" not in str(again["out"])
    assert again["out"] == probe(home, app, cache=False)["out"]


@pytest.mark.parametrize(
    "damage",
    [b"", b"{not json", b"[1, 2, 3]", b'{"key": [1, 2, 3, 4, 5], "kind": "info"}', b"\xff" * 100],
    ids=["empty", "truncated", "a list", "another file's", "binary"],
)
def test_a_damaged_entry_is_ignored_and_rewritten(tmp_path: Path, program: Path, damage: bytes) -> None:
    home = tmp_path / "cache"
    good = probe(home, program, cache=False)["out"]
    probe(home, program)
    stored = entries(home)
    assert stored
    for entry in stored:
        entry.write_bytes(damage)
    damaged = probe(home, program)
    assert damaged["out"] == good
    assert damaged["lief"] is True  # it parsed again rather than trust the entry
    for entry in entries(home):
        data = json.loads(entry.read_bytes())
        assert isinstance(data, dict) and len(data["key"]) == 5  # rewritten whole
    assert probe(home, program)["lief"] is False


def test_an_entry_with_the_wrong_shape_is_not_trusted(tmp_path: Path, program: Path) -> None:
    """Valid JSON with this file's key but fields of the wrong types."""
    home = tmp_path / "cache"
    good = probe(home, program)["out"]
    for entry in entries(home):
        data = json.loads(entry.read_bytes())
        for field in data:
            if field not in ("key", "kind"):
                data[field] = 7
        entry.write_text(json.dumps(data))
    assert probe(home, program)["out"] == good


def test_two_runs_at_once_share_one_cache(tmp_path: Path, builder: Builder) -> None:
    home = tmp_path / "cache"
    libs = [builder.lib(tmp_path / "lib" / f"lib{i}.so", f"l{i}") for i in range(12)]
    folder = tmp_path / "bin"
    for i in range(12):
        builder.prog(folder / f"p{i}", links=libs[: i + 1], runpath=str(tmp_path / "lib"))
    env = {**os.environ, "XDG_CACHE_HOME": str(home)}
    cmd = [*MINIFY, "analyze", "--format", "json", "--no-hints", str(folder)]
    runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err.decode() for _, err in outs]
    fresh = minify(home, "analyze", "--format", "json", "--no-hints", "--no-cache", str(folder))
    assert fresh.returncode == 0
    assert outs[0][0].decode() == outs[1][0].decode() == fresh.stdout
    assert not [p for p in (home / "minify").rglob(".new-*")], "a temporary entry was left behind"
    warm = minify(home, "analyze", "--format", "json", "--no-hints", str(folder))
    assert warm.stdout == fresh.stdout


def test_no_cache_neither_reads_nor_writes(tmp_path: Path, program: Path) -> None:
    home = tmp_path / "cache"
    done = minify(home, "analyze", "--no-cache", str(program))
    assert done.returncode == 0, done.stderr
    assert "libaa.so" in done.stdout
    assert entries(home) == []
    assert minify(home, "analyze", str(program)).returncode == 0
    assert entries(home)


def test_an_unusable_cache_folder_only_costs_time(tmp_path: Path, program: Path) -> None:
    """XDG_CACHE_HOME/minify is a file: no cache, the same answer, exit 0."""
    home = tmp_path / "cache"
    home.mkdir()
    (home / "minify").write_text("not a folder")
    done = minify(home, "analyze", str(program))
    assert done.returncode == 0, done.stderr
    assert "libaa.so" in done.stdout
    assert (home / "minify").read_text() == "not a folder"


def test_a_swapped_cache_folder_cannot_feed_forged_entries(tmp_path: Path, program: Path) -> None:
    """Root's cache in a folder another user owns: the user swaps the cache folder for
    one of their own with a forged entry for the same file. The cache reads through the
    descriptor it checked, so it still gives the real entry; a new cache on the swapped
    folder (not root's own) gives none, and says so."""
    from minify.elf.cache import FactCache, Kind

    if os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root (CI runs as root)")
    folder = tmp_path / "cache" / "minify"
    cache = FactCache(str(folder))
    assert cache.enabled
    st = os.stat(program)
    cache.store(st, Kind.LDSO, {"version": [2, 36], "system_dirs": ["/lib"]})
    tag = Path(cache.folder).name
    real = next((folder / tag).rglob("*.ldso.json"))
    os.rename(folder, tmp_path / "cache" / "moved")
    forged_entry = folder / tag / real.parent.name / real.name
    forged_entry.parent.mkdir(parents=True)
    forged = json.loads((tmp_path / "cache" / "moved" / tag / real.parent.name / real.name).read_text())
    forged["system_dirs"] = ["/home/u/evil"]
    forged_entry.write_text(json.dumps(forged))
    for path in (folder, folder / tag, forged_entry.parent, forged_entry):
        os.chown(path, 1234, 1234)
    loaded = cache.load(st, Kind.LDSO)
    assert loaded is not None and loaded["system_dirs"] == ["/lib"]
    again = FactCache(str(folder))
    assert not again.enabled and again.load(st, Kind.LDSO) is None
    assert again.note is not None and "is not this user's own" in again.note
    done = minify(tmp_path / "cache", "rootfs", str(program), "-o", str(tmp_path / "out"))
    assert done.returncode == 0 and "is not this user's own" in done.stderr, done.stderr


#: Hints for every program given, in a fresh interpreter: whether LIEF was imported too.
HINTS_PROBE = """
import json, sys
from minify.analysis.closure import analyze
from minify.analysis.hints import for_analysis
analysis = analyze(sys.argv[2:], cache=sys.argv[1] == "cache")
hints = {path: sorted(map(str, found)) for path, found in for_analysis(analysis).items()}
print(json.dumps({"lief": "lief" in sys.modules, "hints": hints}))
"""


def hints_probe(cache_home: Path, paths: list[str], *, cache: bool) -> dict[str, object]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home)}
    argv = [sys.executable, "-c", HINTS_PROBE, "cache" if cache else "no", *paths]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900, check=True)
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def test_hints_read_the_imports_alone_and_match_a_fresh_parse(tmp_path: Path) -> None:
    """Hints need only what each object imports, kept in an entry of its own: a big
    program's definitions (tens of MB for pandoc) are never loaded to give them. On every
    ELF file at the top level of /usr/bin: a run with no cache, a cold run (which stores
    the entries) and a warm run with every symbols entry deleted give the same hints, and
    the warm run imports no LIEF. Files that change while the test runs are left out."""
    from minify.elf.files import is_elf

    def versions() -> dict[str, tuple[int, int, int]]:
        out = {}
        for entry in os.scandir("/usr/bin"):
            if entry.is_file(follow_symlinks=False) and is_elf(entry.path):
                st = entry.stat(follow_symlinks=False)
                out[entry.path] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return out

    before = versions()
    paths = sorted(before)
    assert len(paths) > 50  # a Debian system with the test command's packages
    fresh = hints_probe(tmp_path / "none", paths, cache=False)
    cold = hints_probe(tmp_path / "cache", paths, cache=True)
    symbols = list((tmp_path / "cache").rglob("*.symbols.json"))
    assert symbols and list((tmp_path / "cache").rglob("*.imports.json"))
    for entry in symbols:
        entry.unlink()
    warm = hints_probe(tmp_path / "cache", paths, cache=True)
    assert warm["lief"] is False and cold["lief"] is True
    after = versions()
    steady = [p for p in paths if after.get(p) == before[p]]
    assert len(steady) > len(paths) // 2
    want, got_cold, got_warm = (run["hints"] for run in (fresh, cold, warm))
    assert isinstance(want, dict) and isinstance(got_cold, dict) and isinstance(got_warm, dict)
    assert any(want[p] for p in steady), "no program of /usr/bin got a hint: nothing would be compared"
    for path in steady:
        assert got_warm[path] == got_cold[path] == want[path], path


#: Runs ``minify rootfs`` in a fresh interpreter; says whether LIEF was imported.
ROOTFS_PROBE = """
import json, sys
import minify.cli as cli
codes = []
cli._exit = codes.append
sys.argv = ["minify", *sys.argv[1:]]
try:
    cli.main()
except SystemExit as exc:
    codes.append(exc.code)
print(json.dumps({"lief": "lief" in sys.modules, "code": codes[-1] if codes else 0}))
"""


def test_a_warm_rootfs_verifies_the_copies_from_the_source_facts(tmp_path: Path, builder: Builder) -> None:
    """The rootfs just written is checked with the facts of the source versions its
    files are byte for byte copies of (their sha256 is the digest of that version):
    a warm ``minify rootfs`` parses nothing, and its verdict is a fresh parse's. The
    library here lacks a symbol the program needs, in the source too."""
    lib = builder.lib(tmp_path / "lib/libsym.so.1", "sym", src="sym.c", flags=["-DWITH_B"])
    prog = builder.prog(tmp_path / "prog", src="usesym.c", links=[lib], runpath="$ORIGIN/lib")
    builder.lib(lib, "sym", src="sym.c")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def run(out: str, *flags: str) -> tuple[dict[str, object], str]:
        done = subprocess.run(
            [sys.executable, "-c", ROOTFS_PROBE, "rootfs", str(prog), "-o", str(tmp_path / out), *flags],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        assert result["code"] == 0, done.stderr
        return result, done.stderr

    cold, cold_err = run("out-1")
    warm, warm_err = run("out-2")
    fresh, fresh_err = run("out-3", "--no-cache")
    assert cold["lief"] is True and fresh["lief"] is True
    assert warm["lief"] is False
    verdict = "undefined symbol: sym_b (in the source root too)"
    assert verdict in cold_err and verdict in warm_err and verdict in fresh_err
    assert cold_err.replace("out-1", "OUT") == warm_err.replace("out-2", "OUT") == fresh_err.replace("out-3", "OUT")


def test_a_copy_reads_its_source_entries_only_through_a_view_that_stores_nothing(tmp_path: Path, program: Path) -> None:
    home = tmp_path / "cache"
    probe(home, program)  # stores the program's entries
    copy = tmp_path / "copy"
    shutil.copyfile(program, copy)
    cache = FactCache(str(home / "minify"))
    header = read_header(str(copy))[0]
    src_st, copy_st = os.stat(program), os.stat(copy)
    assert cache.info(copy_st, header) is None, "a new inode has no entry of its own"
    view = cache.copied({key_of(copy_st): key_of(src_st)})
    assert view.info(copy_st, header) == cache.info(src_st, header) is not None
    assert cache.copied({}).info(copy_st, header) is None
    before = entries(home)
    view.store_info(copy_st, read_elf(str(copy)))
    assert entries(home) == before


def test_definitions_read_from_an_entry_are_the_file_s_own(tmp_path: Path) -> None:
    """Verification takes the definitions it checks from a file's symbols entry, as
    sets: for a sample of this machine's ELF files, what the entry answers for some
    chosen names is what the file's own tables answer; an entry too big to be worth
    decoding answers nothing (the file's hash table is asked instead)."""
    from minify.elf.cache import MAX_LOOKUP_ENTRY_BYTES
    from minify.elf.dynsym import read_dynamic_symbols
    from minify.errors import BadInput
    from tests.test_compact import usr_elf_files
    from tests.test_dynsym import _sample

    cache = FactCache(str(tmp_path / "cache"))
    files = [HOST_LIBC, *random.Random(22).sample(usr_elf_files(), 300)]
    checked = big = 0
    for path in files:
        try:
            whole = read_dynamic_symbols(path)
        except BadInput:
            continue
        st = os.stat(path)
        cache.store_symbols(st, whole)
        wanted = _sample(whole, path)
        answer = cache.definitions(st, wanted)
        if answer is None:
            big += 1
            assert len(json.dumps([sorted(whole.defined)])) > MAX_LOOKUP_ENTRY_BYTES // 2, path
            continue
        assert answer == read_dynamic_symbols(path, wanted=wanted), path
        checked += 1
    assert checked > 200 and big < checked


def test_a_file_s_digests_are_cached_for_its_version_only(tmp_path: Path, builder: Builder) -> None:
    """A warm rootfs takes a file's digests from the cache, keyed by the file's
    version: the lock file says the bytes' sha256 on both runs, and a file rewritten in
    place with its size and mtime put back (its ctime cannot be) gets its new digests."""
    data = tmp_path / "data.bin"
    data.write_bytes(b"a" * 5000)
    prog = builder.prog(tmp_path / "prog")
    home = tmp_path / "home"

    def sha_in_lock(out: str) -> str:
        done = minify(home, "rootfs", str(prog), "--add", str(data), "-o", str(tmp_path / out))
        assert done.returncode == 0, done.stderr
        lock = json.loads((tmp_path / out / "minify.lock.json").read_text())
        (sha,) = [e["sha256"] for e in lock["entries"] if e["path"] == str(data)]
        return str(sha)

    assert sha_in_lock("out-1") == hashlib.sha256(b"a" * 5000).hexdigest()
    assert any(p.name.endswith(".digests.json") for p in entries(home))
    assert sha_in_lock("out-2") == hashlib.sha256(b"a" * 5000).hexdigest()
    before = os.stat(data)
    with open(data, "r+b") as fh:
        fh.write(b"b" * 5000)
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert sha_in_lock("out-3") == hashlib.sha256(b"b" * 5000).hexdigest()
    assert (tmp_path / "out-3/rootfs" / str(data).lstrip("/")).read_bytes() == b"b" * 5000


def test_import_names_come_from_the_imports_entry_and_a_bad_row_is_no_entry(tmp_path: Path) -> None:
    """Hints take the names an object imports from its imports entry, without a
    SymbolRef made for each: for libc and the Python running the tests they are the
    names of the file's own imports, and the imports read back are the file's; an entry
    of the wrong shape (a number for a name, columns of different lengths, a weak flag
    that is not a boolean, the rows of an older format) is no entry at all."""
    from minify.elf.dynsym import read_dynamic_symbols
    from minify.elf.files import SymbolRef, Symbols

    cache = FactCache(str(tmp_path / "cache"))
    for path in (HOST_LIBC, sys.executable):
        whole = read_dynamic_symbols(os.path.realpath(path))
        st = os.stat(path)
        cache.store_symbols(st, whole)
        names = FactCache(str(tmp_path / "cache")).import_names(st)
        assert names == {ref.name for ref in whole.imports} and names, path
        assert FactCache(str(tmp_path / "cache")).imports(st) == whole.imports, path
    st = os.stat(HOST_LIBC)
    for columns in (
        {"names": [7], "versions": ["\0"], "weak": [False]},
        {"names": ["malloc", "free"], "versions": ["\0"], "weak": [False, False]},
        {"names": ["malloc"], "versions": ["\0"], "weak": [0]},
        {"names": ["malloc"], "versions": [None], "weak": [False]},
        [["malloc", None, False]],  # rows, as format 3 stored them
        "malloc",
    ):
        cache.store(st, Kind.IMPORTS, {"imports": columns})
        assert FactCache(str(tmp_path / "cache")).import_names(st) is None, columns
        assert FactCache(str(tmp_path / "cache")).imports(st) is None, columns
    cache.store_symbols(st, Symbols((SymbolRef("malloc", None, False),), frozenset(), frozenset()))
    assert FactCache(str(tmp_path / "cache")).import_names(st) == {"malloc"}
