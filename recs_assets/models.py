"""Model assets: FP-growth itemsets and rules, ALS and BPR factors."""
import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from recs_assets import io, markdown, modeling
from recs_assets.features import load_matrix
from recs_assets.resources import ArtifactStore, Warehouse
from recs_kernels import fpgrowth, rules as rules_kernel

GROUP = "models"


class ItemsetConfig(dg.Config):
    min_support: float = Field(0.005, gt=0, le=1, description="Fraction of baskets")
    max_len: int = Field(4, ge=1, le=10)


class RulesConfig(dg.Config):
    metric: str = Field("confidence", description="Any rule metric: confidence, lift, leverage, conviction, …")
    min_threshold: float = Field(0.1)


def mine(baskets_csr, cfg: ItemsetConfig):
    return fpgrowth.frequent_itemsets(baskets_csr, cfg.min_support, max_len=cfg.max_len)


@dg.asset(group_name=GROUP, kinds={"numba", "duckdb"}, deps=["baskets"], pool="duckdb_writer",
          description="Frequent itemsets of the baskets (numba FP-growth); recs.frequent_itemsets")
def frequent_itemsets(context: dg.AssetExecutionContext, config: ItemsetConfig, warehouse: Warehouse,
                      artifacts: ArtifactStore) -> dg.MaterializeResult:
    B = io.load_csr(artifacts, "baskets")
    item_ids = io.load_item_ids(warehouse)
    itemsets, support = mine(B, config)
    lengths = np.array([len(s) for s in itemsets], dtype=np.int32)
    flat = np.array([i for s in itemsets for i in s], dtype=np.int64)
    artifacts.save("frequent_itemsets", meta={"n_baskets": B.shape[0], **config.model_dump()},
                   flat=flat, lengths=lengths, support=np.asarray(support, np.float64))
    table = pl.DataFrame({
        "itemset": [[item_ids[i] for i in s] for s in itemsets],
        "length": lengths, "support": np.asarray(support, np.float64),
    }, schema={"itemset": pl.List(pl.String), "length": pl.Int32, "support": pl.Float64})
    n = warehouse.replace_table("frequent_itemsets", table)
    counts = table.group_by("length").len().sort("length")
    return dg.MaterializeResult(metadata={"itemsets": n, "baskets": B.shape[0],
                                          "by_length": dg.MetadataValue.md(markdown.frame(counts))})


def load_itemsets(artifacts: ArtifactStore):
    a = artifacts.load("frequent_itemsets")
    bounds = np.concatenate([[0], np.cumsum(a["lengths"])])
    itemsets = [tuple(int(x) for x in a["flat"][bounds[i]:bounds[i + 1]]) for i in range(len(a["lengths"]))]
    return itemsets, a["support"], int(artifacts.meta("frequent_itemsets")["n_baskets"])


def rule_columns(itemsets, support, n_baskets: int, cfg: RulesConfig) -> dict:
    return rules_kernel.association_rules(itemsets, support, n_baskets, metric=cfg.metric,
                                          min_threshold=cfg.min_threshold).to_dict()


@dg.asset(group_name=GROUP, kinds={"numba", "duckdb"}, deps=["frequent_itemsets"], pool="duckdb_writer",
          description="Association rules A -> C with support, confidence, lift, leverage, conviction, "
                      "Zhang, Jaccard, certainty, Kulczynski; recs.association_rules")
def association_rules(context: dg.AssetExecutionContext, config: RulesConfig, warehouse: Warehouse,
                      artifacts: ArtifactStore) -> dg.MaterializeResult:
    itemsets, support, n_baskets = load_itemsets(artifacts)
    item_ids = io.load_item_ids(warehouse)
    cols = rule_columns(itemsets, support, n_baskets, config)
    table = pl.DataFrame({
        "antecedents": [[item_ids[i] for i in a] for a in cols["antecedents"]],
        "consequents": [[item_ids[i] for i in c] for c in cols["consequents"]],
        **{k: np.asarray(v, dtype=np.float64) for k, v in cols.items() if k not in ("antecedents", "consequents")},
    }, schema_overrides={"antecedents": pl.List(pl.String), "consequents": pl.List(pl.String)})
    table = table.sort("lift", descending=True) if "lift" in table.columns else table
    n = warehouse.replace_table("association_rules", table)
    return dg.MaterializeResult(metadata={
        "rules": n, "preview": dg.MetadataValue.md(markdown.frame(
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


def _fit_and_store(name: str, fit, config, warehouse: Warehouse, artifacts: ArtifactStore):
    m = load_matrix(artifacts)
    U, V = fit(m, config)
    artifacts.save(name, meta=config.model_dump(), user_factors=U, item_factors=V)
    prefix = name.removesuffix("_factors")
    with warehouse.connect() as con:
        warehouse.replace_table(f"{prefix}_user_factors", _factor_table(m.user_ids, U, "user_id"), con=con)
        warehouse.replace_table(f"{prefix}_item_factors", _factor_table(m.item_ids, V, "item_id"), con=con)
    yield dg.MaterializeResult(metadata={"users": U.shape[0], "items": V.shape[0], **config.model_dump()})
    yield _factor_check(U, V)


@dg.asset(group_name=GROUP, kinds={"numba", "numpy", "duckdb"}, deps=["interaction_matrix"], pool="duckdb_writer",
          check_specs=factor_check_specs("als_factors"),
          description="Implicit ALS (conjugate gradient, numba) on the decayed confidence matrix; "
                      "recs.als_user_factors, recs.als_item_factors")
def als_factors(context: dg.AssetExecutionContext, config: modeling.ALSParams, warehouse: Warehouse,
                artifacts: ArtifactStore):
    yield from _fit_and_store("als_factors", modeling.fit_als, config, warehouse, artifacts)


@dg.asset(group_name=GROUP, kinds={"numba", "numpy", "duckdb"}, deps=["interaction_matrix"], pool="duckdb_writer",
          check_specs=factor_check_specs("bpr_factors"),
          description="BPR (Hogwild SGD, numba) with item bias folded into the factors; "
                      "recs.bpr_user_factors, recs.bpr_item_factors")
def bpr_factors(context: dg.AssetExecutionContext, config: modeling.BPRParams, warehouse: Warehouse,
                artifacts: ArtifactStore):
    yield from _fit_and_store("bpr_factors", modeling.fit_bpr, config, warehouse, artifacts)
