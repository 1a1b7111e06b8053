"""`minify image`: an OCI image written without a container engine, judged by other
tools: skopeo reads it, umoci unpacks it, podman loads and runs it, a registry takes
it, and the same inputs give the same bytes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from minify.loader.arch import host_arch
from minify.write.compress import BLOCK, GZIP_HEADER, WINDOW, _deflate
from minify.write.oci import GZIP_LEVEL, PLATFORMS
from tests.conftest import HOST_INTERP, HOST_LIBC, HOST_LIBDIR, MINIFY, Builder, Podman, need_tool, tree_listing

HOST_ARCH, HOST_VARIANT = PLATFORMS[host_arch()]


def minify(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run([*MINIFY, *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=300)


def image(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """``minify image ARGS --format json``: the digest it printed."""
    done = minify("image", *args, "--format", "json", cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["digest"].startswith("sha256:")
    return str(data["digest"])


def skopeo(*args: str) -> dict[str, object]:
    need_tool("skopeo")
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def unpack(layout: str, dest: Path) -> Path:
    """umoci's unpacking of an OCI layout (DIR:REF) into DEST/rootfs."""
    need_tool("umoci")
    subprocess.run(
        ["umoci", "unpack", "--rootless", "--image", layout, str(dest)], capture_output=True, check=True, timeout=120
    )
    return dest


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: (tar.extractfile(m).read() if m.isfile() else b"") for m in tar}  # type: ignore[union-attr]


@pytest.fixture
def hello(tmp_path: Path, builder: Builder) -> Path:
    return builder.prog(tmp_path / "hello", src="hello.c")


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path, hello: Path) -> None:
    first = image("./hello", "-o", "a.tar", "--tag", "localhost/hello:1", cwd=tmp_path)
    time.sleep(1.1)
    second = image("./hello", "-o", "oci-archive:b.tar", "--tag", "localhost/hello:1", cwd=tmp_path)
    assert first == second
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    blobs = members(tmp_path / "a.tar")
    manifest = blobs[f"blobs/sha256/{first.split(':')[1]}"]
    assert hashlib.sha256(manifest).hexdigest() == first.split(":")[1]  # the digest printed is the manifest's


def test_source_date_epoch_sets_every_time(tmp_path: Path, hello: Path) -> None:
    epoch = 1_700_000_000
    digest = image("./hello", "-o", "e.tar", cwd=tmp_path, env={"SOURCE_DATE_EPOCH": str(epoch)})
    blobs = members(tmp_path / "e.tar")
    manifest = json.loads(blobs[f"blobs/sha256/{digest.split(':')[1]}"])
    config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert config["config"]["Labels"]["org.opencontainers.image.created"] == "2023-11-14T22:13:20Z"
    times: set[int] = set()
    owners: set[tuple[int, int, str, str]] = set()
    files: set[str] = set()
    assert len(manifest["layers"]) == 2  # the base, then the app
    for described in manifest["layers"]:
        layer = blobs["blobs/sha256/" + described["digest"].split(":")[1]]
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
            times |= {m.mtime for m in tar}
            owners |= {(m.uid, m.gid, m.uname, m.gname) for m in tar}
            files |= {m.name for m in tar if m.isfile()}
        assert layer[4:8] == b"\0\0\0\0"  # gzip header: mtime 0
    assert "hello" in files
    assert times == {epoch}
    assert owners == {(0, 0, "", "")}
    with tarfile.open(tmp_path / "e.tar") as outer:
        assert {m.mtime for m in outer} == {epoch}


def test_skopeo_reads_each_form(tmp_path: Path, hello: Path) -> None:
    forms = {
        "oci": f"oci:{tmp_path}/layout:v1",
        "oci-archive": f"oci-archive:{tmp_path}/o.tar",
        "docker-archive": f"docker-archive:{tmp_path}/d.tar:localhost/hello:2",
    }
    digests = {name: image("./hello", "-o", dest, cwd=tmp_path) for name, dest in forms.items()}
    assert len(set(digests.values())) == 1  # one manifest, whatever the wrapping
    for name, dest in forms.items():
        seen = skopeo("inspect", dest)
        assert seen["Architecture"] == HOST_ARCH and seen["Os"] == "linux", name
        if name != "docker-archive":  # skopeo shows docker-archive as a converted manifest
            assert seen["Digest"] == digests[name]
            raw = subprocess.run(["skopeo", "inspect", "--raw", dest], capture_output=True, timeout=60, check=True)
            assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == digests[name]
    # skopeo finds docker-archive:FILE:NAME:TAG only by the RepoTags of its manifest.json
    wrong = subprocess.run(["skopeo", "inspect", f"docker-archive:{tmp_path}/d.tar:localhost/other:9"], timeout=60)
    assert wrong.returncode != 0


