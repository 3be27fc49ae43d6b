"""Jobs, the daily schedule and the inbox sensor."""
from pathlib import Path

import dagster as dg

from recs_assets import paths

PUBLISH_KEYS = ("evaluation", "similar_items", "vector_store", "release")
SHARDS = dg.AssetSelection.assets("batch_topn")
PUBLISH = dg.AssetSelection.assets(*PUBLISH_KEYS)
MODELS = dg.AssetSelection.all() - SHARDS - PUBLISH

# Our steps are short and a process per step costs ~2 s here, so the chained stages run in
# one process; only the independent top-N shards use a process each.
models_job = dg.define_asset_job("recs_models", selection=MODELS, executor_def=dg.in_process_executor,
                                 description="Ingest, features and models: everything the top-N shards need")
topn_job = dg.define_asset_job("recs_topn_shards", selection=SHARDS, executor_def=dg.multiprocess_executor,
                               description="Per-user top-N for one user shard (one run per shard; a backfill of "
                                           "all shards runs them in parallel, on separate workers under "
                                           "dagster-celery / dagster-k8s by configuration alone)")
publish_job = dg.define_asset_job("recs_publish", selection=PUBLISH, executor_def=dg.in_process_executor,
                                  description="Evaluation, similar items, vector store and the release")

# Shards and the publish stage follow their parents by declarative automation, so a new
# models run (schedule, sensor or UI) rolls through to a new release.
daily = dg.ScheduleDefinition(name="recs_daily", cron_schedule="0 3 * * *", job=models_job,
                              description="Rebuild daily at 03:00; shards and release follow automatically")


@dg.sensor(job=models_job, minimum_interval_seconds=30,
           description="Ingests new CSV/Parquet/JSONL files dropped into RECS_HOME/inbox and rebuilds downstream")
def inbox_sensor(context: dg.SensorEvaluationContext):
    inbox = paths.inbox_path()
    if not inbox.exists():
        return dg.SkipReason(f"{inbox} does not exist")
    seen = set((context.cursor or "").split("\n")) - {""}
    files = sorted(str(p.resolve()) + "@" + str(p.stat().st_mtime_ns) for p in inbox.iterdir()
                   if p.is_file() and p.suffix.lower() in (".csv", ".parquet", ".jsonl", ".json", ".gz"))
    new = [f for f in files if f not in seen]
    if not new:
        return dg.SkipReason("no new files in the inbox")
    context.update_cursor("\n".join(files))
    sources = [{"kind": "auto", "path": f.rsplit("@", 1)[0]} for f in new]
    return dg.RunRequest(run_key="|".join(new), run_config={"ops": {"ingest": {"config": {"sources": sources}}}})


def inbox_files(home: Path | None = None) -> list[Path]:
    inbox = paths.inbox_path(home)
    return sorted(p for p in inbox.iterdir() if p.is_file()) if inbox.exists() else []
