"""Item-item co-visitation counts within baskets or sessions, time-decayed, top-k per item.

Definition (what ``counts`` computes, exactly):

1. Events are grouped by ``basket_or_session_ids``; a pair is only ever formed by two events
   of the same group, so pairs never cross sessions (give each user's sessions distinct ids).
2. Repeats: within a group each item keeps a single event, its strongest one (highest weight;
   ties -> earliest timestamp, then first in input order). Re-viewing an item ten times does
   not multiply its pairs by ten.
3. The remaining events of a group are ordered by (timestamp, item id). Two events a, b with
   different items pair when they are at most ``window`` positions apart in that order (all
   pairs when the group has at most ``window + 1`` events). This caps the work at
   O(n_events * window) whatever the size of the biggest session; for huge sessions only the
   ``window`` nearest events in time (on each side) count as co-visited.
4. Pair weight: ``w_a * w_b * exp(-|t_a - t_b| / time_decay_seconds)``; it is symmetric, and
   self-pairs never occur (one event per item per group).
5. ``C[i, j]`` = sum over groups of the weight of the (i, j) pair. Row i of the result keeps
   the ``top_k`` largest ``C[i, j]`` (ties broken by lower j); the truncation is per row, so
   the returned matrix need not be symmetric although C is (bit-for-bit: each group adds one
   term to both C[i, j] and C[j, i], in the same group order).

Timestamps are in seconds (any int or float unit works if ``time_decay_seconds`` uses the same
unit); ``time_decay_seconds=np.inf`` disables decay.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from numba import get_num_threads, njit, prange

__all__ = ["counts"]


@njit(cache=True)
def _dedupe(order, sess, item, ts, wt, n_items):
    """Walk events in (session, time, item) order; keep each item's strongest event per
    session. Returns a keep-mask over ``order`` positions."""
    n = order.shape[0]
    keep = np.zeros(n, dtype=np.bool_)
    stamp = np.full(n_items, -1, dtype=np.int64)
    where = np.empty(n_items, dtype=np.int64)
    cur = -1
    g = -1
    for p in range(n):
        e = order[p]
        if p == 0 or sess[e] != cur:
            cur = sess[e]
            g += 1
        it = item[e]
        if stamp[it] != g:
            stamp[it] = g
            where[it] = p
            keep[p] = True
        else:
            q = where[it]
            # strictly greater only: on ties the earlier event (already kept) wins
            if wt[e] > wt[order[q]]:
                keep[q] = False
                keep[p] = True
                where[it] = p
    return keep


@njit(cache=True, parallel=True)
def _covis(g_ptr, ev_item, ev_t, ev_w, item_ptr, item_ev, n_items, window, inv_tau, top_k, n_chunks):
    n_ev = ev_item.shape[0]
    # group of each event, to find its neighbours' range
    ev_g = np.empty(n_ev, dtype=np.int64)
    for g in range(g_ptr.shape[0] - 1):
        for p in range(g_ptr[g], g_ptr[g + 1]):
            ev_g[p] = g
    out_idx = np.full((n_items, top_k), -1, dtype=np.int32)
    out_val = np.zeros((n_items, top_k), dtype=np.float32)
    out_n = np.zeros(n_items, dtype=np.int64)
    for c in prange(n_chunks):
        acc = np.zeros(n_items, dtype=np.float64)
        seen = np.zeros(n_items, dtype=np.bool_)
        touched = np.empty(n_items, dtype=np.int64)
        lo = c * n_items // n_chunks
        hi = (c + 1) * n_items // n_chunks
        for i in range(lo, hi):
            nt = 0
            for q in range(item_ptr[i], item_ptr[i + 1]):
                p = item_ev[q]
                g = ev_g[p]
                a = max(g_ptr[g], p - window)
                b = min(g_ptr[g + 1], p + window + 1)
                wp = ev_w[p]
                tp = ev_t[p]
                for r in range(a, b):
                    if r == p:
                        continue
                    j = ev_item[r]
                    dt = abs(tp - ev_t[r])
                    # baskets share one timestamp: skip exp() for the common zero gap
                    dec = 1.0 if dt == 0.0 else np.exp(-dt * inv_tau)
                    if not seen[j]:
                        seen[j] = True
                        touched[nt] = j
                        nt += 1
                    acc[j] += wp * ev_w[r] * dec
            # zero-weight pairs (zero event weight, decay underflow) are not neighbours
            nz = 0
            for k in range(nt):
                j = touched[k]
                if acc[j] > 0.0:
                    touched[nz] = j
                    nz += 1
                else:
                    seen[j] = False
            nt = nz
            if nt == 0:
                continue
            cand = np.sort(touched[:nt])
            vals = np.empty(nt, dtype=np.float64)
            for k in range(nt):
                vals[k] = -acc[cand[k]]
            o = np.argsort(vals, kind="mergesort")  # stable: equal weights keep lower id first
            m = min(top_k, nt)
            for k in range(m):
                j = cand[o[k]]
                out_idx[i, k] = j
                out_val[i, k] = acc[j]
            out_n[i] = m
            for k in range(nt):
                j = touched[k]
                acc[j] = 0.0
                seen[j] = False
    return out_idx, out_val, out_n


def _int_array(x, name):
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {a.dtype}")
    return a


def counts(basket_or_session_ids, item_ids, timestamps, event_weights, *, time_decay_seconds,
           top_k, n_items=None, window=100):
    """Top-k co-visitation neighbours per item as an ``n_items x n_items`` float32 CSR.

    See the module docstring for the exact definition. ``window`` (>= 1) bounds how many
    time-nearest events on each side an event pairs with inside one group.
    """
    sess = _int_array(basket_or_session_ids, "basket_or_session_ids")
    item = _int_array(item_ids, "item_ids")
    ts = np.asarray(timestamps)
    wt = np.asarray(event_weights)
    n = sess.shape[0]
    if n == 0:
        raise ValueError("no events: basket_or_session_ids is empty")
    for name, arr in (("item_ids", item), ("timestamps", ts), ("event_weights", wt)):
        if arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n},) like basket_or_session_ids")
    if not (np.issubdtype(ts.dtype, np.integer) or np.issubdtype(ts.dtype, np.floating)):
        raise ValueError(f"timestamps must be numeric (seconds), got dtype {ts.dtype}")
    if not (np.issubdtype(wt.dtype, np.integer) or np.issubdtype(wt.dtype, np.floating)):
        raise ValueError(f"event_weights must be numeric, got dtype {wt.dtype}")
    ts = ts.astype(np.float64)
    wt = wt.astype(np.float64)
    if not np.all(np.isfinite(ts)):
        raise ValueError("timestamps contain NaN or inf")
    if not np.all(np.isfinite(wt)):
        raise ValueError("event_weights contain NaN or inf")
    if np.any(wt < 0):
        raise ValueError(f"event_weights contain {int((wt < 0).sum())} negative values")
    if item.min() < 0:
        raise ValueError("item_ids must be >= 0")
    if n_items is None:
        n_items = int(item.max()) + 1
    elif isinstance(n_items, bool) or not isinstance(n_items, numbers.Integral) or n_items < 1:
        raise ValueError(f"n_items must be an int >= 1, got {n_items!r}")
    elif item.max() >= n_items:
        raise ValueError(f"item_ids must be < n_items={n_items}, got max {int(item.max())}")
    n_items = int(n_items)
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    if isinstance(time_decay_seconds, bool) or not isinstance(time_decay_seconds, numbers.Real):
        raise ValueError(f"time_decay_seconds must be a positive number, got {time_decay_seconds!r}")
    tau = float(time_decay_seconds)
    if not tau > 0:
        raise ValueError(f"time_decay_seconds must be > 0 (np.inf for no decay), got {tau!r}")
    item = item.astype(np.int64)
    sess = sess.astype(np.int64)

    # (session, time, item, input position): deterministic whatever the input order
    order = np.lexsort((item, ts, sess))  # stable, so input position breaks the last ties
    keep = _dedupe(order, sess, item, ts, wt, np.int64(n_items))
    order = order[keep]
    ev_item = np.ascontiguousarray(item[order])
    ev_t = np.ascontiguousarray(ts[order])
    ev_w = np.ascontiguousarray(wt[order])
    s_sorted = sess[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    g_ptr = np.r_[starts, s_sorted.size].astype(np.int64)
    # events of each item, in group order (so both sides of a pair sum in the same order)
    item_ev = np.argsort(ev_item, kind="stable").astype(np.int64)
    item_ptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(ev_item, minlength=n_items), out=item_ptr[1:])
    k = min(int(top_k), max(n_items - 1, 1))
    idx, val, cnt = _covis(g_ptr, ev_item, ev_t, ev_w, item_ptr, item_ev, np.int64(n_items),
                           np.int64(window), 1.0 / tau, np.int64(k),
                           np.int64(min(n_items, 8 * get_num_threads())))
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(cnt, out=indptr[1:])
    mask = np.arange(k)[None, :] < cnt[:, None]
    # rows hold neighbours by descending weight; CSR canonical form wants ascending columns
    m = sp.csr_matrix((val[mask], idx[mask], indptr), shape=(n_items, n_items))
    m.sort_indices()
    return m
