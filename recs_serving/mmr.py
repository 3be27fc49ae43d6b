"""Maximal marginal relevance re-ranking, batched over users (numpy only).

Greedy: at each step pick the candidate maximising
``lam * relevance - (1 - lam) * max cosine to what is already picked``.
Relevance is min-max normalised per row, so ``lam`` means the same for every source mix.
Ties go to the lower candidate position (candidates arrive in relevance order), which makes
the result deterministic.
"""
from __future__ import annotations

import numpy as np


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
    maxsim = np.zeros_like(base)
    w = 1.0 - lam
    for step in range(min(k, n_ok)):
        j = int(np.argmax(base - w * maxsim))
        out[step] = j
        base[j] = -np.inf
        np.maximum(maxsim, sims[j], out=maxsim)
    return out
