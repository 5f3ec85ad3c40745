"""Counts in words: ``"1 image"``, ``"2 images"``, for the messages, summaries and reports of both
the library and the programs (a count of one never reads ``"1 more rows"``)."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``"1 image"``, ``"2 images"`` (``many``: the plural when it is not ``word + "s"``)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
