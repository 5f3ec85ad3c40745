"""The field separator of a text table, one rule for every program that reads one.

The heads' labelled tables (``msclip-finetune --csv``, dense tables) and ``msclip-train``'s
image-caption tables are told apart the same way: a ``.tsv`` file is tab-separated; any other
text table is comma-separated unless its header line holds no comma, when a tab (open_clip's
``--csv-separator`` default, so its "CSV" tables are tab-separated) or else a semicolon (what a
spreadsheet exports where the comma is the decimal mark) separates its columns. Only the header
decides: cells hold commas in captions and decimal numbers.
"""

from __future__ import annotations

import os

__all__ = ["separator_of", "table_separator", "where_not_utf8"]


def separator_of(path: str | os.PathLike[str], header: str) -> str:
    """The field separator of the text table at ``path`` whose first line is ``header``.

    Args:
        path: the table's file name (its suffix: ``.tsv`` is tab-separated whatever the header).
        header: the table's first line.

    Returns:
        ``","``, ``"\\t"`` or ``";"``.
    """
    if os.fspath(path).lower().endswith(".tsv"):
        return "\t"
    if "," in header:
        return ","
    # A tab never belongs to a column name, a semicolon may: a tab decides first.
    return next((d for d in "\t;" if d in header), ",")


def table_separator(path: str | os.PathLike[str]) -> str:
    """The field separator of the text table at ``path`` (see :func:`separator_of`), read from
    its first line; ``","`` when the file cannot be read (its reader then names the problem)."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            header = fh.readline()
    except OSError:
        return ","
    return separator_of(path, header)


def where_not_utf8(path: str | os.PathLike[str]) -> str:
    """``" at byte N, line L"`` of the first byte of the file at ``path`` that is not UTF-8 (after
    a byte-order mark), for the message that refuses a table: a reader's ``UnicodeDecodeError``
    (pandas', the csv module's) counts from the start of one of its read chunks, not of the file.
    ``""`` when the file reads as UTF-8 or cannot be read."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        return f" at byte {start}, line {line}"
    except OSError:
        pass
    return ""
