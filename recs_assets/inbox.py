"""The inbox: event files dropped into RECS_HOME/inbox are ingested, one bad file never costs a good one.

Each file ends in exactly one place: `inbox/done/` once its rows are in the warehouse, or
`inbox/failed/` next to `<name>.error.txt` saying why. The ingest step moves the file (a bad
file fails alone, the others of the run still land); the sensor settles files whose run ended
without reaching them (killed, or failed before ingest). The sensor's cursor holds only files
still in flight, so a file leaves it only when it has landed or failed.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from recs_assets import paths

SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".json", ".ndjson", ".gz")
DONE, FAILED = "done", "failed"
# A file modified this recently may still be being written: wait for the next tick.
SETTLE_SECONDS = 5.0
RUN_TAG = "recs/inbox_run"


def inbox_files(home: Path | None = None) -> list[Path]:
    inbox = paths.inbox_path(home)
    if not inbox.exists():
        return []
    return sorted(p for p in inbox.iterdir() if p.is_file() and p.name.lower().endswith(SUFFIXES))


def file_key(path: Path) -> str:
    return f"{path.name}@{path.stat().st_mtime_ns}"


def source_name(path: Path) -> str:
    """The file's source key: the same while it moves to done/, and for a later file of the same name."""
    return f"inbox/{path.name}"


def _target(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.exists():  # an earlier file of the same name: keep both
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        target = folder / f"{stamp}-{name}"
    return target


def move_done(path: Path) -> Path:
    target = _target(path.parent / DONE, path.name)
    os.replace(path, target)
    return target


def move_failed(path: Path, reason: str, run_id: str | None = None) -> Path:
    target = _target(path.parent / FAILED, path.name)
    os.replace(path, target)
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    (target.parent / f"{target.name}.error.txt").write_text(
        f"{path.name} was not ingested ({when}{', run ' + run_id if run_id else ''}):\n{reason}\n"
        "Fix the file and drop it into the inbox again.\n"
    )
    return target


def _load_cursor(cursor: str | None) -> dict[str, str]:
    """file key -> key of the run ingesting it. Older cursors (a list of seen files) start over:
    files still in the inbox are ingested again under their stable key, which replaces rows."""
    try:
        value = json.loads(cursor or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _run_of(instance: dg.DagsterInstance, run_key: str):
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_TAG: run_key}), limit=1)
    return runs[0] if runs else None


def ingest_run_config(files: list[Path]) -> dict:
    sources = [{"kind": "auto", "path": str(p), "name": source_name(p), "inbox": True} for p in files]
    return {"ops": {"ingest": {"config": {"sources": sources}}}}


@dg.sensor(job_name="recs_models", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Ingests CSV/Parquet/JSONL files dropped into RECS_HOME/inbox (then inbox/done, or "
                       "inbox/failed with <name>.error.txt) and rebuilds downstream")
def inbox_sensor(context: dg.SensorEvaluationContext):
    inbox = paths.inbox_path()
    if not inbox.exists():
        return dg.SkipReason(f"{inbox} does not exist")
    pending = _load_cursor(context.cursor)
    files = {file_key(p): p for p in inbox_files()}
    settled = []
    for key, run_key in list(pending.items()):
        if key not in files:  # the ingest step moved it to done/ or failed/
            del pending[key]
            continue
        run = _run_of(context.instance, run_key)
        if run is not None and run.is_finished:
            # The run ended without reaching this file (killed, or failed before ingest).
            reason = f"run {run.run_id} ended {run.status.value} before the file was ingested; see that run's log"
            move_failed(files.pop(key), reason, run.run_id)
            del pending[key]
            settled.append(key)
    now = time.time()
    new = sorted(k for k, p in files.items() if k not in pending and now - p.stat().st_mtime >= SETTLE_SECONDS)
    if not new:
        context.update_cursor(json.dumps(pending))
        return dg.SkipReason(f"no new files in the inbox ({len(pending)} in flight, {len(settled)} settled)")
    # A short key whatever the number of files (run keys and tags are stored and indexed).
    run_key = "inbox:" + hashlib.sha1("|".join(new).encode()).hexdigest()[:16]
    for k in new:
        pending[k] = run_key
    context.update_cursor(json.dumps(pending))
    names = ", ".join(files[k].name for k in new)
    return dg.RunRequest(run_key=run_key, run_config=ingest_run_config([files[k] for k in new]),
                         tags={RUN_TAG: run_key, "recs/inbox_files": names[:1000]})
