"""Scanners see what a minified image holds: the dpkg stanzas of exactly the packages
one of whose files is copied, judged by a real scanner (syft) against the host's own
dpkg, and an SPDX SBOM that spdx-tools validates."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HOST_LIBDIR, Builder, cli, host_libc_into, need_tool

#: What minify writes itself, not copied from a package (libc-bin lists an ld.so.conf
#: of its own; the image's lists the folders of its libraries).
GENERATED = ("var/lib/dpkg/status.d/", "etc/os-release", "etc/debian_version", "usr/share/minify/", "etc/ld.so.c")


def syft(target: str) -> dict[str, object]:
    need_tool("syft")
    env = {**os.environ, "SYFT_CHECK_FOR_APP_UPDATE": "false"}
    done = subprocess.run(["syft", "scan", target, "-o", "json"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def debs(report: dict[str, object]) -> set[tuple[str, str]]:
    return {(a["name"], a["version"]) for a in report["artifacts"] if a["type"] == "deb"}  # type: ignore[attr-defined,index]


def spdx_tools_agrees(sbom: Path) -> None:
    """spdx-tools parses the SBOM, finds the whole document valid, and writes back
    exactly its bytes: minify writes the JSON itself, in spdx-tools' layout."""
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

    document = parse_file(str(sbom))
    assert validate_full_spdx_document(document) == []
    written = io.StringIO()
    write_document_to_stream(document, written, validate=True)
    assert written.getvalue().encode() == sbom.read_bytes()


def host_distro() -> tuple[str, str]:
    fields = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
    return fields["ID"].strip('"'), fields.get("VERSION_ID", "").strip('"')


def dpkg_owners(rootfs: Path) -> set[tuple[str, str]]:
    """Independently of minify: `dpkg -S` on the host for every copied regular file
    (through the usrmerge links /lib, /bin, /sbin when dpkg lists it there), then
    `dpkg-query` for the version."""
    need_tool("dpkg", "dpkg-query")
    names = set()
    for path in sorted(rootfs.rglob("*")):
        inner = "/" + str(path.relative_to(rootfs))
        if path.is_symlink() or not path.is_file() or inner.lstrip("/").startswith(GENERATED):
            continue
        spellings = [inner] + [
            inner.replace(f"/usr{top}/", f"{top}/", 1)
            for top in ("/lib", "/bin", "/sbin", "/lib64")
            if inner.startswith(f"/usr{top}/")
        ]
        for spelt in spellings:
            done = subprocess.run(["dpkg", "-S", spelt], capture_output=True, text=True)
            if done.returncode == 0:
                names.update(line.split(":", 1)[0] for line in done.stdout.splitlines() if line.endswith(f": {spelt}"))
                break
    versions = set()
    for name in names:
        version = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", name], capture_output=True, text=True, check=True
        )
        versions.add((name, version.stdout.strip()))
    return versions


@pytest.fixture(scope="module")
def pausle(tmp_path_factory: pytest.TempPathFactory, builder: Builder) -> Path:
    return builder.prog(tmp_path_factory.mktemp("pausle") / "pausle-dynamic", src="pausle.c", flags=["-Os"])


@pytest.mark.parametrize("program", ["pausle", "/usr/bin/curl", "/usr/bin/openssl"])
def test_syft_sees_exactly_the_packages_whose_files_are_copied(tmp_path: Path, program: str, pausle: Path) -> None:
    need_tool("dpkg")
    path = str(pausle) if program == "pausle" else program
    need_tool(path)
    done = cli("rootfs", path, "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    rootfs = tmp_path / "out/rootfs"
    want = dpkg_owners(rootfs)
    assert (
        "libc6",
        subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libc6"], capture_output=True, text=True).stdout,
    ) in want
    report = syft(f"dir:{rootfs}")
    assert debs(report) == want
    distro = report["distro"]
    assert (distro["id"], distro["versionID"]) == host_distro()  # type: ignore[index]
    lock = json.loads((tmp_path / "out/minify.lock.json").read_text())
    assert {e["package"] for e in lock["entries"] if "package" in e} == {name for name, _ in want}


def test_the_image_archive_is_scanned_the_same(tmp_path: Path) -> None:
    done = cli("image", "/usr/bin/curl", "-o", str(tmp_path / "curl.tar"))
    assert done.returncode == 0, done.stderr
    done = cli("rootfs", "/usr/bin/curl", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    from_image = debs(syft(f"oci-archive:{tmp_path}/curl.tar"))
    assert from_image == dpkg_owners(tmp_path / "out/rootfs")
    assert (
        "curl",
        subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "curl"], capture_output=True, text=True).stdout,
    ) in from_image


