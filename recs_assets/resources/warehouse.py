"""The DuckDB warehouse: one file, one writer at a time.

DuckDB lets a single process hold the file, so every asset opens it only for the few
statements it needs and closes it again; when another process (an analyst's shell, a
parallel shard) holds it, we wait and retry, then fail with a message that says who holds it.
"""
from __future__ import annotations

import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import dagster as dg
import duckdb
from pydantic import Field

from recs_assets import paths

SCHEMA = "recs"


class WarehouseLockedError(RuntimeError):
    pass


def _is_lock_error(exc: Exception) -> bool:
    return "Could not set lock" in str(exc) or "Conflicting lock" in str(exc)


class Warehouse(dg.ConfigurableResource):
    """DuckDB warehouse file (default RECS_HOME/warehouse.duckdb) holding schema `recs`."""

    path: str = Field(default="", description="DuckDB file; empty means RECS_HOME/warehouse.duckdb")
    lock_timeout_seconds: float = Field(
        default=120.0, description="How long to wait for another process to release the file"
    )
    threads: int = Field(default=0, description="DuckDB threads; 0 lets DuckDB decide")

    def file(self) -> Path:
        return Path(self.path) if self.path else paths.warehouse_path()

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        target = self.file()
        target.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout_seconds
        delay = 0.05
        while True:
            try:
                # Always read-write: DuckDB refuses a second in-process connection to the same
                # file with a different read_only setting, and across processes a reader blocks
                # a writer just the same.
                con = duckdb.connect(str(target))
                break
            except duckdb.Error as exc:
                if not _is_lock_error(exc):
                    raise
                if time.monotonic() >= deadline:
                    holder = re.search(r"held in (.*?)(?:\. See|$)", str(exc))
                    raise WarehouseLockedError(
                        f"The warehouse {target} is held by another process "
                        f"({holder.group(1) if holder else 'unknown'}) and was not released within "
                        f"{self.lock_timeout_seconds:.0f} s. Close that connection; to query results "
                        "without locking the pipeline, use the release views "
                        "(python -m recs_serving.sql, see README)."
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            if self.threads:
                con.execute(f"SET threads = {int(self.threads)}")
            if not read_only:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            yield con
        finally:
            con.close()

    def replace_table(self, name: str, frame, *, con: duckdb.DuckDBPyConnection | None = None) -> int:
        """Atomically replace recs.<name> with a polars/arrow frame; returns the row count."""
        if con is None:
            with self.connect() as own:
                return self.replace_table(name, frame, con=own)
        con.register("_incoming", frame)
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(f"CREATE OR REPLACE TABLE {SCHEMA}.{name} AS SELECT * FROM _incoming")
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("_incoming")
        return con.execute(f"SELECT count(*) FROM {SCHEMA}.{name}").fetchall()[0][0]

    def table_exists(self, con: duckdb.DuckDBPyConnection, name: str) -> bool:
        return bool(
            con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                [SCHEMA, name],
            ).fetchall()[0][0]
        )
