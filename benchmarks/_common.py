"""What the benchmark scripts share: where minify is, their arguments, their output."""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def minify_exe() -> str:
    """The ``minify`` beside this Python (the environment it is installed in)."""
    exe = os.path.join(os.path.dirname(sys.executable), "minify")
    return exe if os.path.exists(exe) else shutil.which("minify") or "minify"


def arguments(doc: str, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """``--rounds`` (paired rounds, the median shown) and ``--markdown FILE``."""
    parser = parser or argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--markdown")
    return parser.parse_args()


def emit(text: str, markdown: str | None) -> None:
    """The table on stdout, and in FILE with ``--markdown FILE``."""
    print(text)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
