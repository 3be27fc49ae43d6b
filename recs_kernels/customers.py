"""An item's likeliest customers among many users, with bounded work: exact ALS scores on a
few thousand candidate users (a contiguous block chosen by the item, plus a sample of the
buyers of its nearest neighbours) instead of every user, in numba (the numpy version was
~26 array calls, a unique over ~6K ids and a float16 copy of every candidate row).

Scores are what numpy computes: the user rows widened to float32 exactly (a 64K-entry table
for float16 rows) and one BLAS product per request (numba's ``np.dot`` on the same operands).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .topk import _select_1d

__all__ = ["candidates", "top_customers", "HALF_TO_FLOAT"]

# every float16 bit pattern as float32 (exact: float16 is a subset), NaN payloads as numpy casts them
HALF_TO_FLOAT = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@njit(cache=True, nogil=True)
def _sampled_buyers(indptr, indices, i, n_nb, bp, bi, per_nb, out, n):
    """The buyers of item ``i``'s first ``n_nb`` neighbours, each list strided down to about
    ``per_nb`` (``buyers[a:b:step]``), appended to ``out``."""
    lo = indptr[i]
    hi = min(indptr[i + 1], lo + n_nb)
    for p in range(lo, hi):
        j = indices[p]
        a = bp[j]
        b = bp[j + 1]
        step = max(1, (b - a) // per_nb)
        for q in range(a, b, step):
            out[n] = bi[q]
            n += 1
    return n


@njit(cache=True, nogil=True)
def candidates(n_users, start, sample, i, n_nb, per_nb, a0p, a0i, a1p, a1i, a2p, a2i, bp, bi):
    """Sorted distinct users: ``[start, start + sample)`` and the sampled buyers of item ``i``'s
    neighbours in three adjacencies."""
    n_extra = 0
    cap = 3 * n_nb * (2 * per_nb + 1)  # a strided list has at most 2 * per_nb entries
    extra = np.empty(cap, np.int64)
    n_extra = _sampled_buyers(a0p, a0i, i, n_nb, bp, bi, per_nb, extra, n_extra)
    n_extra = _sampled_buyers(a1p, a1i, i, n_nb, bp, bi, per_nb, extra, n_extra)
    n_extra = _sampled_buyers(a2p, a2i, i, n_nb, bp, bi, per_nb, extra, n_extra)
    extra = np.sort(extra[:n_extra])
    end = min(n_users, start + sample)
    out = np.empty(max(0, end - start) + n_extra, np.int64)
    n = 0
    e = 0
    u = start
    last = -1
    while u < end or e < n_extra:  # merge of two sorted runs, duplicates dropped
        if e >= n_extra or (u < end and u <= extra[e]):
            v = u
            u += 1
        else:
            v = extra[e]
            e += 1
        if v != last:
            out[n] = v
            n += 1
            last = v
    return out[:n]


@njit(cache=True, nogil=True)
def rows_half(U16, idx, table):
    """``U[idx].astype(float32)`` for a float16 ``U`` given as its uint16 bits."""
    d = U16.shape[1]
    out = np.empty((idx.shape[0], d), np.float32)
    for a in range(idx.shape[0]):
        r = idx[a]
        for c in range(d):
            out[a, c] = table[U16[r, c]]
    return out


@njit(cache=True, nogil=True)
def top_customers(G, y, cand, bought, k):
    """Top ``k`` of ``G @ y`` over ``cand`` (rows of ``G``), users in the sorted ``bought``
    skipped: ``(user ids, scores, ok)``, ids -1 past the eligible; ``ok`` False when a score is
    NaN or +inf (the caller refuses those, as ``topk.topk_scores`` does)."""
    n = cand.shape[0]
    if n == 1:  # numpy computes a one-row product as a dot product, not a gemv
        s = np.empty(1, np.float32)
        s[0] = np.dot(G[0], y)
    else:
        s = np.dot(G, y)
    e = 0
    for a in range(n):
        while e < bought.shape[0] and bought[e] < cand[a]:
            e += 1
        if e < bought.shape[0] and bought[e] == cand[a]:
            s[a] = -np.inf  # already bought it: not a target
    ok = True
    for a in range(n):
        if np.isnan(s[a]) or s[a] == np.inf:
            ok = False
    top, sc = _select_1d(s, np.zeros(0, np.int32), k)
    ids = np.full(k, -1, np.int64)
    for a in range(k):
        if top[a] >= 0:
            ids[a] = cand[top[a]]
    return ids, sc, ok


@njit(cache=True, nogil=True)
def scan_scores_half(U16, table, y, chunk):
    """``U.astype(float32) @ y`` for every user of a float16 ``U`` (given as its uint16 bits),
    block by block of ``chunk`` rows with one BLAS product each, as the numpy scan computes it
    (numpy's float16 cast was ~5x slower than this table)."""
    n, d = U16.shape
    s = np.empty(n, np.float32)
    for a0 in range(0, n, chunk):
        a1 = min(n, a0 + chunk)
        G = np.empty((a1 - a0, d), np.float32)
        for a in range(a1 - a0):
            for c in range(d):
                G[a, c] = table[U16[a0 + a, c]]
        if a1 - a0 == 1:  # numpy computes a one-row product as a dot product
            s[a0] = np.dot(G[0], y)
        else:
            s[a0:a1] = np.dot(G, y)
    return s
