"""Model assets: FP-growth itemsets and rules, ALS and BPR factors."""
from itertools import chain

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from recs_assets import io, markdown, modeling
from recs_assets.features import load_matrix
from recs_assets.progress import Progress
from recs_assets.resources import ArtifactStore, Warehouse
from recs_assets.tuning import apply_tuned_fit
from recs_assets import table_meta
from recs_kernels import fpgrowth, rules as rules_kernel

GROUP = "models"


class ItemsetConfig(dg.Config):
    min_support: float = Field(0.005, gt=0, le=1, description="Fraction of baskets")
    max_len: int = Field(4, ge=1, le=10)
    max_itemsets: int = Field(200_000, ge=1, description="Budget: when more itemsets would be frequent, the "
                                                         "support is raised (then max_len lowered) until they fit")


class RulesConfig(dg.Config):
    metric: str = Field("confidence", description="Any rule metric: confidence, lift, leverage, conviction, …")
    min_threshold: float = Field(0.1)
    max_rules: int = Field(500_000, ge=1, description="Budget: only the best rules by the metric are kept")


def mine_bounded(baskets_csr, cfg: ItemsetConfig) -> fpgrowth.Bounded | None:
    """Itemsets within the budget; None when there are no baskets to mine."""
    if baskets_csr.shape[0] == 0 or baskets_csr.shape[1] == 0:
        return None
    return fpgrowth.frequent_itemsets_bounded(baskets_csr, cfg.min_support, max_len=cfg.max_len,
                                              max_itemsets=cfg.max_itemsets)


def mine(baskets_csr, cfg: ItemsetConfig):
    """(itemsets as tuples, support): what the rules and the evaluation read."""
    b = mine_bounded(baskets_csr, cfg)
    if b is None:
        return [], np.zeros(0, np.float64)
    return fpgrowth.itemsets_to_tuples(b.items, b.lengths, baskets_csr.shape[1]), b.counts / float(b.n_baskets)


def budget_metadata(b: fpgrowth.Bounded | None, cfg: ItemsetConfig) -> dict:
    if b is None:
        return {"reason": "no baskets: no purchase has a basket id and no session could be formed",
                "min_support_requested": cfg.min_support, "max_itemsets": cfg.max_itemsets}
    return {"min_support_requested": cfg.min_support, "min_support_used": b.min_count_used / b.n_baskets,
            "min_count_requested": b.min_count_requested, "min_count_used": b.min_count_used,
            "max_len_requested": cfg.max_len, "max_len_used": b.max_len_used or 0,
            "max_itemsets": cfg.max_itemsets, "budget_hit": b.adjusted, "searches": b.probes}


@dg.asset(group_name=GROUP, kinds={"numba", "duckdb"}, deps=["baskets"], pool="duckdb_writer",
          description="Frequent itemsets of the baskets (numba FP-growth); recs.frequent_itemsets")
def frequent_itemsets(context: dg.AssetExecutionContext, config: ItemsetConfig, warehouse: Warehouse,
                      artifacts: ArtifactStore) -> dg.MaterializeResult:
    B = io.load_csr(artifacts, "baskets")
    item_ids = io.load_item_ids(warehouse)
    b = mine_bounded(B, config)
    budget = budget_metadata(b, config)
    if b is None:
        context.log.warning(f"frequent_itemsets: {budget['reason']}; publishing no itemsets")
        itemsets, support = [], np.zeros(0, np.float64)
        lengths, flat = np.zeros(0, np.int32), np.zeros(0, np.int64)
    else:
        if b.adjusted:
            context.log.warning(
                f"frequent_itemsets: more than {config.max_itemsets} itemsets at min_support {config.min_support} / "
                f"max_len {config.max_len}; used min_support {budget['min_support_used']:.6g} "
                f"(count {b.min_count_used} of {b.n_baskets} baskets) / max_len {b.max_len_used}")
        itemsets = fpgrowth.itemsets_to_tuples(b.items, b.lengths, B.shape[1])
        support = b.counts / float(b.n_baskets)
        lengths, flat = b.lengths.astype(np.int32), b.items.astype(np.int64)
    artifacts.save("frequent_itemsets", meta={"n_baskets": B.shape[0], **config.model_dump(), "budget": budget},
                   flat=flat, lengths=lengths, support=np.asarray(support, np.float64))
    table = pl.DataFrame({
        "itemset": id_lists(itemsets, item_ids),
        "length": lengths, "support": np.asarray(support, np.float64),
    }, schema={"itemset": pl.List(pl.String), "length": pl.Int32, "support": pl.Float64})
    n = warehouse.replace_table("frequent_itemsets", table)
    counts = table.group_by("length").len().sort("length")
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "frequent_itemsets"), "itemsets": n, "baskets": B.shape[0], **budget,
                                          "by_length": dg.MetadataValue.md(markdown.frame(counts))})


