"""The evaluation asset's protocol (``recs_assets.evaluation.run``) alone: where its time goes.

    python benchmarks/bench_evaluation.py --home /tmp/base-home            # a RECS_HOME a pipeline ran in
    python benchmarks/bench_evaluation.py --data /tmp/synth-100k --profile  # synthetic data (recs_assets.synthetic)

With ``--home`` the events, catalogue, embeddings and the model assets' recorded configs come
from that home (read only), exactly what the asset reads. With ``--data`` the events come from
the generator's Parquet files, the configs are the defaults and the embeddings random (their
values do not change the cost). Prints ``Outcome.info["seconds"]`` (cumulative marks of run()),
CPU time, the test split's recall table, and with ``--profile`` the top functions of cProfile.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# the same data loaders as the quality table, so both benchmarks read a home or a data dir alike
from quality_table import from_data, from_home  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--home", type=Path)
    src.add_argument("--data", type=Path)
    ap.add_argument("--cut", default="2011-11-01")
    ap.add_argument("--max-users", type=int, default=250)
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("--no-tune", action="store_true", help="configured weights (a deterministic comparison of fits)")
    ap.add_argument("--fit-users", type=int, default=None, help="Settings.fit_users (0: every user)")
    ap.add_argument("--cold", action="store_true", help="no warm start of the test split's fits")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--out", default=None, help="JSON: seconds, CPU, test table")
    args = ap.parse_args(argv)

    from recs_assets import evaluation as ev

    t = time.perf_counter()
    events, catalog, emb, cfg = from_home(args.home) if args.home else from_data(args.data)
    print(f"loaded {events.height:,} events, {catalog.height:,} items in {time.perf_counter() - t:.1f}s; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    s = ev.Settings(cut=args.cut, max_users=args.max_users, budget_seconds=args.budget, tune=not args.no_tune,
                    warm_start=not args.cold)
    if args.fit_users is not None:
        s.fit_users = args.fit_users
    prof = cProfile.Profile() if args.profile else None
    c0, t0 = time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    out = ev.run(events, catalog, emb, cfg, s)
    if prof:
        prof.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"run(): {wall:.1f}s wall, {cpu:.1f}s CPU (this process, all threads); load average {os.getloadavg()[0]:.2f}")
    print("seconds (cumulative marks):", json.dumps(out.info["seconds"]))
    print("phase seconds:", json.dumps(out.info.get("phase_seconds", {})))
    print("phase CPU seconds:", json.dumps(out.info.get("phase_cpu_seconds", {})), "budgets:",
          json.dumps({k: out.info.get(k) for k in ("hyper_budget_seconds", "search_budget_seconds")}))
    print("fit seconds:", json.dumps(out.info.get("fit_seconds", {})))
    if "approximations" in out.info:
        print("approximations:", json.dumps(out.info["approximations"]))
    print("served:", out.served["source"], {k: v for k, v in out.served["weights"].items() if v}, "mmr", out.served["mmr_lambda"])
    import polars as pl

    test = out.table.filter(pl.col("split") == "test").drop("split")
    with pl.Config(tbl_rows=100, tbl_cols=10, tbl_width_chars=140):
        print(test.pivot(on="use_case", index="model", values="recall@10"))
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)
    if args.out:
        Path(args.out).write_text(json.dumps({"wall": wall, "cpu": cpu, "seconds": out.info["seconds"],
                                              "phase_seconds": out.info.get("phase_seconds"), "fit_seconds": out.info.get("fit_seconds"),
                                              "phase_cpu_seconds": out.info.get("phase_cpu_seconds"),
                                              "served": out.served, "test": test.to_dicts(),
                                              "load": os.getloadavg()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
