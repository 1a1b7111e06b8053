"""`--from`: layers applied as the OCI image spec says, and hostile or broken images
refused with one line, nothing written outside minify's private temporary root (strace
is the witness). The images are written here with tarfile (tests/layouts.py), so each
case is exactly the one named."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    CONTAINERS_CONF,
    MINIFY,
    Builder,
    Podman,
    chroot_run,
    image_from,
    strace_minify,
    written_paths,
)
from tests.layouts import HOST_ARCH, blob, fifo, file, folder, host_file, layer_tar, link, write_layout

PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
    b"app:x:1000:1000::/home/app:/bin/sh\n"
)
GROUP = b"root:x:0:\ndaemon:x:1:\napp:x:1000:\n"
RUN = {
    "Entrypoint": ["hello"],
    "Cmd": ["--loud"],
    "Env": ["PATH=/usr/local/bin:/bin", "MODE=test"],
    "User": "app",
    "WorkingDir": "/work",
    "ExposedPorts": {"8080/tcp": {}},
    "Volumes": {"/data": {}},
    "StopSignal": "SIGINT",
    "Labels": {"org.example.team": "tests"},
}


def minify(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([*MINIFY, *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


@pytest.fixture(scope="module")
def static_hello(tmp_path_factory: pytest.TempPathFactory, builder: Builder) -> Path:
    """A static program: its image needs no library, so these images stay tiny."""
    return builder.prog(tmp_path_factory.mktemp("static") / "hello", src="hello.c", flags=["-static"])


def spec_layers(hello: Path) -> list[bytes]:
    lower = layer_tar(
        [
            folder("bin"),
            host_file("bin/hello", hello),
            file("etc/passwd", PASSWD),
            file("etc/group", GROUP),
            folder("home/app", 0o750, (1000, 1000)),
            folder("work", 0o770, (1000, 1000)),
            file("opt/a/x", b"lower x"),
            file("opt/a/y", b"lower y"),
            file("opt/b/keep", b"kept"),
            file("opt/d/old", b"deleted"),
            link("opt/abs", "/opt/b"),
            file("opt/same", b"whited out in the layer that writes it"),
        ]
    )
    upper = layer_tar(
        [
            file("opt/same", b"written before its whiteout, in the same layer"),
            folder("opt/a"),
            file("opt/a/.wh..wh..opq"),
            file("opt/a/z", b"upper z"),
            file("opt/.wh.d"),
            file("opt/.wh.same"),
            file("opt/abs/new", b"through an absolute symlink, inside the root"),
            link("opt/b/hard", "opt/b/keep", hard=True),
            fifo("opt/fifo"),
        ]
    )
    return [lower, upper]


def test_layers_are_applied_as_the_image_spec_says(tmp_path: Path, static_hello: Path) -> None:
    write_layout(tmp_path / "src", spec_layers(static_hello), RUN)
    done = minify("rootfs", "--from", "oci:src", "--add", "/opt", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    top = tmp_path / "out/rootfs"
    opt = sorted(str(p.relative_to(top)) for p in (top / "opt").rglob("*"))
    # the opaque folder shows only the upper layer; a whited-out folder is gone; a
    # whiteout hides only lower layers, never a file of its own layer
    assert opt == ["opt/a", "opt/a/z", "opt/abs", "opt/b", "opt/b/hard", "opt/b/keep", "opt/b/new", "opt/same"]
    assert (top / "opt/same").read_bytes() == b"written before its whiteout, in the same layer"
    assert os.readlink(top / "opt/abs") == "/opt/b"
    assert os.stat(top / "opt/b/hard").st_ino == os.stat(top / "opt/b/keep").st_ino
    assert "1 FIFOs" in done.stderr
    # the entrypoint found through the image's PATH, and it runs
    assert chroot_run(top, "/bin/hello").stdout == "hello from minify\n"
    # the user's entries (and root's) kept, others dropped; its home and WorkingDir made
    assert (top / "etc/passwd").read_bytes() == PASSWD.replace(
        b"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n", b""
    )
    assert (top / "etc/group").read_bytes() == b"root:x:0:\napp:x:1000:\n"
    lock = json.loads((tmp_path / "out/minify.lock.json").read_text())
    owners = {e["path"]: (e.get("owner"), e["mode"]) for e in lock["entries"] if e["path"] in ("/work", "/home/app")}
    assert owners == {"/work": ("1000:1000", "0770"), "/home/app": ("1000:1000", "0750")}
    dockerfile = (tmp_path / "out/Dockerfile").read_text()
    for line in ('ENTRYPOINT ["hello"]', 'CMD ["--loud"]', "USER app", "WORKDIR /work", "EXPOSE 8080/tcp"):
        assert line in dockerfile.splitlines()
    assert "ENV MODE='test'" in dockerfile and "LABEL org.example.team='tests'" in dockerfile
    assert 'VOLUME ["/data"]' in dockerfile and "STOPSIGNAL SIGINT" in dockerfile
    report = lock["source"]
    assert report["layers"] == 2 and report["source"] == "oci:src" and report["digest"].startswith("sha256:")
    # the flattened source: hello, passwd, group, z, keep (and hard, the same file), new, same
    assert report["files"] == 7 and report["kept"]["why"]["program"] == 1
    # --check: the same source gives the same OUT
    again = minify("rootfs", "--from", "oci:src", "--add", "/opt", "-o", "out", "--check", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "up to date" in again.stdout


def test_check_sees_a_changed_source_image(tmp_path: Path, static_hello: Path) -> None:
    write_layout(tmp_path / "src", spec_layers(static_hello), RUN)
    assert minify("rootfs", "--from", "oci:src", "-o", "out", cwd=tmp_path).returncode == 0
    changed = [*spec_layers(static_hello), layer_tar([file("etc/passwd", PASSWD + b"extra:x:7:7::/:/bin/sh\n")])]
    (tmp_path / "src").rename(tmp_path / "old")
    write_layout(tmp_path / "src", changed, RUN)
    done = minify("rootfs", "--from", "oci:src", "-o", "out", "--check", cwd=tmp_path)
    assert done.returncode == 1
    assert "minify.lock.json differs" in done.stdout


def docker_archive(
    dest: Path, layers: list[bytes], run: dict[str, object], *, linked: bool = False, tags: object = None
) -> None:
    """What `docker save` writes: manifest.json, the config named by its digest, and
    each layer as an uncompressed tar (``linked``: the last one as a symlink to a copy,
    as older docker versions wrote repeated layers)."""
    config = json.dumps(
        {
            "architecture": HOST_ARCH,
            "os": "linux",
            "config": run,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in layers]},
        }
    ).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    names = [f"{hashlib.sha256(t).hexdigest()}/layer.tar" for t in layers]
    repo_tags = ["localhost/small:1"] if tags is None else tags
    manifest = json.dumps([{"Config": config_name, "RepoTags": repo_tags, "Layers": names}]).encode()
    with tarfile.open(dest, "w") as tar:
        for name, data in [("manifest.json", manifest), (config_name, config), *zip(names, layers, strict=True)]:
            info = tarfile.TarInfo(f"copy/{name}" if linked and name == names[-1] else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if linked:
            info = tarfile.TarInfo(names[-1])
            info.type = tarfile.SYMTYPE
            info.linkname = f"../copy/{names[-1]}"
            tar.addfile(info)


def test_a_docker_archive_is_read_by_name_and_tag(tmp_path: Path, static_hello: Path) -> None:
    docker_archive(tmp_path / "small.tar", spec_layers(static_hello), RUN, linked=True)
    done = minify("image", "--from", "docker-archive:small.tar:localhost/small:1", "-o", "oci:min", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "source: docker-archive:small.tar:localhost/small:1" in done.stdout


# -- refused: one line, exit 2, nothing written outside the temporary root ---------------------


def _hostile(hello: Path) -> dict[str, tuple[list[bytes], tuple[str, ...], str]]:
    base = [host_file("bin/hello", hello)]
    return {
        "absolute name": ([layer_tar([*base, file("/etc/evil", b"x")])], (), "absolute path '/etc/evil'"),
        "dot-dot": ([layer_tar([*base, file("usr/../../evil", b"x")])], (), "with '..'"),
        "symlink out": ([layer_tar([*base, link("usr/evil", "../../etc")])], (), "leaves the root"),
        "hard link to unseen": (
            [layer_tar([*base, link("usr/a", "usr/never", hard=True)])],
            (),
            "a hard link to a name the layers have not written",
        ),
        "hard link up": ([layer_tar([*base, link("usr/a", "../etc/shadow", hard=True)])], (), "with '..'"),
        "hard link to a folder": (
            [layer_tar([*base, folder("usr/dir"), link("usr/a", "usr/dir", hard=True)])],
            (),
            "a hard link to a folder, which no file system allows",
        ),
        "owner beyond 32 bits": (
            [layer_tar([*base, file("usr/owned", b"x", owner=(1 << 40, 0))])],
            (),
            "an owner id beyond 32 bits (1099511627776:0); refused",
        ),
        "tar bomb": (
            [layer_tar([*base, file("big", bytes(2 << 20))])],
            ("--max-unpacked-size", "1M"),
            "--max-unpacked-size",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "absolute name",
        "dot-dot",
        "symlink out",
        "hard link to unseen",
        "hard link up",
        "hard link to a folder",
        "owner beyond 32 bits",
        "tar bomb",
    ],
)
def test_a_hostile_layer_is_refused_and_nothing_is_written_outside(
    tmp_path: Path, static_hello: Path, case: str
) -> None:
    layers, args, expected = _hostile(static_hello)[case]
    write_layout(tmp_path / "src", layers, {"Entrypoint": ["/bin/hello"]})
    log = tmp_path / "strace.log"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    done = strace_minify(["image", "--from", "oci:src", *args, "-o", "oci:out"], log, cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
    written = written_paths(log)
    private = f"{tmp_path}/.minify-from-out-"
    born = f"{tmp_path}/.minify-unpacking-"  # the same folder, before it is locked and named
    assert any(p.startswith(private) for p in written), "strace saw the layer being unpacked"
    assert sorted(p for p in written if not p.startswith((private, born))) == []
    assert sorted(os.listdir(tmp_path)) == ["src", "strace.log"]  # the private folder removed


def test_an_absolute_symlink_is_followed_inside_the_root(tmp_path: Path, static_hello: Path) -> None:
    marker = f"minify-test-{os.getpid()}"
    layers = [layer_tar([host_file("bin/hello", static_hello), link("escape", "/tmp"), file(f"escape/{marker}", b"x")])]
    write_layout(tmp_path / "src", layers, {"Entrypoint": ["/bin/hello"]})
    done = minify("rootfs", "--from", "oci:src", "--add", f"/tmp/{marker}", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out/rootfs/tmp" / marker).read_bytes() == b"x"
    assert not os.path.lexists(f"/tmp/{marker}")


def _corrupt_blob(src: Path, digest: str) -> None:
    blob = src / "blobs/sha256" / digest.split(":")[1]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "case",
    ["layer digest", "config digest", "missing blob", "no entrypoint", "entrypoint absent", "truncated archive"],
)
def test_a_broken_image_is_refused_with_one_line(tmp_path: Path, static_hello: Path, case: str) -> None:
    layers = [layer_tar([host_file("bin/hello", static_hello)])]
    run: dict[str, object] = {"Entrypoint": ["/bin/hello"]}
    if case == "no entrypoint":
        run = {}
    if case == "entrypoint absent":
        run = {"Cmd": ["nothere"], "Env": ["PATH=/bin"]}
    source = "oci:src"
    if case == "truncated archive":
        docker_archive(tmp_path / "img.tar", layers, run)
        data = (tmp_path / "img.tar").read_bytes()
        (tmp_path / "img.tar").write_bytes(data[: len(data) // 2])
        source = "docker-archive:img.tar"
    else:
        digests = write_layout(tmp_path / "src", layers, run, compress=case != "layer digest")
        if case == "layer digest":
            _corrupt_blob(tmp_path / "src", digests["layer1"])
        elif case == "config digest":
            _corrupt_blob(tmp_path / "src", digests["config"])
        elif case == "missing blob":
            (tmp_path / "src/blobs/sha256" / digests["layer1"].split(":")[1]).unlink()
    expected = {
        "layer digest": "not the digest",
        "config digest": "not the digest",
        "missing blob": "is missing",
        "no entrypoint": "no Entrypoint and no Cmd",
        "entrypoint absent": "'nothere' is not an executable file in the image",
        "truncated archive": "img.tar",
    }[case]
    _refused(tmp_path, expected, "image", "--from", source, "-o", "oci:out")


def _platform_index(dest: Path, hello: Path, *, flat: bool = False) -> None:
    """An index of two platforms: this machine's (a working image) and s390x, whose
    manifest names a config blob that is not there; nested (as registries serve it) or
    ``flat`` in index.json (as `skopeo copy --all` writes it)."""
    write_layout(dest, [layer_tar([host_file("bin/hello", hello)])], {"Entrypoint": ["/bin/hello"]})
    index = json.loads((dest / "index.json").read_text())
    good = index["manifests"][0]
    good["platform"] = {"os": "linux", "architecture": HOST_ARCH}
    broken = json.dumps(
        {
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + "0" * 64,
                "size": 2,
            },
            "layers": [],
        }
    ).encode()
    other = {"mediaType": good["mediaType"], **blob(dest, broken)}
    both = [{**other, "platform": {"os": "linux", "architecture": "s390x"}}, good]
    if flat:
        (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": both}))
        return
    nested = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": both}
    ).encode()
    top = {"mediaType": "application/vnd.oci.image.index.v1+json", **blob(dest, nested)}
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))


@pytest.mark.parametrize("flat", [False, True], ids=["nested", "flat"])
def test_a_multi_platform_index_gives_this_machines_image_or_the_one_named(
    tmp_path: Path, static_hello: Path, flat: bool
) -> None:
    _platform_index(tmp_path / "src", static_hello, flat=flat)
    done = minify("image", "--from", "oci:src", "-o", "oci:out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"linux/{HOST_ARCH}" in done.stdout
    other = minify("image", "--from", "oci:src", "--platform", "linux/s390x", "-o", "oci:out2", cwd=tmp_path)
    assert other.returncode == 2 and "is missing" in other.stderr  # it went for the s390x manifest
    absent = minify("image", "--from", "oci:src", "--platform", "linux/mips64le", "-o", "oci:out3", cwd=tmp_path)
    assert absent.returncode == 2
    assert f"no image for linux/mips64le (it has: linux/s390x, linux/{HOST_ARCH})" in absent.stderr


def test_containers_storage_is_read_through_podman(tmp_path: Path, static_hello: Path, podman: Podman) -> None:
    write_layout(tmp_path / "src", spec_layers(static_hello)[:1], RUN)  # (podman refuses the upper's tricks)
    image = podman("pull", "-q", f"oci:{tmp_path / 'src'}").stdout.strip().splitlines()[-1]
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    env = dict(os.environ, CONTAINERS_CONF=str(conf))
    try:
        done = subprocess.run(
            [*MINIFY, "rootfs", "--from", f"containers-storage:{image}", "-o", "out"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        lock = json.loads((tmp_path / "out/minify.lock.json").read_text())
        assert lock["source"]["source"] == f"containers-storage:{image}" and lock["source"]["layers"] == 1
        assert chroot_run(tmp_path / "out/rootfs", "/bin/hello").stdout == "hello from minify\n"
    finally:
        podman("rmi", "-f", image, check=False)
    gone = subprocess.run(
        [*MINIFY, "rootfs", "--from", "containers-storage:localhost/minify-test-absent:1", "-o", "out2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert gone.returncode == 2 and "podman save failed" in gone.stderr and len(gone.stderr.strip().splitlines()) == 1


def test_image_check_compares_the_digest_it_would_write(tmp_path: Path, static_hello: Path) -> None:
    write_layout(tmp_path / "src", spec_layers(static_hello), RUN)
    assert minify("image", "--from", "oci:src", "-o", "oci:min", cwd=tmp_path).returncode == 0
    index = (tmp_path / "min/index.json").read_bytes()
    same = minify("image", "--from", "oci:src", "-o", "oci:min", "--check", cwd=tmp_path)
    assert same.returncode == 0, same.stderr
    assert same.stdout.startswith("oci:min: up to date (sha256:")
    changed = [*spec_layers(static_hello), layer_tar([file("etc/passwd", PASSWD + b"extra:x:7:7::/:/bin/sh\n")])]
    (tmp_path / "src").rename(tmp_path / "old")
    write_layout(tmp_path / "src", changed, RUN)
    stale = minify("image", "--from", "oci:src", "-o", "oci:min", "--check", cwd=tmp_path)
    assert stale.returncode == 1
    assert "oci:min: its image is sha256:" in stale.stdout and "it would be sha256:" in stale.stdout
    assert "its files are the same: the image config or its metadata differs" in stale.stdout
    assert (tmp_path / "min/index.json").read_bytes() == index  # --check wrote nothing there
    assert sorted(os.listdir(tmp_path)) == ["min", "old", "src"]  # and left nothing beside it
    # a changed program is named, with what changes
    shutil.rmtree(tmp_path / "src")
    grown = static_hello.read_bytes() + b"\0" * 16
    write_layout(tmp_path / "src", [*spec_layers(static_hello), layer_tar([file("bin/hello", grown, 0o755)])], RUN)
    named = minify("image", "--from", "oci:src", "-o", "oci:min", "--check", cwd=tmp_path)
    assert named.returncode == 1
    assert "/bin/hello: its content would change" in named.stdout.splitlines()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Labels", {"maintainer=x\nENV LD_PRELOAD=/evil.so\nCOPY . /": "v"}),  # a key that starts new lines
        ("Labels", {"two words": "v"}),  # a key with a space is two pairs on a LABEL line
        ("Env", ["PATH=/bin", "A x\nUSER 1234\nENV B=1"]),  # an ENV name that changes the user
    ],
)
def test_a_hostile_config_key_never_reaches_the_dockerfile(
    tmp_path: Path, static_hello: Path, field: str, value: object
) -> None:
    """Label and Env keys are written bare in the Dockerfile: one that would not read
    back as one key is refused with one line, and nothing is written."""
    layers = [layer_tar([folder("bin"), host_file("bin/hello", static_hello)])]
    write_layout(tmp_path / "src", layers, {"Entrypoint": ["/bin/hello"], field: value})
    _refused(tmp_path, "cannot be written in a Dockerfile as one key", "rootfs", "--from", "oci:src", "-o", "out")


ACCEPTED_ENV = [
    "PATH=/usr/bin:/bin",
    "http.proxy=http://127.0.0.1:3128",
    "ÜBER_VAR=grüße",
    'QUOTED=it\'s "quoted" and $HOME is not expanded',
    "BACKSLASH=a\\b c",
    "EMPTY=",
    "EQUALS=a=b=c",
]
ACCEPTED_LABELS = {
    "org.opencontainers.image.title": "small & safe",
    "com.example/team-name": "it's 100% 'quoted'",
    "a:b@c+d": "$(not run) `nor this`",
    "ünïcödé": "välue",
}


def test_every_accepted_key_reads_back_the_same_through_podman_build(
    tmp_path: Path, static_hello: Path, podman: Podman
) -> None:
    """The Dockerfile's ENV and LABEL lines carry every key it accepts, and any value,
    exactly: podman builds it, and its inspect shows the source config's Env and
    Labels (plus minify's own labels and the builder's)."""
    layers = [layer_tar([folder("bin"), host_file("bin/hello", static_hello)])]
    run = {"Entrypoint": ["/bin/hello"], "Env": ACCEPTED_ENV, "Labels": ACCEPTED_LABELS}
    write_layout(tmp_path / "src", layers, run)
    done = minify("rootfs", "--from", "oci:src", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    tag = image_from(podman, tmp_path / "out")
    seen = json.loads(podman("image", "inspect", tag).stdout)[0]["Config"]
    assert seen["Env"] == ACCEPTED_ENV
    ours = ("io.github.minify.", "io.buildah.", "org.opencontainers.image.description")  # minify's, the builder's
    labels = {k: v for k, v in seen["Labels"].items() if not k.startswith(ours)}
    assert labels == ACCEPTED_LABELS


def _pax_nul_layer(hello: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("x")
        info.pax_headers = {"path": "bin/a\x00b"}
        info.size = 1
        tar.addfile(info, io.BytesIO(b"z"))
        data = hello.read_bytes()
        info = tarfile.TarInfo("bin/hello")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _rewrite_index(src: Path, change: object) -> None:
    index = json.loads((src / "index.json").read_text())
    if callable(change):
        change(index)
    else:
        index = change
    (src / "index.json").write_text(json.dumps(index) if not isinstance(index, str) else index)


def _variant(index: dict[str, object]) -> None:
    entry = index["manifests"][0]  # type: ignore[index]
    entry["platform"] = {"os": "linux", "architecture": HOST_ARCH, "variant": 5}
    index["manifests"] = [entry, dict(entry)]


@pytest.mark.parametrize(
    "case",
    [
        "nested index",
        "variant not a string",
        "annotations a list",
        "RepoTags",
        "uid ²",
        "PAX path with NUL",
        "architecture an object",
        "docker folder names /etc/passwd",
        "1,100-level folder chain",
    ],
)
def test_malformed_fields_are_one_line_never_a_traceback(tmp_path: Path, static_hello: Path, case: str) -> None:
    layers = [layer_tar([folder("bin"), host_file("bin/hello", static_hello)])]
    run: dict[str, object] = {"Entrypoint": ["/bin/hello"]}
    source = "oci:src"
    if case == "uid ²":
        layers = [
            layer_tar(
                [
                    host_file("bin/hello", static_hello),
                    file("etc/passwd", "root:x:0:0::/root:/bin/sh\napp:x:²:1000::/home/app:/bin/sh\n".encode()),
                    folder("home/app"),
                ]
            )
        ]
        run["User"] = "app"
    if case == "PAX path with NUL":
        layers = [_pax_nul_layer(static_hello)]
    if case == "1,100-level folder chain":
        chain = [folder("/".join(["d"] * depth)) for depth in range(1, 1101)]
        layers = [layer_tar([folder("bin"), host_file("bin/hello", static_hello), *chain])]
    if case == "RepoTags":
        docker_archive(tmp_path / "img.tar", layers, run, tags=[{"not": "a string"}])
        source = "docker-archive:img.tar:localhost/small:1"
    elif case == "docker folder names /etc/passwd":
        docker_archive(tmp_path / "img.tar", layers, run)
        with tarfile.open(tmp_path / "img.tar") as tar:
            tar.extractall(tmp_path / "img", filter="data")
        (tmp_path / "img.tar").unlink()
        manifest = json.loads((tmp_path / "img/manifest.json").read_text())
        manifest[0]["Config"] = "/etc/passwd"
        (tmp_path / "img/manifest.json").write_text(json.dumps(manifest))
        source = "docker-archive:img"
    else:
        architecture: object = {"x": 1} if case == "architecture an object" else None
        write_layout(tmp_path / "src", layers, run, ref="latest", architecture=architecture)
    if case == "nested index":
        _rewrite_index(tmp_path / "src", '{"manifests": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif case == "variant not a string":
        _rewrite_index(tmp_path / "src", _variant)
    elif case == "annotations a list":
        _rewrite_index(tmp_path / "src", lambda index: index["manifests"][0].update(annotations=["x"]))
        source = "oci:src:latest"
    expected = {
        "nested index": "index.json is JSON nested deeper than minify reads",
        "variant not a string": "index.json: manifests[0].platform.variant is a number, not a platform name",
        "annotations a list": "index.json: manifests[0].annotations is a list, not an object",
        "RepoTags": "manifest.json: [0].RepoTags[0] is an object, not a string",
        "uid ²": "the image's /etc/passwd: line 2: uid '²' is not a decimal id below 2^32",
        "PAX path with NUL": "with a NUL byte; refused",
        "architecture an object": "architecture is an object, not a platform name",
        "docker folder names /etc/passwd": "manifest.json: [0].Config '/etc/passwd' is not a name inside the archive",
        "1,100-level folder chain": "folders nested more than 256 deep below it",
    }[case]
    _refused(tmp_path, expected, "rootfs", "--from", source, "-o", "out")


def _rewrite_manifest(src: Path, change: Callable[[dict[str, Any]], object]) -> None:
    """Change the layout's one manifest in place, and name the new one in index.json."""
    index = json.loads((src / "index.json").read_text())
    name = index["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((src / "blobs/sha256" / name).read_text())
    change(manifest)
    index["manifests"][0]["digest"] = blob(src, json.dumps(manifest).encode())["digest"]
    (src / "index.json").write_text(json.dumps(index))


def _rewrite_config(src: Path, change: Callable[[dict[str, Any]], object]) -> None:
    def manifest(doc: dict[str, Any]) -> None:
        name = doc["config"]["digest"].removeprefix("sha256:")
        config = json.loads((src / "blobs/sha256" / name).read_text())
        change(config)
        doc["config"]["digest"] = blob(src, json.dumps(config).encode())["digest"]

    _rewrite_manifest(src, manifest)


def _manifest_size_a_string(src: Path) -> None:
    _rewrite_manifest(src, lambda manifest: manifest["layers"][0].update(size="12"))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("Env entry a number", "config.Env[1] is a number, not NAME=VALUE"),
        ("label value a list", "config.Labels['a'] is a list, not a string"),
        ("NUL in Cmd", "config.Cmd[0] 'a\\x00b' is not a string"),
        ("port key", "config.ExposedPorts has a key 'http' is not PORT[/PROTOCOL]"),
        ("Volumes a list", "config.Volumes is a list, not an object"),
        ("diff_ids missing", "the config sha256:"),
        ("layer size a string", "layers[0].size is a string, not a number"),
        ("group gid", "the image's /etc/group: line 1: gid 'zero' is not a decimal id below 2^32"),
        ("passwd fields", "the image's /etc/passwd: line 1 has 5 fields, not 7"),
    ],
)
def test_every_image_document_is_checked_against_its_shape_by_one_checker(
    tmp_path: Path, static_hello: Path, case: str, expected: str
) -> None:
    """The index, manifests, config and the image's account files go through
    ``minify.shapes`` before a field is used: each wrong type, character or count is
    one line naming the document and the field's path, with exit 2."""
    members = [folder("bin"), host_file("bin/hello", static_hello)]
    run: dict[str, object] = {"Entrypoint": ["/bin/hello"], "User": "app"}
    passwd, group = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n", "root:x:0:\n"
    if case == "group gid":
        group = "root:x:zero:\n"
        run["User"] = "app:root"
    if case == "passwd fields":
        passwd = "root:x:0:0:/root\n"
    members += [file("etc/passwd", passwd.encode()), file("etc/group", group.encode())]
    changes: dict[str, object] = {
        "Env entry a number": {"Env": ["PATH=/bin", 7]},
        "label value a list": {"Labels": {"a": ["b"]}},
        "NUL in Cmd": {"Cmd": ["a\0b"]},
        "port key": {"ExposedPorts": {"http": {}}},
        "Volumes a list": {"Volumes": ["/data"]},
    }
    run.update(changes.get(case, {}))  # type: ignore[call-overload]
    write_layout(tmp_path / "src", [layer_tar(members)], run)
    if case == "diff_ids missing":
        _rewrite_config(tmp_path / "src", lambda config: config.pop("rootfs"))
        expected = "has no rootfs"
    if case == "layer size a string":
        _manifest_size_a_string(tmp_path / "src")
    _refused(tmp_path, expected, "rootfs", "--from", "oci:src", "-o", "out")


