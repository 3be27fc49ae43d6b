"""The Celery app the workers run (scripts/worker.sh) and the shard executor submits to.

dagster-celery's step task, with our settings in one place for both sides: a worker process
killed mid-task (kill -9, the OOM killer) hands its task back to the queue, where another
worker (or the restarted pool process) picks it up; a slow worker takes one task at a time.
"""
from __future__ import annotations

import os

from dagster_celery.config import DEFAULT_CONFIG, dict_wrapper
from dagster_celery.make_app import make_app
from dagster_celery.tasks import create_task

# Launchers and workers of one deployment share a queue (RECS_CELERY_QUEUE, default "dagster");
# deployments (or test sessions) sharing a broker use different ones.
QUEUE = os.environ.get("RECS_CELERY_QUEUE", "dagster")


def broker_url() -> str:
    return os.environ.get("RECS_CELERY_BROKER", "redis://127.0.0.1:6379/0")


def backend_url() -> str:
    return os.environ.get("RECS_CELERY_BACKEND") or broker_url()


SETTINGS = {
    **DEFAULT_CONFIG,
    "task_default_queue": QUEUE,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    # A task whose whole worker machine vanished goes back to the queue after this long; it must
    # exceed the longest shard, since an unacknowledged task older than this is handed out again.
    "broker_transport_options": {**DEFAULT_CONFIG["broker_transport_options"],
                                 "visibility_timeout": int(os.environ.get("RECS_CELERY_VISIBILITY_TIMEOUT", "3600"))},
    "result_expires": 7 * 24 * 3600,
    "worker_hijack_root_logger": False,
}


def app_args() -> dict:
    # The definitions are not imported before the pool forks (LanceDB's runtime is not fork-safe);
    # each pool process imports them with its first task and keeps them.
    return {"broker": broker_url(), "backend": backend_url(), "include": [], "config_source": dict_wrapper(dict(SETTINGS))}


app = make_app(app_args())
execute_plan = create_task(app)
