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
from recs_assets.ingest.sources import (Source, SourceError, TimeRules, _collect_rejects, _last_reject_scan, _lit,
                                        _reader, default_name, describe, stage)

DDL = """
CREATE SCHEMA IF NOT EXISTS recs;
CREATE TABLE IF NOT EXISTS recs.interactions (
    source VARCHAR NOT NULL, user_id VARCHAR, item_id VARCHAR NOT NULL, ts TIMESTAMP NOT NULL,
    event VARCHAR NOT NULL, quantity INTEGER NOT NULL, price DOUBLE, basket_id VARCHAR);
CREATE TABLE IF NOT EXISTS recs.quarantine (
    source VARCHAR NOT NULL, row_no BIGINT NOT NULL, reason VARCHAR NOT NULL, raw VARCHAR,
    ingested_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS recs.source_paths (
    source VARCHAR NOT NULL, path VARCHAR, ingested_at TIMESTAMP NOT NULL);
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
    ts_unit: str | None = None  # s/ms/us/ns when the source's timestamps are epoch numbers
    replaced_legacy_keys: list[str] = field(default_factory=list)
    previous_path: str | None = None  # set when the same key was last read from another file

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)


def rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back if a transaction is still open: DuckDB ends it itself on some errors (a full
    disk), and a failing ROLLBACK must not hide the error that caused it."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error:
        pass


def _legacy_keys(con, source: Source) -> list[str]:
    """Keys of rows this source wrote under an older, absolute-path key (a moved checkout)."""
    if source.name or source.kind == "sql" or source.key.startswith("/"):
        return []
    rows = con.execute("""
        SELECT DISTINCT source FROM (
            SELECT source FROM recs.interactions UNION ALL SELECT source FROM recs.quarantine
            UNION ALL SELECT source FROM recs.catalog_sources)
        WHERE source LIKE '/%' AND (list_contains(?, source) OR ends_with(source, '/' || ?))
    """, [source.legacy_keys, source.key]).fetchall()
    return [r[0] for r in rows]


def ingest_events(con: duckdb.DuckDBPyConnection, source: Source, rules: TimeRules | None = None) -> IngestReport:
    ensure_tables(con)
    info = stage(con, source, rules)
    adapter = info.adapter
    report = IngestReport(source=source.key, adapter=adapter, ts_unit=info.ts_unit)
    report.read = con.execute("SELECT (SELECT count(*) FROM _staged) + (SELECT count(*) FROM _rejected)").fetchall()[0][0]
    report.quarantined = dict(
        con.execute("""
            SELECT reason, count(*) FROM (
                SELECT reason FROM _staged WHERE reason IS NOT NULL UNION ALL SELECT reason FROM _rejected)
            GROUP BY 1 ORDER BY 2 DESC
        """).fetchall()
    )
    derived = _derived_catalog(con, adapter)
    report.replaced_legacy_keys = _legacy_keys(con, source)
    path = str(Path(source.path).resolve()) if source.path else None
    last = con.execute("SELECT path FROM recs.source_paths WHERE source = ?", [source.key]).fetchall()
    if last and last[0][0] and path and last[0][0] != path:
        report.previous_path = last[0][0]
    con.execute("BEGIN TRANSACTION")
    try:
        key = [source.key]
        for table in ("interactions", "quarantine", "catalog_sources", "source_paths"):
            con.execute(f"DELETE FROM recs.{table} WHERE list_contains(?, source)",
                        [key + report.replaced_legacy_keys])
        con.execute("INSERT INTO recs.source_paths VALUES (?, ?, now()::TIMESTAMP)", [source.key, path])
        con.execute("""
            INSERT INTO recs.interactions
            SELECT ?, user_id, item_id, ts, event, quantity, price, basket_id
            FROM _staged WHERE reason IS NULL ORDER BY ts, row_no
        """, key)
        con.execute("""
            INSERT INTO recs.quarantine
            SELECT ?, s.row_no, s.reason, to_json(r), now()::TIMESTAMP
            FROM _staged s JOIN _raw_quarantined r USING (row_no) WHERE s.reason IS NOT NULL ORDER BY s.row_no
        """, key)
        con.execute("INSERT INTO recs.quarantine SELECT ?, row_no, reason, raw, now()::TIMESTAMP FROM _rejected", key)
        con.register("_derived", derived)
        con.execute("INSERT INTO recs.catalog_sources SELECT ?, 0, * FROM _derived", key)
        con.unregister("_derived")
        rebuild_catalog(con)
        con.execute("COMMIT")
    except Exception:
        rollback(con)
        raise
    # every source row: freed now, not when the asset closes the connection
    con.execute("DROP TABLE IF EXISTS _raw_quarantined; DROP TABLE IF EXISTS _staged")
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
    key = default_name(path)
    legacy = [str(Path(path).resolve())] if not key.startswith("/") else []
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "DELETE FROM recs.catalog_sources WHERE source = ? OR list_contains(?, source) "
            "OR (source LIKE '/%' AND ends_with(source, '/' || ?) AND priority = 1)",
            [key, legacy, key])
        con.execute("DELETE FROM recs.quarantine WHERE source = ?", [key])
        scans = _last_reject_scan(con)
        con.execute(f"""
            INSERT INTO recs.catalog_sources
            SELECT ?, 1, CAST(item_id AS VARCHAR), {col('title')}, {col('description')}, {col('brand')},
                   {col('category')}, {col('price', 'DOUBLE')}, {attrs}
            FROM {_reader(path)} WHERE item_id IS NOT NULL
        """, [key])
        # catalog lines the CSV reader could not take are kept in the quarantine, not lost
        _collect_rejects(con, scans)
        con.execute("INSERT INTO recs.quarantine SELECT ?, row_no, reason, raw, now()::TIMESTAMP FROM _rejected", [key])
        rebuild_catalog(con)
        con.execute("COMMIT")
    except duckdb.Error as exc:
        rollback(con)
        raise SourceError(f"{path}: cannot be read as a catalog: {exc}") from exc
    return con.execute("SELECT count(*) FROM recs.catalog_sources WHERE source = ?", [key]).fetchall()[0][0]


def rebuild_catalog(con) -> None:
    """One row per item, each attribute from the best source that has it.

    Sources rank: catalog files, then event sources by how many events they hold (the primary
    source first, so a one-line inbox file cannot re-title a product), then by key. A missing
    value (NULL, NaN, a title that is only the id) never replaces a real one.
    """
    con.execute("""
        CREATE OR REPLACE TABLE recs.catalog AS
        WITH volume AS (SELECT source, count(*) AS n FROM recs.interactions GROUP BY source),
        ranked AS (
            SELECT c.*, row_number() OVER (
                PARTITION BY c.item_id ORDER BY c.priority DESC, coalesce(v.n, 0) DESC, c.source) AS rk
            FROM recs.catalog_sources c LEFT JOIN volume v USING (source))
        SELECT item_id,
               coalesce(arg_min(title, rk) FILTER (WHERE nullif(trim(title), '') IS NOT NULL AND title <> item_id),
                        item_id) AS title,
               arg_min(description, rk) FILTER (
                   WHERE nullif(trim(description), '') IS NOT NULL AND description <> item_id) AS description,
               arg_min(brand, rk) FILTER (WHERE nullif(trim(brand), '') IS NOT NULL) AS brand,
               arg_min(category, rk) FILTER (WHERE nullif(trim(category), '') IS NOT NULL) AS category,
               arg_min(price, rk) FILTER (WHERE isfinite(price)) AS price,
               arg_min(attributes, rk) FILTER (WHERE attributes IS NOT NULL) AS attributes,
               arg_min(source, rk) AS source
        FROM ranked
        GROUP BY item_id
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
