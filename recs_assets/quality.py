"""Offline evaluation on a temporal hold-out, and the checks that gate a release."""
from datetime import datetime

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from recs_assets import evaluation as ev
from recs_assets import io, markdown, modeling
from recs_assets.features import basket_matrix, load_matrix
from recs_assets.models import ItemsetConfig, mine
from recs_assets.outputs import N_SHARDS, TopNConfig, part_path
from recs_assets.resources import ArtifactStore, Warehouse

GROUP = "evaluation"
DEFAULT_CUT = "2011-11-01"


class EvaluationConfig(dg.Config):
    cut: str = Field(DEFAULT_CUT, description="Train before this date, test after it; if the data does not span "
                                              "it, the last 10% of the time range is held out")
    k: int = Field(10, ge=1, le=100)
    max_test_users: int = Field(20_000, ge=100, description="A seeded sample of test users beyond this many")
    min_ratio_over_popularity: float = Field(1.0, description="Each model's recall@k must exceed popularity's times this")
    matrix: modeling.MatrixParams = Field(default_factory=modeling.MatrixParams)
    als: modeling.ALSParams = Field(default_factory=modeling.ALSParams)
    bpr: modeling.BPRParams = Field(default_factory=modeling.BPRParams)
    covis: modeling.CovisParams = Field(default_factory=modeling.CovisParams)
    similarity: modeling.SimilarityParams = Field(default_factory=modeling.SimilarityParams)
    popularity: modeling.PopularityParams = Field(default_factory=modeling.PopularityParams)
    itemsets: ItemsetConfig = Field(default_factory=ItemsetConfig)
    topn: TopNConfig = Field(default_factory=TopNConfig)


def resolve_cut(events: pl.DataFrame, cut: str) -> datetime:
    lo, hi = events["ts"].min(), events["ts"].max()
    wanted = datetime.fromisoformat(cut)
    if lo < wanted < hi:
        return wanted
    q = events["ts"].sort().gather(int(events.height * 0.9))[0]
    return q


def _plot(table: pl.DataFrame, k: int) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(table["model"].to_list(), table[f"recall@{k}"].to_list(), color="#4c72b0")
    ax.set_ylabel(f"recall@{k}")
    ax.set_title("Temporal hold-out")
    fig.tight_layout()
    return markdown.figure(fig, "recall")


@dg.asset(group_name=GROUP, kinds={"numba", "duckdb"}, deps=["interactions", "catalog"], pool="duckdb_writer",
          check_specs=[dg.AssetCheckSpec("models_beat_popularity", asset="evaluation", blocking=True,
                                         description="Every model's recall@k beats popularity on the hold-out")],
          description="Temporal hold-out: every model re-fit on the training period only; recall@k, ndcg@k and "
                      "coverage for popularity, trending, ALS, BPR, co-visitation, rules and the served blend; recs.evaluation")
def evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, warehouse: Warehouse):
    events = io.load_events(warehouse)
    items = io.load_item_ids(warehouse)
    cut = resolve_cut(events, config.cut)

    def baskets_fn(train):
        B, _ = basket_matrix(train, items)
        return B, B.shape[0]

    table, info = ev.evaluate(
        events, items, cut, matrix_p=config.matrix, als_p=config.als, bpr_p=config.bpr, covis_p=config.covis,
        pop_p=config.popularity, blend_p=config.topn.blend, baskets_fn=baskets_fn,
        fpgrowth_fn=lambda B: mine(B, config.itemsets), sim_p=config.similarity, k=config.k,
        max_test_users=config.max_test_users,
    )
    warehouse.replace_table("evaluation", table.with_columns(pl.lit(cut).alias("cut")))
    rk = f"recall@{config.k}"
    pop = float(table.filter(pl.col("model") == "popularity")[rk][0])
    # "trending" is itself a popularity baseline (recent sales), compared but not required to win.
    beaten = {r["model"]: r[rk] > pop * config.min_ratio_over_popularity
              for r in table.iter_rows(named=True) if r["model"] not in ("popularity", "trending")}
    yield dg.MaterializeResult(metadata={
        **info, "metrics": dg.MetadataValue.md(markdown.frame(table)), "plot": dg.MetadataValue.md(_plot(table, config.k)),
        **{f"{r['model']}_{rk}": float(r[rk]) for r in table.iter_rows(named=True)},
    })
    yield dg.AssetCheckResult(passed=all(beaten.values()), metadata={
        "popularity": pop, "required_ratio": config.min_ratio_over_popularity,
        "failing": ", ".join(m for m, ok in beaten.items() if not ok) or "none"})


def _ids_in_catalog(warehouse: Warehouse, table: str, columns: list[str]) -> dg.AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        rows = con.execute(f"SELECT count(*) FROM recs.{table}").fetchall()[0][0]
        missing = sum(
            con.execute(f"SELECT count(*) FROM recs.{table} t ANTI JOIN recs.catalog c ON t.{col} = c.item_id").fetchall()[0][0]
            for col in columns)
    return dg.AssetCheckResult(passed=rows > 0 and missing == 0, metadata={"rows": rows, "unknown_ids": missing})


@dg.asset_check(asset="similar_items", blocking=True, description="Non-empty; every id is in the catalog")
def similar_items_valid(warehouse: Warehouse) -> dg.AssetCheckResult:
    return _ids_in_catalog(warehouse, "similar_items", ["item_id", "similar_item_id"])


@dg.asset_check(asset="batch_topn", blocking=True,
                description="Non-empty; every item id is in the catalog (reads the shard's Parquet part: shards never open the warehouse)")
def batch_topn_valid(context: dg.AssetCheckExecutionContext, artifacts: ArtifactStore) -> dg.AssetCheckResult:
    shards = [int(context.partition_key)] if context.has_partition_key else list(range(N_SHARDS))
    parts = [part_path(k) for k in shards]
    if not all(p.exists() for p in parts):
        return dg.AssetCheckResult(passed=False, metadata={"missing": ", ".join(str(p) for p in parts if not p.exists())})
    items = pl.read_parquet(parts, columns=["item_id"])["item_id"]
    known = set(load_matrix(artifacts).item_ids.tolist())
    missing = sum(1 for item in items.unique().to_list() if item not in known)
    return dg.AssetCheckResult(passed=items.len() > 0 and missing == 0, metadata={"rows": items.len(), "unknown_ids": missing})


@dg.asset_check(asset="covisitation", blocking=True, description="Non-empty; every id is in the catalog")
def covisitation_valid(warehouse: Warehouse) -> dg.AssetCheckResult:
    return _ids_in_catalog(warehouse, "covisitation", ["item_id", "neighbor_id"])


@dg.asset_check(asset="popularity", blocking=True, description="Non-empty; every id is in the catalog")
def popularity_valid(warehouse: Warehouse) -> dg.AssetCheckResult:
    return _ids_in_catalog(warehouse, "popularity", ["item_id"])


@dg.asset_check(asset="interactions", description="Kept + quarantined rows add up; no event outside view/add/purchase")
def interactions_valid(warehouse: Warehouse) -> dg.AssetCheckResult:
    with warehouse.connect(read_only=True) as con:
        bad = con.execute("SELECT count(*) FROM recs.interactions WHERE event NOT IN ('view', 'add', 'purchase')").fetchall()[0][0]
        rows = con.execute("SELECT count(*) FROM recs.interactions").fetchall()[0][0]
    return dg.AssetCheckResult(passed=rows > 0 and bad == 0, metadata={"rows": rows, "bad_events": bad})


CHECKS = [similar_items_valid, batch_topn_valid, covisitation_valid, popularity_valid, interactions_valid]
