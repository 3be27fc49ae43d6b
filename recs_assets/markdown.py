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


def figure(fig, alt: str, dpi: int = 80) -> str:
    """A matplotlib figure as an inline PNG that the Dagster UI renders in Markdown metadata."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return f"![{alt}](data:image/png;base64," + base64.b64encode(buf.getvalue()).decode() + ")"
