"""Release gates: blocking checks that stop a degenerate model from being published.

Every check passing is not enough when the data itself is poisoned (one event dated 2999
makes every real event ~1,000 years old: decayed weights vanish, ALS user factors collapse to
zero, trending becomes the all-time bestsellers). These checks look at what the models
*produced*, so they catch such failures whatever their cause. Each is a pure function over
arrays (tested directly) wrapped in a blocking asset check; a failing check stops the run, and
the release, the current one stays live.
"""

from datetime import timedelta

import dagster as dg
import numpy as np
import polars as pl

from recs_assets import io, modeling
from recs_assets.outputs import N_SHARDS, part_path
from recs_assets.resources import ArtifactStore, Warehouse

MIN_FACTOR_NORM = 1e-4       # median row norm below this = collapsed factors
MAX_ZERO_ROW_SHARE = 0.5     # users whose factor (or weight) row is all zero
MAX_IDENTICAL_TOPN_SHARE = 0.5
MIN_USERS = 10               # below this many users, "most users" says nothing
ZERO = 1e-12


def _result(failures: list[str], metadata: dict) -> dg.AssetCheckResult:
    meta = {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in metadata.items()}
    return dg.AssetCheckResult(passed=not failures, metadata={**meta, "failures": "; ".join(failures) or "none"})


def nonfinite(**arrays: np.ndarray) -> list[str]:
    """Names (with counts) of arrays holding NaN or inf."""
    out = []
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind in "fc":
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                out.append(f"{name}: {bad} NaN/inf")
    return out


def factor_gate(U: np.ndarray, V: np.ndarray) -> tuple[list[str], dict]:
    failures = nonfinite(user_factors=U, item_factors=V)
    un = np.linalg.norm(np.nan_to_num(U), axis=1) if U.size else np.zeros(0)
    vn = np.linalg.norm(np.nan_to_num(V), axis=1) if V.size else np.zeros(0)
    u_med = float(np.median(un)) if un.size else 0.0
    v_med = float(np.median(vn)) if vn.size else 0.0
    zero_share = float(np.mean(un <= ZERO)) if un.size else 1.0
    if u_med < MIN_FACTOR_NORM:
        failures.append(f"median user factor norm {u_med:.3g} < {MIN_FACTOR_NORM:g}")
    if v_med < MIN_FACTOR_NORM:
        failures.append(f"median item factor norm {v_med:.3g} < {MIN_FACTOR_NORM:g}")
    if zero_share > MAX_ZERO_ROW_SHARE:
        failures.append(f"{zero_share:.0%} of users have all-zero factors (max {MAX_ZERO_ROW_SHARE:.0%})")
    return failures, {"median_user_norm": u_med, "median_item_norm": v_med, "zero_user_share": zero_share}


def weights_gate(W) -> tuple[list[str], dict]:
    """Users whose whole (decayed) history weighs nothing: ages measured from a wrong as-of."""
    failures = nonfinite(weights=W.data)
    per_user = np.zeros(W.shape[0])
    if W.nnz:
        np.maximum.at(per_user, np.repeat(np.arange(W.shape[0]), np.diff(W.indptr)), np.abs(np.nan_to_num(W.data)))
    share = float(np.mean(per_user <= ZERO)) if W.shape[0] else 0.0
    if W.shape[0] and share > MAX_ZERO_ROW_SHARE:
        failures.append(f"{share:.0%} of users have an all-zero weight row (max {MAX_ZERO_ROW_SHARE:.0%})")
    return failures, {"users": int(W.shape[0]), "zero_user_share": share}


def trending_gate(glob: np.ndarray, trending: np.ndarray, span: timedelta, trending_days: float) -> tuple[list[str], dict]:
    """Trending must be recent, not all-time: once the data is longer than the window, a trending
    vector that is empty or equal to the global one means the window missed the data."""
    failures = nonfinite(global_score=glob, trending=trending)
    longer = span > timedelta(days=trending_days)
    empty = not np.any(np.nan_to_num(trending) > 0)
    same = bool(glob.shape == trending.shape and np.allclose(glob, trending))
    if longer and empty:
        failures.append(f"no item sold in the {trending_days:g}-day trending window of a {span.days}-day data set")
    elif longer and same:
        failures.append("trending equals all-time popularity although the data spans more than the window")
    return failures, {"span_days": float(span.total_seconds() / 86400), "trending_days": float(trending_days),
                      "trending_items": int(np.count_nonzero(np.nan_to_num(trending) > 0))}


