"""The whole graph at several sizes: wall, CPU and peak RSS per stage, cold and warm.

    python benchmarks/bench_pipeline.py --sizes 100k,300k            # items = users/10, 20 events/user
    python benchmarks/bench_pipeline.py --sizes 1m --no-warm --out /tmp/bench-1m.json

For each size: synthetic data (recs_assets.synthetic) into a fresh directory, a fresh
RECS_HOME, then `recs_assets.pipeline.run_all` (shards in-process) in a child process, twice: cold (empty
home) and warm (same data, catalogue unchanged: embeddings come from the cache). The child
samples its own RSS and CPU time every 0.1 s; per-step windows come from the Dagster event log
(STEP_START -> STEP_SUCCESS/FAILURE) of every run. A stage's wall is the sum of its steps
(the top-N shards add up); CPU is user+sys of the process (every thread) over those windows;
peak RSS is the highest sample inside them. "other" is run overhead between steps. The
scaling exponent of a stage between two sizes is log(t2/t1) / log(n2/n1) (1.0 = linear).
The load average is printed with every run: the machine may be shared.

numba's compiled kernels are cached under each fresh home (NUMBA_CACHE_DIR=<home>/numba-cache),
so a cold run includes compiling them: about 90 CPU s on 2 cores (10K users: cold 142 CPU s,
warm 51). Export NUMBA_CACHE_DIR to share one cache between runs and sizes, so that "cold"
measures the data's work only (run once to fill it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE_S = 0.1


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1], 1)
    return int(float(s[:-1] if s[-1] in "km" else s) * mult)


def label(n: int) -> str:
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


# ------------------------------------------------------------------------- child process


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child(home: str, config_path: str, result_path: str) -> int:
    """Run the pipeline in this process and write per-step figures to result_path."""
    import yaml

    samples: list[tuple[float, float, int]] = []
    stop = threading.Event()

    def sampler():
        # Also on disk, so a run stopped before it ends can still be reported (--partial).
        with open(result_path + ".samples", "w") as f:
            while not stop.is_set():
                t = os.times()
                samples.append((time.time(), t.user + t.system, _rss_bytes()))
                f.write("%.3f %.3f %d\n" % samples[-1])
                if len(samples) % 50 == 0:
                    f.flush()
                stop.wait(SAMPLE_S)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    import dagster as dg

    from recs_assets import pipeline

    with open(config_path) as f:
        run_config = yaml.safe_load(f)
    t0 = time.time()
    error = None
    with dg.DagsterInstance.get() as instance:
        try:
            runs = pipeline.run_all(instance, run_config=run_config, shards_mode="in_process",
                                    log=lambda m: print(m, flush=True))
        except Exception as exc:  # report what finished
            error = f"{type(exc).__name__}: {exc}"
            runs = {}
        t1 = time.time()
        stop.set()
        th.join()
        steps = _steps(instance, list(runs.values()) or [r.run_id for r in instance.get_runs()])
    t = os.times()
    res = {"total_wall": t1 - t0, "total_cpu": t.user + t.system, "peak_rss": _hwm_bytes(),
           "steps": _per_step(steps, samples), "error": error}
    with open(result_path, "w") as f:
        json.dump(res, f)
    return 0 if error is None else 1


def _steps(instance, run_ids) -> list[dict]:
    import dagster as dg

    steps = []
    for run_id in run_ids:
        starts = {}
        for e in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS,
                                                    dg.DagsterEventType.STEP_FAILURE}):
            et = e.dagster_event.event_type
            if et == dg.DagsterEventType.STEP_START:
                starts[e.step_key] = e.timestamp
            elif e.step_key in starts:
                steps.append({"step": e.step_key, "start": starts.pop(e.step_key), "end": e.timestamp,
                              "ok": et == dg.DagsterEventType.STEP_SUCCESS})
    return steps


def _per_step(steps: list[dict], samples: list) -> list[dict]:
    out = []
    for s in steps:
        inside = [x for x in samples if s["start"] <= x[0] <= s["end"]]
        before = [x for x in samples if x[0] <= s["start"]]
        after = [x for x in samples if x[0] >= s["end"]]
        cpu0 = before[-1][1] if before else (inside[0][1] if inside else 0.0)
        cpu1 = after[0][1] if after else (inside[-1][1] if inside else cpu0)
        peaks = [x[2] for x in inside] + ([before[-1][2]] if before else [])
        peak = max(peaks) if peaks else 0
        out.append({**s, "wall": s["end"] - s["start"], "cpu": cpu1 - cpu0, "peak_rss": peak})
    return out


def partial(home: str) -> int:
    """The table of a run that was stopped (or is still running): its finished steps, from the
    home's Dagster event log and the samples file the child keeps writing."""
    import dagster as dg

    os.environ.update({"DAGSTER_HOME": str(Path(home) / "dagster"),
                       "RECS_DAGSTER_STORAGE": str(Path(home) / "dagster" / "storage"),
                       "RECS_DAGSTER_LOGS": str(Path(home) / "dagster" / "logs")})
    samples_files = sorted(Path(home).glob("bench-result-*.json.samples"), key=lambda p: p.stat().st_mtime)
    if not samples_files:
        print(f"no samples file under {home}")
        return 1
    samples = []
    for line in samples_files[-1].read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            samples.append((float(parts[0]), float(parts[1]), int(parts[2])))
    with dg.DagsterInstance.get() as instance:
        steps = [s for s in _steps(instance, [r.run_id for r in instance.get_runs()]) if s["start"] >= samples[0][0]]
    res = {"total_wall": samples[-1][0] - samples[0][0], "total_cpu": samples[-1][1], "peak_rss": max(x[2] for x in samples),
           "steps": _per_step(steps, samples), "error": "partial: finished steps only",
           "load_before": os.getloadavg(), "load_after": os.getloadavg()}
    res["stages"] = _stages(res)
    print_run(Path(home).name, "partial", res)
    print(json.dumps(res["stages"]))
    return 0


