"""Ingestion assets: sources -> recs.interactions, recs.catalog, recs.quarantine."""

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

import dagster as dg
import duckdb
from pydantic import Field

from recs_assets import inbox, markdown, paths
from recs_assets.ingest import load
from recs_assets.ingest.sources import Source, TimeRules, default_name
from recs_assets.resources import Warehouse
from recs_assets import table_meta

INGEST_GROUP = "ingest"


class SourceSpec(dg.Config):
    kind: Literal["auto", "online_retail", "events", "sql"] = Field(
        default="online_retail",
        description="online_retail: the UCI Online Retail columns; events: CSV/Parquet/JSONL with "
        "user_id, item_id, ts, event[, quantity, price, basket_id]; sql: a DuckDB query or table "
        "returning those columns; auto: online_retail if its columns are present, else events",
    )
    path: str = Field(default="", description="File or glob (kinds online_retail, events, auto)")
    query: str = Field(default="", description="DuckDB SQL (kind sql), e.g. SELECT * FROM 's3://…/events.parquet'")
    name: str = Field(
        default="",
        description="Stable key for the source (its rows are replaced when it is ingested again); defaults to "
        "the path relative to RECS_HOME or the repository, else the file name; for sql a hash of the query",
    )
    merge_case_ids: bool | None = Field(
        default=None,
        description="Upper-case item ids so ids differing only in case are one item; "
        "default: on for online_retail (stock codes), off for other kinds",
    )
    inbox: bool = Field(
        default=False,
        description="An inbox file: moved to inbox/done, or to inbox/failed with <name>.error.txt; "
        "its failure does not stop the other sources",
    )

    def to_source(self) -> Source:
        path = self.path or (str(paths.BUNDLED_ONLINE_RETAIL) if self.kind in ("online_retail", "auto") else "")
        if self.kind == "sql" and not self.query:
            raise ValueError("source kind 'sql' needs a query")
        if self.kind != "sql" and not path:
            raise ValueError(f"source kind {self.kind!r} needs a path")
        return Source(kind=self.kind, path=path, query=self.query, name=self.name,
                      merge_case_ids=self.merge_case_ids)


class IngestConfig(dg.Config):
    sources: list[SourceSpec] = Field(
        default_factory=lambda: [SourceSpec()],
        description="Sources to (re)ingest; each replaces its own earlier rows, so re-running never duplicates",
    )
    catalog_paths: list[str] = Field(default_factory=list, description="Catalog files (item_id, title, …)")
    exclusive: bool = Field(
        default=False, description="Drop rows of every source not listed here (start over from these sources)"
    )
    future_tolerance_hours: float = Field(
        default=24.0, description="Events later than the ingestion time plus this are quarantined (future_timestamp)"
    )
    min_timestamp: str = Field(
        default="1990-01-01", description="Events before this (UTC) are quarantined (bad_timestamp)"
    )

    def time_rules(self) -> TimeRules:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        return TimeRules(floor=datetime.fromisoformat(self.min_timestamp),
                         latest=now + timedelta(hours=self.future_tolerance_hours))


