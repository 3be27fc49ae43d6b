"""The DuckDB warehouse: one file, one writer at a time.

DuckDB lets a single process hold the file, so every asset opens it only for the few
statements it needs and closes it again; when another process (an analyst's shell, a
parallel shard) holds it, we wait and retry, then fail with a message that says who holds it.
"""
from __future__ import annotations

import errno
import re
import shutil
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


class DiskFullError(OSError):
    """The warehouse's file system is full (ENOSPC), with the path that could not be written."""


def _is_lock_error(exc: Exception) -> bool:
    return "Could not set lock" in str(exc) or "Conflicting lock" in str(exc)


def _holder(exc: Exception) -> str:
    found = re.search(r"held in (.*?)(?:\. See|$)", str(exc))
    return found.group(1) if found else "unknown"


def disk_full(exc: BaseException, path: Path) -> DiskFullError | None:
    """A DiskFullError naming ENOSPC and the path when `exc` (or its cause) is a full disk.

    DuckDB reports it as an IO error, or only indirectly (a failed ROLLBACK: "no transaction is
    active"), so the file system is checked too when the error is an IO error."""
    seen, cur = [], exc
    while cur is not None and len(seen) < 5:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " | ".join(str(e) for e in seen)
    named = any(getattr(e, "errno", None) == errno.ENOSPC for e in seen) or "No space left on device" in text
    folder = path.parent if path.parent.exists() else Path("/")
    free = shutil.disk_usage(folder).free
    io_like = any(isinstance(e, (duckdb.IOException, OSError)) for e in seen) or "no transaction is active" in text
    if not named and not (io_like and free < 1 << 20):
        return None
    written = re.search(r'write (?:to )?file "([^"]+)"', text)
    target = written.group(1) if written else str(path)
    return DiskFullError(
        errno.ENOSPC,
        f"ENOSPC: no space left on device while writing {target} (warehouse {path}; {free:,} bytes free "
        f"on its file system). Free space there or point RECS_HOME at a larger disk; the warehouse "
        f"keeps its last committed state. Cause: {seen[0]}",
        str(target),
    )


class Warehouse(dg.ConfigurableResource):
    """DuckDB warehouse file (default RECS_HOME/warehouse.duckdb) holding schema `recs`."""

    path: str = Field(default="", description="DuckDB file; empty means RECS_HOME/warehouse.duckdb")
    lock_timeout_seconds: float = Field(
        default=120.0, description="How long to wait for another process to release the file"
    )
    threads: int = Field(default=0, description="DuckDB threads; 0 lets DuckDB decide")
    memory_limit: str = Field(
        default="2GB", description="DuckDB's memory limit: bigger sorts and joins spill to <warehouse>.tmp "
        "instead of growing the process (DuckDB's own default is 80% of the machine); empty: DuckDB's default")

    def file(self) -> Path:
        return Path(self.path) if self.path else paths.warehouse_path()

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        target = self.file()
        target.parent.mkdir(parents=True, exist_ok=True)
        log = dg.get_dagster_logger("recs.warehouse")
        started = time.monotonic()
        deadline = started + self.lock_timeout_seconds
        delay = 0.05
        waited_for = None
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
                if waited_for is None:
                    waited_for = _holder(exc)
                    log.warning(f"The warehouse {target} is held by {waited_for}; waiting up to "
                                f"{self.lock_timeout_seconds:.0f} s for it")
                if time.monotonic() >= deadline:
                    raise WarehouseLockedError(
                        f"The warehouse {target} is held by another process "
                        f"({_holder(exc)}) and was not released within "
                        f"{self.lock_timeout_seconds:.0f} s. Close that connection; to query results "
                        "without locking the pipeline, use the release views "
                        "(python -m recs_serving.sql, see README)."
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        if waited_for is not None:
            log.info(f"The warehouse {target} was released by {waited_for}; waited "
                     f"{time.monotonic() - started:.1f} s")
        try:
            if self.threads:
                con.execute(f"SET threads = {int(self.threads)}")
            if self.memory_limit:
                con.execute("SET memory_limit = ?", [self.memory_limit])
            if not read_only:
                con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            yield con
        except Exception as exc:
            full = disk_full(exc, target)
            if full is not None:
                raise full from exc
            raise
        finally:
            try:
                con.close()
            except duckdb.Error:
                pass  # a connection broken by the error above: that error is the one to report

    def replace_table(self, name: str, frame, *, con: duckdb.DuckDBPyConnection | None = None) -> int:
        """Atomically replace recs.<name> with a polars/arrow frame; returns the row count."""
        if con is None:
            with self.connect() as own:
                return self.replace_table(name, frame, con=own)
        replace_from_frame(con, name, frame)
        return con.execute(f"SELECT count(*) FROM {SCHEMA}.{name}").fetchall()[0][0]

    def table_exists(self, con: duckdb.DuckDBPyConnection, name: str) -> bool:
        return bool(
            con.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                [SCHEMA, name],
            ).fetchall()[0][0]
        )


def replace_from_frame(con: duckdb.DuckDBPyConnection, name: str, frame, select: str = "SELECT * FROM _incoming") -> None:
    """Replace recs.<name> in one transaction with ``select`` over ``frame`` (registered as
    ``_incoming``): readers see the old table or the new one, never a half-written one."""
    con.register("_incoming", frame)
    try:
        con.execute("BEGIN TRANSACTION")
        con.execute(f"CREATE OR REPLACE TABLE {SCHEMA}.{name} AS {select}")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_incoming")
