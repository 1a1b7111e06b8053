"""Small pieces of text handling shared by every stage: the words minify prints, and
the numbers it reads from files a hostile root or image wrote."""

from __future__ import annotations

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
