"""Model building shared by the production assets and the offline evaluation.

The evaluation re-fits everything on the training period with exactly these functions, so
its numbers describe what the pipeline ships.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import polars as pl
import scipy.sparse as sp
import dagster as dg
from pydantic import Field

from recs_kernels import als, blend, bpr, covis

SESSION_GAP_MINUTES = 30.0


class MatrixParams(dg.Config):
    decay_days: float = Field(90.0, gt=0, description="Time constant of the exponential decay of interaction weights (days)")
    view_weight: float = Field(0.2, ge=0)
    add_weight: float = Field(0.5, ge=0)
    purchase_weight: float = Field(1.0, ge=0)
    as_of: str | None = Field(None, description="ISO time ages are measured from (the run's as-of time); "
                                                "default the newest kept event. Later events are left out")

    def event_weights(self) -> dict[str, float]:
        """The one event-weight table: the matrix, co-visitation and item-similarity pairs, and
        (through the release contract) a request's recent events all weigh events by it."""
        return {"view": self.view_weight, "add": self.add_weight, "purchase": self.purchase_weight}


# The default table (MatrixParams' defaults) for callers not given the configured one.
EVENT_WEIGHTS = MatrixParams().event_weights()


class ALSParams(dg.Config):
    factors: int = Field(64, ge=1, le=1024)
    iterations: int = Field(15, ge=1, le=200)
    regularization: float = Field(3.0, ge=0)
    alpha: float = Field(3.0, gt=0)
    seed: int = 0


class BPRParams(dg.Config):
    factors: int = Field(64, ge=1, le=1024)
    iterations: int = Field(100, ge=1, le=2000)
    learning_rate: float = Field(0.05, gt=0)
    regularization: float = Field(0.01, ge=0)
    seed: int = 0
    tol: float | None = Field(0.01, ge=0, description="Stop once an epoch's loss is less than this (relative) "
                              "below the 5 before it; null runs every iteration")


class CovisParams(dg.Config):
    time_decay_hours: float = Field(24.0, gt=0)
    top_k: int = Field(50, ge=1, le=1000)
    session_gap_minutes: float = Field(SESSION_GAP_MINUTES, gt=0, description="Events without a basket id: a "
                                       "user's session ends after this long without an event")


class SimilarityParams(dg.Config):
    """Item-item similarity from each user's whole history (the blend's neighbourhood source)."""

    decay_days: float = Field(30.0, gt=0, description="Pairs of a user's events further apart in time weigh less")
    window: int = Field(200, ge=1, description="Each event pairs with at most this many time-nearest events")
    top_k: int = Field(100, ge=1, le=1000)


class PopularityParams(dg.Config):
    trending_days: float = Field(14.0, gt=0, description="Window of the trending score (days before the last event)")
    top_n: int = Field(100, ge=1, description="Items kept per scope")
    as_of: str | None = Field(None, description="ISO time the trending window ends at; default the newest kept event")


class BlendParams(dg.Config):
    """Weights of the standardised sources (``recs_kernels.blend.SOURCES``): the one place of
    their defaults. The release contract carries the values a run used."""

    als: float = Field(1.0, ge=0)
    bpr: float = Field(0.5, ge=0)
    item_sim: float = Field(0.1, ge=0, description="Item-item similarity from users' whole histories")
    # sparse sources' z-scores are large on their few non-zeros: small weights already count
    covis: float = Field(0.03, ge=0, description="Co-visitation within baskets/sessions")
    rules: float = Field(0.03, ge=0, description="Single-antecedent association rules (confidence)")
    content: float = Field(0.05, ge=0, description="Text embeddings: the history's direction")
    trending: float = Field(1.0, ge=0)
    popularity: float = Field(0.0, ge=0)

    def weights(self) -> dict[str, float]:
        return self.model_dump()