def load_itemsets(artifacts: ArtifactStore):
    a = artifacts.load("frequent_itemsets")
    bounds = np.concatenate([[0], np.cumsum(a["lengths"])])
    itemsets = [tuple(int(x) for x in a["flat"][bounds[i]:bounds[i + 1]]) for i in range(len(a["lengths"]))]
    return itemsets, a["support"], int(artifacts.meta("frequent_itemsets")["n_baskets"])


def mine_rules(itemsets, support, n_baskets: int, cfg: RulesConfig) -> rules_kernel.Rules:
    """At most cfg.max_rules rules, the best by cfg.metric; none without itemsets."""
    return rules_kernel.association_rules(itemsets, support, max(int(n_baskets), 1), metric=cfg.metric,
                                          min_threshold=cfg.min_threshold, max_rules=cfg.max_rules)


def id_lists(index_tuples, item_ids: np.ndarray) -> pl.Series:
    """Tuples of item indices -> a list[str] column of item ids, built from flat Arrow arrays
    (polars takes ~40 s to build 500K nested Python lists on a busy machine; this, a second)."""
    lens = np.fromiter(map(len, index_tuples), dtype=np.int32, count=len(index_tuples))
    flat = np.fromiter(chain.from_iterable(index_tuples), dtype=np.int64, count=int(lens.sum()))
    offsets = np.zeros(len(lens) + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    values = pa.array(np.asarray(item_ids, dtype=object)[flat].tolist(), type=pa.string())
    return pl.Series(pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets), values))).cast(pl.List(pl.String))


def rule_columns(itemsets, support, n_baskets: int, cfg: RulesConfig) -> dict:
    return mine_rules(itemsets, support, n_baskets, cfg).to_dict()


@dg.asset(group_name=GROUP, kinds={"numba", "duckdb"}, deps=["frequent_itemsets"], pool="duckdb_writer",
          description="Association rules A -> C with support, confidence, lift, leverage, conviction, "
                      "Zhang, Jaccard, certainty, Kulczynski; recs.association_rules")
def association_rules(context: dg.AssetExecutionContext, config: RulesConfig, warehouse: Warehouse,
                      artifacts: ArtifactStore) -> dg.MaterializeResult:
    itemsets, support, n_baskets = load_itemsets(artifacts)
    item_ids = io.load_item_ids(warehouse)
    found = mine_rules(itemsets, support, n_baskets, config)
    cols = found.to_dict()
    if found.n_passing > len(found):
        context.log.warning(f"association_rules: {found.n_passing} rules pass {config.metric} >= "
                            f"{config.min_threshold}; kept the best {len(found)} (max_rules)")
    table = pl.DataFrame({
        "antecedents": id_lists(cols["antecedents"], item_ids),
        "consequents": id_lists(cols["consequents"], item_ids),
        **{k: np.asarray(v, dtype=np.float64) for k, v in cols.items() if k not in ("antecedents", "consequents")},
    })
    table = table.sort("lift", descending=True) if "lift" in table.columns else table
    n = warehouse.replace_table("association_rules", table)
    # the blend's "rules" source, for batch_topn (serving builds the same from rules.parquet)
    io.save_csr(artifacts, "rules", modeling.rules_matrix(cols["antecedents"], cols["consequents"],
                                                          cols["confidence"], len(item_ids)), meta=config.model_dump())
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "association_rules"), 
        "rules": n, "rules_passing_threshold": found.n_passing, "max_rules": config.max_rules,
        "budget_hit": found.n_passing > len(found),
        **({} if itemsets else {"reason": "no frequent itemsets (see frequent_itemsets' metadata)"}),
        "preview": dg.MetadataValue.md(markdown.frame(
            table.head(10).with_columns(pl.col("antecedents").list.join(","), pl.col("consequents").list.join(","))
        )),
    })


