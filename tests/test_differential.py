"""Every ELF file of this machine's /usr/bin, /usr/sbin and /usr/lib/<triplet>: minify's
closure must be the loader's, file for file."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

import minify
from minify.analysis.closure import ProgramClosure
from tests.conftest import TRIPLET

CORPUS = ["/usr/bin", "/usr/sbin", f"/usr/lib/{TRIPLET}"]
_LINE = re.compile(r"^(?:(\S+) => )?(\S+?)(?: \(0x[0-9a-f]+\))?$")
_CANNOT_OPEN = re.compile(r"error while loading shared libraries: (\S+): cannot open shared object file")


def loader_view(program: ProgramClosure) -> tuple[set[str] | None, set[str]] | None:
    """(closure, missing) as the program's own loader lists them (closure None when it
    stopped at a missing library without listing), or None when the loader refuses the
    file for another reason (reported to the caller)."""
    assert program.interpreter is not None
    proc = subprocess.run(
        [program.interpreter, "--list", program.path],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    closure = {os.path.realpath(program.path)}
    missing: set[str] = set()
    for line in proc.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith("linux-vdso") or line == program.path:
            continue
        if line.endswith("=> not found"):
            missing.add(line.split(" => ")[0])
            continue
        match = _LINE.match(line)
        assert match, line
        closure.add(os.path.realpath(match.group(2)))
    if proc.returncode != 0 and not missing:
        # a library given to `ld.so --list` fails outright on a missing direct need
        cannot = _CANNOT_OPEN.search(proc.stderr)
        if cannot is None:
            return None
        missing.add(cannot.group(1))
        return None, missing
    return closure, missing


@pytest.mark.slow
def test_whole_machine_corpus_matches_the_loader() -> None:
    dirs = [d for d in CORPUS if os.path.isdir(d)]
    analysis = minify.analyze(dirs, hwcaps="host")
    assert len(analysis.programs) > 200, "the corpus is unexpectedly small"
    mismatches = []
    compared = 0
    for program in analysis.programs:
        if program.kind != "dynamic":
            continue
        if program.error is not None:
            mismatches.append(f"{program.path}: minify error {program.error}")
            continue
        seen = loader_view(program)
        if seen is None:
            mismatches.append(f"{program.path}: the loader refused it, minify did not")
            continue
        closure, missing = seen
        mine = set(program.closure)
        if closure is None:
            closure = mine  # the loader stopped at the missing name: compare that alone
        else:
            closure.add(program.objects[-1].realpath)  # ld.so, listed only when named
        if mine != closure or set(program.missing) != missing:
            mismatches.append(f"{program.path}: extra {sorted(mine - closure)} lacking {sorted(closure - mine)}")
        compared += 1
    assert compared > 200
    assert mismatches == []
