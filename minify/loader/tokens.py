"""Dynamic string tokens ($ORIGIN, $LIB, $PLATFORM) and search-path splitting.

glibc elf/dl-load.c (is_dst, _dl_dst_substitute): a token name ends at the first
character that is not [A-Za-z0-9_], so ``$ORIGINAL`` is not ``$ORIGIN``; ``${NAME}``
is the braced form; an unknown ``$X`` is left as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


@dataclass(frozen=True)
class Tokens:
    """The values of $ORIGIN, $LIB and $PLATFORM for one object's search paths."""

    origin: str
    lib: str
    platform: str


def expand(text: str, tokens: Tokens) -> str:
    """Replace the known tokens in ``text``; leave unknown ``$NAME`` literal."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        value = {"ORIGIN": tokens.origin, "LIB": tokens.lib, "PLATFORM": tokens.platform}.get(name)
        return match.group(0) if value is None else value

    return _TOKEN.sub(sub, text)


def split_glibc_path(text: str, cwd: str) -> tuple[str, ...]:
    """Split an RPATH/RUNPATH/LD_LIBRARY_PATH on ':' and ';'; an empty element is cwd.

    glibc fillin_rpath: empty elements mean the current directory; trailing slashes are
    dropped.
    """
    out = []
    for element in re.split(r"[:;]", text):
        element = element.rstrip("/") if element not in ("", "/") else element
        out.append(element if element else cwd)
    return tuple(out)


def musl_expand(text: str, origin: str) -> str | None:
    """musl ldso/dynlink.c fixup_rpath: only $ORIGIN and ${ORIGIN} are known; any other
    ``$`` makes musl drop the whole rpath (None)."""
    if "$" not in text:
        return text
    i = 0
    out = []
    while True:
        j = text.find("$", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        if text.startswith("${ORIGIN}", j):
            out.append(origin)
            i = j + 9
        elif text.startswith("$ORIGIN", j):
            out.append(origin)
            i = j + 7
        else:
            return None
    return "".join(out)
