"""Evaluate what is served.

Models are fit on a training period with the functions the production assets use
(``recs_assets.modeling``) and the configs those assets ran with, published as a release into
a temporary RECS_HOME through the one release writer, loaded into the in-process
``recs_serving.Recommender``, and the held-out period is replayed through its public API,
one use case at a time:

  homepage    a known user, their last events before the cut as ``recent``; truth: the items
              new to them they bought (or, with no purchases in the data, interacted with)
  session     the first half of a held-out session as ``recent`` of an anonymous visitor;
              truth: the rest of the session
  item_page   similar items of one item of a held-out session; truth: the next item
  cart        cart add-ons of a held-out basket minus one item; truth: that item
  cold_start  a user first seen after the cut, no events; truth: what they bought

Sampling is seeded and bounded per use case, so the cost does not grow with the data.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recs_assets import io, memory, modeling
from recs_assets.features import BasketConfig, aligned_values, basket_matrix, popularity_table
from recs_assets.models import ItemsetConfig, RulesConfig, id_lists, mine, rule_columns
from recs_assets.outputs import TopNConfig
from recs_kernels import als as als_kernel
from recs_kernels import blend as blend_kernel
from recs_kernels import bpr as bpr_kernel
from recs_kernels import topk
from recs_kernels.sources import SOURCES

USE_CASES = ("homepage", "session", "item_page", "cart", "cold_start")
EVENT_COLUMNS = ("user_id", "item_id", "ts", "event", "basket_id")  # the columns of the events run() reads
LAMBDA_REQUESTS = 100  # requests per use case an MMR lambda is compared on (a partial replay each)


# ----------------------------------------------------------------------------- configs
@dataclass
class Configs:
    """The configs the production model assets ran with (read from their artifacts)."""

    matrix: modeling.MatrixParams = field(default_factory=modeling.MatrixParams)
    als: modeling.ALSParams = field(default_factory=modeling.ALSParams)
    bpr: modeling.BPRParams = field(default_factory=modeling.BPRParams)
    covis: modeling.CovisParams = field(default_factory=modeling.CovisParams)
    similarity: modeling.SimilarityParams = field(default_factory=modeling.SimilarityParams)
    popularity: modeling.PopularityParams = field(default_factory=modeling.PopularityParams)
    itemsets: ItemsetConfig = field(default_factory=ItemsetConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    topn: TopNConfig = field(default_factory=TopNConfig)
    baskets: BasketConfig = field(default_factory=BasketConfig)
    similar_k: int = 20

    def dump(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.model_dump() if hasattr(v, "model_dump") else v
        return out


def _from_meta(cls, meta: dict):
    return cls.model_validate({k: v for k, v in meta.items() if k in cls.model_fields})


# artifact name -> (Configs field, config class, where in the meta the config is)
ARTIFACT_CONFIGS = {
    "interaction_matrix": ("matrix", modeling.MatrixParams, "params"),
    "als_factors": ("als", modeling.ALSParams, None),
    "bpr_factors": ("bpr", modeling.BPRParams, None),
    "covisitation": ("covis", modeling.CovisParams, None),
    "item_similarity": ("similarity", modeling.SimilarityParams, None),
    "popularity": ("popularity", modeling.PopularityParams, None),
    "frequent_itemsets": ("itemsets", ItemsetConfig, None),
    "baskets": ("baskets", BasketConfig, None),
}


def configs_from_artifacts(artifacts) -> Configs:
    """One config, no copies: every re-fit uses what the production asset recorded."""
    cfg = Configs()
    for name, (attr, cls, key) in ARTIFACT_CONFIGS.items():
        meta = artifacts.meta(name)
        setattr(cfg, attr, _from_meta(cls, meta.get(key, {}) if key else meta))
    cfg.rules = _from_meta(RulesConfig, artifacts.meta("rules"))  # written by association_rules
    return cfg


# ----------------------------------------------------------------------------- periods
def resolve_cut(events: pl.DataFrame, cut: str | None, test_fraction: float = 0.1) -> datetime:
    """``cut`` when it leaves events on both sides; otherwise the time by which
    ``1 - test_fraction`` of the events happened (no calendar of any particular data set)."""
    if events.height == 0:
        raise ValueError("no events to evaluate on")
    lo, hi = events["ts"].min(), events["ts"].max()
    if cut:
        wanted = datetime.fromisoformat(cut)
        if lo < wanted <= hi:
            return wanted
    ts = events["ts"].sort()
    q = ts.gather(min(events.height - 1, int(events.height * (1.0 - test_fraction))))[0]
    return q if q > lo else hi


def validation_start(events: pl.DataFrame, cut: datetime, valid_days: float) -> datetime:
    """``cut - valid_days``, shortened to half of the time before the cut on short data."""
    lo = events["ts"].min()
    span = cut - lo
    return cut - min(timedelta(days=valid_days), span / 2)


def positives(frame: pl.DataFrame) -> pl.DataFrame:
    """Purchases, or every event when the data has no purchases (ratings, clicks)."""
    p = frame.filter(pl.col("event") == "purchase")
    return p if p.height else frame


# ----------------------------------------------------------------------------- cases
@dataclass
class Cases:
    """The queries of one held-out period, per use case, and why a use case has none."""

    queries: dict = field(default_factory=dict)  # use case -> list of (request, truth item ids)
    skipped: dict = field(default_factory=dict)  # use case -> reason
    seeds: set = field(default_factory=set)  # item ids that anchor a query (similar items are computed for them)
    topn_users: list = field(default_factory=list)

    def counts(self) -> dict:
        return {u: len(q) for u, q in self.queries.items()}


def _ms(ts) -> int:
    return int(ts.timestamp() * 1000) if isinstance(ts, datetime) else int(ts)


def _sample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, cap, replace=False))


def build_cases(train: pl.DataFrame, held: pl.DataFrame, item_ids: np.ndarray, *, max_users: int, recent_events: int,
                seed: int, session_gap_minutes: float = modeling.SESSION_GAP_MINUTES, use_cases=USE_CASES) -> Cases:
    """Queries replaying ``held`` for models fit on ``train`` (seeded, at most ``max_users`` per use case)."""
    from recs_serving.schemas import CartAddonsRequest, Interaction, RecommendRequest

    rng = np.random.default_rng(seed)
    known_items = set(item_ids.tolist())
    held = held.filter(pl.col("item_id").is_in(list(known_items)))
    out = Cases()
    pos = positives(held).filter(pl.col("user_id").is_not_null()).select("user_id", "item_id").unique()
    # Only the held-out buyers are looked up in ``train`` (each a semi join: a hash of the small
    # side, one pass over the large one): a unique() of every training user, and above all of
    # every training (user, item) pair, cost GiBs at 20M events.
    train_users = pos.select("user_id").unique().join(train.select("user_id"), on="user_id", how="semi")

    if "homepage" in use_cases:
        known = pos.join(train_users, on="user_id", how="semi")
        seen = train.select("user_id", "item_id").join(known, on=["user_id", "item_id"], how="semi")
        new = known.join(seen, on=["user_id", "item_id"], how="anti")
        truth = new.group_by("user_id").agg("item_id").sort("user_id")
        pick = _sample(truth.height, max_users, rng)
        truth = truth[pick] if truth.height else truth
        if truth.height == 0:
            out.skipped["homepage"] = "no known user bought an item new to them in the held-out period"
        else:
            last = (train.join(truth.select("user_id"), on="user_id").sort("ts")
                    .group_by("user_id", maintain_order=True).tail(recent_events))
            recent = {u: [Interaction(item_id=i, timestamp=_ms(t), event=e) for i, t, e in zip(g["item_id"], g["ts"], g["event"])]
                      for (u,), g in last.group_by("user_id")}
            out.queries["homepage"] = [
                (RecommendRequest(user_id=u, k=10, recent=recent.get(u, [])), list(items))
                for u, items in truth.iter_rows()]
            out.topn_users = truth["user_id"].to_list()
            out.seeds |= {r.item_id for rs in recent.values() for r in rs}

    if "cold_start" in use_cases:
        cold = pos.join(train_users, on="user_id", how="anti").group_by("user_id").agg("item_id").sort("user_id")
        if cold.height == 0:
            out.skipped["cold_start"] = "no new users in the held-out period"
        else:
            cold = cold[_sample(cold.height, max_users, rng)]
            out.queries["cold_start"] = [(RecommendRequest(user_id=None, k=10), list(items)) for _, items in cold.iter_rows()]

    if {"session", "item_page"} & set(use_cases):
        s = modeling.with_sessions(held, session_gap_minutes).sort("session", "ts", maintain_order=True).unique(["session", "item_id"], keep="first", maintain_order=True)
        groups = s.group_by("session", maintain_order=True).agg("item_id", "ts", "event").filter(pl.col("item_id").list.len() >= 2)
        groups = groups.sort("session")
        if groups.height == 0:
            out.skipped["session"] = out.skipped["item_page"] = "no held-out session has two distinct items"
        else:
            if "session" in use_cases:
                g = groups[_sample(groups.height, max_users, rng)]
                qs = []
                for _, items, ts, ev in g.iter_rows():
                    h = max(1, min(len(items) // 2, recent_events))
                    recent = [Interaction(item_id=i, timestamp=_ms(t), event=e) for i, t, e in zip(items[:h], ts[:h], ev[:h])]
                    qs.append((RecommendRequest(user_id=None, k=10, recent=recent), list(items[h:])))
                    out.seeds |= set(items[:h])
                out.queries["session"] = qs
            if "item_page" in use_cases:
                g = groups[_sample(groups.height, max_users, rng)]
                qs = []
                for _, items, _, _ in g.iter_rows():
                    j = int(rng.integers(0, len(items) - 1))
                    qs.append((items[j], [items[j + 1]]))
                    out.seeds.add(items[j])
                out.queries["item_page"] = qs

    if "cart" in use_cases:
        b = (held.filter((pl.col("event") == "purchase") & pl.col("basket_id").is_not_null())
             .select("basket_id", "item_id").unique(maintain_order=True)
             .group_by("basket_id").agg(pl.col("item_id").sort()).filter(pl.col("item_id").list.len() >= 2).sort("basket_id"))
        if b.height == 0:
            out.skipped["cart"] = "no held-out purchase basket with two items (the data has no basket ids)" \
                if held["basket_id"].null_count() == held.height else "no held-out purchase basket with two items"
        else:
            b = b[_sample(b.height, max_users, rng)]
            qs = []
            for _, items in b.iter_rows():
                j = int(rng.integers(0, len(items)))
                cart = items[:j] + items[j + 1:]
                qs.append((CartAddonsRequest(item_ids=cart[:200], k=10), [items[j]]))
                out.seeds |= set(cart[:200])
            out.queries["cart"] = qs
    return out


# ----------------------------------------------------------------------------- models
@dataclass
class PeriodModels:
    """Everything fit on one training period (train-period fits are reused across use cases
    and tuning trials; only what a hyperparameter touches is re-fit)."""

    events: pl.DataFrame
    item_ids: np.ndarray
    as_of: datetime
    cfg: Configs
    matrix: modeling.Matrix
    als: tuple
    bpr: tuple
    covis: sp.csr_matrix
    similarity: sp.csr_matrix
    popularity: tuple  # (global, trending)
    rules: dict | None
    rules_note: str = ""
    notes: dict = field(default_factory=dict)  # model -> how it was fit when not the production way (a warm start)
    seconds: dict = field(default_factory=dict)  # model -> fit seconds


# A warm start runs this share of the configured iterations (at least WARM_MIN): started from a
# fit on nearly the same data (the earlier period, or the same matrix with other settings) the
# factors are near their optimum already. On the bundled data 3 of 15 ALS iterations reach the
# cold fit's loss within 0.3% and its top-10 as closely as a cold fit with another seed does.
WARM_FRACTION = 0.2
WARM_MIN = 2


def warm_iterations(iterations: int, fraction: float = WARM_FRACTION) -> int:
    return min(iterations, max(WARM_MIN, int(np.ceil(iterations * fraction))))


def _carry_rows(factors: np.ndarray, old_ids: np.ndarray, new_ids: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``factors`` (indexed like ``old_ids``) re-ordered for ``new_ids`` (both sorted
    unique user ids): users new in this period start from ``fill`` (zeros by default)."""
    out = np.zeros((len(new_ids), factors.shape[1]), np.float32)
    if fill is not None:
        out[:] = fill
    if len(old_ids) and len(new_ids):
        pos = np.searchsorted(old_ids, new_ids)
        pos_c = np.minimum(pos, len(old_ids) - 1)
        hit = old_ids[pos_c] == new_ids
        out[hit] = factors[pos_c[hit]]
    return out


