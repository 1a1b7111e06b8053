"""The README's Makefile and multi-stage Dockerfile, run as they stand there.

The Dockerfile's builder is an image assembled from this machine's own files (its
shell, gcc, binutils, headers, C library folder and Python with venv), imported with
`podman import`; minify reaches it as wheels in the build context (built here by the
system Python's pip, the Python the builder runs). Its final FROM scratch stage runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.conftest import (
    CONTAINERS_CONF,
    FIXTURES,
    HOST_LIBDIR,
    MINIFY,
    TRIPLET,
    Podman,
    copy_host_path,
    need_tool,
    run,
)

README = Path(__file__).resolve().parent.parent / "README.md"
REPO = README.parent
#: What the builder stage runs, from /usr/bin (where /bin is a folder, it comes whole).
TOOLS = (
    "sh",
    "dash",
    "bash",
    "env",
    "cat",
    "cp",
    "ls",
    "mkdir",
    "rm",
    "ln",
    "mv",
    "uname",
    "true",
    "as",
    "ld",
    "ld.bfd",
)
TOOL_PREFIXES = ("python3", "gcc", "cc", "cpp", f"{TRIPLET}-")


def readme_block(after: str, lang: str) -> str:
    """The first ```lang block after the line that holds ``after``."""
    text = README.read_text()
    rest = text[text.index(after) :]
    start = rest.index(f"```{lang}\n") + len(f"```{lang}\n")
    return rest[start : rest.index("```", start)]


def test_the_makefile_example(tmp_path: Path, podman: Podman) -> None:
    need_tool("make", "gcc", "podman")
    (tmp_path / "build").mkdir()
    run(["gcc", str(FIXTURES / "hello.c"), "-o", str(tmp_path / "build/app")])
    (tmp_path / "Makefile").write_text(readme_block("Makefile:", "make"))
    conf = tmp_path / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    minify_bin = os.path.dirname(MINIFY[0])
    env = dict(os.environ, PATH=f"{minify_bin}:{os.environ['PATH']}", CONTAINERS_CONF=str(conf))
    tag = f"localhost/minify-test-make-{uuid.uuid4().hex[:10]}"
    done = subprocess.run(
        ["make", "image", f"IMAGE={tag}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmp_path / "image/Dockerfile").is_file()
        assert podman("run", "--rm", tag).stdout == "hello from minify\n"
        again = subprocess.run(["make", "image/Dockerfile"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert "is up to date" in again.stdout  # the rootfs is remade only when build/app changes
    finally:
        podman("rmi", "-f", tag, check=False)


def _builder_root(top: Path) -> None:
    for name in ("/bin", "/sbin", "/lib", "/lib64", "/usr/lib64"):
        copy_host_path(name, top)
    for name in sorted(os.listdir("/usr/bin")):
        if name in TOOLS or name.startswith(TOOL_PREFIXES):
            copy_host_path(f"/usr/bin/{name}", top)
    python = os.path.basename(os.path.realpath("/usr/bin/python3"))
    for path in (
        os.path.realpath(HOST_LIBDIR),
        f"/usr/lib/{TRIPLET}",
        "/usr/lib/gcc",
        "/usr/libexec/gcc",
        "/usr/lib/bfd-plugins",
        "/usr/include",
        f"/usr/lib/{python}",
        "/usr/share/python-wheels",
        "/etc",
        "/var/lib/dpkg",
    ):
        copy_host_path(path, top)
    for name, mode in (("tmp", 0o1777), ("root", 0o700)):
        (top / name).mkdir(exist_ok=True)
        os.chmod(top / name, mode)


def test_the_multi_stage_dockerfile_example(tmp_path: Path, podman: Podman) -> None:
    need_tool("gcc", "tar", "podman")
    if not os.path.exists("/usr/bin/python3"):
        pytest.fail("the builder needs this machine's /usr/bin/python3 (python3-venv is in tests/run.sh)")
    top = tmp_path / "builder"
    _builder_root(top)
    archive = tmp_path / "builder.tar"
    run(["tar", "--numeric-owner", "-C", str(top), "-cf", str(archive), "."])
    shutil.rmtree(top)
    name = uuid.uuid4().hex[:10]
    builder = f"localhost/minify-test-builder-{name}:1"
    podman("import", str(archive), builder)
    archive.unlink()
    context = tmp_path / "context"
    context.mkdir()
    shutil.copy(FIXTURES / "hello.c", context / "app.c")
    (context / "Dockerfile").write_text(readme_block("Multi-stage Dockerfile", "dockerfile"))
    venv = tmp_path / "pip"
    run(["/usr/bin/python3", "-m", "venv", str(venv)])
    run(
        [str(venv / "bin/pip"), "wheel", "-q", "--disable-pip-version-check", "-w", str(context / "wheels"), str(REPO)],
        timeout=900,
    )
    tag = f"localhost/minify-test-multi-{name}:1"
    try:
        podman("build", "--network", "none", "--build-arg", f"BASE={builder}", "-t", tag, str(context))
        assert podman("run", "--rm", tag).stdout == "hello from minify\n"
        files = podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
        assert int(files) < 10_000_000  # the final stage holds the closure, not the builder
    finally:
        podman("rmi", "-f", tag, builder, check=False)
