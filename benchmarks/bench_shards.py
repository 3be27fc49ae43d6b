"""Top-N shard stage on 1 vs 2 Celery workers (and in one process), on synthetic data.

    python benchmarks/bench_shards.py [--users 300000] [--items 5000] [--events 3000000] [--shards 4]
        [--pg postgresql+psycopg2://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/12]
        [--work /tmp/recs-bench-shards]

Generates the data with `python -m recs_assets.synthetic` (once), runs the models stage once
(`python -m recs_assets.pipeline --stages models`), then times `--stages shards` with the shards
in-process, on one worker and on two workers (scripts/worker.sh, the production instance on a
fresh PostgreSQL database created and dropped here, a queue of its own on --redis). For each it prints the
stage's wall time, the sum of the shard steps' own durations, the speedup over one worker and
the overhead per task: (wall time x workers - step time) / tasks, i.e. what the queue, the
run coordinator and the worker add to each shard. Workers share this machine's cores, so two
workers on two cores are bounded by the cores, not by the scheduling.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sh(cmd: str, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"source scripts/env.sh && {cmd}"], cwd=REPO, env=env, **kw)


def start_workers(n: int, env: dict, logs: Path) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        log = logs / f"worker{n}-{i}.log"
        procs.append(subprocess.Popen(["bash", "scripts/worker.sh", f"bench{n}-{i}"], cwd=REPO, env=env,
                                      stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        texts = [(logs / f"worker{n}-{i}.log").read_text() for i in range(n)]
        if all(" ready." in t for t in texts):
            return procs
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.5)
    stop_workers(procs)
    raise RuntimeError(f"workers did not start; see {logs}")


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def step_seconds(env: dict, since: float) -> tuple[float, int]:
    """Sum of the batch_topn steps' durations of the shard runs created after `since`."""
    import dagster as dg

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            total, n = 0.0, 0
            for rec in instance.get_run_records(dg.RunsFilter(job_name="recs_topn_shards")):
                if rec.create_timestamp.timestamp() < since:
                    continue
                for e in instance.all_logs(rec.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS):
                    if e.step_key == "batch_topn":
                        total += e.dagster_event.event_specific_data.duration_ms / 1000
                        n += 1
            return total, n
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=300_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--events", type=int, default=3_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--pg", default="postgresql+psycopg2://postgres@127.0.0.1:5432/test")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--work", default="/tmp/recs-bench-shards")
    ap.add_argument("--reuse", action="store_true", help="Reuse the models stage's artifacts from an earlier run in --work")
    args = ap.parse_args()

    import psycopg2
    import redis

    work = Path(args.work)
    data = work / f"data-{args.users}-{args.items}-{args.events}"
    if not (data / "catalog.parquet").exists():
        subprocess.run([sys.executable, "-m", "recs_assets.synthetic", "--users", str(args.users), "--items",
                        str(args.items), "--events", str(args.events), "--out", str(data), "--no-progress"], check=True)
    home = work / "home"
    config = work / "run.json"
    # The evaluation's weight search is not what this measures: keep it short.
    config.write_text(json.dumps({"ops": {"ingest": {"config": {
        "sources": [{"kind": "events", "path": str(data / "events*.parquet")}],
        "catalog_paths": [str(data / "catalog.parquet")]}},
        "evaluation": {"config": {"budget_seconds": 5}}}}))
    base = args.pg.rsplit("/", 1)
    db = f"recs_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(base[0].replace("postgresql+psycopg2", "postgresql") + "/" + base[1])
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {db}")
    assert redis.Redis.from_url(args.redis).ping()
    env = {**os.environ, "RECS_HOME": str(home), "RECS_DAGSTER_YAML": str(REPO / "deploy" / "dagster.production.yaml"),
           "RECS_PG_URL": f"{base[0]}/{db}", "RECS_CELERY_BROKER": args.redis, "RECS_TOPN_SHARDS": str(args.shards),
           "RECS_CELERY_QUEUE": f"recs-bench-{uuid.uuid4().hex[:8]}",
           "DAGSTER_HOME": str(home / "dagster"), "RECS_DAGSTER_STORAGE": str(home / "dagster" / "storage"),
           "RECS_DAGSTER_LOGS": str(home / "dagster" / "logs")}
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        t0 = time.perf_counter()
        if args.reuse and (home / "artifacts" / "als_factors").exists():
            print(f"models stage: reusing {home / 'artifacts'}", flush=True)
        else:
            sh(f".venv/bin/python -m recs_assets.pipeline --stages models --config {config}", env, check=True,
               stdout=open(logs / "models.log", "w"), stderr=subprocess.STDOUT)
            print(f"models stage: {time.perf_counter() - t0:.0f}s ({args.users:,} users, {args.items:,} items, "
                  f"{args.events:,} events)", flush=True)
        for label, workers in (("in-process", 0), ("1 worker", 1), ("2 workers", 2)):
            procs = start_workers(workers, env, logs) if workers else []
            try:
                since = time.time()
                t0 = time.perf_counter()
                mode = "celery" if workers else "in_process"
                sh(f".venv/bin/python -m recs_assets.pipeline --stages shards --shards {mode} --config {config}", env,
                   check=True, stdout=open(logs / f"shards-{workers}.log", "w"), stderr=subprocess.STDOUT)
                wall = time.perf_counter() - t0
            finally:
                stop_workers(procs)
            steps, n = step_seconds(env, since)
            rows.append((label, workers, wall, steps, n))
            print(f"{label}: {wall:.1f}s", flush=True)
    finally:
        admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [db])
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {db}")
    one = next(r[2] for r in rows if r[1] == 1)
    print(f"\nshard stage, {args.shards} shards, {args.users:,} users, {os.cpu_count()} cores")
    print("| where | wall s | shard steps s (sum) | speedup vs 1 worker | overhead per task s |")
    print("|---|---|---|---|---|")
    for label, workers, wall, steps, n in rows:
        overhead = (wall * max(workers, 1) - steps) / max(n, 1)
        print(f"| {label} | {wall:.1f} | {steps:.1f} | {one / wall:.2f}x | {overhead:.2f} |")


if __name__ == "__main__":
    main()