def fit_als_warm(m: modeling.Matrix, p: modeling.ALSParams, warm: tuple | None, warm_users: np.ndarray | None = None,
                 fraction: float = WARM_FRACTION) -> tuple[tuple, str]:
    """ALS on ``m``, warm-started from ``warm`` = (user factors, item factors) when their width
    matches (users carried over by id from ``warm_users``; new users are solved in the first
    half-step): ``warm_iterations`` instead of ``p.iterations``. Returns (factors, note)."""
    if warm is None or warm[1].shape != (len(m.item_ids), p.factors):
        return modeling.fit_als(m, p), ""
    X0 = warm[0] if warm_users is None else _carry_rows(warm[0], warm_users, m.user_ids)
    it = warm_iterations(p.iterations, fraction)
    return (als_kernel.fit(m.weights, factors=p.factors, iterations=it, regularization=p.regularization, alpha=p.alpha,
                           seed=p.seed, init=(X0, warm[1])),
            f"warm-started, {it} of {p.iterations} iterations")


def fit_bpr_warm(m: modeling.Matrix, p: modeling.BPRParams, warm: tuple | None, warm_users: np.ndarray | None = None,
                 fraction: float = WARM_FRACTION) -> tuple[tuple, str]:
    """BPR on ``m`` warm-started like ``fit_als_warm`` (new users start at zero factors, i.e.
    item bias only, as the cold fit starts users without events)."""
    if warm is None or warm[1].shape != (len(m.item_ids), p.factors + 1):
        return modeling.fit_bpr(m, p), ""
    X0 = warm[0] if warm_users is None else _carry_rows(warm[0], warm_users, m.user_ids)
    it = warm_iterations(p.iterations, fraction)
    return (bpr_kernel.fit(m.binary, factors=p.factors, iterations=it, learning_rate=p.learning_rate,
                           regularization=p.regularization, seed=p.seed, tol=p.tol, init=(X0, warm[1])),
            f"warm-started, {it} of {p.iterations} epochs")


