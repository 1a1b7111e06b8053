"""`minify image --from`: shrink an image you already have.

The "fat" image is made here, since no base image can be pulled on these machines:
a Debian-like root assembled from this machine's files (curl, python3 and its
standard library, all of the C library's folder, /etc, the dpkg database, parts of
/usr/share, and programs built from fixtures/), imported with `podman import` as the
lower layer; an upper layer written with tarfile adds a user, a #! script and two
whiteouts (a library deleted, a folder made opaque). Each variant (curl, a python
script, a program with an $ORIGIN layout) is minified from `podman save`'s
docker-archive or from the OCI layout, loaded into podman and run: same output as
the fat image, under a tenth of its size, the same config.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HOST_INTERP, HOST_LIBDIR, MINIFY, TRIPLET, Builder, Podman, copy_host_path, need_tool, run
from tests.layouts import blob, file, folder, layer_tar

UID = 4242
RUN: dict[str, Any] = {
    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "GREETING_MODE=loud"],
    "User": "app",
    "WorkingDir": "/srv/work",
    "ExposedPorts": {"8080/tcp": {}},
    "Volumes": {"/srv/data": {}},
    "StopSignal": "SIGINT",
    "Labels": {"org.example.team": "minify-tests"},
}
VARIANTS = {
    "curl": {"Entrypoint": ["curl"], "Cmd": ["--version"]},
    "hello": {"Entrypoint": ["hello"], "Cmd": ["world"]},
    "app": {"Entrypoint": ["/opt/app/bin/app"]},
}
HELLO = b"""#!/usr/bin/env python3
import json, os, sys
print(json.dumps({"hello": sys.argv[1:], "cwd": os.getcwd(), "mode": os.environ.get("GREETING_MODE")}))
"""
KEPT_CONFIG = ("Entrypoint", "Cmd", "Env", "User", "WorkingDir", "ExposedPorts", "Volumes", "StopSignal")


@dataclass(frozen=True)
class Fat:
    layout: Path  # an OCI layout: the variants by ref name
    size: int  # the layers' bytes, unpacked
    images: dict[str, str]  # variant -> podman image id (pulled from the layout)


def _assemble(top: Path, builder: Builder) -> None:
    for name in ("/bin", "/sbin", "/lib", "/lib64", "/usr/lib64"):
        copy_host_path(name, top)  # links where the machine is usrmerged, folders where not
    python = os.path.realpath("/usr/bin/python3")
    for path in ("/usr/bin/curl", "/usr/bin/env", "/usr/bin/python3", python, HOST_INTERP):
        copy_host_path(path, top)
    for path in (os.path.realpath(HOST_LIBDIR), f"/usr/lib/{TRIPLET}", f"/usr/lib/{os.path.basename(python)}"):
        copy_host_path(path, top)
    for path in ("/etc", "/var/lib/dpkg", "/usr/share/doc", "/usr/share/zoneinfo", "/usr/share/ca-certificates"):
        copy_host_path(path, top)
    for where, words in (("wh", "lower wh"), ("opq", "lower opq"), ("fallback", "fallback"), ("app/lib", "origin")):
        lib = top / "opt" / where / "libgreet.so.1"
        builder.lib(lib, "greet", src="greet.c", flags=[f'-DGREETING="{words}"'])
    links = [top / "opt/fallback/libgreet.so.1"]
    builder.prog(top / "opt/bin/greet-wh", src="greeter.c", links=links, runpath="/opt/wh:/opt/fallback")
    builder.prog(top / "opt/bin/greet-opq", src="greeter.c", links=links, runpath="/opt/opq:/opt/fallback")
    builder.prog(top / "opt/app/bin/app", src="greeter.c", links=links, runpath="$ORIGIN/../lib")


def _upper(top_etc: Path) -> bytes:
    passwd = (top_etc / "passwd").read_bytes() + f"app:x:{UID}:{UID}:app:/home/app:/bin/sh\n".encode()
    group = (top_etc / "group").read_bytes() + f"app:x:{UID}:\n".encode()
    return layer_tar(
        [
            file("etc/passwd", passwd),
            file("etc/group", group),
            folder("home/app", 0o750, (UID, UID)),
            folder("srv/work", 0o770, (UID, UID)),
            file("usr/local/bin/hello", HELLO, 0o755),
            file("opt/wh/.wh.libgreet.so.1"),
            folder("opt/opq"),
            file("opt/opq/.wh..wh..opq"),
            file("opt/opq/NOTES", b"the lower copy of libgreet.so.1 is hidden by an opaque whiteout\n"),
        ]
    )


def _add_variants(layout: Path, upper: bytes) -> int:
    """The upper layer and one config per variant on top of podman's saved layout;
    returns the unpacked size of both layers."""
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    base = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
    lower = manifest["layers"][0]
    lower_blob = (layout / "blobs/sha256" / lower["digest"].split(":")[1]).read_bytes()
    lower_size = len(gzip.decompress(lower_blob)) if lower_blob[:2] == b"\x1f\x8b" else len(lower_blob)
    stored = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **blob(layout, gzip.compress(upper))}
    manifests = []
    for ref, entry in VARIANTS.items():
        config = {
            "architecture": base["architecture"],
            "os": base["os"],
            "config": {**RUN, **entry},
            "rootfs": {
                "type": "layers",
                "diff_ids": [*base["rootfs"]["diff_ids"], f"sha256:{hashlib.sha256(upper).hexdigest()}"],
            },
        }
        described = {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            **blob(layout, json.dumps(config).encode()),
        }
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": described,
            "layers": [lower, stored],
        }
        manifests.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **blob(layout, json.dumps(doc).encode()),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        )
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))
    return lower_size + len(upper)


@pytest.fixture(scope="module")
def fat(tmp_path_factory: pytest.TempPathFactory, builder: Builder, podman: Podman) -> Iterator[Fat]:
    need_tool("tar", "cp")
    work = tmp_path_factory.mktemp("fat")
    top = work / "root"
    _assemble(top, builder)
    upper = _upper(top / "etc")
    lower = work / "lower.tar"
    run(["tar", "--numeric-owner", "-C", str(top), "-cf", str(lower), "."])
    shutil.rmtree(top)
    base = "localhost/minify-test-fat-base:1"
    podman("import", str(lower), base)
    lower.unlink()
    layout = work / "layout"
    podman("save", "--format", "oci-dir", "-o", str(layout), base)
    size = _add_variants(layout, upper)
    images = {ref: podman("pull", "-q", f"oci:{layout}:{ref}").stdout.strip().splitlines()[-1] for ref in VARIANTS}
    yield Fat(layout, size, images)
    podman("rmi", "-f", base, *images.values(), check=False)


def minify(*args: str, cwd: Path) -> dict[str, Any]:
    done = subprocess.run([*MINIFY, *args, "--format", "json"], capture_output=True, text=True, cwd=cwd, timeout=900)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def config_of(transport_path: str) -> dict[str, Any]:
    need_tool("skopeo")
    done = subprocess.run(
        ["skopeo", "inspect", "--config", transport_path], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert isinstance(config, dict)
    return config


def _same_config(fat: dict[str, Any], small: dict[str, Any]) -> None:
    for key in KEPT_CONFIG:
        assert small["config"].get(key) == fat["config"].get(key), key
    assert fat["config"]["Labels"].items() <= small["config"]["Labels"].items()
    assert (small["os"], small["architecture"]) == (fat["os"], fat["architecture"])


TRANSPORTS = ("docker-archive", "oci")


def source(transport: str, variant: str, fat: Fat, podman: Podman, tmp_path: Path) -> str:
    """The fat variant as SOURCE: the OCI layout by ref, or what `podman save` writes
    (a docker-archive, as `docker save` does; podman writes its own stored layers back,
    whiteouts included)."""
    if transport == "oci":
        return f"oci:{fat.layout}:{variant}"
    archive = tmp_path / f"fat-{variant}.tar"
    podman("save", "-o", str(archive), fat.images[variant])
    return f"docker-archive:{archive}"


def load(podman: Podman, dest: str, tmp_path: Path) -> str:
    """The minified image in podman: loaded from an archive, pulled from a layout."""
    if dest.startswith("docker-archive:"):
        out = podman("load", "-q", "-i", str(tmp_path / dest.split(":")[1])).stdout
    else:
        out = podman("pull", "-q", f"oci:{tmp_path}/{dest.split(':', 1)[1]}").stdout
    return out.strip().splitlines()[-1].split()[-1]


def minified(transport: str, variant: str) -> str:
    if transport == "oci":
        return f"oci:min:{variant}"
    return f"docker-archive:min.tar:localhost/minify-test-min-{variant}:1"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_curl(tmp_path: Path, fat: Fat, podman: Podman, transport: str) -> None:
    src = source(transport, "curl", fat, podman, tmp_path)
    dest = minified(transport, "curl")
    result = minify("image", "--from", src, "-o", dest, cwd=tmp_path)
    assert result["size"]["uncompressed"] < fat.size / 10
    assert result["source"]["bytes"] > fat.size * 0.9  # the report weighed the whole source
    _same_config(config_of(src), config_of(dest.replace(":min", f":{tmp_path}/min", 1)))
    small = load(podman, dest, tmp_path)
    try:
        want = podman("run", "--rm", fat.images["curl"]).stdout
        assert podman("run", "--rm", small).stdout == want and want.startswith("curl ")
    finally:
        podman("rmi", "-f", small, check=False)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_python_script_traced_inside_the_image(tmp_path: Path, fat: Fat, podman: Podman, transport: str) -> None:
    """The entrypoint is a #!/usr/bin/env python3 script found through the image's
    PATH; --trace runs it inside the flattened image to find the standard library."""
    src = source(transport, "hello", fat, podman, tmp_path)
    dest = minified(transport, "hello")
    result = minify("image", "--from", src, "--trace", "", "-o", dest, cwd=tmp_path)
    assert result["size"]["uncompressed"] < fat.size / 10
    _same_config(config_of(src), config_of(dest.replace(":min", f":{tmp_path}/min", 1)))
    small = load(podman, dest, tmp_path)
    try:
        want = podman("run", "--rm", fat.images["hello"]).stdout
        assert json.loads(want) == {"hello": ["world"], "cwd": "/srv/work", "mode": "loud"}
        assert podman("run", "--rm", small).stdout == want
        assert podman("run", "--rm", small, "again").stdout == want.replace("world", "again")
    finally:
        podman("rmi", "-f", small, check=False)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_origin_layout_and_whiteouts(tmp_path: Path, fat: Fat, podman: Podman, transport: str) -> None:
    """$ORIGIN resolved inside the image; the library the upper layer whited out,
    and the one its opaque folder hides, are not used: the fallback copy is."""
    extra = ("/opt/bin/greet-wh", "/opt/bin/greet-opq")
    src = source(transport, "app", fat, podman, tmp_path)
    dest = minified(transport, "app")
    result = minify("image", "--from", src, *extra, "-o", dest, cwd=tmp_path)
    assert result["size"]["uncompressed"] < fat.size / 10
    small = load(podman, dest, tmp_path)
    try:
        for entrypoint, expected in (("/opt/app/bin/app", "origin\n"), *((p, "fallback\n") for p in extra)):
            want = podman("run", "--rm", "--entrypoint", entrypoint, fat.images["app"]).stdout
            assert want == expected
            assert podman("run", "--rm", "--entrypoint", entrypoint, small).stdout == want
    finally:
        podman("rmi", "-f", small, check=False)


def test_rootfs_from_the_layout_reports_and_checks(tmp_path: Path, fat: Fat) -> None:
    done = subprocess.run(
        [*MINIFY, "rootfs", "--from", f"oci:{fat.layout}:app", "-o", "out"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "dropped, the biggest folders:" in done.stdout
    lock = json.loads((tmp_path / "out/minify.lock.json").read_text())
    libdir = os.path.realpath(HOST_LIBDIR)
    dropped = [d["folder"] for d in lock["source"]["dropped"]]
    assert any(libdir == d or libdir.startswith(f"{d}/") for d in dropped), dropped  # most of libc's folder
    rootfs = tmp_path / "out/rootfs"
    assert not (rootfs / "opt/wh").exists() and not (rootfs / "opt/opq").exists()
    assert not (rootfs / "opt/fallback").exists()  # app's closure is its $ORIGIN copy
    assert (rootfs / "opt/app/lib/libgreet.so.1").is_file()
    check = subprocess.run(
        [*MINIFY, "rootfs", "--from", f"oci:{fat.layout}:app", "-o", "out", "--check"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_trace_inside_an_image_has_shm_and_its_own_network(tmp_path: Path, fat: Fat, podman: Podman) -> None:
    """Python's multiprocessing needs /dev/shm (a POSIX semaphore), as postgres does; the
    traced run has it, and a network of its own: only loopback, which is up."""
    src = source("oci", "hello", fat, podman, tmp_path)
    job = (
        "/usr/bin/python3 -c 'import multiprocessing, socket, os;"
        " multiprocessing.Lock();"
        ' assert sorted(n for _, n in socket.if_nameindex()) == ["lo"], socket.if_nameindex();'
        ' s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()\''
    )
    out = tmp_path / "out"
    made = subprocess.run(
        [*MINIFY, "rootfs", "--from", src, "-o", str(out), "--trace", job],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert made.returncode == 0, made.stderr
    traced = json.loads((out / "minify.trace").read_text())["files"]
    assert any(p.endswith("/multiprocessing/synchronize.py") for p in traced)
