"""A killed run never blocks the next: real `python -m recs_assets.pipeline` processes, real kill -9.

The instance here limits the pool "duckdb_writer" to 1 (as the production instance does), so a run
killed inside a pool step really leaves its slot claimed, as in issue 10; the next plain
invocation must still complete with no manual step.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest

from conftest import REPO

pytestmark = [pytest.mark.xdist_group("crash"), pytest.mark.slow]

RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    data = root / "data"
    subprocess.run([sys.executable, "-m", "recs_assets.synthetic", "--users", "600", "--items", "150",
                    "--events", "15000", "--out", str(data), "--no-progress"], check=True, capture_output=True)
    home = root / "home"
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    yaml = (REPO / "dagster.yaml").read_text() + "\nconcurrency:\n  pools:\n    default_limit: 1\n"
    (dagster_home / "dagster.yaml").write_text(yaml)
    config = root / "run.json"
    config.write_text(json.dumps({"ops": {
        "ingest": {"config": {"sources": [{"kind": "events", "path": str(data / "events.parquet")}],
                              "catalog_paths": [str(data / "catalog.parquet")]}},
        "als_factors": {"config": {"factors": 8, "iterations": 3}},
        "bpr_factors": {"config": {"factors": 8, "iterations": 20}},
        "batch_topn": {"config": {"n": 10}},
        "evaluation": {"config": {"budget_seconds": 3}},
    }}))
    e = {**os.environ, "RECS_HOME": str(home), "DAGSTER_HOME": str(dagster_home),
         "RECS_DAGSTER_STORAGE": str(dagster_home / "storage"), "RECS_DAGSTER_LOGS": str(dagster_home / "logs"),
         "PYTHONUNBUFFERED": "1"}
    e.pop("RECS_CELERY_BROKER", None)
    mp = pytest.MonkeyPatch()  # this process opens the same instance to inspect it
    for k in ("RECS_HOME", "DAGSTER_HOME", "RECS_DAGSTER_STORAGE", "RECS_DAGSTER_LOGS"):
        mp.setenv(k, e[k])
    yield {"env": e, "config": str(config), "home": home, "dagster_home": dagster_home}
    mp.undo()


class Pipeline:
    """`python -m recs_assets.pipeline` in the background, its output watched line by line."""

    def __init__(self, env):
        self.proc = subprocess.Popen([sys.executable, "-m", "recs_assets.pipeline", "--config", env["config"]],
                                     env=env["env"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = RUN_TIMEOUT) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(text in s for s in self.lines) or "<EOF>" in self.lines, timeout)
            assert ok and any(text in s for s in self.lines), f"never saw {text!r}:\n{self.tail()}"

    def finish(self, timeout: float = RUN_TIMEOUT) -> int:
        rc = self.proc.wait(timeout)
        self.wait_for("<EOF>", 30)
        return rc

    def tail(self, n=40) -> str:
        return "".join(self.lines[-n:])


def _instance(env):
    return dg.DagsterInstance.from_config(str(env["dagster_home"]))


def _runs(instance, job_name):
    return [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(job_name=job_name))]


def _wait_dead(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid), f"process {pid} outlived the killed command"


def test_kill_9_at_any_stage_never_blocks_the_next_run(env):
    # 1. kill -9 of the command itself inside a models step of the pool duckdb_writer: its child
    #    dies with it, and the run stays STARTED with its pool slot claimed (issue 10's hang).
    p = Pipeline(env)
    p.wait_for('Started execution of step "covisitation"')
    os.kill(p.proc.pid, signal.SIGKILL)
    assert p.finish() == -signal.SIGKILL
    with _instance(env) as instance:
        killed = _runs(instance, "recs_models")[0]
        _wait_dead(int(killed.tags["recs/pid"]))
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.STARTED
        assert killed.run_id in instance.event_log_storage.get_concurrency_run_ids()

    # 2. The next plain invocation marks it failed and frees its slot; then the OOM killer takes
    #    the process running a top-N shard: that run is failed at once.
    p = Pipeline(env)
    p.wait_for(f"run {killed.run_id} (recs_models) marked failed")
    p.wait_for('Started execution of step "batch_topn"')
    with _instance(env) as instance:
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        assert killed.run_id not in instance.event_log_storage.get_concurrency_run_ids()
        shard_run = _runs(instance, "recs_topn_shards")[0]
        os.kill(int(shard_run.tags["recs/pid"]), signal.SIGKILL)
    assert p.finish() == 1, p.tail()
    with _instance(env) as instance:
        assert instance.get_run_by_id(shard_run.run_id).status == dg.DagsterRunStatus.FAILURE

    # 3. A plain re-run completes, with no manual step, in bounded time.
    t0 = time.monotonic()
    p = Pipeline(env)
    assert p.finish() == 0, p.tail()
    assert time.monotonic() - t0 < RUN_TIMEOUT
    with _instance(env) as instance:
        assert not instance.event_log_storage.get_concurrency_run_ids()
        for job in ("recs_models", "recs_topn_shards", "recs_publish"):
            assert _runs(instance, job)[0].status == dg.DagsterRunStatus.SUCCESS, job
    parts = sorted((env["home"] / "topn").glob("*-shards/*"))
    assert [p.name for p in parts if p.suffix == ".parquet"] == ["part-0.parquet", "part-1.parquet"]
    assert not list((env["home"] / "topn").glob("*-shards/.*.tmp"))


def test_sigterm_cancels_the_run_within_10_seconds(env):
    p = Pipeline(env)
    p.wait_for('Started execution of step "ingest"')
    t0 = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    rc = p.proc.wait(30)
    elapsed = time.monotonic() - t0
    p.finish()
    assert rc == 130, p.tail()
    assert elapsed < 10, f"took {elapsed:.1f}s"
    with _instance(env) as instance:
        run = _runs(instance, "recs_models")[0]
        assert run.status == dg.DagsterRunStatus.CANCELED, p.tail()
        assert not _alive(int(run.tags["recs/pid"]))
        assert run.run_id not in instance.event_log_storage.get_concurrency_run_ids()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
