"""Scaling out for real: PostgreSQL instance, Redis broker, two Celery workers as processes.

Follows README "Scaling out": workers from scripts/worker.sh, the pipeline launched with the
production instance (deploy/dagster.production.yaml) and RECS_CELERY_BROKER set. Uses a fresh
PostgreSQL database (created and dropped here) and a dedicated Redis db number. Without the
local services it starts its own from installed binaries, or skips saying why.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from conftest import REPO

pytestmark = [pytest.mark.cluster, pytest.mark.xdist_group("cluster")]

PG_HOST, PG_PORT, REDIS_PORT, REDIS_DB = "127.0.0.1", 5432, 6379, 13
SHARDS = 4
TIMEOUT = 600


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    port, proc = REDIS_PORT, None
    if not _port_open(port):
        if not shutil.which("redis-server"):
            pytest.skip("no Redis on 127.0.0.1:6379 and no redis-server binary to start one")
        port = _free_port()
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL)
        _wait(lambda: _port_open(port), 20, "redis-server did not start")
    import redis

    assert redis.Redis(host="127.0.0.1", port=port, db=REDIS_DB).ping()
    yield f"redis://127.0.0.1:{port}/{REDIS_DB}"
    if proc:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def pg_url(tmp_path_factory):
    import psycopg2

    port, proc = PG_PORT, None
    if not _port_open(port):
        if not shutil.which("pg_ctl") or not shutil.which("initdb") or os.geteuid() == 0:
            pytest.skip("no PostgreSQL on 127.0.0.1:5432 and no initdb/pg_ctl usable by this user to start one")
        data = tmp_path_factory.mktemp("pg")
        port = _free_port()
        subprocess.run(["initdb", "-D", str(data), "-U", "postgres", "--auth=trust"], check=True, capture_output=True)
        subprocess.run(["pg_ctl", "-D", str(data), "-o", f"-p {port} -k {data} -h 127.0.0.1", "-w", "start"],
                       check=True, capture_output=True)
        proc = data
    name = f"recs_cluster_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(host=PG_HOST, port=port, user="postgres", dbname="postgres" if proc else "test")
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    yield f"postgresql+psycopg2://postgres@{PG_HOST}:{port}/{name}"
    admin.cursor().execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
    admin.cursor().execute(f"DROP DATABASE IF EXISTS {name}")
    admin.close()
    if proc:
        subprocess.run(["pg_ctl", "-D", str(proc), "-m", "fast", "stop"], capture_output=True)


def _wait(pred, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(message)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, redis_url, pg_url):
    root = tmp_path_factory.mktemp("cluster")
    data = root / "data"
    subprocess.run([sys.executable, "-m", "recs_assets.synthetic", "--users", "8000", "--items", "200",
                    "--events", "80000", "--out", str(data), "--no-progress"], check=True, capture_output=True)
    config = root / "run.json"
    config.write_text(json.dumps({"ops": {
        "ingest": {"config": {"sources": [{"kind": "events", "path": str(data / "events.parquet")}],
                              "catalog_paths": [str(data / "catalog.parquet")]}},
        "als_factors": {"config": {"factors": 8, "iterations": 3}},
        "bpr_factors": {"config": {"factors": 8, "iterations": 20}},
        "batch_topn": {"config": {"n": 10}},
        "evaluation": {"config": {"budget_seconds": 3}},
    }}))
    home = root / "home"
    env = {**os.environ, "RECS_HOME": str(home), "RECS_DAGSTER_YAML": str(REPO / "deploy" / "dagster.production.yaml"),
           "RECS_PG_URL": pg_url, "RECS_CELERY_BROKER": redis_url, "RECS_TOPN_SHARDS": str(SHARDS),
           # Our own queue: another session on the same broker never takes (or flushes) our tasks.
           "RECS_CELERY_QUEUE": f"recs-test-{uuid.uuid4().hex[:8]}",
           "PYTHONUNBUFFERED": "1"}
    for k in ("DAGSTER_HOME", "RECS_DAGSTER_STORAGE", "RECS_DAGSTER_LOGS"):
        env.pop(k, None)  # scripts/env.sh derives them from RECS_HOME
    workers = {}

    def start_worker(name):
        log = open(root / f"{name}.log", "w")
        # README: scripts/worker.sh on each machine
        workers[name] = subprocess.Popen(["bash", "scripts/worker.sh", name], cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return workers[name]

    for name in ("w1", "w2"):
        start_worker(name)
    _wait(lambda: all(f"{n}@" in (root / f"{n}.log").read_text() and " ready." in (root / f"{n}.log").read_text()
                      for n in ("w1", "w2")) or any(w.poll() is not None for w in workers.values()),
          TIMEOUT, "workers did not start")
    assert all(w.poll() is None for w in workers.values()), (root / "w1.log").read_text()[-3000:]
    mp = pytest.MonkeyPatch()  # this process opens the same instance to inspect it and launch shard runs
    dagster_home = home / "dagster"
    for k, v in {"RECS_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "RECS_PG_URL": pg_url,
                 "RECS_CELERY_BROKER": redis_url, "RECS_DAGSTER_STORAGE": str(dagster_home / "storage"),
                 "RECS_DAGSTER_LOGS": str(dagster_home / "logs")}.items():
        mp.setenv(k, v)
    launched: list[subprocess.Popen] = []
    yield {"env": env, "config": str(config), "home": home, "root": root, "workers": workers, "launched": launched}
    mp.undo()
    for p in launched:  # a launcher left waiting by a failed assertion
        if p.poll() is None:
            p.terminate()
            p.wait(30)
    for w in workers.values():
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGTERM)
    for w in workers.values():
        try:
            w.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(w.pid, signal.SIGKILL)
            w.wait()


def _instance(cluster):
    return dg.DagsterInstance.from_config(str(cluster["home"] / "dagster"))


def _worker_spans(instance, run_id):
    """(worker, start, end) of the step as the worker saw it: its own 'in celery worker' event and the step's end."""
    start = worker = end = None
    for e in instance.all_logs(run_id):
        ev = e.dagster_event
        if ev is None:
            continue
        if ev.step_key != "batch_topn":
            continue
        if ev.event_type_value == "ENGINE_EVENT" and "in celery worker" in (ev.message or ""):
            start, worker = e.timestamp, ev.event_specific_data.metadata["Celery worker"].value
        if ev.event_type_value == "STEP_SUCCESS":
            end = e.timestamp
    return worker, start, end


