"""Printing for the command line: aligned text tables, or JSON with `--json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO


def format_cell(value: Any) -> str:
    """A table cell: floats with two decimals, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], out: TextIO | None = None) -> None:
    """Print `rows` as a left-aligned table with the given columns (to sys.stdout as it is at call time)."""
    out = sys.stdout if out is None else out
    cells = [[format_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    print("  ".join(col.ljust(w) for col, w in zip(columns, widths)).rstrip(), file=out)
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def emit(data: Any, *, as_json: bool, columns: Sequence[str] | None = None, out: TextIO | None = None) -> None:
    """Print `data` as JSON, or as a table of `columns` when it is a list of rows."""
    out = sys.stdout if out is None else out
    if as_json:
        json.dump(data, out, indent=2, default=str)
        out.write("\n")
    elif columns is not None:
        print_table(data, columns, out=out)
    else:
        for key, value in data.items():
            print(f"{key}: {format_cell(value)}", file=out)
