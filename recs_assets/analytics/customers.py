"""Customer analytics: category saturation and factor-based cross-sell potential."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recs_kernels import topk


def kmeans(X: np.ndarray, k: int, *, seed: int = 0, iterations: int = 50, tol: float = 1e-6) -> np.ndarray:
    """Labels (0..k-1) of Lloyd's k-means with k-means++ seeding; deterministic for a seed."""
    X = np.asarray(X, dtype=np.float64)
    n = X.shape[0]
    k = int(min(k, n))
    if k <= 1:
        return np.zeros(n, dtype=np.int32)
    rng = np.random.default_rng(seed)
    sq = np.einsum("ij,ij->i", X, X)
    centers = np.empty((k, X.shape[1]))
    centers[0] = X[rng.integers(n)]
    d2 = np.maximum(sq - 2 * X @ centers[0] + centers[0] @ centers[0], 0)
    for c in range(1, k):
        total = d2.sum()
        idx = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centers[c] = X[idx]
        d2 = np.minimum(d2, np.maximum(sq - 2 * X @ centers[c] + centers[c] @ centers[c], 0))
    labels = np.full(n, -1, dtype=np.int32)
    prev = np.inf
    for _ in range(iterations):
        dist = sq[:, None] - 2 * X @ centers.T + np.einsum("ij,ij->i", centers, centers)[None, :]
        labels = dist.argmin(axis=1).astype(np.int32)
        inertia = float(np.maximum(dist[np.arange(n), labels], 0).sum())
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, X)
        empty = np.flatnonzero(counts == 0)
        centers = sums / np.maximum(counts, 1)[:, None]
        if len(empty):  # re-seed an empty cluster at the points worst served
            far = np.argsort(-dist[np.arange(n), labels])[:len(empty)]
            centers[empty] = X[far]
        if prev - inertia <= tol * max(prev, 1e-12) and not len(empty):
            break
        prev = inertia
    return labels


def rank_decile(values: np.ndarray) -> np.ndarray:
    """1..10 by rank (10 = the highest values); tied values share their average rank."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        return np.zeros(0, np.int32)
    r = rankdata(v, method="average")
    return np.clip(np.ceil(10 * r / n), 1, 10).astype(np.int32)


def rank_percentile(values: np.ndarray) -> np.ndarray:
    """Share of the other values strictly below each value, in [0, 1] (ties get the same)."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n <= 1:
        return np.ones(n)
    sv = np.sort(v)
    return np.searchsorted(sv, v, side="left") / (n - 1)


def saturation(owned: sp.csr_matrix, item_group: np.ndarray, n_groups: int):
    """Per user: distinct groups owned, and the share of all groups.

    owned: users x items (nonzero = bought); item_group: group index per item, -1 = none.
    """
    owned = sp.csr_matrix(owned)
    g = np.asarray(item_group)
    valid = g >= 0
    G = sp.csr_matrix((np.ones(valid.sum(), np.float32), (np.flatnonzero(valid), g[valid])),
                      shape=(owned.shape[1], max(n_groups, 1)))
    O = owned.copy()
    O.data = np.ones_like(O.data, dtype=np.float32)
    UG = (O @ G).tocsr()
    groups = np.diff(UG.indptr).astype(np.int32)  # distinct groups with a purchase
    items = np.diff(O.indptr).astype(np.int32)
    share = groups / max(n_groups, 1)
    return groups, items, share


def _chunks(n: int, width: int, budget: int = 1 << 22):
    step = max(1, budget // max(width, 1))
    for s in range(0, n, step):
        yield s, min(n, s + step)


def _owned_positive(owned: sp.csr_matrix, cols: np.ndarray) -> sp.csr_matrix:
    """The owned columns ``cols`` (in that order) with only entries > 0 stored."""
    sub = sp.csr_matrix(owned)[:, cols].tocsr()
    sub.data = (sub.data > 0).astype(np.int8)
    sub.eliminate_zeros()
    return sub


def cross_sell_scores(U: np.ndarray, V: np.ndarray, owned: sp.csr_matrix, target: np.ndarray,
                      aggregate: str = "max", max_items: int | None = None):
    """Per user, the factor preference for the target items they do not own yet.

    Returns (score, best, open_items): score is the max or mean of u . v over the target
    items not owned (NaN when none are left), best the column index of the best of them
    (-1 when none), open_items how many target items they do not own. ``target`` is in
    priority order (best sellers first); the best item and the max look at its first
    ``max_items`` only, which bounds the work per user whatever the catalogue size (a
    category grows with the catalogue: without the bound, users x category is quadratic in
    the data). The best is the exact top-1 kernel with the owned items as exclusions; the mean
    covers the whole target with no users x targets product at all
    (u . (sum of all target rows - sum of the owned ones)).
    """
    target = np.asarray(target, dtype=np.int64)
    n = U.shape[0]
    score = np.full(n, np.nan)
    best = np.full(n, -1, dtype=np.int64)
    open_items = np.zeros(n, dtype=np.int32)
    if len(target) == 0 or n == 0:
        return score, best, open_items
    U32 = np.ascontiguousarray(U, dtype=np.float32)
    OT = _owned_positive(owned, target)
    open_items[:] = len(target) - np.diff(OT.indptr)
    head = target if max_items is None else target[:max_items]
    OH = OT[:, :len(head)].tocsr()
    ids, top = topk.batch(U32, np.ascontiguousarray(V[head], dtype=np.float32), 1, exclude=OH)
    found = ids[:, 0] >= 0
    best[found] = head[ids[found, 0]]
    if aggregate == "mean":
        VT = np.asarray(V[target], dtype=np.float64)
        total = VT.sum(axis=0)
        has = open_items > 0
        for s, e in _chunks(n, VT.shape[1]):
            agg = np.einsum("ij,ij->i", U32[s:e].astype(np.float64), total[None, :] - OT[s:e] @ VT)
            score[s:e] = np.where(has[s:e], agg / np.maximum(open_items[s:e], 1), np.nan)
    else:
        score[found] = top[found, 0]
    return score, best, open_items


def top_customers(U: np.ndarray, V: np.ndarray, owned: sp.csr_matrix, items: np.ndarray, k: int):
    """Per item (column index), the k users with the highest u . v among those who do not own it.

    Returns (users, scores), both items x k, best first (ties: lower user index); -1 / -inf
    where fewer than k users qualify. The exact top-k kernel with the roles of users and items
    swapped: a heap per item, the owned pairs as exclusions.
    """
    items = np.asarray(items, dtype=np.int64)
    n, m = U.shape[0], len(items)
    k = int(min(k, n))
    if m == 0 or k == 0:
        return np.full((m, k), -1, dtype=np.int64), np.full((m, k), -np.inf, dtype=np.float64)
    VT = np.ascontiguousarray(V[items], dtype=np.float32)
    owners = _owned_positive(owned, items).T.tocsr()
    owners.sort_indices()
    users, scores = topk.batch(VT, np.ascontiguousarray(U, dtype=np.float32), k, exclude=owners)
    return users.astype(np.int64), scores.astype(np.float64)
