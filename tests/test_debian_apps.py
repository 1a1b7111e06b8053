"""Apps, not just programs (issue 20), on a real Debian image: `minify image --from`.

The fat image is built once per session with mmdebstrap from the Debian archive, for
this machine's release and architecture: minbase plus python3-flask, nodejs, nginx,
postgresql, jq, curl and the default headless JRE, as `apt-get install` leaves them
(maintainer scripts run: alternatives, the postgres cluster). An upper layer adds the
apps as a Dockerfile user would. Each app's image is minified and run by podman:
- a Flask app, a Node.js http server, a Java program and a `#!/bin/sh` entrypoint
  using curl, jq and date: with no flags at all;
- nginx serving its default page and postgres answering a query from a client on this
  machine: with `--trace "" --trace-timeout N --probe CMD` and nothing else.
Servers run with `--network none`; this machine's curl and psql reach them inside the
container's network namespace (nsenter), so no port is taken here.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, MINIFY, Podman, need_tool
from tests.layouts import HOST_ARCH, MEDIA_CONFIG, MEDIA_INDEX, MEDIA_LAYER, MEDIA_MANIFEST, blob, file, folder

PACKAGES = ("python3-flask", "nodejs", "nginx", "postgresql", "jq", "curl", "default-jre-headless")

FLASK_APP = b"""import os

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "hello from flask\\n"


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
"""
NODE_SERVER = b"""const http = require('http');
const { greet } = require('./lib/greet');
const shout = require('greeter');
const port = Number(process.env.PORT || 8080);
http.createServer((req, res) => res.end(shout(greet('node')) + '\\n')).listen(port, '127.0.0.1');
"""
ENTRYPOINT = b"""#!/bin/sh
set -e
echo "epoch year $(date -u -d @0 +%Y)"
jq -r .name /app/data.json
curl -s file:///app/data.json | jq -c .
"""
HBA = b"local all all trust\nhost all all 127.0.0.1/32 trust\n"
CLIENT = "psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select count(*) > 0 from pg_class'"


@dataclass(frozen=True)
class Debian:
    layout: Path
    size: int  # the fat image's bytes, unpacked
    pg: dict[str, str]  # postgres' paths: bin, data, conf


def _suite() -> str:
    text = Path("/etc/os-release").read_text()
    found = re.search(r"^VERSION_CODENAME=(\w+)", text, re.M)
    assert found, "this machine's /etc/os-release names no release"
    return found.group(1)


def _postgres(base: Path) -> tuple[dict[str, str], tuple[int, int]]:
    """The cluster the package made, and the postgres user's ids, read from the tar."""
    with tarfile.open(base) as tar:
        names = tar.getnames()
        passwd = tar.extractfile("./etc/passwd")
        assert passwd is not None
        lines = passwd.read().decode().splitlines()
    version = next(m.group(1) for n in names if (m := re.fullmatch(r"\./usr/lib/postgresql/(\d+)/bin/postgres", n)))
    user = next(line.split(":") for line in lines if line.startswith("postgres:"))
    paths = {
        "bin": f"/usr/lib/postgresql/{version}/bin/postgres",
        "data": f"/var/lib/postgresql/{version}/main",
        "conf": f"/etc/postgresql/{version}/main/postgresql.conf",
    }
    return paths, (int(user[2]), int(user[3]))


def _apps_layer(postgres: tuple[int, int]) -> bytes:
    greeter = b'{"name": "greeter", "main": "lib/index.js"}'
    members = [
        folder("app"),
        file("app/app.py", FLASK_APP),
        file("app/server.js", NODE_SERVER),
        folder("app/lib"),
        file("app/lib/greet.js", b"exports.greet = (name) => 'hello from ' + name;\n"),
        folder("app/node_modules/greeter/lib"),
        file("app/node_modules/greeter/package.json", greeter),
        file("app/node_modules/greeter/lib/index.js", b"module.exports = (s) => s.toUpperCase();\n"),
        file("app/Hello.java", (FIXTURES / "java/Hello.java").read_bytes()),
        file("app/entrypoint.sh", ENTRYPOINT, 0o755),
        file("app/data.json", b'{"name": "minify"}\n'),
        file("app/pg_hba.conf", HBA),
        folder("run/postgresql", 0o2775, postgres),  # as the official image's Dockerfile makes it
    ]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for add in members:
            add(tar)
    return buf.getvalue()


def _variants(pg: dict[str, str]) -> dict[str, dict[str, Any]]:
    server = [pg["bin"], "-D", pg["data"], "-c", f"config_file={pg['conf']}"]
    server += ["-c", "hba_file=/app/pg_hba.conf", "-c", "ssl=off", "-c", "listen_addresses=127.0.0.1"]
    return {
        "flask": {"Entrypoint": ["python3", "/app/app.py"], "WorkingDir": "/app"},
        "node": {"Entrypoint": ["node", "/app/server.js"]},
        "java": {"Entrypoint": ["java", "/app/Hello.java"]},
        "shell": {"Entrypoint": ["/app/entrypoint.sh"]},
        "nginx": {"Cmd": ["nginx", "-g", "daemon off;"], "StopSignal": "SIGQUIT"},
        "postgres": {"User": "postgres", "Cmd": server, "Volumes": {pg["data"]: {}}},
    }