def fit_rules(events: pl.DataFrame, item_ids: np.ndarray, cfg: Configs) -> tuple[dict | None, str]:
    B, _ = basket_matrix(events, item_ids, cfg.baskets.session_gap_minutes)
    if B.shape[0] == 0 or B.nnz == 0:
        return None, "no purchase baskets in the training period: no rules"
    itemsets, support = mine(B, cfg.itemsets)
    if not len(itemsets):
        return None, f"no frequent itemsets in {B.shape[0]} baskets: no rules"
    return rule_columns(itemsets, support, B.shape[0], cfg.rules), f"{len(itemsets)} itemsets from {B.shape[0]} baskets"


def by_time(events: pl.DataFrame) -> pl.DataFrame:
    """``events`` in time order, stable (the warehouse keeps them so: then no copy is made), so
    that every period below is a zero-copy slice: at 20M events each filtered copy of a period
    was about 1.5 GB, and four of them were alive at once."""
    return events if events["ts"].is_sorted() else events.sort("ts", maintain_order=True)


def _index(events: pl.DataFrame, t) -> int:
    return int(events["ts"].search_sorted(t, side="left"))


def before(events: pl.DataFrame, t) -> pl.DataFrame:
    """The rows of the time-ordered ``events`` with ts < t (a slice)."""
    return events.slice(0, _index(events, t))


def between(events: pl.DataFrame, start, end) -> pl.DataFrame:
    """The rows of the time-ordered ``events`` with start <= ts < end (end None: to the end; a slice)."""
    lo = _index(events, start)
    hi = events.height if end is None else _index(events, end)
    return events.slice(lo, max(0, hi - lo))


def fit_sample(events: pl.DataFrame, must: list, max_users: int, seed: int) -> tuple[pl.Series | None, float]:
    """The users the evaluation's models are fit on: every user when there are at most
    ``max_users`` (0: no limit), else a seeded sample of ``max_users`` of them that holds every
    user in ``must`` (the known users the replay asks about). Returns (sorted user ids or None
    for all, the sampled share): the fit cost stays bounded whatever the number of users."""
    users = events.filter(pl.col("user_id").is_not_null())["user_id"].unique().sort()
    if not max_users or users.len() <= max_users:
        return None, 1.0
    must_s = pl.Series(list(dict.fromkeys(must)), dtype=pl.String)
    rest = users.filter(~users.is_in(must_s.implode()))
    n = max(0, max_users - must_s.len())
    pick = rest.gather(np.sort(np.random.default_rng(seed).choice(rest.len(), min(n, rest.len()), replace=False)))
    return pl.concat([must_s, pick]).unique().sort(), max_users / users.len()


def in_sample(events: pl.DataFrame, users: pl.Series | None, share: float, seed: int) -> pl.DataFrame:
    """The events of ``users`` and, at the same ``share``, the guests' baskets (rows without a
    user, kept whole by basket: co-visitation and rules count them)."""
    if users is None:
        return events
    guest = pl.col("user_id").is_null() & ((pl.col("basket_id").hash(seed) % 1_000_000) < int(share * 1_000_000))
    return events.filter(pl.col("user_id").is_in(users.implode()) | guest)


