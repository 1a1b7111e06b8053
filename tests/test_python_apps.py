"""A Python app's imports, found statically (issue 20): the image of a ``python3``
script holds the standard library modules it and the interpreter's start-up import,
its own modules beside it, and whole third-party packages with their metadata."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from minify.plan.python import command_line, python_needs
from minify.root import Root
from tests.conftest import chroot_run, cli, need_tool

APP = """#!/usr/bin/python3
import json
from decimal import Decimal
from mylib import helper
import mylib.sub as sub

print(json.dumps({"sum": str(Decimal("0.1") + Decimal("0.2")), "helped": helper(), "sub": sub.NAME}))
"""


@pytest.fixture(autouse=True)
def _tools() -> None:
    need_tool("chroot")


def test_a_python_script_ships_what_it_imports_and_runs(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "mylib").mkdir(parents=True)
    (app / "mylib/__init__.py").write_text("import csv\n\ndef helper():\n    return csv.QUOTE_ALL\n")
    (app / "mylib/sub.py").write_text("NAME = 'sub'\n")
    script = app / "main.py"
    script.write_text(APP)
    script.chmod(0o755)
    host = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    out = tmp_path / "out"
    made = cli("rootfs", str(script), "-o", str(out))
    assert made.returncode == 0, made.stderr
    assert "Python modules, packages and their files come with the app's imports" in made.stderr
    why = {e["path"]: e.get("why") for e in json.loads((out / "minify.lock.json").read_text())["entries"]}
    shipped = set(why)
    assert str(app / "mylib/sub.py") in shipped
    assert why[str(app / "mylib/sub.py")] == ["python import mylib.sub"]  # the lock file says why
    assert any(p.endswith("/encodings/__init__.py") for p in shipped)
    assert any(p.endswith("/decimal.py") for p in shipped)
    assert not any(p.endswith("/tkinter/__init__.py") for p in shipped)  # nothing imports it
    ran = chroot_run(out / "rootfs", str(script))
    assert (ran.returncode, ran.stdout) == (0, host.stdout), ran.stderr
    assert json.loads(ran.stdout) == {"sum": "0.3", "helped": 1, "sub": "sub"}


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_third_party_package_ships_whole_with_its_metadata(tmp_path: Path) -> None:
    """A root laid out as an official python image (prefix /usr/local): the package
    ships whole (its data file too), its dist-info with it, a .pth file's import
    runs at start-up, a library's lazy import is not followed, an app's missing
    import is named."""
    lib = "/usr/local/lib/python3.12"
    site = f"{lib}/site-packages"
    _tree(
        tmp_path,
        {
            "/usr/local/bin/python3.12": "",
            f"{lib}/site.py": "import os\n",
            f"{lib}/os.py": "import stat\n",
            f"{lib}/stat.py": "",
            f"{lib}/encodings/__init__.py": "from . import aliases\n",
            f"{lib}/encodings/aliases.py": "",
            f"{lib}/encodings/utf_8.py": "",
            f"{lib}/unused.py": "",
            f"{site}/web/__init__.py": "from .core import run\n\ndef later():\n    import optional_dep\n",
            f"{site}/web/core.py": "import tools\n",
            f"{site}/web/templates/page.html": "<p>",
            f"{site}/web-2.0.dist-info/METADATA": "Name: web\n",
            f"{site}/tools.py": "",
            f"{site}/optional_dep/__init__.py": "",
            f"{site}/hook.pth": "import starthook\n",
            f"{site}/starthook.py": "",
            "/app/main.py": "import web\nimport nowhere_to_be_found\n",
        },
    )
    (tmp_path / "usr/local/bin/python3").symlink_to("python3.12")
    needs = python_needs(Root(str(tmp_path)), "/usr/local/bin/python3", ["/app/main.py"], [])
    assert set(needs.files) == {
        "/app/main.py",
        f"{lib}/site.py",
        f"{lib}/os.py",
        f"{lib}/stat.py",
        f"{lib}/encodings",  # whole: codecs are looked up by name, from C too (idna)
        f"{lib}/encodings/__init__.py",
        f"{lib}/encodings/aliases.py",
        f"{lib}/encodings/utf_8.py",
        f"{site}/web",
        f"{site}/web-2.0.dist-info",
        f"{site}/tools.py",
        f"{site}/starthook.py",
    }
    assert any("nowhere_to_be_found (main.py)" in n for n in needs.notes)
    assert needs.why[f"{site}/web"] == "python import web" and needs.why["/app/main.py"] == "python app"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("python3", "app.py", "--port", "80"), (["/srv/app.py"], [], "")),
        (("python3", "-u", "-X", "dev", "/app/main.py"), (["/app/main.py"], [], "")),
        (("python3", "-m", "http.server", "8000"), ([], ["http.server"], "")),
        (("python3", "-mflask"), ([], ["flask"], "")),
        (("python3", "-c", "import json"), ([], [], "import json")),
        (("python3",), ([], [], "")),
    ],
)
def test_the_command_line_names_the_app(argv: tuple[str, ...], expected: tuple[list[str], list[str], str]) -> None:
    assert command_line(argv, "/srv") == expected


def test_a_deep_dotted_import_is_read_without_recursion(tmp_path: Path) -> None:
    """`import a.a.a...` 5,000 names deep (a hostile app): one note, no RecursionError."""
    _tree(tmp_path, {"/usr/local/bin/python3.12": "", "/usr/local/lib/python3.12/os.py": ""})
    _tree(tmp_path, {"/app/main.py": "import " + ".".join(["deep"] * 5000) + "\n"})
    needs = python_needs(Root(str(tmp_path)), "/usr/local/bin/python3.12", ["/app/main.py"], [])
    assert "/app/main.py" in needs.files
    assert any("deep (main.py)" in n for n in needs.notes)
