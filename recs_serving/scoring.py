"""Per-request blend scoring on a candidate set: the one function to swap for a kernel.

``recs_kernels.blend.Blend`` scores a block of users densely: every source is z-scored per
user over the whole catalogue, weighted, and summed. Serving needs the same numbers for a few
hundred candidates only, and the z-score of a source over the catalogue does not need the
catalogue:

  factor sources (als, bpr, content):  s_i = y_i . u   ->  mean = mu . u,  var = u^T Sigma u
                                       with the items' mean mu and covariance Sigma, precomputed
                                       once per release (``Moments``);
  sparse sources (covis, rules):       s = h @ Sim, nonzero on a few items -> mean and var
                                       from the nonzeros alone;
  popularity:                          one z-scored vector per release.

So ``score_candidates`` is O(candidates * factors + factors^2 + neighbours), and its
numbers match the dense blend restricted to the candidates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .loader import Adjacency, LoadedRelease

SOURCES = ("als", "bpr", "covis", "rules", "content", "popularity")


@dataclass(frozen=True)
class Moments:
    mean: np.ndarray  # [d] float64
    cov: np.ndarray  # [d, d] float64

    @staticmethod
    def of(M: np.ndarray | None) -> "Moments | None":
        if M is None or M.shape[0] == 0:
            return None
        n, d = M.shape
        s = np.zeros(d, np.float64)
        g = np.zeros((d, d), np.float64)
        for a in range(0, n, 1 << 15):  # chunked: bounded temporaries whatever the catalogue size
            blk = np.asarray(M[a:a + (1 << 15)], dtype=np.float64)
            s += blk.sum(axis=0)
            g += blk.T @ blk
        mean = s / n
        return Moments(mean, g / n - np.outer(mean, mean))

    def z_params(self, u: np.ndarray) -> tuple[float, float]:
        u = np.asarray(u, dtype=np.float64)
        mean = float(self.mean @ u)
        var = float(u @ self.cov @ u)
        return mean, (np.sqrt(var) if var > 1e-20 else 0.0)


@dataclass(frozen=True)
class ReleaseStats:
    """Per-release constants the per-request scoring needs (computed once, at load)."""

    als: Moments | None
    bpr: Moments | None
    content: Moments | None
    popularity_z: np.ndarray

    @staticmethod
    def of(rel: LoadedRelease) -> "ReleaseStats":
        pop = 0.5 * rel.pop_norm.astype(np.float64) + 0.5 * rel.trend_norm.astype(np.float64)
        sd = pop.std()
        pz = ((pop - pop.mean()) / sd).astype(np.float32) if sd > 0 else np.zeros(rel.n_items, np.float32)
        return ReleaseStats(Moments.of(rel.als_item), Moments.of(rel.bpr_item), Moments.of(rel.emb), pz)


def _sparse_source(adj: Adjacency, seeds: np.ndarray, weights: np.ndarray, cand: np.ndarray, n_items: int):
    """z-scored ``(weights @ Adj)`` on ``cand`` (sorted), and the seed contributing most per candidate."""
    z = np.zeros(cand.shape[0], np.float32)
    anchor = np.full(cand.shape[0], -1, np.int64)
    if seeds.size == 0:
        return z, anchor
    lo = adj.indptr[seeds]
    hi = adj.indptr[seeds + 1]
    lens = hi - lo
    total = int(lens.sum())
    if total == 0:
        return z, anchor
    rows = np.repeat(np.arange(seeds.size), lens)
    offs = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(lo, lens)
    nbr = adj.indices[offs].astype(np.int64)
    contrib = adj.scores[offs].astype(np.float64) * weights[rows]
    # dense-vector moments from the nonzeros: aggregate duplicates first
    uniq, inv = np.unique(nbr, return_inverse=True)
    vals = np.bincount(inv, weights=contrib, minlength=uniq.size)
    mean = vals.sum() / n_items
    var = (vals * vals).sum() / n_items - mean * mean
    sd = np.sqrt(var) if var > 1e-20 else 0.0
    pos = np.searchsorted(cand, uniq)
    pos_ok = pos < cand.size
    hit = np.zeros(uniq.size, bool)
    hit[pos_ok] = cand[pos[pos_ok]] == uniq[pos_ok]
    raw = np.zeros(cand.shape[0], np.float64)
    raw[pos[hit]] = vals[hit]
    if sd > 0:
        z = ((raw - mean) / sd).astype(np.float32)
    # anchor: the seed with the largest single contribution to each candidate
    order = np.lexsort((rows, -contrib, nbr))
    first = np.ones(order.size, bool)
    first[1:] = nbr[order][1:] != nbr[order][:-1]
    best_nbr = nbr[order][first]
    best_seed = seeds[rows[order][first]]
    p = np.searchsorted(cand, best_nbr)
    ok = p < cand.size
    ok[ok] = cand[p[ok]] == best_nbr[ok]
    anchor[p[ok]] = best_seed[ok]
    return z, anchor


def _factor_source(items: np.ndarray, mom: Moments | None, u: np.ndarray | None, cand: np.ndarray) -> np.ndarray:
    if u is None or mom is None or not np.any(u):
        return np.zeros(cand.shape[0], np.float32)
    mean, sd = mom.z_params(u)
    if sd <= 0:
        return np.zeros(cand.shape[0], np.float32)
    s = np.asarray(items[cand], dtype=np.float32) @ u.astype(np.float32)
    return ((s - mean) / sd).astype(np.float32)


def score_candidates(
    rel: LoadedRelease,
    stats: ReleaseStats,
    cand: np.ndarray,
    *,
    weights: dict,
    als_user: np.ndarray | None,
    bpr_user: np.ndarray | None,
    seeds: np.ndarray,
    seed_weights: np.ndarray,
    history: tuple[np.ndarray, np.ndarray] | None = None,
):
    """Blend scores for sorted candidate item indices ``cand``.

    Returns ``(total [n], contributions [n, len(SOURCES)], anchors {source: [n] seed idx})``.
    ``seeds``/``seed_weights``: the request's recent items (weighted); ``history``: the user's
    weighted past items, which join the seeds for co-visitation as in the batch blend.
    """
    n = cand.shape[0]
    C = np.zeros((n, len(SOURCES)), np.float32)
    anchors: dict = {}
    w = np.array([float(weights.get(s, 0.0)) for s in SOURCES], np.float32)
    if w[0] and rel.als_item is not None:
        C[:, 0] = _factor_source(rel.als_item, stats.als, als_user, cand)
    if w[1] and rel.bpr_item is not None:
        C[:, 1] = _factor_source(rel.bpr_item, stats.bpr, bpr_user, cand)
    sw = seed_weights.astype(np.float64)
    sw = sw / sw.max() if sw.size and sw.max() > 0 else sw
    if w[2]:
        cs, cw = seeds, sw
        if history is not None and history[0].size:
            hw = history[1].astype(np.float64)
            hw = hw / hw.max() if hw.max() > 0 else hw
            cs = np.concatenate([seeds, history[0].astype(np.int64)])
            cw = np.concatenate([sw, 0.5 * hw])
        C[:, 2], anchors["covis"] = _sparse_source(rel.covis, cs, cw, cand, rel.n_items)
    if w[3]:
        C[:, 3], anchors["rules"] = _sparse_source(rel.rules, seeds, sw, cand, rel.n_items)
    if w[4] and rel.emb is not None and seeds.size:
        E_seeds = np.asarray(rel.emb[seeds], dtype=np.float32)
        u = (E_seeds.astype(np.float64) * sw[:, None]).sum(axis=0)
        C[:, 4] = _factor_source(rel.emb, stats.content, u, cand)
        sims = np.asarray(rel.emb[cand], dtype=np.float32) @ E_seeds.T
        anchors["content"] = seeds[np.argmax(sims, axis=1)]
    if w[5]:
        C[:, 5] = stats.popularity_z[cand]
    C *= w
    return C.sum(axis=1), C, anchors