def _factor_table(ids: np.ndarray, factors: np.ndarray, id_name: str) -> pl.DataFrame:
    return pl.DataFrame({id_name: pl.Series(ids, dtype=pl.String),
                         "factor": pl.Series(factors.astype(np.float32)).cast(pl.Array(pl.Float32, factors.shape[1]))})


def _factor_check(U: np.ndarray, V: np.ndarray) -> dg.AssetCheckResult:
    finite = bool(np.isfinite(U).all() and np.isfinite(V).all())
    nonzero = bool(np.abs(V).sum() > 0)
    return dg.AssetCheckResult(check_name="finite_factors", passed=finite and nonzero,
                               metadata={"finite": finite, "nonzero": nonzero})


def factor_check_specs(asset: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec("finite_factors", asset=asset, blocking=True,
                              description="Every factor is finite and not all zero")]


def _fit_and_store(name: str, fit, config, warehouse: Warehouse, artifacts: ArtifactStore, log=None):
    m = load_matrix(artifacts)
    report = Progress(log, f"{name} iterations", config.iterations) if log else None
    U, V = fit(m, config, callback=(lambda it, X, Y: report(it + 1)) if report else None)
    artifacts.save(name, meta=config.model_dump(), user_factors=U, item_factors=V)
    prefix = name.removesuffix("_factors")
    with warehouse.connect() as con:
        warehouse.replace_table(f"{prefix}_user_factors", _factor_table(m.user_ids, U, "user_id"), con=con)
        warehouse.replace_table(f"{prefix}_item_factors", _factor_table(m.item_ids, V, "item_id"), con=con)
    yield dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, f"{prefix}_item_factors", f"{prefix}_user_factors"), "users": U.shape[0], "items": V.shape[0], **config.model_dump()})
    yield _factor_check(U, V)


@dg.asset(group_name=GROUP, kinds={"numba", "numpy", "duckdb"}, deps=["interaction_matrix"], pool="duckdb_writer",
          check_specs=factor_check_specs("als_factors"),
          description="Implicit ALS (conjugate gradient, numba) on the decayed confidence matrix; "
                      "recs.als_user_factors, recs.als_item_factors")
def als_factors(context: dg.AssetExecutionContext, config: modeling.ALSParams, warehouse: Warehouse,
                artifacts: ArtifactStore):
    config = apply_tuned_fit(config, artifacts)  # regularization/alpha the last evaluation chose on validation
    yield from _fit_and_store("als_factors", modeling.fit_als, config, warehouse, artifacts, log=context.log.info)


@dg.asset(group_name=GROUP, kinds={"numba", "numpy", "duckdb"}, deps=["interaction_matrix"], pool="duckdb_writer",
          check_specs=factor_check_specs("bpr_factors"),
          description="BPR (Hogwild SGD, numba) with item bias folded into the factors; "
                      "recs.bpr_user_factors, recs.bpr_item_factors")
def bpr_factors(context: dg.AssetExecutionContext, config: modeling.BPRParams, warehouse: Warehouse,
                artifacts: ArtifactStore):
    yield from _fit_and_store("bpr_factors", modeling.fit_bpr, config, warehouse, artifacts, log=context.log.info)
