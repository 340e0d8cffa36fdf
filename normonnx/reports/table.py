"""The one table renderer: every table normonnx prints or writes goes through ``table``.

tabulate does the alignment; the terminal gets plain text columns, report
files get GitHub Markdown. Cells are shown as given (no number re-parsing),
so "1.00x" and "4.8e-06" stay as the caller formatted them.
"""

from __future__ import annotations

from collections.abc import Sequence

from tabulate import tabulate


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, markdown: bool = False) -> str:
    """Rows under headers, as plain text columns (terminal) or a GitHub Markdown table (reports)."""
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    return tabulate(cells, headers=list(headers), tablefmt="github" if markdown else "simple", disable_numparse=True)


def few(names: Sequence[str], shown: int = 3) -> str:
    """A few names, and how many more there are."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GB"