def fit_period(events: pl.DataFrame, item_ids: np.ndarray, cfg: Configs, as_of: datetime,
               warm: "PeriodModels | None" = None, warm_fraction: float = WARM_FRACTION,
               all_events: pl.DataFrame | None = None) -> PeriodModels:
    """Every model on ``events`` (all before ``as_of``), ages measured from ``as_of``. With
    ``warm`` (the models of an earlier period, fit on a prefix of ``events``), ALS and BPR start
    from its factors and run a ``warm_fraction`` of their iterations; every other model is exact
    (they have no iterations to save). ``all_events``: when ``events`` is a sample of the users
    (``fit_sample``), popularity and trending still count every event (a count needs no fit)."""
    sec: dict = {}

    def timed(name, f, *a, **kw):
        t = time.perf_counter()
        out = f(*a, **kw)
        sec[name] = round(time.perf_counter() - t, 2)
        return out

    m = timed("matrix", modeling.build_matrix, events, item_ids, cfg.matrix, as_of=as_of)
    rules, note = timed("rules", fit_rules, events, item_ids, cfg)
    users = warm.matrix.user_ids if warm is not None else None
    ua, als_note = timed("als", fit_als_warm, m, cfg.als, warm.als if warm else None, users, warm_fraction)
    ub, bpr_note = timed("bpr", fit_bpr_warm, m, cfg.bpr, warm.bpr if warm else None, users, warm_fraction)
    notes = {k: v for k, v in (("als", als_note), ("bpr", bpr_note)) if v}
    return PeriodModels(
        events=events, item_ids=item_ids, as_of=as_of, cfg=cfg, matrix=m, als=ua, bpr=ub,
        covis=timed("covis", lambda: sp.csr_matrix(modeling.covisitation(events, item_ids, cfg.covis))),
        similarity=timed("item_sim", modeling.user_similarity, events, item_ids, cfg.similarity),
        popularity=timed("popularity", modeling.popularity_scores, events if all_events is None else all_events, item_ids,
                         cfg.popularity.trending_days, as_of=as_of),
        rules=rules, rules_note=note, notes=notes, seconds=sec,
    )


def refit(pm: PeriodModels, cfg: Configs, warm_fraction: float = WARM_FRACTION) -> PeriodModels:
    """``pm`` with the parts ``cfg`` changes re-fit (matrix decay -> matrix and ALS; ALS -> ALS).
    ALS is warm-started from ``pm``'s factors (same period, same users) when the width is
    unchanged: a tuning trial costs a ``warm_fraction`` of a fit (the trial's note says so)."""
    out = dataclasses.replace(pm, cfg=cfg, notes=dict(pm.notes))
    if cfg.matrix != pm.cfg.matrix:
        out.matrix = modeling.build_matrix(pm.events, pm.item_ids, cfg.matrix, as_of=pm.as_of)
    if cfg.matrix != pm.cfg.matrix or cfg.als != pm.cfg.als:
        out.als, note = fit_als_warm(out.matrix, cfg.als, pm.als, None, warm_fraction)
        out.notes["als"] = note or "refit cold"
    return out


