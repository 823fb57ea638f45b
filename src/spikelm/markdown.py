"""THE Markdown table helper: every report (Tables 1-3, energy rows, NLU) formats through it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["md_table"]


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> str:
    """A GitHub Markdown table. ``align``: one letter per column (``l``, ``r``, ``c``); default left
    for the first column and right for the others."""
    header = [str(h) for h in header]
    if not align:
        align = "l" + "r" * (len(header) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
