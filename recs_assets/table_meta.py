"""Dagster's table conventions, from the table as written: ``dagster/row_count`` and
``dagster/column_schema`` (the catalogue shows row counts and columns), and small inline
charts.

The UI renders a Markdown metadata value inline only when it is short (under ~1,000
characters); a PNG data URI never is, so it sits behind "[Show Markdown]". ``bars`` draws a
chart as a Markdown table with Unicode bars, short enough to be visible on the asset page; the
full PNG stays beside it.
"""
from __future__ import annotations

import dagster as dg

ROW_COUNT = "dagster/row_count"
COLUMN_SCHEMA = "dagster/column_schema"


def table_metadata(con, table: str, schema: str = "recs") -> dict:
    """Row count and column schema of ``schema.table`` (a DuckDB connection to the warehouse)."""
    cols = con.execute(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position", [schema, table]).fetchall()
    rows = con.execute(f'SELECT count(*) FROM {schema}."{table}"').fetchall()[0][0]
    return {
        ROW_COUNT: dg.MetadataValue.int(int(rows)),
        COLUMN_SCHEMA: dg.MetadataValue.table_schema(dg.TableSchema(columns=[
            dg.TableColumn(name, str(dtype).lower(), constraints=dg.TableColumnConstraints(nullable=nullable == "YES"))
            for name, dtype, nullable in cols])),
    }


def warehouse_metadata(warehouse, *tables: str) -> dict:
    """``table_metadata`` of the asset's table(s); several tables get ``<table>/`` prefixed keys
    except the first, which carries the standard keys."""
    out: dict = {}
    with warehouse.connect() as con:
        for n, t in enumerate(tables):
            meta = table_metadata(con, t)
            out.update(meta if n == 0 else {f"{t}/{k.split('/', 1)[1]}": v for k, v in meta.items()})
    return out


_BLOCKS = " ▏▎▍▌▋▊▉█"


def bars(labels, values, *, title: str = "", width: int = 20, fmt: str = "{:.4f}") -> dg.MetadataValue:
    """A horizontal bar chart as a short Markdown table (renders inline on the asset page)."""
    labels, values = [str(x) for x in labels], [float(v) for v in values]
    top = max((abs(v) for v in values), default=0.0) or 1.0
    lines = [f"| {title or 'item'} | value | |", "|---|---:|---|"]
    for lab, v in zip(labels, values):
        eighths = int(round(8 * width * abs(v) / top))
        bar = "█" * (eighths // 8) + (_BLOCKS[eighths % 8] if eighths % 8 else "")
        lines.append(f"| {lab[:28]} | {fmt.format(v)} | {bar} |")
    text = "\n".join(lines)
    while len(text) >= 1000 and width > 4:  # keep it under the UI's inline limit
        return bars(labels, values, title=title, width=width // 2, fmt=fmt)
    return dg.MetadataValue.md(text)
