"""Write one staged source into the warehouse, replacing what that source wrote before.

Everything happens in one transaction: a failure leaves the warehouse as it was, and
re-ingesting a source replaces its rows instead of adding them again.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from recs_assets.ingest import catalog_attrs
from recs_assets.ingest.sources import Source, SourceError, _lit, _reader, describe, stage

DDL = """
CREATE SCHEMA IF NOT EXISTS recs;
CREATE TABLE IF NOT EXISTS recs.interactions (
    source VARCHAR NOT NULL, user_id VARCHAR, item_id VARCHAR NOT NULL, ts TIMESTAMP NOT NULL,
    event VARCHAR NOT NULL, quantity INTEGER NOT NULL, price DOUBLE, basket_id VARCHAR);
CREATE TABLE IF NOT EXISTS recs.quarantine (
    source VARCHAR NOT NULL, row_no BIGINT NOT NULL, reason VARCHAR NOT NULL, raw VARCHAR,
    ingested_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS recs.catalog_sources (
    source VARCHAR NOT NULL, priority INTEGER NOT NULL, item_id VARCHAR NOT NULL, title VARCHAR,
    description VARCHAR, brand VARCHAR, category VARCHAR, price DOUBLE, attributes VARCHAR);
"""
CATALOG_REQUIRED = ("item_id",)
CATALOG_KNOWN = ("item_id", "title", "description", "brand", "category", "price")


@dataclass
class IngestReport:
    source: str
    adapter: str
    read: int = 0
    kept: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)


def ingest_events(con: duckdb.DuckDBPyConnection, source: Source) -> IngestReport:
    ensure_tables(con)
    adapter = stage(con, source)
    report = IngestReport(source=source.key, adapter=adapter)
    report.read = con.execute("SELECT count(*) FROM _staged").fetchall()[0][0]
    report.quarantined = dict(
        con.execute(
            "SELECT reason, count(*) FROM _staged WHERE reason IS NOT NULL GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
    )
    derived = _derived_catalog(con, adapter)
    con.execute("BEGIN TRANSACTION")
    try:
        key = [source.key]
        con.execute("DELETE FROM recs.interactions WHERE source = ?", key)
        con.execute("DELETE FROM recs.quarantine WHERE source = ?", key)
        con.execute("DELETE FROM recs.catalog_sources WHERE source = ?", key)
        con.execute("""
            INSERT INTO recs.interactions
            SELECT ?, user_id, item_id, ts, event, quantity, price, basket_id
            FROM _staged WHERE reason IS NULL ORDER BY ts, row_no
        """, key)
        con.execute("""
            INSERT INTO recs.quarantine
            SELECT ?, s.row_no, s.reason, to_json(r), now()::TIMESTAMP
            FROM _staged s JOIN _raw r USING (row_no) WHERE s.reason IS NOT NULL ORDER BY s.row_no
        """, key)
        con.register("_derived", derived)
        con.execute("INSERT INTO recs.catalog_sources SELECT ?, 0, * FROM _derived", key)
        con.unregister("_derived")
        rebuild_catalog(con)
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    report.kept = con.execute("SELECT count(*) FROM recs.interactions WHERE source = ?", [source.key]).fetchall()[0][0]
    if report.kept + report.quarantined_total != report.read:
        raise RuntimeError(f"{source.key}: kept {report.kept} + quarantined {report.quarantined_total} != read {report.read}")
    return report


def _derived_catalog(con, adapter: str) -> pl.DataFrame:
    """Items seen in the events; for Online Retail the title is the most frequent description."""
    frame = con.sql("""
        WITH kept AS (SELECT item_id, title, price FROM _staged WHERE reason IS NULL),
        titles AS (
            SELECT item_id, title FROM (
                SELECT item_id, title, row_number() OVER (
                    PARTITION BY item_id ORDER BY count(*) DESC, title) AS rk
                FROM _staged WHERE title IS NOT NULL AND item_id IS NOT NULL GROUP BY item_id, title)
            WHERE rk = 1)
        SELECT k.item_id, any_value(t.title) AS title, median(k.price) AS price
        FROM kept k LEFT JOIN titles t USING (item_id)
        GROUP BY k.item_id ORDER BY k.item_id
    """).pl()
    frame = frame.with_columns(pl.coalesce("title", "item_id").alias("title"))
    if adapter == "online_retail":
        category, brand = catalog_attrs.derive(frame["title"].to_list())
    else:
        category = brand = [None] * frame.height
    return pl.DataFrame({
        "item_id": frame["item_id"],
        "title": frame["title"],
        "description": frame["title"],
        "brand": pl.Series(brand, dtype=pl.String),
        "category": pl.Series(category, dtype=pl.String),
        "price": frame["price"].cast(pl.Float64),
        "attributes": pl.Series([None] * frame.height, dtype=pl.String),
    })


def ingest_catalog(con: duckdb.DuckDBPyConnection, path: str) -> int:
    """A catalog file outranks what is derived from events for the items it names."""
    ensure_tables(con)
    src = Source(kind="events", path=path)
    columns = describe(con, src)
    missing = [c for c in CATALOG_REQUIRED if c not in columns]
    if missing:
        raise SourceError(f"{path}: missing required column {missing[0]!r}; found {', '.join(columns)}")
    extra = [c for c in columns if c not in CATALOG_KNOWN]
    def col(name: str, cast: str = "VARCHAR") -> str:
        return f"TRY_CAST({name} AS {cast})" if name in columns else f"CAST(NULL AS {cast})"
    attrs = ("to_json({" + ", ".join(f"{_lit(c)}: \"{c}\"" for c in extra) + "})") if extra else "CAST(NULL AS VARCHAR)"
    con.execute("BEGIN TRANSACTION")
    try:
        key = str(Path(path).resolve())
        con.execute("DELETE FROM recs.catalog_sources WHERE source = ?", [key])
        con.execute(f"""
            INSERT INTO recs.catalog_sources
            SELECT ?, 1, CAST(item_id AS VARCHAR), {col('title')}, {col('description')}, {col('brand')},
                   {col('category')}, {col('price', 'DOUBLE')}, {attrs}
            FROM {_reader(path)} WHERE item_id IS NOT NULL
        """, [key])
        rebuild_catalog(con)
        con.execute("COMMIT")
    except duckdb.Error as exc:
        con.execute("ROLLBACK")
        raise SourceError(f"{path}: cannot be read as a catalog: {exc}") from exc
    return con.execute("SELECT count(*) FROM recs.catalog_sources WHERE source = ?", [key]).fetchall()[0][0]


def rebuild_catalog(con) -> None:
    """One row per item: the highest-priority source wins, then the most recent."""
    con.execute("""
        CREATE OR REPLACE TABLE recs.catalog AS
        SELECT item_id, coalesce(title, item_id) AS title, description, brand, category, price, attributes, source
        FROM (
            SELECT *, row_number() OVER (PARTITION BY item_id ORDER BY priority DESC, source) AS rk
            FROM recs.catalog_sources)
        WHERE rk = 1
        ORDER BY item_id
    """)


def summary(con) -> dict[str, int]:
    row = con.execute("""
        SELECT count(*), count(DISTINCT user_id), count(DISTINCT item_id), count(DISTINCT basket_id),
               count(*) FILTER (WHERE user_id IS NULL)
        FROM recs.interactions
    """).fetchall()[0]
    return {"interactions": row[0], "users": row[1], "items": row[2], "baskets": row[3], "guest_rows": row[4]}


def quarantine_json(report: IngestReport) -> str:
    return json.dumps(report.quarantined)
