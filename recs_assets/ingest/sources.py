"""Source adapters: each turns one source into the staging table `_staged`.

`_staged` has one row per source row: its number, the canonical columns, a catalog title when
the source carries one, and `reason` (NULL when the row is kept). `_raw` keeps the source rows
as read, so that only quarantined rows are turned into JSON; once `_staged` is built it is cut
down to those rows (`_raw_quarantined`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import duckdb

from recs_assets import paths

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
# Epoch units by magnitude: today is ~1.7e9 s, 1.7e12 ms, 1.7e15 us, 1.7e18 ns, so the
# decades between the bounds leave no doubt for any date from 1973 to 5138.
EPOCH_UNITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", float("inf")))


class SourceError(ValueError):
    """A source that cannot be ingested at all: unreadable, or missing a required column."""


@dataclass(frozen=True)
class TimeRules:
    """Timestamps outside [floor, latest] are quarantined (bad_timestamp / future_timestamp)."""

    floor: datetime = datetime(1990, 1, 1)
    latest: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(days=1))


def default_name(path: str) -> str:
    """A key that survives moving the checkout: the path relative to RECS_HOME or the
    repository, else the file name (or glob pattern)."""
    raw = Path(os.path.abspath(os.path.expanduser(path)))
    candidates = [raw]
    if raw.parent.exists():
        candidates.append(raw.parent.resolve() / raw.name)
    # The innermost of the two wins (RECS_HOME inside the repository, or the other way round).
    for base in sorted((paths.recs_home(), paths.REPO_ROOT), key=lambda b: len(b.parts), reverse=True):
        for p in candidates:
            for b in (base, Path(os.path.abspath(base))):
                try:
                    return p.relative_to(b).as_posix()
                except ValueError:
                    pass
    return raw.name


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    path: str = ""
    query: str = ""
    name: str = ""
    # None: on for Online Retail (its stock codes are case-insensitive), off for other kinds
    merge_case_ids: bool | None = None

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        if self.kind == "sql":
            return "sql:" + hashlib.sha1(self.query.encode()).hexdigest()[:12]
        return default_name(self.path)

    @property
    def legacy_keys(self) -> list[str]:
        """Keys earlier versions used (the absolute path), for replacing their rows."""
        if self.kind == "sql" or not self.path:
            return []
        return [str(Path(self.path).resolve()), os.path.abspath(self.path)]

    def merges_case(self, adapter: str) -> bool:
        return self.merge_case_ids if self.merge_case_ids is not None else adapter == "online_retail"


@dataclass
class StageInfo:
    adapter: str
    ts_unit: str | None = None  # unit of numeric timestamps, when the source has any


def _reader(path: str) -> str:
    lower = path.lower()
    if lower.endswith(".parquet") or lower.endswith(".pq"):
        return f"read_parquet({_lit(path)})"
    if lower.endswith(".csv") or lower.endswith(".csv.gz") or lower.endswith(".tsv"):
        # store_rejects: a line the reader cannot take (more or fewer fields than the header,
        # a value not of the column's sniffed type) is set aside for the quarantine instead of
        # failing the file, and the sniffer does not take a ragged line for the header.
        return f"read_csv({_lit(path)}, header=true, all_varchar=false, store_rejects=true)"
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
    # Most Online Retail columns present: it is one, and a missing column is named as such
    # (rather than reported as a missing user_id of the generic format).
    present = sum(c in columns for c in ONLINE_RETAIL_COLUMNS)
    if present >= 3 and not all(c in columns for c in EVENT_COLUMNS_REQUIRED):
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


def stage(con: duckdb.DuckDBPyConnection, source: Source, rules: TimeRules | None = None) -> StageInfo:
    """Create TEMP TABLE _staged for the source and return the adapter used."""
    rules = rules or TimeRules()
    columns = describe(con, source)
    kind = resolve_kind(columns, source)
    label = source.path or f"query {source.key}"
    relation = f"({source.query})" if source.kind == "sql" else _reader(source.path)
    try:
        scans = _last_reject_scan(con)
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE _raw AS
            SELECT row_number() OVER () AS row_no, r.* FROM {relation} r
        """)
        _collect_rejects(con, scans)
        if kind == "online_retail":
            _require(columns, ONLINE_RETAIL_COLUMNS, label)
            typed = _typed_online_retail(columns, source.merges_case(kind), rules)
            info = StageInfo(kind)
        else:
            _require(columns, EVENT_COLUMNS_REQUIRED, label)
            unit = _epoch_unit(con, columns["ts"])
            typed = _typed_events(columns, unit, source.merges_case(kind), rules)
            info = StageInfo(kind, unit)
        # typed, checked and de-duplicated in one statement: no intermediate copy of every row
        _mark_duplicates(con, typed)
        # Only quarantined rows need their values as read (the quarantine's JSON): the rest of
        # this copy of every row goes before the write sorts them (at 20M rows the two copies
        # overflowed the warehouse's memory limit and spilled, a quarter of ingest's CPU).
        con.execute("""CREATE OR REPLACE TEMP TABLE _raw_quarantined AS
            SELECT * FROM _raw WHERE row_no IN (SELECT row_no FROM _staged WHERE reason IS NOT NULL)""")
        con.execute("DROP TABLE _raw")
    except duckdb.Error as exc:
        raise SourceError(f"{label}: cannot be read: {exc}") from exc
    return info


