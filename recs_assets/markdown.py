"""Small Markdown renderers for Dagster UI metadata (no pandas/tabulate needed)."""
from __future__ import annotations

import polars as pl


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def frame(df: pl.DataFrame, limit: int = 20) -> str:
    if df.is_empty():
        return "_(empty)_"
    head = df.head(limit)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in head.iter_rows()]
    return "\n".join(lines)


def pairs(rows, header: tuple[str, str]) -> str:
    return frame(pl.DataFrame(list(rows), schema=list(header), orient="row"))
