"""Served vs the best single source, per use case, on the test split (issue 11's protocol).

    python benchmarks/quality_table.py --home /tmp/base-home --cut 2011-11-01     # a RECS_HOME a pipeline ran in
    python benchmarks/quality_table.py --data /tmp/synth-100k                     # recs_assets.synthetic output

Runs ``recs_assets.evaluation.run`` (validation-window tuning per use case, then the test split
untouched by any choice) and prints, per use case: served recall@10, the best single source
on the test split and the ratio, what each use case serves (tuned / best_single / configured)
and the validation figures it was chosen on. ``--home`` reads the home's warehouse and artifacts
read-only (the model assets' recorded configs); ``--data`` uses the default configs and random
embeddings (the content source then carries no signal).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def from_home(home: Path):
    from recs_assets import evaluation as ev
    from recs_assets import io
    from recs_assets.resources import ArtifactStore, Warehouse

    wh = Warehouse(path=str(home / "warehouse.duckdb"))
    arts = ArtifactStore(root=str(home / "artifacts"))
    events, catalog = io.load_events(wh), io.load_catalog(wh)
    emb = arts.load("catalog_embeddings", "vectors", "item_ids")["vectors"]
    return events, catalog, emb, ev.configs_from_artifacts(arts)


def from_data(data: Path):
    import numpy as np
    import polars as pl

    from recs_assets import evaluation as ev

    e = pl.read_parquet(str(data / "events*.parquet"))
    if e["ts"].dtype != pl.Datetime:
        e = e.with_columns(pl.from_epoch("ts", time_unit="ms").alias("ts"))
    for col, dtype in (("quantity", pl.Int32), ("price", pl.Float64), ("basket_id", pl.String)):
        if col not in e.columns:
            e = e.with_columns(pl.lit(None, dtype).alias(col))
    e = e.select("user_id", "item_id", "ts", "event", "quantity", "price", "basket_id")
    catalog = pl.read_parquet(data / "catalog.parquet").sort("item_id")
    for col in ("title", "brand", "category", "description"):
        if col not in catalog.columns:
            catalog = catalog.with_columns(pl.lit(None, pl.String).alias(col))
    if "price" not in catalog.columns:
        catalog = catalog.with_columns(pl.lit(None, pl.Float64).alias("price"))
    emb = np.random.default_rng(0).normal(size=(catalog.height, 64)).astype(np.float32)
    return e, catalog, emb, ev.Configs()


def table(out) -> list[dict]:
    import polars as pl

    from recs_kernels.sources import SOURCES

    rows = []
    for split in ("validation", "test"):
        t = out.table.filter(pl.col("split") == split)
        for uc in t["use_case"].unique(maintain_order=True).to_list():
            r = {m: v for m, v in t.filter(pl.col("use_case") == uc).select("model", "recall@10").iter_rows()}
            best = max(SOURCES, key=lambda s: (r.get(s, 0.0), -SOURCES.index(s)))
            n = int(t.filter((pl.col("use_case") == uc) & (pl.col("model") == "served"))["users"][0])
            rows.append({"split": split, "use_case": uc, "served": round(r["served"], 4), "best_single": best,
                         "best_single_recall": round(r[best], 4),
                         "ratio": round(r["served"] / r[best], 3) if r[best] > 0 else None,
                         "popularity": round(r["popularity"], 4), "requests": n,
                         "chosen": out.served["blends"][uc]["chosen"]})
    return rows


def readme_table(saved: dict) -> str:
    """The README's evaluation table (test split, recall@10, every model per use case) from a
    ``--out`` JSON."""
    from recs_kernels.sources import SOURCES

    test = [r for r in saved["table"] if r["split"] == "test"]
    ucs = list(dict.fromkeys(r["use_case"] for r in test))
    val = {(r["use_case"], r["model"]): r["recall@10"] for r in test}
    lines = ["| model | " + " | ".join(ucs) + " |", "|---" * (len(ucs) + 1) + "|"]
    for m in ("served", *SOURCES):
        cells = [f"{val[(uc, m)]:.4f}" for uc in ucs]
        lines.append(f"| {'**served**' if m == 'served' else m} | " + " | ".join(f"**{c}**" if m == "served" else c for c in cells) + " |")
    best = {uc: max(SOURCES, key=lambda s: (val[(uc, s)], -SOURCES.index(s))) for uc in ucs}
    lines.append("| served / best single | " + " | ".join(f"{val[(uc, 'served')] / val[(uc, best[uc])]:.3f}" if val[(uc, best[uc])] else "-"
                                                   for uc in ucs) + " |")
    lines.append("| serves | " + " | ".join(saved["served"]["blends"][uc]["chosen"] for uc in ucs) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--render", type=Path, help="print the README's table from an --out JSON and exit")
    src.add_argument("--home", type=Path)
    src.add_argument("--data", type=Path)
    ap.add_argument("--cut", default="", help="ISO date; empty: 90%% of the events before it")
    ap.add_argument("--max-users", type=int, default=250)
    ap.add_argument("--budget", type=float, default=10.0)
    ap.add_argument("--hyper-budget", type=float, default=None, help="CPU seconds for the hyperparameter search "
                    "(default: the evaluation's)")
    ap.add_argument("--hyper-fit-ratio", type=float, default=None, help="cap of the hyperparameter budget in "
                    "multiples of the validation fit's CPU seconds (0: no cap; default: the evaluation's)")
    ap.add_argument("--search-fit-ratio", type=float, default=None, help="cap of the weight search's budget in "
                    "multiples of the validation fit's CPU seconds (0: no cap; default: the evaluation's)")
    ap.add_argument("--out", default=None, help="JSON with the table, the served blends, the gate and timings")
    args = ap.parse_args(argv)

    if args.render:
        print(readme_table(json.loads(args.render.read_text())))
        return 0
    from recs_assets import evaluation as ev

    events, catalog, emb, cfg = from_home(args.home) if args.home else from_data(args.data)
    print(f"{events.height:,} events, {catalog.height:,} items; load average {os.getloadavg()[0]:.2f}", flush=True)
    s = ev.Settings(cut=args.cut or None, max_users=args.max_users, budget_seconds=args.budget)
    if args.hyper_budget is not None:
        s.hyper_budget_seconds = args.hyper_budget
    if args.hyper_fit_ratio is not None:
        s.hyper_fit_ratio = args.hyper_fit_ratio
    if args.search_fit_ratio is not None:
        s.search_fit_ratio = args.search_fit_ratio
    c0, t0 = time.process_time(), time.perf_counter()
    out = ev.run(events, catalog, emb, cfg, s)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rows = table(out)
    print(f"cut {out.info['cut']}, validation from {out.info['validation_start']}; {wall:.0f}s wall, {cpu:.0f}s CPU; "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| split | use case | served | best single (test) | ratio | popularity | requests | serves |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['split']} | {r['use_case']} | {r['served']:.4f} | {r['best_single']} {r['best_single_recall']:.4f} | "
              f"{r['ratio']} | {r['popularity']:.4f} | {r['requests']} | {r['chosen']} |")
    for uc, b in out.served["blends"].items():
        w = ", ".join(f"{k} {v:g}" for k, v in b["weights"].items() if v)
        oof = (out.gate.get("use_cases", {}).get(uc) or {}).get("out_of_fold") or {}
        bag = " (bagged: the mean of the searches on all and on each half)" if oof.get("bagged") else ""
        print(f"  {uc}: {b['chosen']}{bag}, MMR lambda {b['mmr_lambda']}: {w}")
    if "hyperparameters" in out.info:
        h = out.info["hyperparameters"]
        print("  hyperparameters:", json.dumps(h.get("chosen", {})), f"({len(h.get('trials', []))} trials,",
              f"budget {json.dumps(out.info.get('hyper_budget_seconds'))})")
    print("  weight search budget:", json.dumps(out.info.get("search_budget_seconds")), "CPU s by phase:",
          json.dumps(out.info.get("phase_cpu_seconds")))
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "table": out.table.to_dicts(), "served": out.served, "gate": out.gate, "seconds": out.info["seconds"],
                                              "hyperparameters": out.info.get("hyperparameters"), "cut": out.info["cut"],
                                              "hyper_budget_seconds": out.info.get("hyper_budget_seconds"),
                                              "search_budget_seconds": out.info.get("search_budget_seconds"),
                                              "phase_cpu_seconds": out.info.get("phase_cpu_seconds"),
                                              "wall": wall, "cpu": cpu}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
