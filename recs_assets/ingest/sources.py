"""Source adapters: each turns one source into the staging table `_staged`.

`_staged` has one row per source row: its number, the canonical columns, a catalog title when
the source carries one, and `reason` (NULL when the row is kept). `_raw` keeps the source rows
as read, so that only quarantined rows are turned into JSON.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb

SourceKind = Literal["auto", "online_retail", "events", "sql"]

ONLINE_RETAIL_COLUMNS = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")
EVENT_COLUMNS_REQUIRED = ("user_id", "item_id", "ts", "event")
EVENT_COLUMNS_OPTIONAL = ("quantity", "price", "basket_id")
# Fees, postage, manual adjustments and vouchers: invoice lines that are not products.
NON_PRODUCT_CODES = ("POST", "DOT", "M", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS")
EVENT_SYNONYMS = {
    "view": "view", "views": "view", "click": "view", "detail": "view", "pageview": "view",
    "add": "add", "addtocart": "add", "add_to_cart": "add", "cart": "add",
    "purchase": "purchase", "transaction": "purchase", "buy": "purchase", "order": "purchase",
}


class SourceError(ValueError):
    """A source that cannot be ingested at all: unreadable, or missing a required column."""


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    path: str = ""
    query: str = ""
    name: str = ""

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        if self.kind == "sql":
            return "sql:" + hashlib.sha1(self.query.encode()).hexdigest()[:12]
        return str(Path(self.path).resolve())


def _reader(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".parquet") or lower.endswith(".pq"):
        return f"read_parquet({_lit(path)})"
    if lower.endswith(".csv") or lower.endswith(".csv.gz") or lower.endswith(".tsv"):
        return f"read_csv({_lit(path)}, header=true, all_varchar=false)"
    if lower.endswith(".json") or lower.endswith(".jsonl") or lower.endswith(".ndjson"):
        return f"read_json_auto({_lit(path)})"
    raise SourceError(f"{path}: unsupported file type (use .parquet, .csv or .jsonl)")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def describe(con: duckdb.DuckDBPyConnection, source: Source) -> dict[str, str]:
    """Column name -> DuckDB type of the source, or a SourceError naming the file."""
    if source.kind == "sql":
        relation = f"({source.query})"
        label = f"query {source.key}"
    else:
        if not any(ch in source.path for ch in "*?[") and not Path(source.path).exists():
            raise SourceError(f"{source.path}: file not found")
        relation = _reader(source.path)
        label = source.path
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except duckdb.Error as exc:
        raise SourceError(f"{label}: cannot be read: {exc}") from exc
    return {r[0]: r[1] for r in rows}


def resolve_kind(columns: dict[str, str], source: Source) -> SourceKind:
    if source.kind != "auto":
        return source.kind
    if all(c in columns for c in ONLINE_RETAIL_COLUMNS):
        return "online_retail"
    return "events"


def _require(columns: dict[str, str], required: tuple[str, ...], label: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise SourceError(
            f"{label}: missing required column {missing[0]!r}"
            + (f" (also {', '.join(map(repr, missing[1:]))})" if len(missing) > 1 else "")
            + f"; found {', '.join(columns)}"
        )


def stage(con: duckdb.DuckDBPyConnection, source: Source) -> SourceKind:
    """Create TEMP TABLE _staged for the source and return the adapter used."""
    columns = describe(con, source)
    kind = resolve_kind(columns, source)
    label = source.path or f"query {source.key}"
    relation = f"({source.query})" if source.kind == "sql" else _reader(source.path)
    try:
        if kind == "online_retail":
            _require(columns, ONLINE_RETAIL_COLUMNS, label)
            _stage_online_retail(con, relation, columns)
        else:
            _require(columns, EVENT_COLUMNS_REQUIRED, label)
            _stage_events(con, relation, columns)
    except duckdb.Error as exc:
        raise SourceError(f"{label}: cannot be read: {exc}") from exc
    return kind


def _stage_online_retail(con, relation: str, columns: dict[str, str]) -> None:
    codes = ", ".join(_lit(c) for c in NON_PRODUCT_CODES)
    description = "Description" if "Description" in columns else "NULL"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _raw AS
        SELECT row_number() OVER () AS row_no, r.* FROM {relation} r
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _typed AS
        SELECT row_no,
               CAST(CustomerID AS BIGINT)::VARCHAR AS user_id,
               trim(CAST(StockCode AS VARCHAR)) AS item_id,
               TRY_CAST(InvoiceDate AS TIMESTAMP) AS ts,
               'purchase' AS event,
               TRY_CAST(Quantity AS INTEGER) AS quantity,
               TRY_CAST(UnitPrice AS DOUBLE) AS price,
               trim(CAST(InvoiceNo AS VARCHAR)) AS basket_id,
               NULLIF(trim(CAST({description} AS VARCHAR)), '') AS title,
               CASE
                 WHEN InvoiceNo IS NULL OR trim(CAST(InvoiceNo AS VARCHAR)) = '' THEN 'missing_basket'
                 WHEN upper(trim(CAST(InvoiceNo AS VARCHAR))) LIKE 'C%' THEN 'cancellation'
                 WHEN StockCode IS NULL OR trim(CAST(StockCode AS VARCHAR)) = '' THEN 'missing_item_id'
                 WHEN upper(trim(CAST(StockCode AS VARCHAR))) IN ({codes})
                      OR lower(CAST(StockCode AS VARCHAR)) LIKE 'gift\\_%' ESCAPE '\\' THEN 'non_product_code'
                 WHEN TRY_CAST(Quantity AS INTEGER) IS NULL OR TRY_CAST(Quantity AS INTEGER) <= 0
                      THEN 'non_positive_quantity'
                 WHEN TRY_CAST(UnitPrice AS DOUBLE) IS NULL OR TRY_CAST(UnitPrice AS DOUBLE) <= 0
                      THEN 'non_positive_price'
                 WHEN TRY_CAST(InvoiceDate AS TIMESTAMP) IS NULL THEN 'bad_timestamp'
               END AS reason
        FROM _raw r
    """)
    _mark_duplicates(con)


