"""`python -m recs_assets.pipeline`: the named jobs in order through the Dagster instance.

recs_models, then recs_topn_shards once per partition, then recs_publish: each a run of the job
in the definitions (the UI lists them by name and can re-execute them), on the instance in
DAGSTER_HOME (the embedded sqlite one by default; deploy/dagster.production.yaml for PostgreSQL).

Crash safety. This process is a small supervisor that imports dagster only; the runs execute in
one child process, which dies with it (PR_SET_PDEATHSIG). Each run carries the child's pid, so
- at start, runs of this host whose process is gone (kill -9, OOM) are marked failed and their
  pool slots freed: a killed run never blocks the next invocation;
- SIGTERM/SIGINT mark the active run canceling and interrupt the child (Dagster then marks it
  CANCELED); a child stuck inside a numba kernel (which holds the GIL and so cannot see the
  signal) is killed after GRACE_SECONDS and the run marked CANCELED here. The supervisor blocks
  in wait(): no polling.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

PID_TAG, START_TAG, HOST_TAG, INVOCATION_TAG = "recs/pid", "recs/pid_start", "recs/host", "recs/invocation"
SUPERVISOR_TAG, SUPERVISOR_ENV = "recs/supervisor", "RECS_PIPELINE_SUPERVISOR"
GRACE_SECONDS = 5.0
CANCELED_EXIT = 130


# ---------------------------------------------------------------- processes

def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' where /proc is missing): tells a
    live process from a new one that reuses a dead run's pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not start or _start_time(pid) in ("", start)


def process_tags(pid: int | None = None) -> dict[str, str]:
    pid = pid or os.getpid()
    tags = {PID_TAG: str(pid), START_TAG: _start_time(pid), HOST_TAG: socket.gethostname()}
    if os.environ.get(SUPERVISOR_ENV):
        tags[SUPERVISOR_TAG] = os.environ[SUPERVISOR_ENV]
    return tags


# ---------------------------------------------------------------- the instance

def recover(instance, log=print) -> list[str]:
    """Mark this host's runs whose process is gone as failed (canceled if they were canceling)
    and free the pool slots of every finished run that still holds some. Returns the run ids."""
    from dagster import DagsterRunStatus, RunsFilter

    host = socket.gethostname()
    fixed = []
    for rec in instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
                                                            DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING])):
        run, tags = rec.dagster_run, rec.dagster_run.tags
        if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        if _alive(int(tags[PID_TAG]), tags.get(START_TAG, "")):
            continue
        message = f"the process running it (pid {tags[PID_TAG]} on {host}) is gone (killed or out of memory)"
        if run.status == DagsterRunStatus.CANCELING:
            instance.report_run_canceled(run, message=f"Canceled: {message}")
        else:
            instance.report_run_failed(run, message=f"Marked failed by recs_assets.pipeline: {message}")
        fixed.append(run.run_id)
        log(f"[recs] run {run.run_id} ({run.job_name}) marked {'canceled' if run.status == DagsterRunStatus.CANCELING else 'failed'}: {message}")
    _free_slots(instance, log)
    return fixed


def _free_slots(instance, log=print) -> None:
    from dagster._core.storage.dagster_run import FINISHED_STATUSES

    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    for run_id in storage.get_concurrency_run_ids():
        run = instance.get_run_by_id(run_id)
        if run is None or run.status in FINISHED_STATUSES:
            storage.free_concurrency_slots_for_run(run_id)
            log(f"[recs] freed the pool slots of finished run {run_id}")


def _runs_of(instance, supervisor: int):
    from dagster import RunsFilter
    from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

    return [r.dagster_run for r in instance.get_run_records(RunsFilter(statuses=NOT_FINISHED_STATUSES,
                                                                          tags={SUPERVISOR_TAG: str(supervisor)}))]


# ---------------------------------------------------------------- the stages (child process)

def _recon(job_name: str):
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    return ReconstructableRepository.for_module("recs_assets.definitions", "defs",
                                                working_directory=str(Path(__file__).resolve().parents[1])
                                                ).get_reconstructable_job(job_name)


def _config_for(run_config: dict | None, job_name: str, shards_mode: str | None = None) -> dict:
    from recs_assets import definitions

    job = definitions.defs.resolve_job_def(job_name)
    names = set(job.graph.node_dict)
    cfg = {k: v for k, v in (run_config or {}).items() if k not in ("ops", "execution")}
    ops = {k: v for k, v in (run_config or {}).get("ops", {}).items() if k in names}
    if ops:
        cfg["ops"] = ops
    if shards_mode and job_name == "recs_topn_shards":
        cfg["execution"] = {"config": {"mode": shards_mode}}
    return cfg


def run_job(instance, job_name: str, *, run_config: dict | None = None, partition: str | None = None,
            tags: dict | None = None, shards_mode: str | None = None) -> tuple[str, str]:
    """One run of a named job; returns (run_id, status)."""
    import dagster as dg

    from recs_assets import outputs

    all_tags = {**process_tags(), **(tags or {})}
    if partition is not None:
        all_tags["dagster/partition"] = partition
        all_tags[outputs.SHARDS_TAG] = str(outputs.N_SHARDS)
        all_tags[outputs.HOME_TAG] = outputs.home_id()
    with dg.execute_job(_recon(job_name), instance, run_config=_config_for(run_config, job_name, shards_mode),
                        tags=all_tags, raise_on_error=False) as result:
        run = instance.get_run_by_id(result.run_id)
        return result.run_id, run.status.value


STAGES = ("models", "shards", "publish")


def run_all(instance, *, run_config: dict | None = None, shards_mode: str | None = None, stages=STAGES,
            partitions: list[str] | None = None, log=print) -> dict[str, str]:
    """models -> every shard (or `partitions`) -> publish; returns {stage: run_id}. Raises on a failed stage."""
    from recs_assets import orchestration, outputs

    invocation = {INVOCATION_TAG: uuid.uuid4().hex[:12]}
    runs: dict[str, str] = {}

    def stage(name, job_name, partition=None):
        t0 = time.perf_counter()
        log(f"[recs] {name}: started")
        run_id, status = run_job(instance, job_name, run_config=run_config, partition=partition, tags=invocation,
                                 shards_mode=shards_mode)
        runs[name] = run_id
        log(f"[recs] {name}: {status} in {time.perf_counter() - t0:.1f}s (run {run_id}, job {job_name})")
        if status != "SUCCESS":
            raise RuntimeError(f"stage {name} ended {status} (run {run_id}); see the Dagster UI or logs")

    if "models" in stages:
        stage("models", orchestration.models_job.name)
    keys = (partitions or outputs.shards.get_partition_keys()) if "shards" in stages else []
    if partitions or orchestration.shard_mode(shards_mode or "auto") == "in_process":
        # Each shard's kernels already use every core of this machine: one after the other.
        for key in keys:
            stage(f"topn shard {key}", orchestration.topn_job.name, key)
    elif keys:
        # Each run only coordinates: its step is a task on whichever worker takes it. One process
        # per run (Dagster's run setup reconfigures logging, which deadlocks across threads).
        cmd = [sys.executable, "-m", "recs_assets.pipeline", "--child", "--stages", "shards",
               "--shards", shards_mode or "auto", "--run-config-json", json.dumps(run_config or {})]
        procs = {k: subprocess.Popen([*cmd, "--partition", k], preexec_fn=_die_with_parent) for k in keys}
        failed = [k for k, p in procs.items() if p.wait() != 0]
        if failed:
            raise RuntimeError(f"top-N shards {failed} did not succeed; see the Dagster UI or logs")
    if "publish" in stages:
        stage("publish", orchestration.publish_job.name)
    return runs


def _child(args) -> int:
    import dagster as dg
    from dagster._utils.interrupts import setup_interrupt_handlers

    setup_interrupt_handlers()  # SIGTERM interrupts a run like SIGINT
    run_config = json.loads(args.run_config_json) if args.run_config_json else None
    rc = 0
    try:
        instance = dg.DagsterInstance.get()
        run_all(instance, run_config=run_config, shards_mode=args.shards, stages=args.stages.split(","),
                partitions=[args.partition] if args.partition else None)
    except RuntimeError as exc:
        print(f"[recs] {exc}", file=sys.stderr, flush=True)
        rc = CANCELED_EXIT if "CANCELED" in str(exc) else 1
    except KeyboardInterrupt:
        rc = CANCELED_EXIT
    # Everything is recorded by now; skip the interpreter's teardown, which can wait seconds on
    # library threads after an interrupted step.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


# ---------------------------------------------------------------- the supervisor

class _Stop(Exception):
    pass


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _cancel(instance, child: subprocess.Popen, log) -> None:
    runs = _runs_of(instance, os.getpid())
    for run in runs:
        instance.report_run_canceling(run, message="recs_assets.pipeline received a termination signal")
    os.killpg(child.pid, signal.SIGINT)  # the child and the shard launchers it started
    try:
        child.wait(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        log(f"[recs] the run did not stop within {GRACE_SECONDS:.0f}s (a kernel holds the interpreter): killing it")
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    for run in _runs_of(instance, os.getpid()):
        instance.report_run_canceled(run, message="Canceled: recs_assets.pipeline was terminated")
        log(f"[recs] run {run.run_id} ({run.job_name}) canceled")
    _free_slots(instance, log)


def _wait_recovering(instance, child: subprocess.Popen, log, every: float = 10.0) -> int:
    """Wait for the child; meanwhile free what runs that died after our start-up still hold (a
    killed run's process may outlive the recovery at start by a moment, and its pool slot would
    then block our steps for ever). Our own runs carry a live pid, so they are left alone."""
    while True:
        try:
            return child.wait(timeout=every)
        except subprocess.TimeoutExpired:
            try:
                recover(instance, log)
            except Exception as exc:  # noqa: BLE001 - a failed sweep must not stop the run
                log(f"[recs] recovery sweep failed: {exc}")


def supervise(args, log=print) -> int:
    import dagster as dg

    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "recs_assets.pipeline", "--child"]
    if args.run_config_json:
        cmd += ["--run-config-json", args.run_config_json]
    if args.shards:
        cmd += ["--shards", args.shards]
    cmd += ["--stages", args.stages]

    def stop(signo, _frame):
        raise _Stop(signal.Signals(signo).name)

    with dg.DagsterInstance.get() as instance:
        recover(instance, log)
        # Our own session: a Ctrl-C on the terminal reaches only this process, which marks the
        # run canceling before it interrupts the child (Dagster then records CANCELED, not FAILURE).
        child = subprocess.Popen(cmd, preexec_fn=_die_with_parent, start_new_session=True,
                                 env={**os.environ, SUPERVISOR_ENV: str(os.getpid())})
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            rc = _wait_recovering(instance, child, log)
        except _Stop as exc:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            log(f"[recs] {exc}: canceling")
            _cancel(instance, child, log)
            return CANCELED_EXIT
        if rc < 0:  # the child was killed (OOM killer, kill -9): its runs are failed now, not at the next start
            log(f"[recs] the pipeline process died ({signal.Signals(-rc).name})")
            recover(instance, log)
            return 1
    if rc == 0:
        log(f"[recs] all assets materialized in {time.perf_counter() - t0:.1f}s")
    return rc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Materialize every asset of recs, in order, as the named jobs")
    parser.add_argument("--config", help="Dagster run config (YAML or JSON) with ops.<asset>.config entries")
    parser.add_argument("--shards", choices=["auto", "in_process", "multiprocess", "celery"],
                        help="Where the top-N shards run (default auto: Celery workers when RECS_CELERY_BROKER is set)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="Comma-separated subset of models,shards,publish (default: all, in that order)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--run-config-json", help=argparse.SUPPRESS)
    parser.add_argument("--partition", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; choose from {','.join(STAGES)}")
    if args.config:
        import yaml

        with open(args.config) as f:
            args.run_config_json = json.dumps(yaml.safe_load(f))
    if args.child:
        return _child(args)
    rc = supervise(args)
    # Nothing is left to clean up; the interpreter's teardown (library threads) can take seconds.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
