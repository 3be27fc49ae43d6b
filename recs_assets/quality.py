"""Evaluation of what is served on a validation window and a test split, and the checks that gate a release."""
import traceback

import dagster as dg
import polars as pl
from pydantic import Field

from recs_assets import evaluation as ev
from recs_assets import gates, io, markdown, memory
from recs_assets.outputs import N_SHARDS, part_path
from recs_assets.resources import ArtifactStore, Warehouse
from recs_assets import table_meta

GROUP = "evaluation"
MODEL_ASSETS = ["interaction_matrix", "als_factors", "bpr_factors", "covisitation", "item_similarity", "popularity",
                "frequent_itemsets", "association_rules", "catalog_embeddings"]


class EvaluationConfig(dg.Config):
    """How the evaluation samples and tunes. The models it re-fits use the configs the model
    assets ran with (their recorded artifacts), never a copy of their own."""

    cut: str = Field("", description="Train before this ISO date, test from it; empty (or outside the data): the time by "
                                     "which 90% of the events happened")
    valid_days: float = Field(30.0, gt=0, description="Validation window [cut - valid_days, cut) the served values are tuned on "
                                                      "(at most half the time before the cut)")
    max_users: int = Field(250, ge=10, description="Seeded sample of requests per use case and split")
    fit_users: int = Field(50_000, ge=0, description="The evaluation's models are fit on at most this many users (a seeded "
                                                    "sample holding every replayed user; guests' baskets at the same share): "
                                                    "its cost stays bounded as the data grows. 0: every user")
    warm_start: bool = Field(True, description="The test split's ALS/BPR start from the validation fit and run a fifth of "
                                               "their iterations (recorded under approximations)")
    recent_events: int = Field(10, ge=1, le=200, description="A known user's last events before the period, sent as `recent`")
    tune: bool = Field(True, description="Tune blend weights and MMR lambda on the validation window; else serve the configured ones")
    budget_seconds: float = Field(10.0, ge=0, description="Time for the weight search (the recorded replay is scored per trial)")
    use_case_weights: dict[str, float] = Field(default_factory=lambda: {"homepage": 2.0},
                                               description="Weight of each use case's recall@10 in the objective (others 1)")
    mmr_lambdas: list[float] = Field(default_factory=lambda: [1.0, 0.8], description="MMR lambdas tried on the served path "
                                      "(on the first 100 requests per use case; 1 = MMR off, scored from the recorded replay, "
                                      "each other value is one partial replay)")
    min_ratio_over_popularity: float = Field(1.0, gt=0, description="The served objective on validation must exceed "
                                                                    "all-time popularity's times this")
    seed: int = 0
    hyper_budget_seconds: float = Field(20.0, ge=0, description="CPU seconds for ALS regularization/alpha, history decay "
                                        "and recent_weight (a re-fit and a replay per trial; 0: the configured values)")


def _inline_chart(test: pl.DataFrame):
    """recall@10 of every model on the first use case, short enough to show on the asset page."""
    uc = test["use_case"][0]
    rows = test.filter(pl.col("use_case") == uc)
    return table_meta.bars(rows["model"], rows["recall@10"], title=f"recall@10, {uc} (test)")


def _plot(table: pl.DataFrame) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.filter((pl.col("split") == "test"))
    ucs = t["use_case"].unique(maintain_order=True).to_list()
    models = t["model"].unique(maintain_order=True).to_list()
    fig, ax = plt.subplots(figsize=(8, 3))
    width = 0.8 / max(1, len(models))
    for j, m in enumerate(models):
        sub = {r["use_case"]: r["recall@10"] for r in t.filter(pl.col("model") == m).iter_rows(named=True)}
        ax.bar([i + j * width for i in range(len(ucs))], [sub.get(u, 0.0) for u in ucs], width, label=m)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ucs))], ucs)
    ax.set_ylabel("recall@10 (test)")
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    return markdown.figure(fig, "recall")


def _curve(curve: list, points: int = 25) -> pl.DataFrame:
    if not curve:
        return pl.DataFrame({"trial": [], "objective": [], "best": []})
    step = max(1, len(curve) // points)
    picked = curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else [])
    return pl.DataFrame({"trial": [c[0] for c in picked], "objective": [round(c[1], 5) for c in picked],
                         "best": [round(c[2], 5) for c in picked]})


@dg.asset(group_name=GROUP, kinds={"numba", "duckdb"}, deps=["interactions", "catalog", *MODEL_ASSETS], pool="duckdb_writer",
          check_specs=[dg.AssetCheckSpec("served_beats_popularity", asset="evaluation", blocking=True,
                                         description="On the validation window the served answer beats all-time popularity "
                                                     "(and is at least the best single source, else that source is served)")],
          description="Evaluates what is served: train-period models (the model assets' own configs) published as a release, "
                      "loaded into the Recommender, the held-out period replayed per use case (homepage, session, item page, "
                      "cart, cold start). Blend weights and MMR lambda tuned on a validation window (artifact tuned_blend, read "
                      "by batch_topn and the release); the test split reported untouched; recs.evaluation")
def evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, warehouse: Warehouse, artifacts: ArtifactStore):
    events = io.load_events(warehouse, ev.EVENT_COLUMNS)
    memory.release()  # the conversion's buffers (0.55 GiB at 20M events)
    catalog = io.load_catalog(warehouse)
    emb = artifacts.load("catalog_embeddings", "vectors", "item_ids")
    if not (len(emb["item_ids"]) == catalog.height and (emb["item_ids"] == catalog["item_id"].to_numpy()).all()):
        raise RuntimeError("catalog_embeddings does not match the catalog; re-materialize it")
    cfg = ev.configs_from_artifacts(artifacts)
    settings = ev.Settings(cut=config.cut or None, valid_days=config.valid_days, max_users=config.max_users,
                           fit_users=config.fit_users, warm_start=config.warm_start,
                           recent_events=config.recent_events, tune=config.tune, budget_seconds=config.budget_seconds,
                           use_case_weights=dict(config.use_case_weights), mmr_lambdas=tuple(config.mmr_lambdas), seed=config.seed,
                           min_ratio_over_popularity=config.min_ratio_over_popularity,
                           hyper_budget_seconds=config.hyper_budget_seconds)
    try:
        out = ev.run(events, catalog, emb["vectors"], cfg, settings, log=context.log.info)
    except Exception as exc:  # noqa: BLE001 - data the protocol cannot evaluate must not stop the release
        context.log.error(f"evaluation failed, serving the configured blend: {traceback.format_exc()}")
        out = ev.not_evaluated(cfg, f"evaluation failed: {type(exc).__name__}: {exc}")
    artifacts.save("tuned_blend", meta={**out.served, "tuned": out.served["source"] != "configured",
                                        "cut": out.info["cut"], "validation_start": out.info["validation_start"]})
    warehouse.replace_table("evaluation", out.table.with_columns(pl.lit(out.info["cut"] or None, pl.String).str.to_datetime().alias("cut")))
    test = out.table.filter(pl.col("split") == "test").drop("split")
    served_test = {r["use_case"]: r["recall@10"] for r in test.filter(pl.col("model") == "served").iter_rows(named=True)}
    skipped = {**{f"validation {k}": v for k, v in out.info["validation_skipped"].items()},
               **{f"test {k}": v for k, v in out.info["test_skipped"].items()}}
    yield dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "evaluation"), 
        "cut": out.info["cut"], "validation_start": out.info["validation_start"],
        "served_source": out.served["source"], "mmr_lambda": out.served["mmr_lambda"],
        "weights": dg.MetadataValue.json(out.served["weights"]),
        "blends": dg.MetadataValue.json(out.served["blends"]),  # per use case: weights, mmr_lambda, chosen
        "validation_curves": dg.MetadataValue.json({uc: _curve(c, 12).rows() for uc, c in out.info.get("validation_curves", {}).items()}),
        "test": dg.MetadataValue.md(markdown.frame(test, limit=60)) if test.height else "no test requests",
        "validation": dg.MetadataValue.md(markdown.frame(out.table.filter(pl.col("split") == "validation").drop("split"), limit=60))
        if out.table.height else "no validation requests",
        "validation_curve": dg.MetadataValue.md(markdown.frame(_curve(out.curve))),
        "validation_mmr_lambda": dg.MetadataValue.json(out.info.get("validation_mmr_lambda", {})),
        "hyperparameters": dg.MetadataValue.json(out.info.get("hyperparameters", {})),  # chosen, start, every trial
        "skipped_use_cases": dg.MetadataValue.json(skipped),
        "requests": dg.MetadataValue.json({"validation": out.info["validation_cases"], "test": out.info["test_cases"]}),
        "configs_used": dg.MetadataValue.json(out.info["configs"]),
        "seconds": dg.MetadataValue.json(out.info["seconds"]),
        "phase_seconds": dg.MetadataValue.json(out.info.get("phase_seconds", {})),
        "phase_cpu_seconds": dg.MetadataValue.json(out.info.get("phase_cpu_seconds", {})),  # every thread of the process
        "budgets": dg.MetadataValue.json({k: out.info.get(k) for k in ("hyper_budget_seconds", "search_budget_seconds")}),
        "fit_seconds": dg.MetadataValue.json(out.info.get("fit_seconds", {})),
        "approximations": dg.MetadataValue.json(out.info.get("approximations", {})),
        **({"error": out.info["error"]} if "error" in out.info else {}),
        **{f"served_{uc}_recall@10": float(v) for uc, v in served_test.items()},
        **({"plot": dg.MetadataValue.md(_plot(out.table))} if test.height else {}),
        **({"recall_chart": _inline_chart(test)} if test.height else {}),
    })
    yield dg.AssetCheckResult(passed=bool(out.gate["passed"]), metadata={
        k: (float(v) if isinstance(v, float) else v) for k, v in out.gate.items()})


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
    # scanned, not read: a shard's part holds 25M rows at 1M users
    items = pl.scan_parquet(parts).select("item_id")
    rows = items.select(pl.len()).collect().item()
    known = pl.Series("item_id", artifacts.load("interaction_matrix", "item_ids")["item_ids"], dtype=pl.String)
    missing = items.unique().filter(~pl.col("item_id").is_in(known.implode())).select(pl.len()).collect(engine="streaming").item()
    return dg.AssetCheckResult(passed=rows > 0 and missing == 0, metadata={"rows": rows, "unknown_ids": missing})


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


CHECKS = [similar_items_valid, batch_topn_valid, covisitation_valid, popularity_valid, interactions_valid,
          *gates.CHECKS]
