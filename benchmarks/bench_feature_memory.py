"""Peak RSS and CPU of the feature inputs: a frame of every event + polars (the evaluation's path,
and the assets' before) against the DuckDB aggregates the assets read now.

    python benchmarks/bench_feature_memory.py --home RECS_HOME_WITH_AN_INGESTED_WAREHOUSE

Each (feature, path) runs in a fresh process; peak RSS is its VmHWM minus the RSS after imports.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FEATURES = ("matrix", "popularity", "covisitation", "item_similarity", "baskets")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def child(feature: str, path: str) -> dict:
    from recs_assets import aggregates, features, io, modeling
    from recs_assets.resources import Warehouse
    import recs_kernels.covis  # noqa: F401 - compiled before the measurement

    wh = Warehouse()
    base = _status("VmRSS:")
    t0 = os.times()
    if path == "polars":
        events = io.load_events(wh)
        items = io.load_item_ids(wh)
        if feature == "matrix":
            modeling.build_matrix(events, items, modeling.MatrixParams())
        elif feature == "popularity":
            modeling.popularity_scores(events, items, 14.0)
        elif feature == "covisitation":
            modeling.covisitation(events, items, modeling.CovisParams())
        elif feature == "item_similarity":
            modeling.user_similarity(events, items, modeling.SimilarityParams())
        else:
            features.basket_matrix(events, items, rows=features.basket_rows(events))
    else:
        with wh.connect() as con:
            if feature == "matrix":
                aggregates.matrix(con, modeling.MatrixParams(), user_items_table="_bench_user_items")
                con.execute("DROP TABLE recs._bench_user_items")
            elif feature == "popularity":
                aggregates.popularity(con, 14.0)
            elif feature == "covisitation":
                aggregates.covisitation(con, modeling.CovisParams())
            elif feature == "item_similarity":
                aggregates.user_similarity(con, modeling.SimilarityParams())
            else:
                aggregates.baskets(con, modeling.SESSION_GAP_MINUTES)
    t1 = os.times()
    return {"feature": feature, "path": path, "cpu": (t1.user + t1.system) - (t0.user + t0.system),
            "peak_above_base": _status("VmHWM:") - base, "base": base}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", required=True)
    ap.add_argument("--features", default=",".join(FEATURES))
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(child(*args._child)))
        return 0
    env = {**os.environ, "RECS_HOME": args.home, "PYTHONPATH": str(REPO)}
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'feature':<16} {'path':<8} {'CPU s':>7} {'peak above base GiB':>20}")
    for feature in args.features.split(","):
        for path in ("polars", "duckdb"):
            out = subprocess.run([sys.executable, __file__, "--home", args.home, "--_child", feature, path],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                print(f"{feature:<16} {path:<8} failed: {out.stderr[-300:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{feature:<16} {path:<8} {r['cpu']:7.1f} {r['peak_above_base'] / 2**30:20.2f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