def topn_gate(topn: pl.DataFrame | pl.LazyFrame) -> tuple[list[str], dict]:
    """topn: user_id, rank, item_id. The most common whole list, as a share of users.

    Each user's list is one 64-bit fingerprint (every row's (rank, item) hashed, xor-ed: equal
    lists, equal fingerprints), counted without building the lists: a sort and a list per user
    of a 25M-row shard (1M users) took 2.4 GiB."""
    per_user = (topn.lazy().group_by("user_id")
                .agg(pl.struct("rank", "item_id").hash(seed=7).bitwise_xor().alias("fingerprint")))
    c = (per_user.group_by("fingerprint").agg(pl.len().alias("n"))
         .select(pl.col("n").sum().alias("users"), pl.col("n").max().alias("top")).collect(engine="streaming"))
    users = int(c["users"][0] or 0)
    if users == 0:
        return [], {"users": 0, "identical_share": 0.0}
    share = int(c["top"][0]) / users
    failures = []
    if users >= MIN_USERS and share > MAX_IDENTICAL_TOPN_SHARE:
        failures.append(f"{share:.0%} of users get the same top-N (max {MAX_IDENTICAL_TOPN_SHARE:.0%})")
    return failures, {"users": users, "identical_share": float(share)}


def _factor_check(name: str):
    @dg.asset_check(asset=name, name=f"{name}_not_degenerate", blocking=True,
                    description="Finite; median user and item factor norms not near zero; most users' factors not zero")
    def check(artifacts: ArtifactStore) -> dg.AssetCheckResult:
        a = artifacts.load(name, "user_factors", "item_factors")
        return _result(*factor_gate(a["user_factors"], a["item_factors"]))
    return check


@dg.asset_check(asset="interaction_matrix", blocking=True,
                description="Finite weights; most users' decayed history weighs more than zero (ages from a sane as-of)")
def interaction_weights_alive(artifacts: ArtifactStore) -> dg.AssetCheckResult:
    failures, meta = weights_gate(io.load_csr(artifacts, "interaction_matrix"))
    return _result(failures, {**meta, "as_of": str(artifacts.meta("interaction_matrix").get("as_of"))})


@dg.asset_check(asset="popularity", blocking=True,
                description="Finite scores; trending is not empty nor all-time popularity when the data is longer than the window")
def trending_is_recent(warehouse: Warehouse, artifacts: ArtifactStore) -> dg.AssetCheckResult:
    pop = artifacts.load("popularity", "global_score", "trending")
    meta = artifacts.meta("popularity")
    with warehouse.connect(read_only=True) as con:
        lo, hi = con.execute("SELECT min(ts), max(ts) FROM recs.interactions").fetchall()[0]
    if lo is None:
        return _result(nonfinite(**pop), {"span_days": 0.0})
    as_of = modeling.resolve_as_of(pl.DataFrame({"ts": [hi]}), meta.get("as_of"))
    params = modeling.PopularityParams.model_validate({k: v for k, v in meta.items() if k in modeling.PopularityParams.model_fields})
    failures, out = trending_gate(pop["global_score"], pop["trending"], as_of - lo, params.trending_days)
    return _result(failures, {**out, "as_of": str(as_of)})


@dg.asset_check(asset="batch_topn", blocking=True,
                description="Top-N is personal: most users do not get the identical list (reads the shard's part)")
def topn_is_personal(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    shards = [int(context.partition_key)] if context.has_partition_key else list(range(N_SHARDS))
    parts = [p for p in (part_path(k) for k in shards) if p.exists()]
    topn = pl.scan_parquet(parts).select("user_id", "rank", "item_id") if parts else pl.DataFrame(
        schema={"user_id": pl.String, "rank": pl.Int32, "item_id": pl.String})
    return _result(*topn_gate(topn))


@dg.asset_check(asset="item_similarity", blocking=True, description="Every released score is finite")
def item_similarity_finite(artifacts: ArtifactStore) -> dg.AssetCheckResult:
    return _result(nonfinite(scores=io.load_csr(artifacts, "item_similarity").data), {})


@dg.asset_check(asset="covisitation", blocking=True, description="Every released score is finite")
def covisitation_finite(artifacts: ArtifactStore) -> dg.AssetCheckResult:
    return _result(nonfinite(scores=io.load_csr(artifacts, "covisitation").data), {})


@dg.asset_check(asset="catalog_embeddings", blocking=True, description="Every released embedding is finite")
def embeddings_finite(artifacts: ArtifactStore) -> dg.AssetCheckResult:
    return _result(nonfinite(vectors=artifacts.load("catalog_embeddings", "vectors")["vectors"]), {})


CHECKS = [_factor_check("als_factors"), _factor_check("bpr_factors"), interaction_weights_alive, trending_is_recent,
          topn_is_personal, item_similarity_finite, covisitation_finite, embeddings_finite]