def _last_reject_scan(con) -> int:
    # Checked, not tried: inside a transaction a failed query would abort it.
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'reject_scans'").fetchall()[0][0]
    if not exists:  # no CSV read with store_rejects yet on this connection
        return 0
    return con.execute("SELECT coalesce(max(scan_id), 0) FROM reject_scans").fetchall()[0][0]


def _collect_rejects(con, after_scan: int) -> None:
    """TEMP TABLE _rejected(row_no, reason, raw): CSV lines the reader set aside, one row per line
    (row_no is the line number in its file)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _rejected (row_no BIGINT, reason VARCHAR, raw VARCHAR)")
    if _last_reject_scan(con) <= after_scan:
        return
    con.execute("""
        INSERT INTO _rejected
        SELECT e.line,
               CASE WHEN bool_or(e.error_type IN ('TOO MANY COLUMNS', 'MISSING COLUMNS')) THEN 'ragged_row'
                    ELSE 'unparseable_row' END,
               to_json({file: any_value(s.file_path), line: e.line, csv_line: any_value(e.csv_line),
                        error: string_agg(DISTINCT e.error_message, '; ')})
        FROM reject_errors e JOIN reject_scans s USING (scan_id, file_id)
        WHERE e.scan_id > ?
        GROUP BY e.scan_id, e.file_id, e.line
        ORDER BY e.line
    """, [after_scan])


def _time_checks(rules: TimeRules) -> str:
    floor, latest = (_lit(t.isoformat(sep=" ")) for t in (rules.floor, rules.latest))
    return f"""WHEN ts < TIMESTAMP {floor} THEN 'bad_timestamp'
                 WHEN ts > TIMESTAMP {latest} THEN 'future_timestamp'"""


# Column types whose values need no text parsing: a cast gives what parsing their text would
# (64-bit integers and doubles convert exactly or correctly rounded, and a double's text
# round-trips), so the per-row VARCHAR round trip of a 20M-row source is skipped.
_INTEGER_TYPES = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"})


def _numeric(col_type: str | None) -> str | None:
    """'int' or 'double' for a column of that DuckDB type, None when it is read from text."""
    upper = (col_type or "").upper()
    return "int" if upper in _INTEGER_TYPES else "double" if upper == "DOUBLE" else None


def _as_double(expr: str, col_type: str | None = None) -> str:
    if _numeric(col_type):
        return f"CAST({expr} AS DOUBLE)"
    return f"TRY_CAST(trim(CAST({expr} AS VARCHAR)) AS DOUBLE)"


def _integral(expr: str, col_type: str | None = None) -> str:
    """expr as a number when it is a whole one (NULL otherwise): '1.5' is not a quantity."""
    kind = _numeric(col_type)
    if kind == "int":
        return f"TRY_CAST({expr} AS BIGINT)"
    if kind == "double":
        return f"(CASE WHEN isfinite({expr}) AND {expr} = floor({expr}) THEN TRY_CAST({expr} AS BIGINT) END)"
    return f"""(CASE WHEN isfinite(TRY_CAST(trim(CAST({expr} AS VARCHAR)) AS DOUBLE))
                      AND TRY_CAST(trim(CAST({expr} AS VARCHAR)) AS DOUBLE)
                          = floor(TRY_CAST(trim(CAST({expr} AS VARCHAR)) AS DOUBLE))
                 THEN TRY_CAST(TRY_CAST(trim(CAST({expr} AS VARCHAR)) AS DOUBLE) AS BIGINT) END)"""


def _given(expr: str, col_type: str | None = None) -> str:
    if _numeric(col_type):
        return f"({expr} IS NOT NULL)"
    return f"NULLIF(trim(CAST({expr} AS VARCHAR)), '') IS NOT NULL"


def _typed_online_retail(columns: dict[str, str], merge_case: bool, rules: TimeRules) -> str:
    codes = ", ".join(_lit(c) for c in NON_PRODUCT_CODES)
    description = "Description" if "Description" in columns else "NULL"
    item = "upper(trim(CAST(StockCode AS VARCHAR)))" if merge_case else "trim(CAST(StockCode AS VARCHAR))"
    typed0 = f"""
        SELECT row_no,
               {_integral('CustomerID', columns['CustomerID'])} AS customer,
               {_given('CustomerID', columns['CustomerID'])} AS customer_given,
               NULLIF({item}, '') AS item_id,
               TRY_CAST(InvoiceDate AS TIMESTAMP) AS ts,
               {_integral('Quantity', columns['Quantity'])} AS quantity,
               {_given('Quantity', columns['Quantity'])} AS qty_given,
               TRY_CAST(UnitPrice AS DOUBLE) AS price,
               trim(CAST(InvoiceNo AS VARCHAR)) AS basket_id,
               NULLIF(trim(CAST({description} AS VARCHAR)), '') AS title,
               upper(trim(CAST(StockCode AS VARCHAR))) AS code
        FROM _raw r"""
    return f"""
        SELECT row_no, CAST(customer AS VARCHAR) AS user_id, item_id, ts, 'purchase' AS event,
               CAST(CASE WHEN abs(quantity) <= 2147483647 THEN quantity END AS INTEGER) AS quantity,
               price, basket_id, title,
               CASE
                 WHEN basket_id IS NULL OR basket_id = '' THEN 'missing_basket'
                 WHEN upper(basket_id) LIKE 'C%' THEN 'cancellation'
                 WHEN item_id IS NULL THEN 'missing_item_id'
                 WHEN code IN ({codes}) OR lower(code) LIKE 'gift\\_%' ESCAPE '\\' THEN 'non_product_code'
                 WHEN customer_given AND customer IS NULL THEN 'bad_user_id'
                 WHEN qty_given AND (quantity IS NULL OR abs(quantity) > 2147483647) THEN 'bad_quantity'
                 WHEN quantity IS NULL OR quantity <= 0 THEN 'non_positive_quantity'
                 WHEN price IS NOT NULL AND NOT isfinite(price) THEN 'bad_price'
                 WHEN price IS NULL OR price <= 0 THEN 'non_positive_price'
                 WHEN ts IS NULL THEN 'bad_timestamp'
                 {_time_checks(rules)}
               END AS reason
        FROM ({typed0})"""


def _epoch_unit(con, ts_type: str) -> str | None:
    """s/ms/us/ns for a source whose timestamps are numbers (or digit strings), else None.

    Decided once per source from the median magnitude, so a stray value in another unit
    lands far from the source's dates and is quarantined, rather than each row guessing."""
    upper = ts_type.upper()
    if "TIMESTAMP" in upper or upper == "DATE":
        return None
    if _numeric(ts_type):  # numbers already: every non-null value is one
        median = con.execute("SELECT median(abs(CAST(ts AS DOUBLE))) FROM _raw WHERE ts <> 0").fetchall()[0][0]
        return None if median is None else next(unit for unit, bound in EPOCH_UNITS if median < bound)
    median = con.execute("""
        SELECT median(abs(v)) FROM (
            SELECT TRY_CAST(trim(CAST(ts AS VARCHAR)) AS DOUBLE) AS v FROM _raw
            WHERE regexp_full_match(trim(CAST(ts AS VARCHAR)), '-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?'))
        WHERE v <> 0
    """).fetchall()[0][0]
    if median is None:
        return None
    return next(unit for unit, bound in EPOCH_UNITS if median < bound)