class RequestParams(dg.Config):
    """Request-time knobs of the served answer (carried by the release contract)."""

    mmr_lambda: float = Field(0.8, ge=0, le=1, description="MMR trade-off: 1 = relevance only")
    neighbours_per_seed: int = Field(20, ge=1, description="Neighbours of each seed item taken as candidates")
    max_seeds: int = Field(30, ge=1, description="Recent items used as seeds, heaviest first")
    history_cap: int = Field(50, ge=1, description="Heaviest history items a user is blended from (batch and request)")
    recent_weight: float = Field(1.0, ge=0, description="A recent event's weight relative to the same event in the history")
    content_dim: int = Field(64, ge=1, description="Columns of the content vectors (PCA of the embeddings)")
    als_scan_per_k: int = Field(2, ge=0, description="A refreshed ALS user's best items taken as candidates: "
                                "als_scan_per_k * k + als_scan_extra")
    als_scan_extra: int = Field(20, ge=0)
    mmr_pool_per_k: int = Field(3, ge=1, description="Best-scored candidates MMR re-ranks: "
                                "max(mmr_pool_per_k * k, k + mmr_pool_extra)")
    mmr_pool_extra: int = Field(20, ge=0)
    popular_per_k: int = Field(2, ge=1, description="Brand/category/global popularity items taken as candidates per k")


@dataclass
class Matrix:
    """Users x items weighted history; items aligned with the catalog order."""

    user_ids: np.ndarray      # object (str), sorted
    item_ids: np.ndarray      # object (str), the catalog order
    weights: sp.csr_matrix    # decayed, event-weighted confidence
    binary: sp.csr_matrix     # 1 where the user interacted
    purchases: sp.csr_matrix  # purchase counts (for exclusion and targeting)
    as_of: datetime


def item_index(item_ids) -> dict[str, int]:
    return {x: i for i, x in enumerate(item_ids)}


def resolve_as_of(events: pl.DataFrame, *candidates) -> datetime:
    """The first given as-of time (datetime or ISO string; aware times are taken as UTC), else
    the newest event. Ages and windows are measured from it, never from a stray future event
    that happens to be the maximum (ingest quarantines those; a configured as-of pins it)."""
    for c in candidates:
        if c is None or c == "":
            continue
        t = c if isinstance(c, datetime) else datetime.fromisoformat(str(c))
        if t.tzinfo is not None:
            t = t.astimezone(timezone.utc).replace(tzinfo=None)
        return t
    return events["ts"].max() if events.height else datetime(1970, 1, 1)


def build_matrix(events: pl.DataFrame, item_ids: np.ndarray, params: MatrixParams,
                 as_of: datetime | str | None = None) -> Matrix:
    """events: user_id, item_id, ts, event (rows without a user are ignored here). Ages are
    measured from ``as_of`` (else ``params.as_of``, else the newest event); events after it are
    left out."""
    as_of = resolve_as_of(events, as_of, params.as_of)
    ev = events.filter(pl.col("user_id").is_not_null() & (pl.col("ts") <= as_of))
    ev_w = {"view": params.view_weight, "add": params.add_weight, "purchase": params.purchase_weight}
    items = pl.DataFrame({"item_id": pl.Series(item_ids, dtype=pl.String), "col": np.arange(len(item_ids), dtype=np.int32)})
    users = ev.select(pl.col("user_id").unique().sort())
    users = users.with_columns(pl.int_range(pl.len(), dtype=pl.Int32).alias("row"))
    g = (
        ev.join(items, on="item_id", how="inner").join(users, on="user_id")
        .with_columns(
            pl.col("event").replace_strict(ev_w, default=0.0, return_dtype=pl.Float64).alias("w"),
            ((pl.lit(as_of) - pl.col("ts")).dt.total_seconds() / 86400.0).alias("age"),
        )
        .group_by("row", "col")
        .agg(
            (pl.col("w").sum().log1p() * (-pl.col("age").min() / params.decay_days).exp()).alias("weight"),
            (pl.col("event") == "purchase").sum().alias("purchases"),
        )
    )
    shape = (users.height, len(item_ids))
    r, c = g["row"].to_numpy(), g["col"].to_numpy()
    W = sp.csr_matrix((g["weight"].to_numpy().astype(np.float32), (r, c)), shape=shape)
    B = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=shape)
    P = sp.csr_matrix((g["purchases"].to_numpy().astype(np.float32), (r, c)), shape=shape)
    P.eliminate_zeros()
    return Matrix(users["user_id"].to_numpy().astype(object), np.asarray(item_ids, dtype=object), W, B, P, as_of)