def _refused(tmp_path: Path, expected: str, *args: str) -> None:
    """minify refuses with exit 2 and one error line, and leaves nothing behind."""
    done = minify(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("minify: error: ") and expected in lines[0], done.stderr
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".minify")]


def _kill_when_unpacking(tmp_path: Path, wait: float) -> bool:
    """Start a --from run, and SIGKILL it ``wait`` seconds after its private folder
    appears; whether it was killed before it ended."""
    proc = subprocess.Popen(
        [*MINIFY, "rootfs", "--from", "oci:src", "-o", "out", "--force"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.startswith(".minify-from-out-") for p in tmp_path.iterdir()):
            time.sleep(wait)
            break
        time.sleep(0.005)
    alive = proc.poll() is None
    proc.kill()
    proc.wait()
    return alive


def test_runs_killed_while_unpacking_leave_nothing_after_the_next_run(tmp_path: Path, static_hello: Path) -> None:
    """SIGKILL at several moments of an unpack (its private folder holds the image)
    leaves folders behind; the next run removes those whose run is gone, and leaves
    nothing of its own."""
    filler = os.urandom(1 << 20)
    big = [file(f"data/blob{i}", filler) for i in range(128)]
    layers = [layer_tar([folder("bin"), host_file("bin/hello", static_hello), *big])]
    write_layout(tmp_path / "src", layers, {"Entrypoint": ["/bin/hello"]}, compress=False)
    killed = sum(_kill_when_unpacking(tmp_path, wait) for wait in (0.0, 0.05, 0.2))
    assert killed >= 2, "the runs ended before the kills: the layer is too small to test this"
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".minify-from-")]
    assert left, "a killed run leaves its private folder (what the next run must remove)"
    done = minify("rootfs", "--from", "oci:src", "-o", "out", "--force", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def _sparse_layer(name: str, realsize: int, data: bytes = b"x") -> bytes:
    """A layer whose one member is GNU sparse 1.0: ``realsize`` bytes declared in a few
    blocks of tar (the map, then the data of one extent at offset 0)."""
    sparse_map = f"1\n0\n{len(data)}\n".encode()
    payload = sparse_map + b"\0" * (512 - len(sparse_map)) + data
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_sparse_members_count_whole_across_layers_and_are_written_as_holes(tmp_path: Path, static_hello: Path) -> None:
    """Four layers of a few KB, each declaring a 100 MiB sparse file: under a 350 MiB
    budget each layer alone fits, together they do not; refused before the fourth is
    written. Under the budget, a sparse file is unpacked with its holes."""
    base = layer_tar([folder("bin"), host_file("bin/hello", static_hello)])
    sparse = [_sparse_layer(f"data/s{i}", 100 << 20) for i in range(4)]
    write_layout(tmp_path / "src", [base, *sparse], {"Entrypoint": ["/bin/hello"]})
    log = tmp_path / "strace.log"
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    args = ["rootfs", "--from", "oci:src", "--max-unpacked-size", "350M", "-o", "out"]
    done = strace_minify(args, log, cwd=tmp_path, env=env)
    assert done.returncode == 2 and "the layers' files hold more than 350 MiB" in done.stderr, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["src", "strace.log"]
    # one sparse file, kept in the image with --add: its extent and its hole (zeros)
    # read back as the member declared them
    one = tmp_path / "one"
    write_layout(one / "src", [base, sparse[0]], {"Entrypoint": ["/bin/hello"]})
    kept = minify("rootfs", "--from", "oci:src", "--add", "/data/s0", "-o", "out", cwd=one)
    assert kept.returncode == 0, kept.stderr
    copied = one / "out/rootfs/data/s0"
    assert copied.stat().st_size == 100 << 20
    with copied.open("rb") as fh:
        assert fh.read(4) == b"x\0\0\0"


def test_a_file_capability_is_kept_and_other_xattrs_are_named(tmp_path: Path, static_hello: Path) -> None:
    """A layer's SCHILY.xattr records: the file capability is set on the unpacked file
    (the image writer carries it on; a rootfs copy drops it and says so), any other
    extended attribute is named as not kept."""
    if os.geteuid() != 0:
        pytest.skip("setting security.capability needs root (CI runs as root)")
    capability = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # v2, effective, cap_net_raw
    data = static_hello.read_bytes()
    info = tarfile.TarInfo("bin/hello")
    info.size, info.mode = len(data), 0o755
    info.pax_headers = {
        "SCHILY.xattr.security.capability": capability.decode("utf-8", "surrogateescape"),
        "SCHILY.xattr.user.note": "kept nowhere",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))
    write_layout(tmp_path / "src", [buffer.getvalue()], {"Entrypoint": ["/bin/hello"]})
    done = minify("rootfs", "--from", "oci:src", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "extended attributes of the image not kept: /bin/hello (user.note)" in done.stderr
    assert "/bin/hello: file capabilities (security.capability) dropped" in done.stderr


def test_surprising_modes_are_named(tmp_path: Path, static_hello: Path) -> None:
    """A world-writable entrypoint and a 7777 home are kept as the image has them, and
    named: any user of the container could change what runs, or own what is made."""
    layers = [
        layer_tar(
            [
                host_file("bin/hello", static_hello, mode=0o777),
                file("etc/passwd", PASSWD),
                file("etc/group", GROUP),
                folder("home/app", 0o7777, (1000, 1000)),
            ]
        )
    ]
    write_layout(tmp_path / "src", layers, {"Entrypoint": ["/bin/hello"], "User": "app"})
    done = minify("rootfs", "--from", "oci:src", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "the entrypoint /bin/hello is writable by others than its owner (0777)" in done.stderr
    assert "/home/app: a folder with set-id bits (7777)" in done.stderr


def test_an_env_script_entrypoint_finds_its_program_through_the_images_path(tmp_path: Path, static_hello: Path) -> None:
    """`#!/usr/bin/env mytool` where only the image's PATH (/opt/bin) holds mytool: the
    script's interpreters are looked up as the image's runtime would, not through the
    default PATH."""
    layers = [
        layer_tar(
            [
                host_file("usr/bin/env", static_hello),
                host_file("opt/bin/mytool", static_hello),
                file("app/run.sh", b"#!/usr/bin/env mytool\n", mode=0o755),
            ]
        )
    ]
    write_layout(tmp_path / "src", layers, {"Entrypoint": ["/app/run.sh"], "Env": ["PATH=/opt/bin:/usr/bin"]})
    done = minify("rootfs", "--from", "oci:src", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out/rootfs/opt/bin/mytool").is_file()
    assert not (tmp_path / "out/rootfs/usr/local/bin/mytool").exists()


def test_nss_with_a_named_user_gives_one_passwd(tmp_path: Path, static_hello: Path) -> None:
    """The image's named user and --with nss both write /etc/passwd and /etc/group:
    one of each, the image's user kept and the preset's users added."""
    layers = [
        layer_tar(
            [
                host_file("bin/hello", static_hello),
                file("etc/passwd", PASSWD),
                file("etc/group", GROUP),
                folder("home/app", 0o750, (1000, 1000)),
            ]
        )
    ]
    write_layout(tmp_path / "src", layers, {"Entrypoint": ["/bin/hello"], "User": "app"})
    done = minify("rootfs", "--from", "oci:src", "-o", "out", "--with", "nss", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    passwd = (tmp_path / "out/rootfs/etc/passwd").read_text().splitlines()
    names = [line.split(":")[0] for line in passwd]
    assert "app" in names and "nonroot" in names and len(names) == len(set(names))
    assert any(line.startswith("app:x:1000:1000:") for line in passwd)
    groups = [line.split(":")[0] for line in (tmp_path / "out/rootfs/etc/group").read_text().splitlines()]
    assert "app" in groups and len(groups) == len(set(groups))


APP = (1000, 1000)


def _stateful_image(dest: Path, builder: Builder, tmp_path: Path) -> None:
    stateful = builder.prog(tmp_path / "stateful", src="stateful.c", flags=["-static"])
    layers = [
        layer_tar(
            [
                folder("bin"),
                host_file("bin/stateful", stateful),
                file("etc/passwd", PASSWD),
                file("etc/group", GROUP),
                folder("srv/state", 0o700, APP),
                file("srv/state/counter", b"1\n", 0o600, owner=APP),
                folder("srv/data", 0o750, APP),
                file("srv/data/seed.txt", b"seed\n", 0o640, owner=APP),
                file("srv/data/root-owned", b"root's\n", 0o644),
                folder("srv/extra", 0o710, APP),
                file("srv/extra/x", b"x\n", 0o600, owner=APP),
            ]
        )
    ]
    write_layout(dest, layers, {"Entrypoint": ["/bin/stateful"], "User": "app", "Volumes": {"/srv/data": {}}})


def test_state_keeps_the_image_s_owners_and_the_trace_runs_as_its_user(
    tmp_path: Path, builder: Builder, podman: Podman
) -> None:
    """The traced run is the image's User (the program refuses root) on an overlay:
    the counter it rewrote comes with the image's bytes, its lock file does not come,
    and its folder keeps owner and mode; a VOLUME comes whole and --add keeps owners
    and modes. The Dockerfile gives them away too: podman runs the program as app."""
    _stateful_image(tmp_path / "src", builder, tmp_path)
    done = minify("rootfs", "--from", "oci:src", "--trace", "", "--add", "/srv/extra", "-o", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "uid 1000 gid 1000 counter 1" in done.stderr  # the traced run's own output
    lock = json.loads((tmp_path / "out/minify.lock.json").read_text())
    got = {e["path"]: (e.get("owner"), e["mode"]) for e in lock["entries"] if e["path"].startswith("/srv")}
    assert got == {
        "/srv": (None, "0755"),
        "/srv/state": ("1000:1000", "0700"),
        "/srv/state/counter": ("1000:1000", "0600"),
        "/srv/data": ("1000:1000", "0750"),
        "/srv/data/seed.txt": ("1000:1000", "0640"),
        "/srv/data/root-owned": (None, "0644"),
        "/srv/extra": ("1000:1000", "0710"),
        "/srv/extra/x": ("1000:1000", "0600"),
    }
    rootfs = tmp_path / "out/rootfs"
    assert (rootfs / "srv/state/counter").read_bytes() == b"1\n"  # the image's, not the run's
    assert "note: /srv/data comes whole: a VOLUME of the image" in done.stderr
    why = {e["path"]: e.get("why") for e in lock["entries"]}
    assert why["/srv/data/seed.txt"] == ["the image's VOLUME"] and why["/srv/extra/x"] == ["--add /srv/extra"]
    dockerfile = (tmp_path / "out/Dockerfile").read_text().splitlines()
    assert "COPY --chown=1000:1000 owned/srv/data /srv/data" in dockerfile
    assert "COPY --chown=0:0 owned/srv/data/root-owned /srv/data/root-owned" in dockerfile
    tag = image_from(podman, tmp_path / "out")
    ran = podman("run", "--rm", "--network", "none", tag)
    assert ran.stdout == "uid 1000 gid 1000 counter 1\n"


def test_trace_user_with_from_is_a_user_of_the_image(tmp_path: Path, builder: Builder) -> None:
    _stateful_image(tmp_path / "src", builder, tmp_path)
    done = minify("rootfs", "--from", "oci:src", "-o", "out", "--trace", "", "--trace-user", "nosuch", cwd=tmp_path)
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1] == "minify: error: --trace-user 'nosuch' is not in the image's /etc/passwd"
    )
    assert not (tmp_path / "out").exists()
    root = minify("rootfs", "--from", "oci:src", "-o", "out", "--trace", "", "--trace-user", "root", cwd=tmp_path)
    assert root.returncode != 0 and "refusing to run as root" in root.stderr