def test_without_package_metadata_scanners_find_nothing(tmp_path: Path, pausle: Path) -> None:
    done = cli("rootfs", str(pausle), "-o", str(tmp_path / "out"), "--no-package-metadata")
    assert done.returncode == 0, done.stderr
    assert debs(syft(f"dir:{tmp_path}/out/rootfs")) == set()
    assert not (tmp_path / "out/rootfs/var").exists()
    assert (tmp_path / "out/sbom.spdx.json").is_file()  # the SBOM beside the rootfs stays


def test_the_sbom_validates_and_lists_every_file_once(tmp_path: Path) -> None:
    need_tool("pyspdxtools")
    done = cli("rootfs", "/usr/bin/curl", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    sbom = tmp_path / "out/sbom.spdx.json"
    checked = subprocess.run(["pyspdxtools", "-i", str(sbom)], capture_output=True, text=True, timeout=300)
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr
    spdx_tools_agrees(sbom)
    data = json.loads(sbom.read_text())
    rootfs = tmp_path / "out/rootfs"
    want = {}
    for path in rootfs.rglob("*"):
        inner = "./" + str(path.relative_to(rootfs))
        if path.is_file() and not path.is_symlink() and inner != "./usr/share/minify/sbom.spdx.json":
            want[inner] = hashlib.sha256(path.read_bytes()).hexdigest()
    names = [f["fileName"] for f in data["files"]]
    assert sorted(names) == sorted(want)  # every file, once
    for entry in data["files"]:
        sha = next(c["checksumValue"] for c in entry["checksums"] if c["algorithm"] == "SHA256")
        assert sha == want[entry["fileName"]], entry["fileName"]
    purls = {r["referenceLocator"] for p in data["packages"] for r in p.get("externalRefs", [])}
    distro, version = host_distro()
    curl_version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "curl"], capture_output=True, text=True
    ).stdout
    assert any(p.startswith(f"pkg:deb/{distro}/curl@") and f"distro={distro}-{version}" in p for p in purls), purls
    assert any(p["name"] == "curl" and p["versionInfo"] == curl_version for p in data["packages"])
    depends = [r for r in data["relationships"] if r["relationshipType"] == "DEPENDS_ON"]
    assert depends, "the program depends on the packages of its closure"
    # the same SBOM is inside the image
    assert (rootfs / "usr/share/minify/sbom.spdx.json").read_bytes() != b""


def _status_root(tmp_path: Path, builder: Builder) -> tuple[Path, Path]:
    """A root with the host's libc, and a hand-made dpkg database that owns it."""
    root = tmp_path / "root"
    libdir = host_libc_into(root)
    builder.prog(root / "hello", src="hello.c")
    libc = f"{HOST_LIBDIR}/libc.so.6"
    ldso = next(p for p in libdir.iterdir() if p.name != "libc.so.6")
    libc_md5 = hashlib.md5((root / libc.lstrip("/")).read_bytes(), usedforsecurity=False).hexdigest()
    dpkg = root / "var/lib/dpkg"
    (dpkg / "info").mkdir(parents=True)
    (dpkg / "status").write_text(
        "Package: fakelibc\nStatus: install ok installed\nVersion: 1.2-3\nArchitecture: amd64\n"
        "Maintainer: Someone <someone@example.org>\nConffiles:\n /etc/x.conf abc\n"
        "Description: a test\n more text\n\n"
        "Package: broken\nStatus: install ok installed\nthis line has no colon\nVersion: 1\n\n"
        "Package: bad/name\nStatus: install ok installed\nVersion: 1\n\n"
        "Package: notinstalled\nStatus: deinstall ok config-files\nVersion: 9\n"
    )
    (dpkg / "info/fakelibc.list").write_text(f"/.\n{HOST_LIBDIR}\n{libc}\n{HOST_LIBDIR}/{ldso.name}\n")
    (dpkg / "info/fakelibc.md5sums").write_text(
        f"{libc_md5}  {libc.lstrip('/')}\n{'0' * 32}  {HOST_LIBDIR.lstrip('/')}/{ldso.name}\n"
        f"{'1' * 32}  usr/share/doc/nothing-here\n"
    )
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('ID=fixture\nVERSION_ID="7"\n')
    return root, ldso