def fit_als(m: Matrix, p: ALSParams, callback=None):
    return als.fit(m.weights, factors=p.factors, iterations=p.iterations, regularization=p.regularization,
                   alpha=p.alpha, seed=p.seed, callback=callback)


def fit_bpr(m: Matrix, p: BPRParams, callback=None):
    return bpr.fit(m.binary, factors=p.factors, iterations=p.iterations, learning_rate=p.learning_rate,
                   regularization=p.regularization, seed=p.seed, tol=p.tol, callback=callback)


def with_sessions(events: pl.DataFrame, gap_minutes: float = SESSION_GAP_MINUTES) -> pl.DataFrame:
    """events plus ``session`` and ``derived``: the basket id where the source gives one, else
    the user's run of events with no pause longer than ``gap_minutes`` (``s:<user>:<n>``, n
    unique over the whole frame). Rows with neither a basket nor a user are left out.

    One sort and a running count over plain columns (lazy, so polars can stream it)."""
    lf = events.lazy()
    given = (lf.filter(pl.col("basket_id").is_not_null())
             .with_columns(pl.col("basket_id").alias("session"), pl.lit(False).alias("derived")))
    gap = pl.duration(microseconds=int(gap_minutes * 60e6))
    loose = lf.filter(pl.col("basket_id").is_null() & pl.col("user_id").is_not_null()).sort("user_id", "ts")
    starts = ((pl.col("user_id") != pl.col("user_id").shift(1)) | ((pl.col("ts") - pl.col("ts").shift(1)) > gap)).fill_null(True)
    derived = (loose.with_columns(starts.cast(pl.Int64).cum_sum().alias("_n"))
               .with_columns(pl.format("s:{}:{}", pl.col("user_id"), pl.col("_n")).alias("session"),
                             pl.lit(True).alias("derived"))
               .drop("_n"))
    return pl.concat([given, derived]).collect()