def _pool_process(worker: subprocess.Popen) -> int:
    """The pool process of a worker started with concurrency 1: the one executing its task."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_scale_out_on_two_celery_workers(cluster):
    """One test (the phases share the models stage, and must not run beside each other)."""
    readme_commands_run_shards_on_two_workers_at_once(cluster)
    kill_9_worker_mid_shard_then_rerun(cluster)


def readme_commands_run_shards_on_two_workers_at_once(cluster):
    """README "Scaling out": worker.sh on two workers, then the main command with the production instance."""
    t0 = time.monotonic()
    proc = subprocess.run(["bash", "-c", "source scripts/env.sh && .venv/bin/python -m recs_assets.pipeline --config "
                           + cluster["config"]], cwd=REPO, env=cluster["env"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    print(f"pipeline on the cluster: {time.monotonic() - t0:.1f}s")
    with _instance(cluster) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        runs = [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(job_name="recs_topn_shards"))]
        assert sorted(r.tags["dagster/partition"] for r in runs) == [str(k) for k in range(SHARDS)]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        spans = [_worker_spans(instance, r.run_id) for r in runs]
    assert all(s[0] and s[1] and s[2] for s in spans), spans
    assert len({w for w, _, _ in spans}) >= 2, f"every shard ran on one worker: {spans}"
    overlapping = [(a, b) for a in spans for b in spans if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]]
    assert overlapping, f"no two shards ran at the same time: {spans}"
    frame = pl.read_parquet(sorted((cluster["home"] / "topn" / f"{SHARDS}-shards").glob("part-*.parquet")))
    assert sorted(frame["shard"].unique().to_list()) == list(range(SHARDS))
    assert (cluster["home"] / "releases" / "CURRENT").exists() or list((cluster["home"] / "releases").iterdir())


def _shards_command(cluster):
    cluster["launched"].append(subprocess.Popen(["bash", "-c", "source scripts/env.sh && exec .venv/bin/python -m recs_assets.pipeline "
                             "--stages shards --config " + cluster["config"]], cwd=REPO, env=cluster["env"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return cluster["launched"][-1]


def _shard_runs_since(instance, t0):
    return [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(job_name="recs_topn_shards"))
            if r.create_timestamp.timestamp() >= t0]


def _celery_starts(instance, run_id):
    """(worker name, timestamp) of each time a worker started the run's batch_topn step."""
    out = []
    for e in instance.all_logs(run_id):
        ev = e.dagster_event
        if ev and ev.event_type_value == "ENGINE_EVENT" and "in celery worker" in (ev.message or "") \
                and ev.step_key == "batch_topn":
            out.append((ev.event_specific_data.metadata["Celery worker"].value.split("@")[0], e.timestamp))
    return out