@dg.multi_asset(
    specs=[
        dg.AssetSpec("interactions", group_name=INGEST_GROUP, kinds={"duckdb"},
                     description="Typed, cleaned, de-duplicated events: recs.interactions"),
        dg.AssetSpec("catalog", group_name=INGEST_GROUP, kinds={"duckdb"},
                     description="One row per item: recs.catalog (catalog files outrank derived rows)"),
        dg.AssetSpec("quarantine", group_name=INGEST_GROUP, kinds={"duckdb"},
                     description="Every dropped source row with its raw values and a reason: recs.quarantine"),
    ],
    pool="duckdb_writer",
)
def ingest(context: dg.AssetExecutionContext, config: IngestConfig, warehouse: Warehouse):
    reports = []
    failed_files: dict[str, str] = {}
    rules = config.time_rules()
    with warehouse.connect() as con:
        load.ensure_tables(con)
        sources = [spec.to_source() for spec in config.sources]
        for spec, source in zip(config.sources, sources):
            try:
                report = load.ingest_events(con, source, rules)
            except Exception as exc:
                if not spec.inbox:
                    raise
                # An inbox file fails alone: it moves to inbox/failed with the reason.
                moved = inbox.move_failed(Path(source.path), str(exc), context.run.run_id)
                failed_files[source.key] = str(exc)
                context.log.error(f"{source.path}: not ingested, moved to {moved}: {exc}")
                if isinstance(exc, (OSError, duckdb.IOException, duckdb.FatalException)) or "No space left" in str(exc):
                    raise  # not the file's fault (disk, warehouse): stop here
                continue
            context.log.info(
                f"{report.source}: read {report.read}, kept {report.kept}, quarantined {report.quarantined}"
                + (f"; timestamps read as epoch {report.ts_unit}" if report.ts_unit else "")
                + (f"; replaced rows of old keys {report.replaced_legacy_keys}" if report.replaced_legacy_keys else "")
            )
            if report.previous_path:
                context.log.warning(
                    f"source {report.source!r} was last read from {report.previous_path}; its rows were replaced by "
                    f"{source.path} (a moved checkout; for two different files give each source a `name`)")
            if spec.inbox:
                context.log.info(f"{source.path}: ingested, moved to {inbox.move_done(Path(source.path))}")
            reports.append(report)
        if failed_files and not reports:
            raise dg.Failure(
                description=f"every inbox file failed (moved to inbox/failed): {failed_files}",
                metadata={"failed_files": dg.MetadataValue.json(failed_files)},
            )
        for path in config.catalog_paths:
            n = load.ingest_catalog(con, path)
            context.log.info(f"catalog {path}: {n} items")
        if config.exclusive:
            keep = [s.key for s in sources] + [default_name(p) for p in config.catalog_paths]
            for table in ("interactions", "quarantine", "catalog_sources", "source_paths"):
                con.execute(f"DELETE FROM recs.{table} WHERE NOT list_contains(?, source)", [keep])
            load.rebuild_catalog(con)
        totals = load.summary(con)
        n_catalog = con.execute("SELECT count(*) FROM recs.catalog").fetchall()[0][0]
        n_quarantine = con.execute("SELECT count(*) FROM recs.quarantine").fetchall()[0][0]
        by_reason = con.execute(
            "SELECT reason, count(*) FROM recs.quarantine GROUP BY 1 ORDER BY 2 DESC"
        ).fetchall()
        catalog_preview = con.sql("SELECT item_id, title, brand, category, price FROM recs.catalog LIMIT 10").pl()
    read = sum(r.read for r in reports)
    kept = sum(r.kept for r in reports)
    per_run = {}
    for r in reports:
        for reason, n in r.quarantined.items():
            per_run[reason] = per_run.get(reason, 0) + n
    yield dg.MaterializeResult(
        asset_key="interactions",
        metadata={
            **table_meta.warehouse_metadata(warehouse, "interactions"),
            "rows_read": read,
            "rows_kept": kept,
            "rows_quarantined": read - kept,
            "table_rows": totals["interactions"],
            "users": totals["users"],
            "items": totals["items"],
            "baskets": totals["baskets"],
            "guest_rows": totals["guest_rows"],
            "sources": dg.MetadataValue.json([r.__dict__ for r in reports]),
            "timestamp_units": dg.MetadataValue.json({r.source: r.ts_unit for r in reports if r.ts_unit}),
            "failed_files": dg.MetadataValue.json(failed_files),
        },
    )
    yield dg.MaterializeResult(
        asset_key="catalog",
        metadata={
            **table_meta.warehouse_metadata(warehouse, "catalog"),
            "items": n_catalog,
            "preview": dg.MetadataValue.md(markdown.frame(catalog_preview)),
        },
    )
    yield dg.MaterializeResult(
        asset_key="quarantine",
        metadata={
            **table_meta.warehouse_metadata(warehouse, "quarantine"),
            "rows_this_run": read - kept,
            **{f"reason_{k}": v for k, v in per_run.items()},
            "table_rows": n_quarantine,
            "by_reason": dg.MetadataValue.md(markdown.pairs(by_reason, ("reason", "rows"))),
        },
    )