def covisitation(events: pl.DataFrame, item_ids: np.ndarray, p: CovisParams,
                 event_weights: dict[str, float] | None = None) -> sp.csr_matrix:
    """Item-item co-visitation within baskets, or sessions where a source has no baskets
    (guests' baskets count too)."""
    ew = event_weights or EVENT_WEIGHTS
    items = pl.DataFrame({"item_id": pl.Series(item_ids, dtype=pl.String), "col": np.arange(len(item_ids), dtype=np.int32)})
    ev = (
        with_sessions(events, p.session_gap_minutes)
        .join(items, on="item_id", how="inner")
        .sort("session", "ts")
    )
    if ev.height == 0:
        return sp.csr_matrix((len(item_ids), len(item_ids)), dtype=np.float32)
    session = ev["session"].rank("dense").to_numpy().astype(np.int64)
    ts = (ev["ts"].dt.epoch("ms").to_numpy() // 1000).astype(np.int64)
    w = ev["event"].replace_strict(ew, default=0.0, return_dtype=pl.Float32).to_numpy()
    return covis.counts(session, ev["col"].to_numpy().astype(np.int64), ts, w,
                        time_decay_seconds=p.time_decay_hours * 3600.0, top_k=p.top_k, n_items=len(item_ids))


def user_similarity(events: pl.DataFrame, item_ids: np.ndarray, p: SimilarityParams,
                    event_weights: dict[str, float] | None = None) -> sp.csr_matrix:
    """Co-visitation with each user's history as one session, normalised (cosine-like)."""
    ew = event_weights or EVENT_WEIGHTS
    items = pl.DataFrame({"item_id": pl.Series(item_ids, dtype=pl.String), "col": np.arange(len(item_ids), dtype=np.int32)})
    ev = events.filter(pl.col("user_id").is_not_null()).join(items, on="item_id", how="inner").sort("user_id", "ts")
    if ev.height == 0:
        return sp.csr_matrix((len(item_ids), len(item_ids)), dtype=np.float32)
    C = covis.counts(ev["user_id"].rank("dense").to_numpy().astype(np.int64), ev["col"].to_numpy().astype(np.int64),
                     (ev["ts"].dt.epoch("ms").to_numpy() // 1000).astype(np.int64),
                     ev["event"].replace_strict(ew, default=0.0, return_dtype=pl.Float32).to_numpy(),
                     time_decay_seconds=p.decay_days * 86400.0, top_k=p.top_k, n_items=len(item_ids), window=p.window)
    return normalized_similarity(C)


def normalized_similarity(C: sp.csr_matrix) -> sp.csr_matrix:
    """Cosine-like normalisation so that very popular items do not dominate every row."""
    C = sp.csr_matrix(C, dtype=np.float32)
    d = np.sqrt(np.asarray(C.sum(axis=1)).ravel()).astype(np.float32)
    d[d == 0] = 1.0
    inv = sp.diags(1.0 / d)
    return (inv @ C @ inv).tocsr().astype(np.float32)


POPULARITY_PART_ROWS = 4_000_000  # events per hash partition of popularity_scores' distinct count


def popularity_scores(events: pl.DataFrame, item_ids: np.ndarray, trending_days: float,
                      as_of: datetime | str | None = None, part_rows: int = POPULARITY_PART_ROWS):
    """(global, trending): distinct baskets (or users) per item, overall and in the
    ``trending_days`` before ``as_of`` (default the newest event); later events are left out.

    Counted lazily over the three columns it needs (a filtered copy of every column was ~2 GiB
    at 20M events) and in partitions of the key's hash, about ``part_rows`` events each: a key
    falls in one partition, so the distinct counts of the partitions add up to the whole's
    (exactly), while the hash sets behind them are a partition's size (20M events: +1.15 GiB
    in one piece)."""
    items = pl.DataFrame({"item_id": pl.Series(item_ids, dtype=pl.String), "col": np.arange(len(item_ids), dtype=np.int32)})
    as_of = resolve_as_of(events, as_of)
    since = pl.lit(as_of) - pl.duration(seconds=int(trending_days * 86400))
    parts = max(1, events.height // max(1, part_rows))
    ev = (events.lazy().filter(pl.col("ts") <= as_of)
          .select("item_id", "ts", pl.coalesce(pl.col("basket_id"), pl.col("user_id")).alias("key")))
    counts = [np.zeros(len(item_ids), dtype=np.float64), np.zeros(len(item_ids), dtype=np.float64)]
    for p in range(parts):
        part = ev if parts == 1 else ev.filter(pl.col("key").hash(seed=0) % parts == p)
        for v, frame in zip(counts, (part, part.filter(pl.col("ts") >= since))):
            cnt = frame.group_by("item_id").agg(pl.col("key").n_unique().alias("n")).collect().join(items, on="item_id")
            v[cnt["col"].to_numpy()] += cnt["n"].to_numpy()
    return tuple(np.log1p(v.astype(np.float32)) for v in counts)


def make_blend(*, als_items=None, bpr_items=None, item_sim=None, covis=None, rules=None, embeddings=None,
               trending=None, popularity=None, content_dim: int) -> blend.Blend:
    """The served blend's sources from model outputs (weights are given per call)."""
    content = blend.content_vectors(embeddings, content_dim) if embeddings is not None else None
    return blend.Blend(als_items=als_items, bpr_items=bpr_items, item_sim=item_sim, covis=covis, rules=rules,
                       content=content, trending=trending, popularity=popularity)


def rules_matrix(antecedents: list, consequents: list, confidence, n_items: int) -> sp.csr_matrix:
    """Association rules (item-index lists per rule) as the blend's ``rules`` matrix."""
    return blend.rules_matrix(n_items, np.array([len(a) for a in antecedents], np.int64),
                              np.array([i for a in antecedents for i in a], np.int64),
                              np.array([len(c) for c in consequents], np.int64),
                              np.array([i for c in consequents for i in c], np.int64),
                              np.asarray(confidence, np.float32))
