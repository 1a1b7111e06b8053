"""Small pieces of text handling shared by every stage: the words minify prints, and
the numbers it reads from files a hostile root or image wrote."""

from __future__ import annotations

import re
from collections.abc import Sequence


def some(items: Sequence[str], limit: int) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are:
    ``a, b, c and 12 more``."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def is_number(text: str) -> bool:
    """ASCII digits only, what ``int()`` reads: ``²`` passes ``str.isdigit`` and then
    fails ``int``, a traceback on a hostile passwd, status file or setting."""
    return text.isascii() and text.isdigit()


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


#: A tar block: every member's header and the padding of its contents.
TAR_BLOCK = 512


def layer_size(sizes: list[int]) -> int:
    """What an uncompressed tar layer of these files weighs: a 512-byte header each,
    contents padded to 512 bytes, and the two zero blocks that end the archive."""
    return sum(TAR_BLOCK + -(-s // TAR_BLOCK) * TAR_BLOCK for s in sizes) + 2 * TAR_BLOCK


_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def escape(text: str) -> str:
    """Control characters and bytes that are not UTF-8 (surrogate escapes) as ``\\xNN``:
    a hostile file name cannot move the cursor or recolour a terminal."""

    def sub(match: re.Match[str]) -> str:
        ch = match.group(0)
        code = ord(ch) - 0xDC00 if 0xDC80 <= ord(ch) <= 0xDCFF else ord(ch)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{ord(ch):04x}"

    return _UNPRINTABLE.sub(sub, text)


def printable(text: str) -> str:
    """Text for a terminal: every line escaped, line breaks kept."""
    return "\n".join(escape(line) for line in text.split("\n"))