def test_umoci_unpacks_exactly_the_files_of_minify_rootfs(tmp_path: Path, builder: Builder) -> None:
    need_tool("umoci")
    lib = builder.lib(tmp_path / "app/lib/libapp.so.1", "app")
    builder.prog(tmp_path / "app/bin/tool", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    image("./app/bin/tool", "-o", "oci:layout:v1", cwd=tmp_path)
    done = minify("rootfs", "./app/bin/tool", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    unpacked = unpack(f"{tmp_path}/layout:v1", tmp_path / "unpacked")
    want = tree_listing(tmp_path / "out/rootfs")
    assert want and any("libapp.so.1" in path for path in want)
    assert tree_listing(unpacked / "rootfs") == want


@pytest.mark.podman
def test_podman_loads_and_runs_both_archives(
    podman: Podman, tmp_path: Path, builder: Builder, built: dict[str, Path]
) -> None:
    shutil.copy(built["pausle"], tmp_path / "pausle-dynamic")
    lib = builder.lib(tmp_path / "app/lib/libapp.so.1", "app")
    builder.prog(tmp_path / "app/bin/tool", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    image("./app/bin/tool", "-o", "docker-archive:tool.tar:localhost/minify-tool:1", "--user", "nonroot", cwd=tmp_path)
    image("./pausle-dynamic", "-o", "pausle.tar", "--tag", "localhost/minify-pausle:1", cwd=tmp_path)
    try:
        assert "localhost/minify-tool:1" in podman("load", "-i", str(tmp_path / "tool.tar")).stdout
        assert "localhost/minify-pausle:1" in podman("load", "-i", str(tmp_path / "pausle.tar")).stdout
        ran = podman("run", "--rm", "localhost/minify-tool:1")
        assert ran.stdout == "hello from minify\n"
        user = podman("image", "inspect", "--format", "{{.Config.User}}", "localhost/minify-tool:1").stdout
        assert user.strip() == "65532:65532"
        cid = podman("run", "-d", "localhost/minify-pausle:1").stdout.strip()
        try:
            time.sleep(1)
            assert podman("inspect", "--format", "{{.State.Running}}", cid).stdout.strip() == "true"
        finally:
            podman("rm", "-f", "-t", "1", cid, check=False)
    finally:
        podman("rmi", "-f", "localhost/minify-tool:1", "localhost/minify-pausle:1", check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on the loopback address, stopped after the test."""
    need_tool("docker-registry")
    port = _free_port()
    conf = tmp_path / "registry.yml"
    conf.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/registry\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "the registry did not start"
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_registry_keeps_the_digest_minify_printed(tmp_path: Path, hello: Path, registry: str) -> None:
    digest = image("./hello", "-o", "h.tar", cwd=tmp_path)
    need_tool("skopeo")
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--dest-tls-verify=false",
            f"oci-archive:{tmp_path}/h.tar",
            f"docker://{registry}/minify/hello:1",
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert skopeo("inspect", "--tls-verify=false", f"docker://{registry}/minify/hello:1")["Digest"] == digest


def test_an_aarch64_image_from_a_sysroot_runs_under_qemu(tmp_path: Path) -> None:
    need_tool("aarch64-linux-gnu-gcc", "qemu-aarch64-static", "umoci")
    root = tmp_path / "root"
    shutil.copytree("/usr/aarch64-linux-gnu/lib", root / "lib", symlinks=True)
    Builder("aarch64-linux-gnu-gcc").prog(root / "hello", src="hello.c")
    digest = image("/hello", "--root", str(root), "-o", "oci:layout:arm", cwd=tmp_path)
    config = skopeo("inspect", "--config", f"oci:{tmp_path}/layout:arm")
    assert (config["architecture"], config.get("variant")) == ("arm64", "v8")
    assert digest
    unpacked = unpack(f"{tmp_path}/layout:arm", tmp_path / "unpacked")
    rootfs = unpacked / "rootfs"
    ran = subprocess.run(
        ["qemu-aarch64-static", "-L", str(rootfs), str(rootfs / "hello")], capture_output=True, text=True, timeout=60
    )
    assert ran.stdout == "hello from minify\n", ran.stderr


def test_inputs_of_two_architectures_are_refused(tmp_path: Path, hello: Path) -> None:
    need_tool("aarch64-linux-gnu-gcc")
    other = "aarch64" if host_arch() != "aarch64" else "x86_64"
    assert other == "aarch64", "on an aarch64 host this needs an x86-64 cross compiler"
    Builder("aarch64-linux-gnu-gcc").prog(tmp_path / "arm-hello", src="hello.c", flags=["-static"])
    done = minify("image", "./hello", "./arm-hello", "-o", "x.tar", cwd=tmp_path)
    assert done.returncode == 2
    assert "different architectures" in done.stderr
    assert not (tmp_path / "x.tar").exists()


@pytest.mark.parametrize(
    ("args", "env", "said"),
    [
        (["-o", "zip:out"], {}, "unknown transport 'zip'"),
        (["-o", "out.img"], {}, "expected oci:DIR"),
        (["-o", "x.tar", "--tag", "Bad Name!"], {}, "not a valid image reference"),
        (["-o", "docker-archive:x.tar:noTag"], {}, "not a valid image reference"),
        (["-o", "x.tar"], {"SOURCE_DATE_EPOCH": "yesterday"}, "SOURCE_DATE_EPOCH='yesterday'"),
        (["-o", "afile/x.tar"], {}, "afile"),
    ],
    ids=["transport", "no transport", "tag", "docker name", "epoch", "unwritable"],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, hello: Path, args: list[str], env: dict[str, str], said: str
) -> None:
    (tmp_path / "afile").write_text("a file where a folder is wanted")
    before = sorted(p.name for p in tmp_path.iterdir())
    done = minify("image", "./hello", *args, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minify: error:") and said in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


def test_a_dest_minify_did_not_write_is_refused_without_force(tmp_path: Path, hello: Path) -> None:
    (tmp_path / "precious.tar").write_bytes(b"not an image")
    done = minify("image", "./hello", "-o", "precious.tar", cwd=tmp_path)
    assert done.returncode == 2 and "not an image minify wrote" in done.stderr
    assert (tmp_path / "precious.tar").read_bytes() == b"not an image"
    image("./hello", "-o", "precious.tar", "--force", cwd=tmp_path)
    image("./hello", "-o", "precious.tar", cwd=tmp_path)  # now it is ours: replaced without --force
    assert "index.json" in members(tmp_path / "precious.tar")


def test_the_python_api_writes_the_plan_of_rootfs(tmp_path: Path, hello: Path) -> None:
    from minify import RootfsOptions, Transport, parse_dest, write_image

    result = write_image(RootfsOptions(paths=(str(hello),), output=""), parse_dest(f"oci:{tmp_path}/api"))
    assert result.digest.startswith("sha256:") and result.dest.transport is Transport.OCI
    index = json.loads((tmp_path / "api/index.json").read_text())
    assert index["manifests"][0]["digest"] == result.digest
    assert skopeo("inspect", f"oci:{tmp_path}/api")["Digest"] == result.digest


def test_file_capabilities_are_kept_in_the_layer(tmp_path: Path, hello: Path) -> None:
    """A plain rootfs copy drops them (with a warning); the layer keeps them as the PAX
    record GNU tar and containers/storage read."""
    need_tool("setcap")
    subprocess.run(["setcap", "cap_net_bind_service+ep", str(hello)], check=True)
    want = os.getxattr(hello, "security.capability")
    digest = image("./hello", "-o", "cap.tar", cwd=tmp_path)
    blobs = members(tmp_path / "cap.tar")
    manifest = json.loads(blobs[f"blobs/sha256/{digest.split(':')[1]}"])
    layer = blobs["blobs/sha256/" + manifest["layers"][-1]["digest"].split(":")[1]]  # the app layer
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer)), encoding="utf-8", errors="surrogateescape") as tar:
        member = tar.getmember("hello")
        record = member.pax_headers["SCHILY.xattr.security.capability"]
        others = [m.name for m in tar if "SCHILY.xattr.security.capability" in m.pax_headers and m.name != "hello"]
    assert record.encode("utf-8", "surrogateescape") == want
    assert others == []


def test_json_output_carries_the_hints(tmp_path: Path) -> None:
    """`date` looks up time zones: the image's JSON report names the preset that brings
    them, as the text report does on stderr."""
    need_tool("date")
    done = minify("image", "/bin/date", "-o", "oci:out:date", "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert any("add --with tzdata" in hint for hint in data["hints"]), data
    assert isinstance(data["warnings"], list)


def _layer(archive: Path) -> tuple[dict[str, object], bytes, bytes]:
    """The manifest's layer descriptor, the layer's bytes and its config's diff_id."""
    blobs = members(archive)
    index = json.loads(blobs["index.json"])
    manifest = json.loads(blobs["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
    config = json.loads(blobs["blobs/sha256/" + manifest["config"]["digest"].split(":")[1]])
    layer = manifest["layers"][-1]  # the app layer
    return layer, blobs["blobs/sha256/" + layer["digest"].split(":")[1]], config["rootfs"]["diff_ids"][-1].encode()


def test_the_gzip_layer_made_on_every_core_is_one_stream_gzip_reads(tmp_path: Path, builder: Builder) -> None:
    """Blocks deflated side by side and joined (as pigz does) are one gzip stream: GNU
    gzip tests it and gives back the tar whose sha256 is the diff_id; and the bytes are
    those of the same blocks deflated one after the other, on one thread."""
    need_tool("gzip")
    big = builder.prog(tmp_path / "big", src="hello.c")
    with open(big, "ab") as fh:  # several blocks of bytes that do not compress to nothing
        fh.write(hashlib.shake_256(b"minify").digest(3 * BLOCK))
    image("./big", "-o", "big.tar", cwd=tmp_path)
    descriptor, layer, diff_id = _layer(tmp_path / "big.tar")
    assert descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    (tmp_path / "layer.gz").write_bytes(layer)
    assert subprocess.run(["gzip", "-t", str(tmp_path / "layer.gz")], timeout=60).returncode == 0
    tar = subprocess.run(["gzip", "-dc", str(tmp_path / "layer.gz")], capture_output=True, check=True).stdout
    assert b"sha256:" + hashlib.sha256(tar).hexdigest().encode() == diff_id
    blocks = [tar[at : at + BLOCK] for at in range(0, len(tar), BLOCK)]
    assert len(blocks) > 3
    serial = [
        _deflate(block, tar[max(0, at * BLOCK - WINDOW) : at * BLOCK], GZIP_LEVEL, at == len(blocks) - 1)
        for at, block in enumerate(blocks)
    ]
    trailer = struct.pack("<II", zlib.crc32(tar), len(tar) & 0xFFFFFFFF)
    assert layer == GZIP_HEADER + b"".join(serial) + trailer


@pytest.mark.podman
def test_a_zstd_layer_is_read_by_zstd_skopeo_and_podman(podman: Podman, tmp_path: Path, builder: Builder) -> None:
    lib = builder.lib(tmp_path / "app/lib/libapp.so.1", "app")
    builder.prog(tmp_path / "app/bin/tool", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    first = image(
        "./app/bin/tool", "-o", "z.tar", "--tag", "localhost/minify-zstd:1", "--compression", "zstd", cwd=tmp_path
    )
    again = image(
        "./app/bin/tool", "-o", "z2.tar", "--tag", "localhost/minify-zstd:1", "--compression", "zstd", cwd=tmp_path
    )
    assert first == again and (tmp_path / "z.tar").read_bytes() == (tmp_path / "z2.tar").read_bytes()
    descriptor, layer, diff_id = _layer(tmp_path / "z.tar")
    assert descriptor["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    need_tool("zstd")
    tar = subprocess.run(["zstd", "-dc"], input=layer, capture_output=True, check=True, timeout=60).stdout
    assert b"sha256:" + hashlib.sha256(tar).hexdigest().encode() == diff_id
    with tarfile.open(fileobj=io.BytesIO(tar)) as unpacked:
        assert "app/lib/libapp.so.1" in unpacked.getnames()  # relative inputs go under /app
    assert skopeo("inspect", f"oci-archive:{tmp_path}/z.tar")["Digest"] == first
    try:
        assert "localhost/minify-zstd:1" in podman("load", "-i", str(tmp_path / "z.tar")).stdout
        assert podman("run", "--rm", "localhost/minify-zstd:1").stdout == "hello from minify\n"
    finally:
        podman("rmi", "-f", "localhost/minify-zstd:1", check=False)


def _manifest(archive: Path) -> dict[str, object]:
    blobs = members(archive)
    index = json.loads(blobs["index.json"])
    result = json.loads(blobs["blobs/sha256/" + index["manifests"][0]["digest"].split(":")[1]])
    assert isinstance(result, dict)
    return result


def _layer_names(archive: Path, descriptor: dict[str, str]) -> set[str]:
    layer = members(archive)["blobs/sha256/" + descriptor["digest"].split(":")[1]]
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer))) as tar:
        return {m.name for m in tar}


def test_images_of_one_root_share_their_base_layer(tmp_path: Path, registry: str) -> None:
    """curl's and openssl's images from this machine's root: the base layer (the
    loader, libc, the presets' files) is one blob, which a registry stores once; the
    app layers differ; ``--layers 1`` gives one layer of the same files."""
    programs = {"curl": shutil.which("curl"), "openssl": shutil.which("openssl")}
    assert all(programs.values()), "the test command installs curl and openssl"
    for name, path in programs.items():
        image(str(path), "-o", f"{name}.tar", "--with", "tzdata", cwd=tmp_path)
    curl, openssl = (_manifest(tmp_path / f"{name}.tar")["layers"] for name in programs)
    assert isinstance(curl, list) and isinstance(openssl, list) and len(curl) == len(openssl) == 2
    assert curl[0]["digest"] == openssl[0]["digest"]
    assert curl[1]["digest"] != openssl[1]["digest"]
    base = _layer_names(tmp_path / "curl.tar", curl[0])
    assert any(n.endswith("/libc.so.6") for n in base) and any("ld-linux" in n for n in base)
    assert any(n.startswith("usr/share/zoneinfo/") for n in base)
    assert not any(n.endswith("bin/curl") for n in base)
    app = _layer_names(tmp_path / "curl.tar", curl[1])
    assert any(n.endswith("bin/curl") for n in app) and not any(n.endswith("/libc.so.6") for n in app)
    image(str(programs["curl"]), "-o", "one.tar", "--with", "tzdata", "--layers", "1", cwd=tmp_path)
    (single,) = _manifest(tmp_path / "one.tar")["layers"]  # type: ignore[misc]
    files = {n for n in _layer_names(tmp_path / "one.tar", single)}
    assert files == base | app
    need_tool("skopeo")
    for name in programs:
        subprocess.run(
            ["skopeo", "copy", "--dest-tls-verify=false", f"oci-archive:{tmp_path}/{name}.tar",
             f"docker://{registry}/minify/{name}:1"],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
    stored = tmp_path / "registry/docker/registry/v2/blobs/sha256"
    blobs = sorted(p.parent.name for p in stored.glob("*/*/data"))
    assert blobs.count(str(curl[0]["digest"]).split(":")[1]) == 1
    assert len(blobs) == 7  # one base, two apps, two configs, two manifests


@pytest.mark.podman
def test_the_rootfs_dockerfile_layers_as_the_image_does(tmp_path: Path, podman: Podman, builder: Builder) -> None:
    """``minify rootfs`` writes base/ beside rootfs/ and two COPYs; .dockerignore keeps the
    base's files out of the second; podman builds an image of two layers that runs."""
    lib = builder.lib(tmp_path / "app/lib/libapp.so.1", "app")
    builder.prog(tmp_path / "app/bin/tool", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    done = minify("rootfs", "./app/bin/tool", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert "COPY base/ /\nCOPY rootfs/ /\n" in (out / "Dockerfile").read_text()
    ignored = (out / ".dockerignore").read_text().splitlines()
    assert any(line.endswith("/libc.so.6") for line in ignored)
    assert not any("libapp" in line for line in ignored)
    assert any((out / "base").rglob("libc.so.6")) and not any((out / "base").rglob("libapp.so.1"))
    lock = json.loads((out / "minify.lock.json").read_text())
    layers = {e["path"]: e["layer"] for e in lock["entries"]}
    assert {v for k, v in layers.items() if k.endswith("/libc.so.6")} == {"base"}
    assert {v for k, v in layers.items() if k.endswith("libapp.so.1")} == {"app"}
    tag = "localhost/minify-two-copies:1"
    try:
        podman("build", "-q", "-t", tag, str(out))
        count = podman("image", "inspect", "--format", "{{len .RootFS.Layers}}", tag).stdout.strip()
        assert count == "2"
        assert podman("run", "--rm", tag).stdout == "hello from minify\n"
    finally:
        podman("rmi", "-f", tag, check=False)


def _two_roots(tmp_path: Path) -> dict[str, Path]:
    """An amd64 root (this machine's loader and libc) and an aarch64 sysroot (Debian's
    cross libc), each with /app/hello built for it."""
    need_tool("aarch64-linux-gnu-gcc")
    amd = tmp_path / "amd64"
    for path in (HOST_INTERP, HOST_LIBC):
        (amd / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(path), amd / path.lstrip("/"))
    Builder().prog(amd / "app/hello", src="hello.c")
    arm = tmp_path / "arm64"
    shutil.copytree("/usr/aarch64-linux-gnu/lib", arm / "lib", symlinks=True)
    Builder("aarch64-linux-gnu-gcc").prog(arm / "app/hello", src="hello.c")
    return {"linux/amd64": amd, "linux/arm64": arm}


def test_one_run_writes_an_index_of_every_platform(tmp_path: Path) -> None:
    """Each root analysed, planned and verified on its own; skopeo lists both platforms;
    each platform's image unpacks (umoci) into a rootfs that runs (arm64 under qemu);
    the order of the flags does not change a byte."""
    need_tool("skopeo", "umoci", "qemu-aarch64-static")
    roots = _two_roots(tmp_path)
    flags = [f"--platform-root={p}={r}" for p, r in roots.items()]
    first = image("/app/hello", *flags, "-o", "oci-archive:one.tar:multi", cwd=tmp_path)
    second = image("/app/hello", *reversed(flags), "-o", "oci-archive:two.tar:multi", cwd=tmp_path)
    assert first == second and (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci-archive:{tmp_path}/one.tar:multi"], capture_output=True, check=True
    )
    index = json.loads(raw.stdout)
    assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == first
    assert [(m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]] == [
        ("linux", "amd64"),
        ("linux", "arm64"),
    ]
    _each_platform_runs(f"oci-archive:{tmp_path}/one.tar:multi", tmp_path)


def _each_platform_runs(source: str, tmp_path: Path) -> None:
    """skopeo copies each platform out of the index, umoci unpacks it, and /app/hello
    runs from it: arm64 under qemu, amd64 through the image's own loader."""
    for arch in ("amd64", "arm64"):
        copy = f"oci:{tmp_path}/{arch}-{abs(hash(source))}:1"
        subprocess.run(["skopeo", "--override-arch", arch, "copy", source, copy], capture_output=True, check=True)
        rootfs = unpack(copy.removeprefix("oci:"), tmp_path / f"unpacked-{arch}-{abs(hash(source))}") / "rootfs"
        hello = str(rootfs / "app/hello")
        if arch == "arm64":
            argv = ["qemu-aarch64-static", "-L", str(rootfs), hello]
        else:  # the image's own loader, told to search the image alone
            libdir = str(rootfs / HOST_LIBDIR.lstrip("/"))
            argv = [str(rootfs / HOST_INTERP.lstrip("/")), "--inhibit-cache", "--library-path", libdir, hello]
        ran = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert ran.stdout == "hello from minify\n", (arch, ran.stderr)


def test_from_an_index_with_every_platform_gives_an_index(tmp_path: Path) -> None:
    """``--from`` a two-platform index (written by ``--platform-root``) with ``--platform
    all``: each platform minified from its own image, one index of the results; one
    platform without the program fails the run in one line, naming it."""
    need_tool("skopeo", "umoci", "qemu-aarch64-static")
    flags = [f"--platform-root={p}={r}" for p, r in _two_roots(tmp_path).items()]
    image("/app/hello", *flags, "-o", "oci:src:multi", cwd=tmp_path)
    digest = image("--from", "oci:src:multi", "--platform", "all", "-o", "oci-archive:min.tar:min", cwd=tmp_path)
    index = skopeo("inspect", "--raw", f"oci-archive:{tmp_path}/min.tar:min")
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]  # type: ignore[index, union-attr]
    assert digest.startswith("sha256:")
    _each_platform_runs(f"oci-archive:{tmp_path}/min.tar:min", tmp_path)
    missing = minify(
        "image", "--from", "oci:src:multi", "/app/nothing", "--platform", "all", "-o", "x.tar", cwd=tmp_path
    )
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert missing.stderr.startswith("minify: error: linux/amd64: ") and "/app/nothing" in missing.stderr
    assert not (tmp_path / "x.tar").exists()


def test_a_root_whose_programs_are_another_platform_is_one_line(tmp_path: Path) -> None:
    roots = _two_roots(tmp_path)
    done = minify(
        "image", "/app/hello", f"--platform-root=linux/arm64={roots['linux/amd64']}", "-o", "x.tar", cwd=tmp_path
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "linux/arm64: its programs are linux/amd64" in done.stderr and not (tmp_path / "x.tar").exists()
    twice = minify("image", "/app/hello", "--platform-root=linux/arm64=/a", "--platform-root=linux/arm64=/b",
                   "-o", "x.tar", cwd=tmp_path)  # fmt: skip
    assert twice.returncode == 2 and "linux/arm64 given twice" in twice.stderr
    rootfs = minify(
        "rootfs", "/app/hello", f"--platform-root=linux/arm64={roots['linux/arm64']}", "-o", "out", cwd=tmp_path
    )
    assert rootfs.returncode == 2 and len(rootfs.stderr.strip().splitlines()) == 1, rootfs.stderr
    assert "minify image writes an index" in rootfs.stderr and not (tmp_path / "out").exists()


@pytest.mark.podman
def test_podman_runs_the_one_layer_image(podman: Podman, tmp_path: Path, builder: Builder) -> None:
    """``--layers 1``: one layer with every file of the two, which podman loads and runs."""
    lib = builder.lib(tmp_path / "app/lib/libapp.so.1", "app")
    builder.prog(tmp_path / "app/bin/tool", src="hello.c", links=[lib], runpath="$ORIGIN/../lib")
    image("./app/bin/tool", "-o", "one.tar", "--tag", "localhost/minify-one:1", "--layers", "1", cwd=tmp_path)
    image("./app/bin/tool", "-o", "two.tar", "--tag", "localhost/minify-two:1", cwd=tmp_path)
    (single,) = _manifest(tmp_path / "one.tar")["layers"]  # type: ignore[misc]
    base, app = _manifest(tmp_path / "two.tar")["layers"]  # type: ignore[misc]
    names = _layer_names(tmp_path / "one.tar", single)
    assert names == _layer_names(tmp_path / "two.tar", base) | _layer_names(tmp_path / "two.tar", app)
    try:
        for tag, archive in (("localhost/minify-one:1", "one.tar"), ("localhost/minify-two:1", "two.tar")):
            assert tag in podman("load", "-i", str(tmp_path / archive)).stdout
            assert podman("run", "--rm", tag).stdout == "hello from minify\n"
        count = podman("image", "inspect", "--format", "{{len .RootFS.Layers}}", "localhost/minify-one:1").stdout
        assert count.strip() == "1"
    finally:
        podman("rmi", "-f", "localhost/minify-one:1", "localhost/minify-two:1", check=False)