def _epoch_expression(value: str, unit: str) -> str:
    """An epoch number in `unit` as a TIMESTAMP (NULL when out of range)."""
    if unit == "s":
        micros = f"CAST(round(TRY_CAST({value} AS DOUBLE) * 1e6) AS BIGINT)"
    elif unit == "ms":
        micros = f"CAST(round(TRY_CAST({value} AS DOUBLE) * 1e3) AS BIGINT)"
    elif unit == "us":
        micros = f"CAST(round(TRY_CAST({value} AS DOUBLE)) AS BIGINT)"
    else:  # digits beyond a double's precision: exact when written as an integer
        micros = f"CAST(coalesce(TRY_CAST({value} AS HUGEINT), round(TRY_CAST({value} AS DOUBLE))) // 1000 AS BIGINT)"
    return f"make_timestamp({micros})"


def _ts_expression(col_type: str, unit: str | None) -> str:
    upper = col_type.upper()
    if "TIMESTAMP WITH TIME ZONE" in upper:
        return "timezone('UTC', ts)"
    if "TIMESTAMP" in upper or upper == "DATE":
        return "CAST(ts AS TIMESTAMP)"
    if _numeric(col_type):
        return _epoch_expression("ts", unit or "ms")
    text = "trim(CAST(ts AS VARCHAR))"
    # Numbers (in the source's detected unit) or ISO-8601, with or without an offset; stored as UTC.
    return f"""CASE
        WHEN regexp_full_match({text}, '-?[0-9]+(\\.[0-9]+)?([eE][-+]?[0-9]+)?')
          THEN {_epoch_expression(text, unit or 'ms')}
        ELSE timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ))
      END"""