def _store(layout: Path, path: Path) -> dict[str, Any]:
    """A big layer moved into the layout as its own blob (hashed in one pass)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    blobs = layout / "blobs/sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size
    shutil.move(path, blobs / digest.hexdigest())
    return {"mediaType": MEDIA_LAYER, "digest": f"sha256:{digest.hexdigest()}", "size": size}


def _write(layout: Path, base: Path, upper: bytes, variants: dict[str, dict[str, Any]]) -> int:
    lower = _store(layout, base)
    top = {"mediaType": MEDIA_LAYER, **blob(layout, upper)}
    diff_ids = [lower["digest"], top["digest"]]
    manifests = []
    for ref, run in variants.items():
        env = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
        config = {"architecture": HOST_ARCH, "os": "linux", "config": {**env, **run}}
        config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
        described = {"mediaType": MEDIA_CONFIG, **blob(layout, json.dumps(config).encode())}
        manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": described, "layers": [lower, top]}
        entry = {"mediaType": MEDIA_MANIFEST, **blob(layout, json.dumps(manifest).encode())}
        manifests.append({**entry, "annotations": {"org.opencontainers.image.ref.name": ref}})
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests})
    )
    return int(lower["size"]) + len(upper)


@pytest.fixture(scope="session")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Debian]:
    need_tool("mmdebstrap", "podman", "nsenter", "psql", "curl")
    work = tmp_path_factory.mktemp("debian")
    base = work / "base.tar"
    made = subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(PACKAGES)}", _suite(), str(base)],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    pg, ids = _postgres(base)
    layout = work / "layout"
    size = _write(layout, base, _apps_layer(ids), _variants(pg))
    yield Debian(layout, size, pg)
    shutil.rmtree(work, ignore_errors=True)


def _minify(debian: Debian, ref: str, tmp_path: Path, *flags: str) -> dict[str, Any]:
    """``ref`` minified into ``tmp_path/REF.tar``; minify's JSON report."""
    archive = tmp_path / f"{ref}.tar"
    dest = f"docker-archive:{archive}:localhost/minify-test-debian-{ref}:1"
    argv = [*MINIFY, "image", "--from", f"oci:{debian.layout}:{ref}", *flags, "-o", dest, "--format", "json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _loaded(podman: Podman, archive: Path) -> str:
    out = podman("load", "-q", "-i", str(archive)).stdout
    return out.strip().splitlines()[-1].split()[-1]


def _serving(podman: Podman, image: str, client: list[str]) -> str:
    """Start ``image`` with no network but its loopback, and run ``client`` on this
    machine inside the container's network namespace until it answers."""
    cid = podman("run", "-d", "--network", "none", image).stdout.strip()
    try:
        pid = podman("inspect", "-f", "{{.State.Pid}}", cid).stdout.strip()
        deadline = time.monotonic() + 120
        while True:
            got = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", *client], capture_output=True, text=True)
            if got.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        logs = podman("logs", cid, check=False)
        assert got.returncode == 0, f"{got.stderr}\n{logs.stdout}\n{logs.stderr}"
        return got.stdout
    finally:
        podman("rm", "-f", cid, check=False)


def _shrunk(debian: Debian, report: dict[str, Any]) -> None:
    assert report["size"]["uncompressed"] < debian.size / 2


@pytest.mark.parametrize(
    ("ref", "client", "want"),
    [
        ("flask", ["curl", "-sf", "http://127.0.0.1:8000/"], "hello from flask\n"),
        ("node", ["curl", "-sf", "http://127.0.0.1:8080/"], "HELLO FROM NODE\n"),
    ],
)
def test_a_server_app_runs_from_its_image_with_no_flags(
    debian: Debian, podman: Podman, tmp_path: Path, ref: str, client: list[str], want: str
) -> None:
    report = _minify(debian, ref, tmp_path)
    _shrunk(debian, report)
    image = _loaded(podman, tmp_path / f"{ref}.tar")
    try:
        assert _serving(podman, image, client) == want
    finally:
        podman("rmi", "-f", image, check=False)


def test_java_and_a_shell_entrypoint_run_from_their_images_with_no_flags(
    debian: Debian, podman: Podman, tmp_path: Path
) -> None:
    java = sorted(Path("/usr/lib/jvm").glob("java-*-openjdk-*/bin/java"))
    assert java, "the test command installs a JRE"
    source = tmp_path / "Hello.java"
    source.write_bytes((FIXTURES / "java/Hello.java").read_bytes())
    host = subprocess.run([str(java[0]), str(source)], capture_output=True, text=True, timeout=180, check=True)
    wants = {"java": host.stdout, "shell": 'epoch year 1970\nminify\n{"name":"minify"}\n'}
    for ref, want in wants.items():
        report = _minify(debian, ref, tmp_path)
        _shrunk(debian, report)
        image = _loaded(podman, tmp_path / f"{ref}.tar")
        try:
            ran = podman("run", "--rm", "--network", "none", image, check=False)
            assert (ran.returncode, ran.stdout) == (0, want), ran.stderr
        finally:
            podman("rmi", "-f", image, check=False)


def test_nginx_and_postgres_run_from_images_traced_as_servers(debian: Debian, podman: Podman, tmp_path: Path) -> None:
    """Only --trace "" --trace-timeout and --probe: the probe's request makes the
    server read what serving needs; its state folders come with their owners."""
    retry = "for i in $(seq 100); do {} && exit 0; sleep 0.3; done; exit 1"
    cases = {
        "nginx": ("curl -sf http://127.0.0.1/", ["curl", "-sf", "http://127.0.0.1/"], "Welcome to nginx"),
        "postgres": (CLIENT, ["sh", "-c", CLIENT], "t\n"),
    }
    for ref, (probe, client, want) in cases.items():
        flags = ("--trace", "", "--trace-timeout", "120", "--probe", f"sh -c {_quote(retry.format(probe))}")
        report = _minify(debian, ref, tmp_path, *flags)
        _shrunk(debian, report)
        image = _loaded(podman, tmp_path / f"{ref}.tar")
        try:
            assert want in _serving(podman, image, client)
        finally:
            podman("rmi", "-f", image, check=False)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"
