"""Small pieces of the words minify prints, shared by every stage's messages."""

from __future__ import annotations

from collections.abc import Sequence


def some(items: Sequence[str], limit: int) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are:
    ``a, b, c and 12 more``."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
