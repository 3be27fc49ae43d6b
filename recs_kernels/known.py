"""A known customer's precomputed top-N as the answer, in one numba call (it was ~25 numpy
calls a request): the row minus exclusions, filters and the customer's history, MMR re-ranked.

``topn_one`` computes what ``Recommender._topn`` computes for one user through ``mmr_batch``'s
single-row path, ``topn_many`` its batched path, step by step in the same float32 arithmetic
(NumPy's promotion of the Python scalars included) on the similarities NumPy computes, so the
picks are identical.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .mmr import _greedy_batch, _greedy_one
from .request import _in_sorted

__all__ = ["topn_one", "topn_many"]


@njit(cache=True, nogil=True)
def topn_one(ids, scores, exclude, hist, fmask, sims, k, lam):
    """Picks of one top-N row.

    ids: int32 [W] (-1 pads), scores: float32 [W] (the stored float16 widened, exactly), exclude: sorted int64, hist: the customer's
    sorted history row, fmask: bool [W] (the filter on ``max(ids, 0)``) or empty for none, sims:
    float32 [W, W] the MMR similarities of the row's items (``v @ v.T`` of their vectors, by
    NumPy as ``mmr_batch`` gets them: its A @ A.T goes to BLAS syrk, whose roundings a numba
    product does not repeat, and float16 scores tie often) or [0, 0] without MMR, k, lam.
    Returns (item ids int64 [n], scores float64 [n]) of the n <= k picks in order."""
    W = ids.shape[0]
    sc = np.empty(W, np.float32)
    avail = np.zeros(W, np.bool_)
    n_ok = 0
    for j in range(W):
        i = ids[j]
        sc[j] = scores[j]
        ok = i >= 0
        if ok and exclude.shape[0] and _in_sorted(np.int64(i), exclude):
            ok = False
        if ok and fmask.shape[0] and not fmask[j]:
            ok = False
        if ok and hist.shape[0] and _in_sorted(i, hist):
            ok = False
        if ok and not np.isfinite(sc[j]):
            ok = False
        avail[j] = ok
        if ok:
            n_ok += 1
    kk = min(k, W)
    picks = np.full(kk, -1, np.int64)
    if W == 0 or kk == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    if sims.shape[0] == 0 or lam >= 1.0:
        # stable order of -relevance with unusable slots last (mmr_batch without vectors)
        key = np.empty(W, np.float32)
        for j in range(W):
            key[j] = -sc[j] if avail[j] else np.float32(np.inf)
        order = np.argsort(key, kind="mergesort")
        for s in range(kk):
            if avail[order[s]]:
                picks[s] = order[s]
    elif n_ok > 0:
        # _mmr_one: min-max normalised relevance (float32, the Python scalars as NumPy casts them)
        lo = np.inf
        hi = -np.inf
        for j in range(W):
            if avail[j]:
                v = np.float64(sc[j])
                lo = min(lo, v)
                hi = max(hi, v)
        span = np.float32(hi - lo if hi > lo else 1.0)
        lo32 = np.float32(lo)
        lam32 = np.float32(lam)
        base = np.empty(W, np.float32)
        for j in range(W):
            r = (sc[j] if avail[j] else np.float32(0.0))
            r = (r - lo32) / span
            base[j] = lam32 * r if avail[j] else np.float32(-np.inf)
        _greedy_one(base, sims, min(kk, n_ok), np.float32(1.0 - lam), picks)
    n = 0
    while n < kk and picks[n] >= 0:
        n += 1
    out_ids = np.empty(n, np.int64)
    out_sc = np.empty(n, np.float64)
    for s in range(n):
        out_ids[s] = ids[picks[s]]
        out_sc[s] = np.float64(sc[picks[s]])
    return out_ids, out_sc


@njit(cache=True, nogil=True)
def topn_many(ids, scores, hist_indptr, hist_items, users, exclude, fmask, sims, k, lam):
    """``Recommender._topn`` for many users (the batch path, ``mmr_batch``'s batched branch):
    ids int32 [B, W] and scores float32 [B, W] are the users' rows, fmask bool [B, W] or [0, 0].
    Returns (item ids int64 [B, k'], scores float64 [B, k'], picks per row int64 [B]), rows
    left-aligned, k' = min(k, W)."""
    B, W = ids.shape
    kk = min(k, W)
    sel_ids = np.zeros((B, kk), np.int64)
    sel_sc = np.zeros((B, kk), np.float64)
    counts = np.zeros(B, np.int64)
    if W == 0 or kk == 0:
        return sel_ids, sel_sc, counts
    avail = np.zeros((B, W), np.bool_)
    for b in range(B):
        lo_h = hist_indptr[users[b]]
        hi_h = hist_indptr[users[b] + 1]
        hist = hist_items[lo_h:hi_h]
        for j in range(W):
            i = ids[b, j]
            ok = i >= 0
            if ok and exclude.shape[0] and _in_sorted(np.int64(i), exclude):
                ok = False
            if ok and fmask.shape[0] and not fmask[b, j]:
                ok = False
            if ok and hist.shape[0] and _in_sorted(i, hist):
                ok = False
            if ok and not np.isfinite(scores[b, j]):
                ok = False
            avail[b, j] = ok
    picks = np.full((B, kk), -1, np.int64)
    if sims.shape[0] == 0 or lam >= 1.0:
        key = np.empty(W, np.float32)
        for b in range(B):
            for j in range(W):
                key[j] = -scores[b, j] if avail[b, j] else np.float32(np.inf)
            order = np.argsort(key, kind="mergesort")
            for s in range(kk):
                if avail[b, order[s]]:
                    picks[b, s] = order[s]
    else:
        # mmr_batch's batched branch: per-row min-max in float32, then its greedy loop itself
        rel = np.zeros((B, W), np.float32)
        for b in range(B):
            lo = np.float32(np.inf)
            hi = np.float32(-np.inf)
            for j in range(W):
                if avail[b, j]:
                    lo = min(lo, scores[b, j])
                    hi = max(hi, scores[b, j])
            if not np.isfinite(lo):
                lo = np.float32(0.0)
            span = hi - lo if hi > lo else np.float32(1.0)
            for j in range(W):
                rel[b, j] = (scores[b, j] - lo) / span if avail[b, j] else np.float32(0.0)
        _greedy_batch(rel, avail, sims, kk, np.float32(lam), np.float32(1.0 - lam), picks)
    for b in range(B):
        n = 0
        while n < kk and picks[b, n] >= 0:
            sel_ids[b, n] = ids[b, picks[b, n]]
            sel_sc[b, n] = np.float64(scores[b, picks[b, n]])
            n += 1
        counts[b] = n
    return sel_ids, sel_sc, counts
