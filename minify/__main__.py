"""The ``minify`` command (and ``python -m minify``): the command line, started with
the cycle collector paused.

Starting imports typer and minify's command line: tens of thousands of objects
(modules, classes, functions, typer's commands) that live until the process exits,
and next to no garbage. The collector would walk them over and over while they are
made and free nothing, about a twentieth of a warm one-program analysis (issue 22,
benchmarks/README.md). So it is paused for those imports, and what they made is frozen
(``gc.freeze``: never walked again) before the command runs with the collector on,
as every later allocation needs it. Importing ``minify.cli`` as a library changes
nothing of the collector's.
"""

from __future__ import annotations

import gc


def main() -> None:
    gc.disable()
    try:
        from minify.cli import main as command
    finally:
        gc.freeze()
        gc.enable()
    command()


if __name__ == "__main__":
    main()
