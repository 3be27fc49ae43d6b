"""The purchase behind a pick, for explanations, in one numba call per request.

"Picked for you because you bought X": for each recommended item, the item of the customer's
history closest to it (cosine of the ALS item factors). "Bought X, whose buyers also buy this":
for each target customer of an item, the item of their history closest to it. The numpy
versions (``recs_serving.explain``'s references) spent most of their time in per-request array
calls (masks, argsorts, padded stacks, ~60 calls for a batch); here a request reads only the
history rows and factor rows it compares.

Products are float32 sums in SIMD lanes, as in a BLAS product but not necessarily in the same
order, so when two purchases are equally close to within float32 rounding the other one may be
named; every pick is a true maximum to that precision.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .request import _capped

__all__ = ["taste_anchors", "customer_anchors"]

_FLOOR = np.float32(1e-12)


@njit(cache=True, nogil=True, fastmath=True)
def _dot(Y, a, b):
    # float32 lanes in any order (fastmath: SIMD), as a BLAS product sums them
    s = np.float32(0.0)
    for d in range(Y.shape[1]):
        s += Y[a, d] * Y[b, d]
    return s


@njit(cache=True, nogil=True)
def _history(items, weights, bought, lo, hi, cap, out):
    """The customer's purchases (or every history item when none is marked bought), at most
    ``cap``: the heaviest, heaviest first with ties in history order; else in history order.
    Written to ``out``; returns their number."""
    nb = 0
    for p in range(lo, hi):
        if bought[p]:
            nb += 1
    m = 0
    pos = np.empty(hi - lo, np.int64)
    for p in range(lo, hi):
        if nb == 0 or bought[p]:
            pos[m] = p
            m += 1
    if m <= cap:
        for t in range(m):
            out[t] = items[pos[t]]
        return m
    sub_items = np.empty(m, items.dtype)
    sub_w = np.empty(m, weights.dtype)
    for t in range(m):
        sub_items[t] = items[pos[t]]
        sub_w[t] = weights[pos[t]]
    # the cap heaviest by a size-cap heap (ties to the earlier, i.e. lower, item: rows are sorted),
    # then heaviest first, ties in history order: a stable sort of all m was most of a long row's cost
    sel = _capped(sub_items, sub_w, cap)
    neg = np.empty(cap, np.float32)
    for t in range(cap):
        neg[t] = -sub_w[sel[t]]
    order = np.argsort(neg, kind="mergesort")
    for t in range(cap):
        out[t] = sub_items[sel[order[t]]]
    return cap


@njit(cache=True, nogil=True)
def taste_anchors(Y, norms, indptr, items, weights, bought, users, cand, cap):
    """``out[b, j]``: the item of user ``users[b]``'s history (``_history``) with the highest
    cosine to ``cand[b, j]``, never the item itself; -1 for a padded candidate (< 0), an unknown
    user (< 0), or no other item to name."""
    B, K = cand.shape
    out = np.full((B, K), -1, np.int64)
    h = np.empty(cap, np.int64)
    for b in range(B):
        u = users[b]
        if u < 0:
            continue
        n = _history(items, weights, bought, indptr[u], indptr[u + 1], cap, h)
        for j in range(K):
            c = cand[b, j]
            if c < 0:
                continue
            nc = norms[c]
            best = -1
            bs = -np.inf
            for t in range(n):
                x = h[t]
                if x == c:
                    continue
                s = _dot(Y, c, x) / max(nc * norms[x], _FLOOR)
                if s > bs:
                    bs = s
                    best = x
            if best >= 0 and np.isfinite(bs):
                out[b, j] = best
    return out


@njit(cache=True, nogil=True)
def customer_anchors(Y, norms, indptr, items, users, i):
    """``out[b]``: the item of user ``users[b]``'s whole history (item ``i`` left out) with the
    highest cosine to item ``i``; the first such in history order; -1 for an unknown user or an
    empty rest of history."""
    out = np.full(users.size, -1, np.int64)
    for b in range(users.size):
        u = users[b]
        if u < 0:
            continue
        best = -1
        bs = -np.inf
        for p in range(indptr[u], indptr[u + 1]):
            x = items[p]
            if x == i:
                continue
            s = _dot(Y, i, x) / norms[x]
            if best < 0 or s > bs:
                bs = s
                best = x
        out[b] = best
    return out