# ----------------------------------------------------------------------------- release
def _similar_rows(M: np.ndarray, rows: np.ndarray, k: int, item_ids: np.ndarray, source: str) -> pl.DataFrame:
    """Cosine top-k neighbours of the items ``rows`` only (what the replay can reach)."""
    norms = np.linalg.norm(M.astype(np.float64), axis=1)
    W = (M / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    k = min(k, max(1, W.shape[0] - 1))
    ex = sp.csr_matrix((np.ones(len(rows), np.float32), (np.arange(len(rows)), rows)), shape=(len(rows), W.shape[0]))
    ids, scores = topk.batch(W[rows], W, k, ex)
    r, c = np.nonzero(ids >= 0)
    return pl.DataFrame({"item_id": pl.Series(item_ids[rows[r]], dtype=pl.String), "rank": (c + 1).astype(np.int32),
                         "similar_item_id": pl.Series(item_ids[ids[r, c]], dtype=pl.String),
                         "score": scores[r, c].astype(np.float32), "source": [source] * len(r)})


RULE_SCHEMA = {"antecedents": pl.List(pl.String), "consequents": pl.List(pl.String), "support": pl.Float64,
               "confidence": pl.Float64, "lift": pl.Float64}


def _rules_table(cols: dict | None, item_ids: np.ndarray) -> pl.DataFrame:
    if not cols or not len(cols.get("antecedents", [])):
        return pl.DataFrame(schema=RULE_SCHEMA)
    # flat Arrow lists (models.id_lists): building 100Ks of nested Python lists cost ~10 s a release
    return pl.DataFrame({
        "antecedents": id_lists(cols["antecedents"], item_ids),
        "consequents": id_lists(cols["consequents"], item_ids),
        **{k: np.asarray(v, dtype=np.float64) for k, v in cols.items() if k not in ("antecedents", "consequents")},
    })


def _rules_csr(cols: dict | None, n_items: int) -> sp.csr_matrix:
    if not cols or not len(cols.get("antecedents", [])):
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    return modeling.rules_matrix(list(cols["antecedents"]), list(cols["consequents"]), cols["confidence"], n_items)


def topn_config(cfg: Configs, weights: dict | None = None, mmr_lambda: float | None = None) -> TopNConfig:
    t = cfg.topn
    blend = {**t.blend.model_dump(), **(weights or {})}
    request = {**t.request.model_dump(), **({"mmr_lambda": float(mmr_lambda)} if mmr_lambda is not None else {})}
    return TopNConfig.model_validate({**t.model_dump(), "blend": blend, "request": request})


def _only_rows(C: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """``C`` with the rows where ``keep`` is False emptied (the others exactly as they are)."""
    C = sp.csr_matrix(C)
    lens = np.diff(C.indptr)
    take = np.repeat(keep, lens)
    indptr = np.zeros(C.shape[0] + 1, np.int64)
    np.cumsum(np.where(keep, lens, 0), out=indptr[1:])
    return sp.csr_matrix((C.data[take], C.indices[take], indptr), shape=C.shape)


def release_parts(pm: PeriodModels, catalog: pl.DataFrame, embeddings: np.ndarray, cases: Cases,
                  topn: TopNConfig, *, replay_only: bool = True) -> tuple[dict, dict]:
    """Tables and arrays of a release of ``pm`` holding only what the replay of ``cases`` reads,
    so the cost stays bounded whatever the data size: the sampled known users (their factors,
    history, top-N), neighbour rows of the items a request can start from (the users'
    histories and the query items), every item-side table whole. The replayed answers are the
    ones the full release gives (``replay_only=False``; tests compare the two)."""
    m, items = pm.matrix, pm.item_ids
    glob, trending = pm.popularity
    ua, va = pm.als
    ub, vb = pm.bpr
    urow = {u: i for i, u in enumerate(m.user_ids)}
    rows = np.array(sorted({urow[u] for u in cases.topn_users if u in urow}), dtype=np.int64)
    users = rows if replay_only else np.arange(len(m.user_ids))
    if replay_only and not len(users) and len(m.user_ids):
        users = np.zeros(1, np.int64)  # no known-user request: one user keeps the release's shape ordinary
    topn_tbl = pl.DataFrame(schema={"user_id": pl.String, "rank": pl.Int32, "item_id": pl.String, "score": pl.Float32, "reason": pl.String})
    if len(rows):
        bl = modeling.make_blend(als_items=va, bpr_items=vb, item_sim=pm.similarity, covis=pm.covis,
                                 rules=_rules_csr(pm.rules, len(items)), embeddings=embeddings, trending=trending,
                                 popularity=glob, content_dim=topn.request.content_dim)
        history = blend_kernel.cap_history(m.weights[rows], topn.request.history_cap)
        ids, scores = bl.top_k(topn.blend.weights(), topn.n, als_users=ua[rows], bpr_users=ub[rows], history=history,
                               exclude=m.binary[rows])
        r, c = np.nonzero(ids >= 0)
        topn_tbl = pl.DataFrame({"user_id": pl.Series(m.user_ids[rows[r]], dtype=pl.String), "rank": (c + 1).astype(np.int32),
                                 "item_id": pl.Series(items[ids[r, c]], dtype=pl.String), "score": scores[r, c].astype(np.float32),
                                 "reason": pl.Series(["for_you"] * len(r), dtype=pl.String)})
    index = modeling.item_index(items)
    seed_rows = np.array(sorted(index[i] for i in cases.seeds if i in index), dtype=np.int64)
    similar = pl.concat([_similar_rows(va, seed_rows, pm.cfg.similar_k, items, "factors"),
                         _similar_rows(embeddings, seed_rows, pm.cfg.similar_k, items, "content")]) if len(seed_rows) else \
        pl.DataFrame(schema={"item_id": pl.String, "rank": pl.Int32, "similar_item_id": pl.String, "score": pl.Float32, "source": pl.String})
    coo = m.weights[users].tocoo()
    user_items = pl.DataFrame({"user_id": pl.Series(m.user_ids[users[coo.row]], dtype=pl.String),
                               "item_id": pl.Series(items[coo.col], dtype=pl.String), "weight": coo.data,
                               "purchases": aligned_values(coo, m.purchases[users]).astype(np.int32)})
    covis, similarity = pm.covis, pm.similarity
    if replay_only:
        reach = np.zeros(len(items), bool)
        reach[seed_rows] = True
        reach[m.binary[users].indices] = True
        covis, similarity = _only_rows(covis, reach), _only_rows(similarity, reach)
    cat = catalog.select("item_id", "title", "description", "brand", "category", "price")
    tables = {
        "items": cat.with_columns(pl.int_range(pl.len(), dtype=pl.Int32).alias("idx"),
                                  pl.Series("popularity", glob.astype(np.float32)), pl.Series("trending", trending.astype(np.float32)))
        .select("idx", "item_id", "title", "description", "brand", "category", "price", "popularity", "trending"),
        "users": pl.DataFrame({"idx": np.arange(len(users), dtype=np.int32), "user_id": pl.Series(m.user_ids[users], dtype=pl.String)}),
        "user_items": user_items, "topn": topn_tbl, "similar_items": similar,
        "covisitation": io.neighbour_table(items, covis), "item_similarity": io.neighbour_table(items, similarity),
        "rules": _rules_table(pm.rules, items),
        "popularity": popularity_table(catalog, glob, trending, pm.cfg.popularity.top_n),
    }
    arrays = {"als_user_factors": ua[users], "als_item_factors": va, "bpr_user_factors": ub[users], "bpr_item_factors": vb,
              "item_embeddings": embeddings}
    return tables, arrays


def publish_period(home: Path, pm: PeriodModels, catalog: pl.DataFrame, embeddings: np.ndarray, cases: Cases,
                   topn: TopNConfig, *, replay_only: bool = True) -> None:
    """A release of the period's models through the one release writer."""
    from recs_assets.contract import contract_from_configs
    from recs_serving import release as release_format

    tables, arrays = release_parts(pm, catalog, embeddings, cases, topn, replay_only=replay_only)
    c = pm.cfg
    contract = contract_from_configs(matrix=c.matrix, als=c.als, bpr=c.bpr, covisitation=c.covis,
                                     item_similarity=c.similarity, popularity=c.popularity, topn=topn.model_dump())
    release_format.write_release(home, contract=contract, tables=tables, arrays=arrays, run_id="evaluation", keep=1,
                                 extra={"evaluation": {"as_of": str(pm.as_of)}})


class ServedReplay:
    """A train-period release loaded into the in-process ``Recommender``; replays ``Cases``
    with any blend weights and MMR lambda (a contract override on the loaded release)."""

    def __init__(self, pm: PeriodModels, catalog: pl.DataFrame, embeddings: np.ndarray, cases: Cases, topn: TopNConfig,
                 *, replay_only: bool = True):
        from recs_serving import Recommender

        self._tmp = tempfile.TemporaryDirectory(prefix="recs-eval-")
        publish_period(Path(self._tmp.name), pm, catalog, embeddings, cases, topn, replay_only=replay_only)
        self.base = Recommender(self._tmp.name, watch=False, require_release=True)
        self.rec = self.base
        self.cases = cases
        self.n_items = len(pm.item_ids)

    def close(self) -> None:
        self.base.close()
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set(self, weights: dict, mmr_lambda: float) -> None:
        full = {s: float(weights.get(s, 0.0)) for s in SOURCES}
        self.rec = self.base.with_contract(self.base.contract.replace(weights=full, mmr_lambda=float(mmr_lambda)))

    def answers_one(self, use_case: str, i: int) -> list[str]:
        req = self.cases.queries[use_case][i][0]
        if use_case == "item_page":
            r = self.rec.similar_items(req, k=10, as_dict=True)
        elif use_case == "cart":
            r = self.rec.cart_addons(req, as_dict=True)
        else:
            r = self.rec.recommend(req, as_dict=True)
        return [it["item_id"] for it in r["items"]]

    def answers(self, use_case: str) -> list[list[str]]:
        n = len(self.cases.queries[use_case])
        if use_case == "cold_start":  # one anonymous answer, whoever asks
            return [self.answers_one(use_case, 0)] * n
        return [self.answers_one(use_case, i) for i in range(n)]

    def score(self, weights: dict, mmr_lambda: float, use_cases=None, k: int = 10, limit: int | None = None) -> dict[str, dict]:
        """Metrics per use case of the served answers (the first ``limit`` requests of each)."""
        self.set(weights, mmr_lambda)
        res = {}
        for uc in use_cases or list(self.cases.queries):
            if uc in self.cases.queries:
                answers = self.answers(uc)[:limit]
                res[uc] = metrics(answers, [t for _, t in self.cases.queries[uc]][:limit], self.n_items, k)
        return res

    def recalls(self, weights: dict, mmr_lambda: float, use_case: str, k: int = 10, limit: int | None = None) -> np.ndarray:
        """recall@k of each served answer of ``use_case`` (the first ``limit`` requests)."""
        self.set(weights, mmr_lambda)
        return recalls(self.answers(use_case)[:limit], [t for _, t in self.cases.queries[use_case]][:limit], k)


def recalls(answers: list[list[str]], truth: list[list[str]], k: int = 10) -> np.ndarray:
    """recall@k of each answer: hits / min(k, |truth|)."""
    return np.array([len(set(a[:k]) & set(t)) / min(k, len(set(t))) for a, t in zip(answers, truth)], np.float64)


def metrics(answers: list[list[str]], truth: list[list[str]], n_items: int, k: int = 10) -> dict[str, float]:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg, shown = [], [], set()
    for ans, t in zip(answers, truth):
        ts = set(t)
        hits = np.array([a in ts for a in ans[:k]] + [False] * (k - len(ans[:k])), dtype=bool)
        shown.update(ans[:k])
        n = min(k, len(ts))
        recall.append(hits.sum() / n)
        ndcg.append((hits * discounts).sum() / discounts[:n].sum())
    return {f"recall@{k}": float(np.mean(recall)) if recall else 0.0, f"ndcg@{k}": float(np.mean(ndcg)) if ndcg else 0.0,
            "coverage": len(shown) / max(n_items, 1), "users": len(answers)}


# ----------------------------------------------------------------------------- protocol
@dataclass
class Settings:
    """How the protocol samples and tunes (the evaluation asset's config)."""

    cut: str | None = None
    valid_days: float = 30.0
    max_users: int = 250
    recent_events: int = 10
    tune: bool = True
    budget_seconds: float = 10.0
    use_case_weights: dict = field(default_factory=lambda: {"homepage": 2.0})
    mmr_lambdas: tuple = (1.0, 0.8)
    min_ratio_over_popularity: float = 1.0
    seed: int = 0
    warm_start: bool = True  # the test split's ALS/BPR start from the validation fit (see fit_period)
    fit_users: int = 50_000  # the models are fit on at most this many users (fit_sample); 0: all
    warm_fraction: float = WARM_FRACTION
    hyper_budget_seconds: float = 20.0  # CPU s for ALS regularization/alpha, decay, recent_weight: re-fit + replay per trial
    hyper_trial_seconds: float = 1.0  # the short blend search each hyperparameter trial is scored with
    # the hyperparameter budget and the weight search's are at most these many times the validation
    # fit's CPU seconds (0: no such cap): their cost follows the graph's, not a constant that
    # dominates the run on small data. A hyperparameter step is taken only when it wins by more
    # than its noise (tuning.beats), which on the bundled data and both synthetic sets was one
    # step in five runs: half a fit buys the first trial (the reference, its release reused for
    # every validation request) and about one step.
    hyper_fit_ratio: float = 0.5
    search_fit_ratio: float = 1.0


def fit_tied(budget: float, ratio: float, fit_cpu: float) -> float:
    """``budget`` CPU seconds, at most ``ratio`` times the validation fit's (ratio 0: no cap)."""
    return min(budget, ratio * fit_cpu) if ratio > 0 else budget


@dataclass
class Outcome:
    table: pl.DataFrame  # split, use_case, model, recall@10, ndcg@10, coverage, users
    served: dict  # blends {use case: weights, mmr_lambda, chosen}; weights, mmr_lambda, source: the homepage's
    gate: dict  # passed, reason, validation objectives
    info: dict  # periods, counts, skipped use cases, timings, configs used
    curve: list = field(default_factory=list)


def _rows(split: str, model: str, per_uc: dict) -> list[dict]:
    return [{"split": split, "use_case": uc, "model": model, **m} for uc, m in per_uc.items()]


def _recorded_metrics(rec, weights: dict, item_ids, truth: dict, n_items: int, limit: int | None = None,
                      use_cases=None) -> dict:
    return {uc: metrics(rec.answers(weights, uc, item_ids)[:limit], truth[uc][:limit], n_items)
            for uc in (use_cases or rec.contrib)}


def served_blends(choices: dict, configured: dict, configured_lambda: float) -> dict:
    """The served values: ``blends`` per use case (use cases without validation requests get
    the configured blend), and the homepage's (the batch table's) as ``weights``/``mmr_lambda``."""
    blends = {uc: choices[uc].blend() if uc in choices else
              {"weights": dict(configured), "mmr_lambda": float(configured_lambda), "chosen": "configured"} for uc in USE_CASES}
    home = blends["homepage"]
    kinds = {b["chosen"] for b in blends.values()}
    source = "configured" if kinds == {"configured"} else home["chosen"] if home["chosen"] != "configured" else "per_use_case"
    return {"weights": home["weights"], "mmr_lambda": home["mmr_lambda"], "source": source, "blends": blends}


def _served_metrics(rp, rec, blends: dict, item_ids, truth: dict, n_items: int) -> dict:
    """Each use case answered with its own blend: from the record with MMR off, else replayed."""
    out = {}
    for uc in rec.contrib:
        b = blends[uc]
        out[uc] = (_recorded_metrics(rec, b["weights"], item_ids, {uc: truth[uc]}, n_items, use_cases=[uc])
                   if b["mmr_lambda"] >= 1.0 else rp.score(b["weights"], b["mmr_lambda"], use_cases=[uc]))[uc]
    return out


TABLE_SCHEMA = {"split": pl.String, "use_case": pl.String, "model": pl.String, "recall@10": pl.Float64,
                "ndcg@10": pl.Float64, "coverage": pl.Float64, "users": pl.Int64}


def not_evaluated(cfg: Configs, reason: str) -> Outcome:
    """The outcome when the protocol could not run: the configured blend, the reason."""
    return Outcome(table=pl.DataFrame(schema=TABLE_SCHEMA),
                   served=served_blends({}, cfg.topn.blend.weights(), cfg.topn.request.mmr_lambda),
                   gate={"passed": True, "reason": reason},
                   info={"cut": "", "validation_start": "", "configs": cfg.dump(), "validation_cases": {}, "test_cases": {},
                         "validation_skipped": {}, "test_skipped": {}, "seconds": {}, "error": reason})


def tune_hyperparameters(pm: PeriodModels, cfg: Configs, catalog: pl.DataFrame, embeddings: np.ndarray, cases: Cases,
                         s: Settings) -> tuple[Configs, PeriodModels, dict, "ServedReplay | None"]:
    """ALS regularization/alpha, the history decay and recent_weight, by a coordinate search on
    the validation requests within ``s.hyper_budget_seconds``: each trial re-fits what it
    changes (``refit``), replays the requests once and scores a short per-use-case blend
    search against the first trial's best single sources. Returns the chosen configs, the
    period's models fit with them, the search (chosen values, every trial: the curve) and the
    chosen trial's loaded release, replaying ``cases`` (its release holds what every validation
    request reads: the caller replays them all without publishing and loading it again)."""
    from recs_assets import tuning

    scale: dict = {}
    fits: dict = {}
    kept: dict = {}  # the best trial so far: its replay stays open (every other trial's is closed)
    full = cases
    # the use cases these values move (a known user's history, the fold-in of recent events): cheaper trials
    sub = Cases(queries={uc: q[:tuning.HYPER_REQUESTS] for uc, q in cases.queries.items() if uc in tuning.HYPER_USE_CASES},
                seeds=cases.seeds, topn_users=cases.topn_users)
    cases = sub if sub.queries else cases

    def evaluate(h: dict) -> "tuning.Trial":
        cfg_h = tuning.with_hyperparameters(cfg, h)
        pm_h = refit(pm, cfg_h)
        key = tuple(sorted(h.items()))
        fits[key] = pm_h
        rp = ServedReplay(pm_h, catalog, embeddings, cases, topn_config(cfg_h))
        try:
            rec = tuning.record(rp, list(cases.queries))
            if not scale:
                scale.update({uc: max(rec.recall({src: 1.0}, uc) for src in SOURCES) for uc in rec.contrib})
            v = tuning.blend_value(rec, cfg.topn.blend.weights(), s.use_case_weights, scale, s.hyper_trial_seconds)
        except BaseException:
            rp.close()
            raise
        if not kept or tuning.beats(v, kept["value"]):  # the search's own rule for a better trial
            if kept:
                kept["replay"].close()
            kept.update(key=key, value=v, replay=rp)
        else:
            rp.close()
        return v

    try:
        found = tuning.search_hyperparameters(evaluate, tuning.hyperparameters_of(cfg), s.hyper_budget_seconds)
    except BaseException:
        if kept:
            kept["replay"].close()
        raise
    best = tuning.with_hyperparameters(cfg, found["chosen"])
    key = tuple(sorted(found["chosen"].items()))
    replay = kept.get("replay")
    if replay is not None and kept["key"] != key:  # not the search's choice after all: not reused
        replay.close()
        replay = None
    if replay is not None:
        replay.cases = full
    return best, fits[key], found, replay


def run(events: pl.DataFrame, catalog: pl.DataFrame, embeddings: np.ndarray, cfg: Configs, s: Settings, log=print) -> Outcome:
    """Validation window: tune weights (and MMR lambda) on models fit before it; test split:
    models fit before the cut with the chosen values, every single source and the served
    answer replayed. Use cases without data are skipped with a reason, never an error."""
    from recs_assets import tuning

    t0, c0 = time.perf_counter(), time.process_time()
    timings: dict = {}
    cpu_marks: dict = {}

    def mark(name: str) -> None:  # cumulative wall and CPU (every thread of this process) seconds
        timings[name], cpu_marks[name] = time.perf_counter() - t0, time.process_time() - c0

    items = catalog["item_id"].to_numpy().astype(object)
    cut = resolve_cut(events, s.cut)
    vstart = validation_start(events, cut, s.valid_days)
    info: dict = {"cut": cut.isoformat(), "validation_start": vstart.isoformat(), "configs": cfg.dump()}
    rows: list[dict] = []
    configured = cfg.topn.blend.weights()
    served = served_blends({}, configured, cfg.topn.request.mmr_lambda)
    gate = {"passed": True, "reason": "not evaluated"}
    curve: list = []
    truth_of = lambda cases: {uc: [t for _, t in q] for uc, q in cases.queries.items()}  # noqa: E731
    pm_v = sample = reuse = None
    fits: dict = {}

    # ---- validation: [cut - valid_days, cut), models fit before it
    events = by_time(events)
    train_v, held_v = before(events, vstart), between(events, vstart, cut)
    cases_v = build_cases(train_v, held_v, items, max_users=s.max_users, recent_events=s.recent_events, seed=s.seed,
                          session_gap_minutes=cfg.covis.session_gap_minutes)
    memory.release()  # each phase's transient frames go back to the system, so the next starts from the same floor
    info["validation_cases"], info["validation_skipped"] = cases_v.counts(), dict(cases_v.skipped)
    if not cases_v.queries or train_v.height == 0:
        gate = {"passed": True, "reason": "no validation requests (" + "; ".join(cases_v.skipped.values()) + "): configured weights served"}
    else:
        sample, share = fit_sample(train_v, cases_v.topn_users, s.fit_users, s.seed)
        if sample is not None:
            info["approximations"] = {"fit_users": f"models fit on {sample.len()} users ({share:.1%}, seeded; every "
                                                   f"replayed user included) and guest baskets at that share; "
                                                   f"popularity and trending count every event"}
        c_fit = time.process_time()
        pm_v = fit_period(in_sample(train_v, sample, share, s.seed), items, cfg, vstart, all_events=train_v)
        fit_cpu = time.process_time() - c_fit  # the fit's own: the budgets below are tied to it
        memory.release()
        fits["validation"] = pm_v.seconds
        mark("fit_validation")
        hyper_budget = fit_tied(s.hyper_budget_seconds, s.hyper_fit_ratio, fit_cpu)
        search_budget = fit_tied(s.budget_seconds, s.search_fit_ratio, fit_cpu)
        info["hyper_budget_seconds"] = {"budget": round(hyper_budget, 1), "validation_fit_cpu": round(fit_cpu, 1)}
        info["search_budget_seconds"] = {"budget": round(search_budget, 1), "validation_fit_cpu": round(fit_cpu, 1)}
        if s.tune and hyper_budget > 0:
            cfg, pm_v, info["hyperparameters"], reuse = tune_hyperparameters(
                pm_v, cfg, catalog, embeddings, cases_v, dataclasses.replace(s, hyper_budget_seconds=hyper_budget))
            configured = cfg.topn.blend.weights()
            mark("hyperparameters")
        with reuse or ServedReplay(pm_v, catalog, embeddings, cases_v, topn_config(cfg)) as rp:
            rec = tuning.record(rp, list(cases_v.queries))
            mark("record_validation")

            def mmr_recall(weights, lam, uc, limit):  # a partial replay of one use case with MMR on: per request
                return rp.recalls(weights, lam, uc, limit=limit)

            choices = tuning.choose_blends(rec, configured, cfg.topn.request.mmr_lambda, tune=s.tune,
                                           budget_seconds=search_budget, mmr_lambdas=s.mmr_lambdas,
                                           mmr_recall=mmr_recall, lambda_requests=LAMBDA_REQUESTS, seed=s.seed)
            mark("search")
            served = served_blends(choices, configured, cfg.topn.request.mmr_lambda)
            gate = tuning.gate(choices, s.min_ratio_over_popularity)
            curve = choices["homepage"].curve if "homepage" in choices else next((c.curve for c in choices.values()), [])
            info["validation_curves"] = {uc: c.curve for uc, c in choices.items()}
            info["validation_mmr_lambda"] = {uc: {str(k): round(v, 5) for k, v in c.mmr.items()} for uc, c in choices.items()}
            info["trials"] = {uc: c.trials for uc, c in choices.items()}
            item_ids = rp.base.release.item_ids
            rows += _rows("validation", "served", _served_metrics(rp, rec, served["blends"], item_ids, truth_of(cases_v), len(items)))
            for src in SOURCES:
                rows += _rows("validation", src, _recorded_metrics(rec, {src: 1.0}, item_ids, truth_of(cases_v), len(items)))
        mark("tune")
    memory.release()

    # ---- test: [cut, end), models fit before the cut with the chosen values
    train_t, held_t = before(events, cut), between(events, cut, None)
    cases_t = build_cases(train_t, held_t, items, max_users=s.max_users, recent_events=s.recent_events, seed=s.seed + 1,
                          session_gap_minutes=cfg.covis.session_gap_minutes)
    memory.release()
    info["test_cases"], info["test_skipped"] = cases_t.counts(), dict(cases_t.skipped)
    if cases_t.queries and train_t.height:
        # Warm-started from the validation fit (a prefix of the same events): ALS and BPR run a
        # fraction of their iterations; the notes say so (info["approximations"]).
        sample_t, share_t = fit_sample(train_t, cases_t.topn_users, s.fit_users, s.seed)
        if sample_t is not None and sample is not None:
            # the validation's sample (the warm start's users) plus this split's replayed users
            sample_t = pl.concat([sample, pl.Series(cases_t.topn_users, dtype=pl.String)]).unique().sort()
        if sample_t is not None:
            info.setdefault("approximations", {})["test fit_users"] = f"models fit on {sample_t.len()} users"
        pm_t = fit_period(in_sample(train_t, sample_t, share_t, s.seed), items, cfg, cut,
                          warm=pm_v if s.warm_start else None, warm_fraction=s.warm_fraction, all_events=train_t)
        memory.release()
        fits["test"] = pm_t.seconds
        info.setdefault("approximations", {}).update({f"test {k}": v for k, v in pm_t.notes.items()})
        mark("fit_test")
        with ServedReplay(pm_t, catalog, embeddings, cases_t, topn_config(cfg, served["weights"], served["mmr_lambda"])) as rp:
            rec = tuning.record(rp, list(cases_t.queries))
            item_ids, truth = rp.base.release.item_ids, truth_of(cases_t)
            rows += _rows("test", "served", _served_metrics(rp, rec, served["blends"], item_ids, truth, len(items)))
            for src in SOURCES:
                rows += _rows("test", src, _recorded_metrics(rec, {src: 1.0}, item_ids, truth, len(items)))
        mark("replay_test")
    served["hyperparameters"] = tuning.hyperparameters_of(cfg)  # what the test split and production use
    mark("total")
    info["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    for key, cum in (("phase_seconds", timings), ("phase_cpu_seconds", cpu_marks)):
        marks = sorted(cum.items(), key=lambda kv: kv[1])  # cumulative marks -> what each phase took
        info[key] = {k: round(v - (marks[i - 1][1] if i else 0.0), 1) for i, (k, v) in enumerate(marks) if k != "total"}
    info["cpu_seconds"] = round(cpu_marks["total"], 1)
    info["fit_seconds"] = fits
    table = pl.DataFrame(rows, schema=TABLE_SCHEMA) if rows else pl.DataFrame(schema=TABLE_SCHEMA)
    return Outcome(table=table, served=served, gate=gate, info=info, curve=curve)