def _typed_events(columns: dict[str, str], unit: str | None, merge_case: bool, rules: TimeRules) -> str:
    synonyms = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in EVENT_SYNONYMS.items())
    has_qty = "quantity" in columns
    has_price = "price" in columns
    quantity = _integral("quantity", columns.get("quantity")) if has_qty else "CAST(1 AS BIGINT)"
    price = _as_double("price", columns.get("price")) if has_price else "CAST(NULL AS DOUBLE)"
    basket = "NULLIF(trim(CAST(basket_id AS VARCHAR)), '')" if "basket_id" in columns else "CAST(NULL AS VARCHAR)"
    item = "NULLIF(trim(CAST(item_id AS VARCHAR)), '')"
    typed0 = f"""
        SELECT row_no,
               NULLIF(trim(CAST(user_id AS VARCHAR)), '') AS user_id,
               {f"upper({item})" if merge_case else item} AS item_id,
               TRY({_ts_expression(columns["ts"], unit)}) AS ts,
               CASE lower(trim(CAST(event AS VARCHAR))) {synonyms} ELSE NULL END AS event,
               {quantity} AS quantity, {price} AS price, {basket} AS basket_id,
               {_given("quantity", columns.get("quantity")) if has_qty else "false"} AS qty_given,
               {_given("price", columns.get("price")) if has_price else "false"} AS price_given
        FROM _raw r"""
    return f"""
        SELECT row_no, user_id, item_id, ts, event,
               CAST(CASE WHEN abs(coalesce(quantity, 1)) <= 2147483647 THEN coalesce(quantity, 1) END AS INTEGER)
                   AS quantity,
               price, basket_id,
               CAST(NULL AS VARCHAR) AS title,
               CASE
                 WHEN item_id IS NULL THEN 'missing_item_id'
                 WHEN user_id IS NULL AND basket_id IS NULL THEN 'missing_user_and_basket'
                 WHEN ts IS NULL THEN 'bad_timestamp'
                 {_time_checks(rules)}
                 WHEN event IS NULL THEN 'unknown_event'
                 WHEN qty_given AND (quantity IS NULL OR abs(quantity) > 2147483647) THEN 'bad_quantity'
                 WHEN quantity <= 0 THEN 'non_positive_quantity'
                 WHEN price_given AND (price IS NULL OR NOT isfinite(price)) THEN 'bad_price'
                 WHEN price < 0 THEN 'negative_price'
               END AS reason
        FROM ({typed0})"""


def _mark_duplicates(con, typed: str) -> None:
    """Identical canonical rows within a source are one event recorded twice: keep the first."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _staged AS
        SELECT * EXCLUDE (dup_rank)
        FROM (
            SELECT t.* REPLACE (
                     CASE WHEN t.reason IS NULL AND t.dup_rank > 1 THEN 'duplicate_row' ELSE t.reason END AS reason)
            FROM (
                SELECT *, row_number() OVER (
                    PARTITION BY reason IS NULL, user_id, item_id, ts, event, quantity, price, basket_id
                    ORDER BY row_no) AS dup_rank
                FROM ({typed})
            ) t
        )
    """)
