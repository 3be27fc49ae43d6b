#!/usr/bin/env bash
# A Celery worker for the top-N shards: start any number, on any machine that has this checkout
# (scripts/setup.sh) and sees the same RECS_HOME (shared storage), the broker and the instance's
# PostgreSQL. Each worker runs one shard at a time (RECS_WORKER_CONCURRENCY to change); a worker
# process killed mid-shard hands its task back to the queue.
#   RECS_CELERY_BROKER=redis://host:6379/0 RECS_HOME=/shared/recs scripts/worker.sh [name]
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
: "${RECS_CELERY_BROKER:?set RECS_CELERY_BROKER, e.g. redis://127.0.0.1:6379/0 (the launcher uses the same)}"
NAME="${1:-recs-$$}"
exec .venv/bin/celery -A recs_assets.celery_app worker --queues "${RECS_CELERY_QUEUE:-dagster}" --pool prefork \
  --concurrency "${RECS_WORKER_CONCURRENCY:-1}" --hostname "$NAME@%h" --loglevel "${RECS_WORKER_LOGLEVEL:-INFO}" \
  --without-gossip --without-mingle
