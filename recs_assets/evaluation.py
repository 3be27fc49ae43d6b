"""Temporal hold-out evaluation: every model is re-fit on the training period only."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl
import scipy.sparse as sp

from recs_assets import modeling
from recs_kernels import rules as rules_kernel
from recs_kernels import topk

MODELS = ("popularity", "trending", "als", "bpr", "covisitation", "rules", "blend")


def split(events: pl.DataFrame, cut: datetime):
    return events.filter(pl.col("ts") < cut), events.filter(pl.col("ts") >= cut)


def ground_truth(train_m: modeling.Matrix, test: pl.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """Known users' purchases after the cut of items that are new to them."""
    urow = {u: i for i, u in enumerate(train_m.user_ids)}
    icol = modeling.item_index(train_m.item_ids)
    t = test.filter((pl.col("event") == "purchase") & pl.col("user_id").is_not_null()).select("user_id", "item_id").unique()
    truth: dict[int, set[int]] = {}
    seen = train_m.binary
    for u, i in t.iter_rows():
        r, c = urow.get(u), icol.get(i)
        if r is None or c is None:
            continue
        lo, hi = seen.indptr[r], seen.indptr[r + 1]
        if c in seen.indices[lo:hi]:
            continue
        truth.setdefault(r, set()).add(c)
    rows = np.array(sorted(truth), dtype=np.int64)
    return rows, [np.fromiter(truth[r], dtype=np.int64) for r in rows]


def metrics(ids: np.ndarray, truth: list[np.ndarray], n_items: int, k: int = 10) -> dict[str, float]:
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    recall, ndcg = [], []
    for row, t in zip(ids[:, :k], truth):
        hits = np.isin(row, t)
        recall.append(hits.sum() / min(k, len(t)))
        ndcg.append((hits * discounts).sum() / discounts[: min(k, len(t))].sum())
    valid = ids[:, :k][ids[:, :k] >= 0]
    return {
        f"recall@{k}": float(np.mean(recall)) if recall else 0.0,
        f"ndcg@{k}": float(np.mean(ndcg)) if ndcg else 0.0,
        "coverage": float(len(np.unique(valid)) / max(n_items, 1)),
    }


def rules_matrix(itemsets, support, n_baskets: int, n_items: int, min_confidence: float) -> sp.csr_matrix:
    """Single-item rules A -> C as an item x item matrix of confidence (for scoring)."""
    cols = rules_kernel.association_rules(itemsets, support, n_baskets, metric="confidence",
                                          min_threshold=min_confidence).to_dict()
    r, c, v = [], [], []
    for a, cons, conf in zip(cols["antecedents"], cols["consequents"], cols["confidence"]):
        if len(a) == 1 and len(cons) == 1:
            r.append(a[0]); c.append(cons[0]); v.append(conf)
    return sp.csr_matrix((np.asarray(v, np.float32), (np.asarray(r, np.int64), np.asarray(c, np.int64))),
                         shape=(n_items, n_items))


def rank_blocked(score_block, n_rows: int, n_items: int, exclude: sp.csr_matrix, k: int,
                 block_bytes: int = 64 << 20) -> np.ndarray:
    """Top k per row of scores produced a block of rows at a time, so memory stays bounded."""
    ids = np.full((n_rows, k), -1, np.int32)
    vals = np.full((n_rows, k), -np.inf, np.float32)
    ex = sp.csr_matrix(exclude)
    ex.sort_indices()
    indptr, indices = ex.indptr.astype(np.int64), ex.indices.astype(np.int32)
    block = max(1, block_bytes // (4 * max(n_items, 1)))
    for b0 in range(0, n_rows, block):
        b1 = min(n_rows, b0 + block)
        S = np.ascontiguousarray(score_block(slice(b0, b1)), dtype=np.float32)
        topk._select_block(S, indptr, indices, b0, k, ids[b0:b1], vals[b0:b1])
    return ids


def evaluate(events: pl.DataFrame, item_ids: np.ndarray, cut: datetime, *, matrix_p, als_p, bpr_p, covis_p,
             pop_p, blend_p, baskets_fn, fpgrowth_fn, sim_p=None, k: int = 10,
             max_test_users: int = 20_000, seed: int = 0) -> tuple[pl.DataFrame, dict]:
    train, test = split(events, cut)
    m = modeling.build_matrix(train, item_ids, matrix_p)
    rows, truth = ground_truth(m, test)
    if len(rows) > max_test_users:
        # Scores are dense per test user: a seeded sample keeps memory bounded at any scale.
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), max_test_users, replace=False))
        rows, truth = rows[pick], [truth[i] for i in pick]
    info = {"cut": cut.isoformat(), "train_events": train.height, "test_events": test.height,
            "test_users": int(len(rows)), "test_pairs": int(sum(len(t) for t in truth))}
    if len(rows) == 0:
        raise ValueError(f"the hold-out after {cut:%Y-%m-%d} has no known users buying new items; move the cut")
    exclude = m.binary[rows]
    n_items = len(item_ids)
    results: dict[str, dict] = {}
    glob, trending = modeling.popularity_scores(train, item_ids, pop_p.trending_days)

    def rank(score_block):
        return rank_blocked(score_block, len(rows), n_items, exclude, k)

    def constant(v):
        return lambda sl: np.broadcast_to(v, (sl.stop - sl.start, n_items))

    results["popularity"] = metrics(rank(constant(glob)), truth, n_items, k)
    results["trending"] = metrics(rank(constant(trending + 1e-3 * glob)), truth, n_items, k)
    ua, va = modeling.fit_als(m, als_p)
    results["als"] = metrics(rank(lambda sl: ua[rows[sl]] @ va.T), truth, n_items, k)
    ub, vb = modeling.fit_bpr(m, bpr_p)
    results["bpr"] = metrics(rank(lambda sl: ub[rows[sl]] @ vb.T), truth, n_items, k)
    sim = modeling.normalized_similarity(modeling.covisitation(train, item_ids, covis_p))
    hist = m.weights[rows]
    results["covisitation"] = metrics(rank(lambda sl: (hist[sl] @ sim).toarray()), truth, n_items, k)
    baskets, n_baskets = baskets_fn(train)
    itemsets, support = fpgrowth_fn(baskets)
    R = rules_matrix(itemsets, support, n_baskets, n_items, min_confidence=0.05)
    seen = m.binary[rows]
    # Items no rule reaches fall back to trending, a hair below any rule score.
    results["rules"] = metrics(rank(lambda sl: (seen[sl] @ R).toarray() + 1e-3 * trending), truth, n_items, k)
    user_sim = modeling.user_similarity(train, item_ids, sim_p or modeling.SimilarityParams())
    bl = modeling.make_blend(blend_p, va, vb, user_sim, trending)
    ids, _ = bl.top_k(k, als_users=ua[rows], bpr_users=ub[rows], history=hist, exclude=exclude)
    results["blend"] = metrics(ids, truth, n_items, k)
    table = pl.DataFrame([{"model": name, **vals} for name, vals in results.items()])
    return table, info
