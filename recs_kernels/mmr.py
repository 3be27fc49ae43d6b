"""Maximal marginal relevance re-ranking, batched over users (numba greedy loops).

Greedy: at each step pick the candidate maximising
``lam * relevance - (1 - lam) * max cosine to what is already picked``.
Relevance is min-max normalised per row, so ``lam`` means the same for every source mix.
Ties go to the lower candidate position (candidates arrive in relevance order), which makes
the result deterministic.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _argmax_row(x):
    # np.argmax semantics: the first maximum; a NaN wins at its first position.
    best = 0
    bv = x[0]
    if bv != bv:
        return 0
    for m in range(1, x.shape[0]):
        v = x[m]
        if v != v:
            return m
        if v > bv:
            bv = v
            best = m
    return best


@njit(cache=True, nogil=True)
def _greedy_batch(rel, avail, sims, k, lam32, w32, out):
    """The batched greedy loop of ``mmr_batch`` (float32 throughout, as numpy computes it):
    per step ``obj = lam*rel - (1-lam)*maxsim`` over available slots, first argmax, then
    ``maxsim = max(maxsim, sims[j])``. ``out`` is [B, k] filled with -1."""
    B, M = rel.shape
    maxsim = np.zeros(M, np.float32)
    obj = np.empty(M, np.float32)
    ninf = np.float32(-np.inf)
    for b in range(B):
        maxsim[:] = 0
        for step in range(k):
            for m in range(M):
                obj[m] = lam32 * rel[b, m] - w32 * maxsim[m] if avail[b, m] else ninf
            j = _argmax_row(obj)
            if not avail[b, j]:
                break  # this row ran out; the rest stay -1
            out[b, step] = j
            avail[b, j] = False
            for m in range(M):
                v = sims[b, j, m]
                if v > maxsim[m] or v != v:
                    maxsim[m] = v
    return out


@njit(cache=True, nogil=True)
def _greedy_one(base, sims, n, w32, out):
    """The loop of ``_mmr_one``: ``j = argmax(base - w*maxsim)``, ``base[j] = -inf``."""
    M = base.shape[0]
    maxsim = np.zeros(M, np.float32)
    obj = np.empty(M, np.float32)
    ninf = np.float32(-np.inf)
    for step in range(n):
        for m in range(M):
            obj[m] = base[m] - w32 * maxsim[m]
        j = _argmax_row(obj)
        out[step] = j
        base[j] = ninf
        for m in range(M):
            v = sims[j, m]
            if v > maxsim[m] or v != v:
                maxsim[m] = v
    return out


def mmr_batch(relevance: np.ndarray, vectors: np.ndarray | None, k: int, lam: float) -> np.ndarray:
    """Pick up to ``k`` positions per row.

    relevance: [B, M] float, ``-inf`` marks unusable slots. vectors: [B, M, d] L2-normalised
    (or None: pure relevance order). Returns [B, k] int positions, -1 where a row ran out.
    """
    B, M = relevance.shape
    k = min(k, M)
    out = np.full((B, k), -1, np.int64)
    if M == 0 or k == 0:
        return out
    avail = np.isfinite(relevance)
    if vectors is None or lam >= 1.0:
        key = np.where(avail, relevance, -np.inf)
        order = np.argsort(-key, axis=1, kind="stable")[:, :k]
        ok = np.take_along_axis(avail, order, 1)
        return np.where(ok, order, -1)
    if B == 1:
        return _mmr_one(relevance[0], vectors[0], k, lam, avail[0].copy())[None]
    relevance = relevance.astype(np.float32, copy=False)
    lo = np.where(avail, relevance, np.inf).min(axis=1, keepdims=True)
    hi = np.where(avail, relevance, -np.inf).max(axis=1, keepdims=True)
    lo = np.where(np.isfinite(lo), lo, 0.0)
    span = np.where(hi > lo, hi - lo, 1.0)
    rel = np.where(avail, (np.where(avail, relevance, 0.0) - lo) / span, 0.0).astype(np.float32)
    sims = np.matmul(vectors, vectors.transpose(0, 2, 1))  # [B, M, M]
    if sims.dtype == np.float32 and type(lam) in (float, int):  # Python scalars: numpy computes in float32
        return _greedy_batch(rel, avail, sims, k, np.float32(lam), np.float32(1.0 - lam), out)
    maxsim = np.zeros((B, M), np.float32)
    rows = np.arange(B)
    for step in range(k):
        obj = lam * rel - (1.0 - lam) * maxsim
        obj[~avail] = -np.inf
        j = np.argmax(obj, axis=1)
        ok = avail[rows, j]
        out[:, step] = np.where(ok, j, -1)
        if not ok.any():
            break
        avail[rows, j] = False
        maxsim = np.maximum(maxsim, sims[rows, j, :])
    return out


def _mmr_one(relevance: np.ndarray, vectors: np.ndarray, k: int, lam: float, avail: np.ndarray) -> np.ndarray:
    """The single-row case with 1-D arrays only (the serving path: fewer, cheaper numpy calls)."""
    out = np.full(k, -1, np.int64)
    n_ok = int(avail.sum())
    if n_ok == 0:
        return out
    r = np.where(avail, relevance, 0.0).astype(np.float32)
    lo, hi = float(r[avail].min()), float(r[avail].max())
    r = (r - lo) / (hi - lo if hi > lo else 1.0)
    sims = vectors @ vectors.T
    base = lam * r
    base[~avail] = -np.inf
    if base.dtype == np.float32 and sims.dtype == np.float32 and type(lam) in (float, int):
        return _greedy_one(base, sims, min(k, n_ok), np.float32(1.0 - lam), out)
    maxsim = np.zeros_like(base)
    w = 1.0 - lam
    for step in range(min(k, n_ok)):
        j = int(np.argmax(base - w * maxsim))
        out[step] = j
        base[j] = -np.inf
        np.maximum(maxsim, sims[j], out=maxsim)
    return out
