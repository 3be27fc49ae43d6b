"""Jobs, the daily schedule and the inbox sensor (all on by default), and the shard executor."""
import os

import dagster as dg
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements
from dagster._core.execution.retries import RetryMode

from recs_assets.memory import HOOKS


# evaluation runs with the models: the top-N shards and the release read the blend it tunes (tuned_blend)
PUBLISH_KEYS = ("similar_items", "vector_store", "release")
SHARDS = dg.AssetSelection.assets("batch_topn")
PUBLISH = dg.AssetSelection.assets(*PUBLISH_KEYS)
MODELS = dg.AssetSelection.all() - SHARDS - PUBLISH

SHARD_MODES = ("auto", "in_process", "multiprocess", "celery")


def shard_mode(configured: str = "auto") -> str:
    """auto: Celery when RECS_CELERY_BROKER is set (workers from scripts/worker.sh), else in-process."""
    if configured != "auto":
        return configured
    return "celery" if os.environ.get("RECS_CELERY_BROKER") else "in_process"


@dg.executor(name="recs_shards",
             config_schema={"mode": dg.Field(dg.Enum("RecsShardMode", [dg.EnumValue(m) for m in SHARD_MODES]),
                                             default_value="auto",
                                             description="auto: celery if RECS_CELERY_BROKER is set, else in_process")},
             requirements=lambda cfg: [] if shard_mode(cfg.get("mode", "auto")) == "in_process"
             else multiple_process_executor_requirements())
def shard_executor(init_context: dg.InitExecutorContext):
    mode = shard_mode(init_context.executor_config["mode"])
    if mode == "celery":
        from dagster_celery.executor import CeleryExecutor

        from recs_assets import celery_app

        return CeleryExecutor(retries=RetryMode.DISABLED, broker=celery_app.broker_url(), backend=celery_app.backend_url(),
                              config_source=celery_app.SETTINGS)
    if mode == "multiprocess":
        from dagster._core.executor.multiprocess import MultiprocessExecutor

        return MultiprocessExecutor(retries=RetryMode.DISABLED, max_concurrent=0)
    from dagster._core.executor.in_process import InProcessExecutor

    return InProcessExecutor(retries=RetryMode.DISABLED)


# Our steps are short and a process per step costs ~2 s here, so the chained stages run in
# one process. A shard run has one step: in-process on one machine, a Celery task on a worker
# when RECS_CELERY_BROKER is set (a backfill of all partitions then spreads over the workers).
# Their steps run one after another in one process: each gives its memory back when it ends (HOOKS).
models_job = dg.define_asset_job("recs_models", selection=MODELS, executor_def=dg.in_process_executor, hooks=HOOKS,
                                 description="Ingest, features and models: everything the top-N shards need")
topn_job = dg.define_asset_job("recs_topn_shards", selection=SHARDS, executor_def=shard_executor, hooks=HOOKS,
                               description="Per-user top-N for one user shard (one run per shard; a backfill of "
                                           "all shards runs them at once, each a Celery task on any worker "
                                           "started by scripts/worker.sh)")
publish_job = dg.define_asset_job("recs_publish", selection=PUBLISH, executor_def=dg.in_process_executor, hooks=HOOKS,
                                  description="Similar items, vector store and the release")

# Shards and the publish stage follow their parents by declarative automation, so a new
# models run (schedule, sensor or UI) rolls through to a new release.
daily = dg.ScheduleDefinition(name="recs_daily", cron_schedule="0 3 * * *", job=models_job,
                              default_status=dg.DefaultScheduleStatus.RUNNING,
                              description="Rebuild daily at 03:00; shards and release follow automatically")

# Declarative automation (shards and the publish stage follow a new models run). On by default,
# like the schedule and the inbox sensor; turn any off in the UI (Automation) or with
# `dagster sensor stop recs_automation` / `dagster schedule stop recs_daily`.
automation = dg.AutomationConditionSensorDefinition(
    "recs_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30, description="Evaluates the assets' automation conditions")


from recs_assets.inbox import inbox_files, inbox_sensor  # noqa: E402,F401  (the inbox lives in recs_assets/inbox.py)