def test_a_hand_made_status_file(tmp_path: Path, builder: Builder) -> None:
    root, ldso = _status_root(tmp_path, builder)
    done = cli("rootfs", "--root", str(root), "/hello", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    status_d = tmp_path / "out/rootfs/var/lib/dpkg/status.d"
    assert sorted(p.name for p in status_d.iterdir()) == ["fakelibc", "fakelibc.md5sums"]
    stanza = (status_d / "fakelibc").read_text()
    assert stanza.startswith("Package: fakelibc\nStatus: install ok installed\n")
    assert "Version: 1.2-3\n" in stanza and "Conffiles" not in stanza and "Description" not in stanza
    sums = (status_d / "fakelibc.md5sums").read_text()
    assert "libc.so.6" in sums and ldso.name in sums and "nothing-here" not in sums  # nothing invented
    assert "status:13: not a 'Field: value' line" in done.stderr  # the broken stanza, by file and line
    assert "'bad/name' is not a Debian package name" in done.stderr
    assert f"{ldso.name}: its md5 differs from fakelibc's md5sums" in done.stderr
    assert (tmp_path / "out/rootfs/etc/os-release").read_text() == 'ID=fixture\nVERSION_ID="7"\n'
    sbom = json.loads((tmp_path / "out/sbom.spdx.json").read_text())
    purls = [r["referenceLocator"] for p in sbom["packages"] for r in p.get("externalRefs", [])]
    assert purls == ["pkg:deb/fixture/fakelibc@1.2-3?arch=amd64&distro=fixture-7"]


def test_package_lists_that_are_symlinks_are_followed_inside_the_root_only(tmp_path: Path, builder: Builder) -> None:
    """dpkg's lists are opened from info/'s descriptor; one that is a symlink is
    resolved inside the root (an absolute target is the root's), so a list or md5sums
    leading out of the root reads nothing there, and a FIFO is not waited on."""
    root, _ = _status_root(tmp_path, builder)
    info = root / "var/lib/dpkg/info"
    (root / "lists").mkdir()
    (info / "fakelibc.list").rename(root / "lists/fakelibc.list")
    (info / "fakelibc.list").symlink_to("/lists/fakelibc.list")
    decoy = tmp_path / "decoy.md5sums"
    decoy.write_text(f"{'f' * 32}  {HOST_LIBDIR.lstrip('/')}/libc.so.6\n")
    (info / "fakelibc.md5sums").unlink()
    (info / "fakelibc.md5sums").symlink_to("../" * 12 + str(decoy).lstrip("/"))
    status = root / "var/lib/dpkg/status"
    status.write_text(status.read_text() + "\nPackage: fifo\nStatus: install ok installed\nVersion: 1\n")
    os.mkfifo(info / "fifo.list")
    done = cli("rootfs", "--root", str(root), "/hello", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    status_d = tmp_path / "out/rootfs/var/lib/dpkg/status.d"
    # the list was found through its symlink; the md5sums outside the root were not
    assert sorted(p.name for p in status_d.iterdir()) == ["fakelibc"]


def test_database_stanzas_and_os_release_lines_of_the_wrong_shape_are_skipped_by_name(
    tmp_path: Path, builder: Builder
) -> None:
    """A package database and os-release are metadata (the host's own root is read the
    same way): a stanza whose Version or Architecture is not of its shape, or an
    os-release line that is not KEY=value, is left out with a warning naming the file,
    the line and the field, and the run goes on."""
    root, _ = _status_root(tmp_path, builder)
    status = root / "var/lib/dpkg/status"
    status.write_text(status.read_text().replace("Version: 1.2-3\n", "Version: 1.2-3 $(reboot)\n", 1))
    (root / "etc/os-release").write_text('ID=fixture\nlower=x\nNAME="a\x01b"\nVERSION_ID="7"\n')
    done = cli("rootfs", "--root", str(root), "/hello", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "status:1: Version '1.2-3 $(reboot)' is not a Debian version; skipped" in done.stderr
    assert "/etc/os-release:2: 'lower' is not an os-release key (A-Z, 0-9, _); skipped" in done.stderr
    assert "/etc/os-release:3: NAME 'a\\x01b' is not an os-release value; skipped" in done.stderr
    assert not (tmp_path / "out/rootfs/var/lib/dpkg/status.d").exists()
    sbom = json.loads((tmp_path / "out/sbom.spdx.json").read_text())
    assert [p["name"] for p in sbom["packages"] if p["name"] == "fakelibc"] == []


def test_hostile_identity_fields_stay_inside_their_purl_part_and_a_bad_homepage_is_dropped(
    tmp_path: Path, builder: Builder
) -> None:
    """os-release's ID and the status file are the root's: `ID=debian/../../evil?x=1#frag`
    stays one percent-encoded namespace, and a Homepage spdx-tools rejects is left out
    of the SBOM with a warning instead of failing the run."""
    root, _ = _status_root(tmp_path, builder)
    (root / "etc/os-release").write_text('ID="debian/../../evil?x=1#frag"\nVERSION_ID="7"\n')
    status = root / "var/lib/dpkg/status"
    status.write_text(status.read_text().replace("Version: 1.2-3\n", "Version: 1.2-3\nHomepage: not a url at all\n", 1))
    done = cli("rootfs", "--root", str(root), "/hello", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "fakelibc: its Homepage 'not a url at all' is not a URL; left out of the SBOM" in done.stderr
    sbom = json.loads((tmp_path / "out/sbom.spdx.json").read_text())
    (purl,) = [r["referenceLocator"] for p in sbom["packages"] for r in p.get("externalRefs", [])]
    evil = "debian%2F..%2F..%2Fevil%3Fx%3D1%23frag"
    assert purl == f"pkg:deb/{evil}/fakelibc@1.2-3?arch=amd64&distro={evil}-7"
    assert all("homepage" not in p for p in sbom["packages"])
    spdx_tools_agrees(tmp_path / "out/sbom.spdx.json")


def test_a_root_without_a_package_database_says_so(tmp_path: Path, builder: Builder) -> None:
    root = tmp_path / "root"
    host_libc_into(root)
    builder.prog(root / "hello", src="hello.c")
    done = cli("rootfs", "--root", str(root), "/hello", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "has no dpkg database: scanners will see no packages" in done.stderr
    assert not (tmp_path / "out/rootfs/var").exists()
    shutil.rmtree(root)


APK_STANZAS = """C:Q1c2VjcmV0IGhhc2g=
P:musl
V:1.2.4-r2
A:{arch}
S:383152
I:622592
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Someone <someone@example.org>
t:1697129135
F:lib
R:{loader}
a:0:0:755
Z:Q1bG9hZGVy
R:libc.musl-{arch}.so.1
a:0:0:777
Z:Q1bGluaw==

C:Q1b3RoZXI=
P:busybox
V:1.36.1-r5
A:{arch}
F:bin
R:busybox
Z:Q1YnVzeWJveA==

"""


def test_an_alpine_database_is_cut_down_to_the_copied_files(tmp_path: Path) -> None:
    need_tool("musl-gcc")
    root = tmp_path / "root"
    Builder("musl-gcc").prog(root / "hello", src="hello.c")
    from minify.elf.reader import read_elf

    loader = read_elf(str(root / "hello")).interpreter
    assert loader is not None and loader.startswith("/lib/ld-musl-")
    (root / "lib").mkdir()
    shutil.copy(loader, root / loader.lstrip("/"))
    arch = os.path.basename(loader)[len("ld-musl-") : -len(".so.1")]
    (root / "lib/apk/db").mkdir(parents=True)
    (root / "lib/apk/db/installed").write_text(APK_STANZAS.format(arch=arch, loader=os.path.basename(loader)))
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('ID=alpine\nVERSION_ID=3.19.1\nNAME="Alpine Linux"\n')
    (root / "etc/alpine-release").write_text("3.19.1\n")
    done = cli("rootfs", "--root", str(root), "/hello", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "out/rootfs/lib/apk/db/installed").read_text()
    assert "P:musl\nV:1.2.4-r2\n" in written and f"F:lib\nR:{os.path.basename(loader)}\na:0:0:755\n" in written
    assert "busybox" not in written and "libc.musl" not in written  # only what the image holds
    assert (tmp_path / "out/rootfs/etc/alpine-release").read_text() == "3.19.1\n"
    found = {(a["name"], a["version"], a["type"]) for a in syft(f"dir:{tmp_path}/out/rootfs")["artifacts"]}  # type: ignore[attr-defined,index]
    assert found == {("musl", "1.2.4-r2", "apk")}
    lock = json.loads((tmp_path / "out/minify.lock.json").read_text())
    assert [e["package"] for e in lock["entries"] if "package" in e] == ["musl"]


def test_an_rpm_root_is_said_plainly(tmp_path: Path, builder: Builder) -> None:
    root = tmp_path / "root"
    host_libc_into(root)
    builder.prog(root / "hello", src="hello.c")
    (root / "var/lib/rpm").mkdir(parents=True)
    (root / "var/lib/rpm/rpmdb.sqlite").write_bytes(b"SQLite format 3\0")
    done = cli("rootfs", "--root", str(root), "/hello", "-o", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "is an RPM database, which minify does not read: scanners will see no packages" in done.stderr


def test_analyze_names_the_packages_a_closure_loads(tmp_path: Path) -> None:
    done = cli("analyze", "/usr/bin/curl", "--packages", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    used = data["packages"]["installed"]
    closure = data["inputs"][0]["closure"]
    sizes = {o["realpath"]: o["size"] for o in data["objects"]}
    assert sorted([*(f for u in used for f in u["files"]), *data["packages"]["no_package"]]) == sorted(closure)
    for use in used:
        assert use["copied_size"] == sum(sizes[f] for f in use["files"])
        assert 0 < use["copied_size"] <= use["installed_size"] + 4096 * len(use["files"])
    tree_dir = tmp_path / "rootfs-for-dpkg"
    assert cli("rootfs", "/usr/bin/curl", "-o", str(tree_dir)).returncode == 0
    assert {(u["name"], u["version"]) for u in used} == dpkg_owners(tree_dir / "rootfs")
    tree = cli("analyze", "/usr/bin/curl", "--packages")
    assert f"packages: {len(used)}, " in tree.stdout


def test_the_homepage_check_is_spdx_tools_on_every_homepage_of_this_machine() -> None:
    """The SBOM's homepage check (SPDX's URL pattern, written in minify) says what
    spdx-tools' validator says, for every Homepage of this machine's dpkg status and
    some that are no URL."""
    from spdx_tools.spdx.validation.uri_validators import validate_url

    from minify.write.sbom import URL

    status = Path("/var/lib/dpkg/status").read_text(errors="replace")
    homepages = {line.partition(":")[2].strip() for line in status.splitlines() if line.startswith("Homepage:")}
    assert len(homepages) > 20, "this machine's dpkg status has hardly any Homepage"
    homepages |= {"not a url at all", "https://", "http://localhost/", "HTTPS://EXAMPLE.ORG/X", "example.org"}
    homepages |= {"git://a@b.example.com:80/x", "https://example.c0m/", "www.example.org", "http://a..b.org/"}
    assert {h for h in homepages if bool(URL.match(h)) != (validate_url(h) == [])} == set()