# ------------------------------------------------------------------------- parent


def stage_of(step_key: str) -> str:
    # One stage per asset op; checks and shard runs fold into their asset.
    return step_key.split("[")[0]


def run_once(home: Path, config: Path, log_path: Path) -> dict:
    env = {**os.environ, "RECS_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"),
           "RECS_DAGSTER_STORAGE": str(home / "dagster" / "storage"), "RECS_DAGSTER_LOGS": str(home / "dagster" / "logs"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "DAGSTER_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO)}
    env.setdefault("NUMBA_CACHE_DIR", str(home / "numba-cache"))
    for d in ("dagster/storage", "dagster/logs", "inbox"):
        (home / d).mkdir(parents=True, exist_ok=True)
    (home / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    result = home / f"bench-result-{time.time_ns()}.json"
    load0 = os.getloadavg()
    t = time.time()
    with open(log_path, "a") as logf:
        proc = subprocess.run([sys.executable, __file__, "--_child", str(home), str(config), str(result)],
                              env=env, stdout=logf, stderr=subprocess.STDOUT, cwd=str(REPO))
    wall = time.time() - t
    if not result.exists():
        raise RuntimeError(f"pipeline child failed (exit {proc.returncode}); see {log_path}")
    res = json.loads(result.read_text())
    res["process_wall"] = wall
    res["load_before"], res["load_after"] = load0, os.getloadavg()
    res["stages"] = _stages(res)
    return res


def _stages(res: dict) -> dict:
    stages: dict[str, dict] = {}
    for s in res["steps"]:
        st = stages.setdefault(stage_of(s["step"]), {"wall": 0.0, "cpu": 0.0, "peak_rss": 0, "steps": 0})
        st["wall"] += s["wall"]
        st["cpu"] += s["cpu"]
        st["peak_rss"] = max(st["peak_rss"], s["peak_rss"])
        st["steps"] += 1
    stages["other"] = {"wall": max(0.0, res["total_wall"] - sum(v["wall"] for v in stages.values())),
                       "cpu": None, "peak_rss": None, "steps": 0}
    return stages


def gib(b) -> str:
    return "-" if b is None else f"{b / 2**30:.2f}"


def print_run(size: str, kind: str, res: dict) -> None:
    print(f"\n== {size} {kind}: {res['total_wall']:.1f}s wall, {res['total_cpu']:.1f}s CPU, peak RSS "
          f"{gib(res['peak_rss'])} GiB; load average before {res['load_before'][0]:.2f}, after "
          f"{res['load_after'][0]:.2f}{'; ERROR ' + res['error'] if res.get('error') else ''}")
    print(f"  {'stage':<28} {'wall s':>8} {'share':>6} {'CPU s':>8} {'peak GiB':>9}")
    total = res["total_wall"] or 1.0
    for name, st in sorted(res["stages"].items(), key=lambda kv: -kv[1]["wall"]):
        cpu = "-" if st["cpu"] is None else f"{st['cpu']:.1f}"
        print(f"  {name:<28} {st['wall']:8.1f} {st['wall'] / total:6.1%} {cpu:>8} {gib(st['peak_rss']):>9}")


def exponents(sizes: list[int], runs: dict) -> dict:
    out = {}
    for a, b in zip(sizes, sizes[1:]):
        ra, rb = runs.get((a, "cold")), runs.get((b, "cold"))
        if not ra or not rb:
            continue
        key = f"{label(a)}->{label(b)}"
        out[key] = {}
        # CPU seconds as well as wall: on a shared machine the load differs between runs
        for name in sorted(set(ra["stages"]) | set(rb["stages"])):
            pair = {}
            for what in ("wall", "cpu"):
                ta = ra["stages"].get(name, {}).get(what)
                tb = rb["stages"].get(name, {}).get(what)
                if ta and tb and ta > 0.05:
                    pair[what] = math.log(tb / ta) / math.log(b / a)
            if pair:
                out[key][name] = pair
        out[key]["TOTAL"] = {w: math.log(rb[f"total_{w}"] / ra[f"total_{w}"]) / math.log(b / a) for w in ("wall", "cpu")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100k,300k", help="users per size (k/m suffixes), comma-separated")
    ap.add_argument("--items-per-user", type=float, default=0.1)
    ap.add_argument("--events-per-user", type=float, default=20.0)
    ap.add_argument("--workdir", default=None, help="data and homes go here (default: a temp dir, removed)")
    ap.add_argument("--keep", action="store_true", help="keep data and homes")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm run")
    ap.add_argument("--reuse-data", action="store_true", help="keep data already generated in the work dir (same seed)")
    ap.add_argument("--out", default="bench_pipeline.json", help="JSON results")
    ap.add_argument("--partial", metavar="HOME", help="print the finished steps of a stopped or running run in HOME")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        return child(*args._child)
    if args.partial:
        return partial(args.partial)
    import yaml

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"sizes {[label(n) for n in sizes]}, items = users x {args.items_per_user}, "
          f"{args.events_per_user:g} events/user; work dir {work}; {os.cpu_count()} CPUs")
    runs: dict = {}
    report = {"sizes": {}, "args": vars(args)}
    for n in sizes:
        n_items, n_events = max(2, int(n * args.items_per_user)), int(n * args.events_per_user)
        data, home = work / f"data-{label(n)}", work / f"home-{label(n)}"
        if home.exists():
            import shutil

            shutil.rmtree(home)
        t = time.time()
        if not (args.reuse_data and (data / "catalog.parquet").exists()):
            subprocess.run([sys.executable, "-m", "recs_assets.synthetic", "--users", str(n), "--items", str(n_items),
                            "--events", str(n_events), "--seed", "0", "--out", str(data)],
                           check=True, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
                           stdout=subprocess.DEVNULL)
        t_gen = time.time() - t
        print(f"\n{label(n)}: {n:,} users x {n_items:,} items x {n_events:,} events generated in {t_gen:.1f}s")
        config = work / f"config-{label(n)}.yaml"
        config.write_text(yaml.safe_dump({"ops": {"ingest": {"config": {
            "sources": [{"kind": "events", "path": str(data / "events*.parquet")}],
            "catalog_paths": [str(data / "catalog.parquet")], "exclusive": True}}}}))
        entry = report["sizes"][label(n)] = {"users": n, "items": n_items, "events": n_events, "generate_s": t_gen}
        for kind in ("cold", "warm"):
            if kind == "warm" and args.no_warm:
                continue
            res = run_once(home, config, work / f"log-{label(n)}-{kind}.txt")
            runs[(n, kind)] = res
            entry[kind] = res
            print_run(label(n), kind, res)
            Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    exps = exponents(sizes, runs)
    report["exponents"] = exps
    for key, ex in exps.items():
        print(f"\nscaling exponent (cold runs), {key}:   {'wall':>6} {'CPU':>6}")
        for name, e in sorted(ex.items(), key=lambda kv: -kv[1].get("cpu", kv[1].get("wall", 0.0))):
            c = e.get("cpu")
            flag = "   > 1.15" if (c if c is not None else e.get("wall", 0.0)) > 1.15 else ""
            print(f"  {name:<28} {e.get('wall', float('nan')):6.2f} {c if c is not None else float('nan'):6.2f}{flag}")
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"\nJSON: {args.out}")
    if not args.keep and not args.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