def _kill_a_worker_mid_shard(cluster) -> bool:
    """kill -9 the worker process running a shard; True once the kill hit a running shard."""
    t0 = time.time()
    launcher = _shards_command(cluster)
    victim = None
    with _instance(cluster) as instance:
        def executing():
            nonlocal victim
            for run in _shard_runs_since(instance, t0):
                starts = _celery_starts(instance, run.run_id)
                if starts:
                    victim = (run.run_id, starts[0][0])
                    return True
            return launcher.poll() is not None

        _wait(executing, TIMEOUT, "no shard started on a worker")
        assert victim, launcher.communicate()[0][-3000:]
        pid = _pool_process(cluster["workers"][victim[1]])
        os.kill(pid, signal.SIGKILL)  # the worker process running that shard (as the OOM killer would)
        out = launcher.communicate(timeout=TIMEOUT)[0]
        runs = {r.run_id: r for r in _shard_runs_since(instance, t0)}
        assert len(runs) == SHARDS, out[-3000:]
        status = runs[victim[0]].status
        starts = _celery_starts(instance, victim[0])
        messages = " ".join((e.user_message or "") + " " + ((e.dagster_event and e.dagster_event.message) or "")
                            for e in instance.all_logs(victim[0]))
        print(f"killed {victim[1]}'s pool process {pid} mid-shard: run {victim[0]} ended {status.value} "
              f"after starts {starts}; launcher exit {launcher.returncode}")
        if status == dg.DagsterRunStatus.SUCCESS and len(starts) == 1:
            return False  # the shard had finished before the kill: try again
        # Either the task went back to the queue and ran again (here or on the other worker), or
        # the run failed saying that the worker was lost.
        assert (status == dg.DagsterRunStatus.SUCCESS and len(starts) >= 2) or "WorkerLostError" in messages, \
            messages[-3000:]
        return True


def kill_9_worker_mid_shard_then_rerun(cluster):
    for attempt in range(3):
        if _kill_a_worker_mid_shard(cluster):
            break
    else:
        raise AssertionError("three times the shard ended before the kill landed")
    # No reader ever sees half a shard: every part present is whole and of its own shard.
    parts_dir = cluster["home"] / "topn" / f"{SHARDS}-shards"
    for part in parts_dir.glob("part-*.parquet"):
        k = int(part.stem.split("-")[1])
        assert pl.read_parquet(part)["shard"].unique().to_list() == [k]
    # A plain re-run of the shards completes.
    rerun = _shards_command(cluster)
    out = rerun.communicate(timeout=TIMEOUT)[0]
    assert rerun.returncode == 0, out[-3000:]
    from recs_assets import outputs

    frame, params = outputs.read_parts(SHARDS, cluster["home"])
    assert sorted(frame["shard"].unique().to_list()) == list(range(SHARDS)) and params["n"] == 10
    assert not list(parts_dir.glob(".*.tmp"))