def _ts_expression(col_type: str) -> str:
    upper = col_type.upper()
    if any(t in upper for t in ("INT", "DECIMAL", "DOUBLE", "FLOAT", "HUGEINT")):
        return "CASE WHEN ts IS NULL THEN NULL ELSE make_timestamp(CAST(ts AS BIGINT) * 1000) END"
    if "TIMESTAMP WITH TIME ZONE" in upper:
        return "timezone('UTC', ts)"
    if "TIMESTAMP" in upper or upper == "DATE":
        return "CAST(ts AS TIMESTAMP)"
    # Strings: epoch milliseconds or ISO-8601, with or without an offset; stored as UTC.
    return """CASE
        WHEN regexp_full_match(trim(CAST(ts AS VARCHAR)), '-?[0-9]{1,16}')
          THEN make_timestamp(CAST(trim(CAST(ts AS VARCHAR)) AS BIGINT) * 1000)
        ELSE timezone('UTC', TRY_CAST(trim(CAST(ts AS VARCHAR)) AS TIMESTAMPTZ))
      END"""


def _stage_events(con, relation: str, columns: dict[str, str]) -> None:
    synonyms = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in EVENT_SYNONYMS.items())
    quantity = "TRY_CAST(quantity AS INTEGER)" if "quantity" in columns else "CAST(1 AS INTEGER)"
    price = "TRY_CAST(price AS DOUBLE)" if "price" in columns else "CAST(NULL AS DOUBLE)"
    basket = "NULLIF(trim(CAST(basket_id AS VARCHAR)), '')" if "basket_id" in columns else "CAST(NULL AS VARCHAR)"
    has_qty = "quantity" in columns
    has_price = "price" in columns
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _raw AS
        SELECT row_number() OVER () AS row_no, r.* FROM {relation} r
    """)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _typed0 AS
        SELECT row_no,
               NULLIF(trim(CAST(user_id AS VARCHAR)), '') AS user_id,
               NULLIF(trim(CAST(item_id AS VARCHAR)), '') AS item_id,
               TRY({_ts_expression(columns["ts"])}) AS ts,
               CASE lower(trim(CAST(event AS VARCHAR))) {synonyms} ELSE NULL END AS event,
               {quantity} AS quantity, {price} AS price, {basket} AS basket_id,
               {"NULLIF(trim(CAST(quantity AS VARCHAR)), '') IS NOT NULL" if has_qty else "false"} AS qty_given,
               {"NULLIF(trim(CAST(price AS VARCHAR)), '') IS NOT NULL" if has_price else "false"} AS price_given
        FROM _raw r
    """)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _typed AS
        SELECT row_no, user_id, item_id, ts, event,
               coalesce(quantity, 1) AS quantity, price, basket_id,
               CAST(NULL AS VARCHAR) AS title,
               CASE
                 WHEN item_id IS NULL THEN 'missing_item_id'
                 WHEN user_id IS NULL AND basket_id IS NULL THEN 'missing_user_and_basket'
                 WHEN ts IS NULL THEN 'bad_timestamp'
                 WHEN event IS NULL THEN 'unknown_event'
                 WHEN qty_given AND quantity IS NULL THEN 'bad_quantity'
                 WHEN quantity <= 0 THEN 'non_positive_quantity'
                 WHEN price_given AND price IS NULL THEN 'bad_price'
                 WHEN price < 0 THEN 'negative_price'
               END AS reason
        FROM _typed0
    """)
    _mark_duplicates(con)


def _mark_duplicates(con) -> None:
    """Identical canonical rows within a source are one event recorded twice: keep the first."""
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _staged AS
        SELECT * EXCLUDE (dup_rank)
        FROM (
            SELECT t.* REPLACE (
                     CASE WHEN t.reason IS NULL AND t.dup_rank > 1 THEN 'duplicate_row' ELSE t.reason END AS reason)
            FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY reason IS NULL, user_id, item_id, ts, event, quantity, price, basket_id
                    ORDER BY row_no) AS dup_rank
                FROM _typed
            ) t
        )
    """)
