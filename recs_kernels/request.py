"""One request's blend in two numba calls (it was ~600 Python-level calls a request).

``gather``: the request's weighted history ``h`` (the user's ``cap`` heaviest history items,
as ``blend.cap_row`` keeps them, plus the request's seeds, summed where they meet), its ALS
fold-in, and the candidates: the user's batch top-N row, the top of an ALS scan, each seed's
first neighbours in five adjacencies, the consequents of multi-item rules whose whole
antecedent is among the seeds, popularity lists; distinct, sorted, minus the exclusions and
the user's history. ``score``: ``Blend.score_candidates`` on those candidates.

Every number is computed as the numpy path computes it, so answers are identical, not merely
close: the products go through the same BLAS routines (numba's ``np.dot`` on the same operand
layouts as numpy's ``@``), and the float32/float64 steps follow numpy's promotion rules. The
work per request is bounded by the seeds, the candidate counts and ``cap``; the history row is
read once (a size-``cap`` heap), however long it is.
"""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from .als import _exact_row
from .blend import _neighbour_kernel
from .mmr import _argmax_row
from .topk import _select_1d

__all__ = ["gather", "score", "take_rows", "GatherError"]

OK, BAD_FACTORS, BAD_SCAN = 0, 1, 2


class GatherError(ValueError):
    """Non-finite factors met while serving a request (what the numpy path raised as well)."""


@njit(cache=True, nogil=True)
def _heavier(wa, ia, wb, ib):
    """``cap_row``'s order: higher weight first, then the lower item index."""
    return wa > wb or (wa == wb and ia < ib)


@njit(cache=True, nogil=True)
def _sift(hp, ids, w, pos, n):
    # min-heap of positions, the least heavy at the root (the one a heavier item evicts)
    while True:
        c = 2 * pos + 1
        if c >= n:
            return
        if c + 1 < n and _heavier(w[hp[c]], ids[hp[c]], w[hp[c + 1]], ids[hp[c + 1]]):
            c += 1
        if _heavier(w[hp[pos]], ids[hp[pos]], w[hp[c]], ids[hp[c]]):
            hp[pos], hp[c] = hp[c], hp[pos]
            pos = c
        else:
            return


@njit(cache=True, nogil=True)
def _capped(items, weights, cap):
    """Positions of the row's ``cap`` heaviest items, in row order (``blend.cap_row``)."""
    n = items.shape[0]
    if n <= cap:
        return np.arange(n)
    if cap <= 0:
        return np.zeros(0, np.int64)
    ids = items.astype(np.int64)
    w = weights.astype(np.float64)
    hp = np.arange(cap)
    for p in range(cap // 2 - 1, -1, -1):
        _sift(hp, ids, w, p, cap)
    for p in range(cap, n):
        if _heavier(w[p], ids[p], w[hp[0]], ids[hp[0]]):
            hp[0] = p
            _sift(hp, ids, w, 0, cap)
    return np.sort(hp)


@njit(cache=True, nogil=True)
def _in_sorted(x, arr):
    lo = 0
    hi = arr.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if arr[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo < arr.shape[0] and arr[lo] == x


@njit(cache=True, nogil=True)
def _take(j, mark, buf, n):
    if not mark[j]:
        mark[j] = True
        buf[n] = j
        n += 1
    return n


@njit(cache=True, nogil=True)
def _take_all(arr, mark, buf, n):
    for a in range(arr.shape[0]):
        n = _take(arr[a], mark, buf, n)
    return n


@njit(cache=True, nogil=True)
def _neighbour_cands(indptr, indices, seeds, per_seed, mark, buf, n):
    """Each seed's first ``per_seed`` neighbours (rows are in descending score)."""
    for r in range(seeds.shape[0]):
        lo = indptr[seeds[r]]
        hi = min(indptr[seeds[r] + 1], lo + per_seed)
        for p in range(lo, hi):
            n = _take(indices[p], mark, buf, n)
    return n


@njit(cache=True, nogil=True)
def _grow(buf, n, extra):
    if n + extra <= buf.shape[0]:
        return buf
    out = np.empty(max(2 * buf.shape[0], n + extra), np.int64)
    out[:n] = buf[:n]
    return out


@njit(cache=True, nogil=True)
def _gather(hist_items, hist_w, cap, seeds, seed_w, fold, Y, YtY, reg, alpha, u_given, scan_m,
            topn_row, a0p, a0i, a1p, a1i, a2p, a2i, a3p, a3i, a4p, a4i, per_seed,
            mr_ante_len, mr_cons_ptr, mr_cons, mr_by_item_ptr, mr_by_item, multi,
            pop0, pop1, pop2, pop3, exclude, seen, mark):
    # h: the capped history row (row order) alone, or merged with the seeds (sorted, summed:
    # np.unique + bincount in scoring.request_history)
    keep = _capped(hist_items, hist_w, cap)
    nh = keep.shape[0]
    ns = seeds.shape[0]
    if ns == 0:
        h_ids = np.empty(nh, np.int64)
        h_w = np.empty(nh, np.float64)
        for a in range(nh):
            h_ids[a] = hist_items[keep[a]]
            h_w[a] = np.float64(hist_w[keep[a]])
    else:
        ids = np.empty(nh + ns, np.int64)
        ws = np.empty(nh + ns, np.float64)
        for a in range(nh):
            ids[a] = hist_items[keep[a]]
            ws[a] = np.float64(hist_w[keep[a]])
        for a in range(ns):
            ids[nh + a] = seeds[a]
            ws[nh + a] = seed_w[a]
        order = np.argsort(ids, kind="mergesort")  # stable: equal ids add up in input order
        h_ids = np.empty(nh + ns, np.int64)
        h_w = np.empty(nh + ns, np.float64)
        m = -1
        for a in range(nh + ns):
            j = ids[order[a]]
            if m < 0 or h_ids[m] != j:
                m += 1
                h_ids[m] = j
                h_w[m] = 0.0
            h_w[m] += ws[order[a]]
        h_ids = h_ids[:m + 1]
        h_w = h_w[:m + 1]
    # the user's ALS factor: folded in from h's positive weights, or the one given
    status = OK
    u = np.zeros(0, np.float32)
    if fold:
        npos = 0
        for a in range(h_ids.shape[0]):
            if h_w[a] > 0:
                npos += 1
        if npos:
            f_ids = np.empty(npos, np.int64)
            f_w = np.empty(npos, np.float64)
            b = 0
            for a in range(h_ids.shape[0]):
                if h_w[a] > 0:
                    f_ids[b] = h_ids[a]
                    f_w[b] = h_w[a]
                    b += 1
            for a in range(npos):
                for c in range(Y.shape[1]):
                    if not np.isfinite(Y[f_ids[a], c]):
                        status = BAD_FACTORS
            if status != OK:
                return h_ids, h_w, u, np.zeros(0, np.int64), 0, status
            u = np.zeros(Y.shape[1], np.float32)
            _exact_row(f_ids, f_w, Y, YtY, reg, alpha, u)
    elif u_given.shape[0]:
        u = u_given
    # candidates: distinct through ``mark`` (reset before returning)
    bound = topn_row.shape[0] + scan_m + 5 * ns * per_seed + pop0.shape[0] + pop1.shape[0] + pop2.shape[0] + pop3.shape[0]
    buf = np.empty(max(bound, 16), np.int64)
    n = 0
    for a in range(topn_row.shape[0]):
        if topn_row[a] >= 0:
            n = _take(topn_row[a], mark, buf, n)
    if scan_m > 0 and u.shape[0]:
        s = _matvec(Y, u)
        for a in range(s.shape[0]):
            if np.isnan(s[a]) or s[a] == np.inf:
                status = BAD_SCAN
        if status == OK:
            top, _ = _select_1d(s, np.zeros(0, np.int32), scan_m)
            for a in range(scan_m):
                if top[a] >= 0:
                    n = _take(top[a], mark, buf, n)
    n = _neighbour_cands(a0p, a0i, seeds, per_seed, mark, buf, n)  # one call per adjacency: each may
    n = _neighbour_cands(a1p, a1i, seeds, per_seed, mark, buf, n)  # have its own index dtypes
    n = _neighbour_cands(a2p, a2i, seeds, per_seed, mark, buf, n)
    n = _neighbour_cands(a3p, a3i, seeds, per_seed, mark, buf, n)
    n = _neighbour_cands(a4p, a4i, seeds, per_seed, mark, buf, n)
    if multi and ns >= 2:
        nhit = 0
        for r in range(ns):
            nhit += mr_by_item_ptr[seeds[r] + 1] - mr_by_item_ptr[seeds[r]]
        hits = np.empty(nhit, np.int64)
        b = 0
        for r in range(ns):
            for p in range(mr_by_item_ptr[seeds[r]], mr_by_item_ptr[seeds[r] + 1]):
                hits[b] = mr_by_item[p]
                b += 1
        hits.sort()
        a = 0
        while a < nhit:
            e = a
            while e < nhit and hits[e] == hits[a]:
                e += 1
            rule = hits[a]
            if e - a == mr_ante_len[rule]:  # every antecedent item is a seed
                lo = mr_cons_ptr[rule]
                hi = mr_cons_ptr[rule + 1]
                buf = _grow(buf, n, hi - lo)
                for p in range(lo, hi):
                    n = _take(mr_cons[p], mark, buf, n)
            a = e
    n = _take_all(pop0, mark, buf, n)
    n = _take_all(pop1, mark, buf, n)
    n = _take_all(pop2, mark, buf, n)
    n = _take_all(pop3, mark, buf, n)
    for a in range(n):
        mark[buf[a]] = False
    cand = np.sort(buf[:n])
    m = 0
    for a in range(n):
        j = cand[a]
        if exclude.shape[0] and _in_sorted(j, exclude):
            continue
        if seen.shape[0] and _in_sorted(j, seen):
            continue
        cand[m] = j
        m += 1
    return h_ids, h_w, u, cand[:m], n, status


@njit(cache=True, nogil=True)
def take_rows(items, idx, dtype):
    """``items[idx]`` as a new C-contiguous ``dtype`` matrix. Element by element: numba's
    row-slice assignment was 4x slower on random rows of a large matrix."""
    d = items.shape[1]
    out = np.empty((idx.shape[0], d), dtype)
    for a in range(idx.shape[0]):
        r = idx[a]
        for c in range(d):
            out[a, c] = items[r, c]
    return out


@njit(cache=True, nogil=True)
def _matvec(G, u):
    """``G @ u`` as numpy computes it: one row is a dot product there (sdot), not a gemv."""
    if G.shape[0] == 1:
        out = np.empty(1, np.float32)
        out[0] = np.dot(G[0], u)
        return out
    return np.dot(G, u)


@njit(cache=True, nogil=True)
def _factor_z(items, mean, cov, u64, cand, out, G):
    """``Blend._factor_z``: (s - mean_u) / sd_u with numpy's steps (a float32 difference, a
    float64 division, a float32 result). ``G``: ``items[cand]`` when already gathered (else
    an empty matrix)."""
    var = np.dot(np.dot(u64, cov), u64)
    if var <= 1e-20:
        return
    n = cand.shape[0]
    if G.shape[0] != n:
        G = take_rows(items, cand, np.float32)
    s = _matvec(G, u64.astype(np.float32))
    m32 = np.float32(np.dot(mean, u64))
    sd = np.sqrt(var)
    for a in range(n):
        out[a] = np.float32(np.float64(s[a] - m32) / sd)


@njit(cache=True, nogil=True)
def _neighbour_col(indptr, indices, data, weight, h_ids, h_w, cand, n_items, acc, best, best_seed, out, anchor):
    """``blend._neighbour_z`` into one column of C (left at zero without a weight or support)."""
    if weight == 0.0:
        return
    total = 0
    for r in range(h_ids.shape[0]):
        total += indptr[h_ids[r] + 1] - indptr[h_ids[r]]
    if total == 0:
        return
    z = np.zeros(cand.shape[0], np.float32)
    _neighbour_kernel(indptr, indices, data, h_ids, h_w, cand, n_items, acc, best, best_seed,
                      np.empty(total, np.int64), z, anchor)
    out[:] = z


@njit(cache=True, nogil=True)
def _score(cand, w_row, als_items, als_mean, als_cov, u_als, bpr_items, bpr_mean, bpr_cov, u_bpr,
           con_items, con_mean, con_cov, h_ids, h_w,
           n0p, n0i, n0d, n1p, n1i, n1d, n2p, n2i, n2d, vec0, vec1, n_items, acc, best, best_seed):
    n = cand.shape[0]
    C = np.zeros((n, 8), np.float32)
    anchors = np.full((4, n), -1, np.int64)  # item_sim, covis, rules, content
    has_h = h_ids.shape[0] > 0
    none = np.zeros((0, 1), np.float32)
    if w_row[0] != 0.0 and u_als.shape[0]:
        _factor_z(als_items, als_mean, als_cov, u_als.astype(np.float64), cand, C[:, 0], none)
    if w_row[1] != 0.0 and u_bpr.shape[0]:
        _factor_z(bpr_items, bpr_mean, bpr_cov, u_bpr.astype(np.float64), cand, C[:, 1], none)
    if has_h:  # one call per source: each CSR may have its own index dtypes
        _neighbour_col(n0p, n0i, n0d, w_row[2], h_ids, h_w, cand, n_items, acc, best, best_seed, C[:, 2], anchors[0])
        _neighbour_col(n1p, n1i, n1d, w_row[3], h_ids, h_w, cand, n_items, acc, best, best_seed, C[:, 3], anchors[1])
        _neighbour_col(n2p, n2i, n2d, w_row[4], h_ids, h_w, cand, n_items, acc, best, best_seed, C[:, 4], anchors[2])
    if w_row[5] != 0.0 and has_h:
        E_h = take_rows(con_items, h_ids, np.float64)
        u_con = np.dot(h_w, E_h)
        A = take_rows(con_items, cand, np.float32)
        if n:
            sims = np.dot(A, E_h.astype(np.float32).T)  # numpy's E_h.T.astype(float32): the same transposed gemm
            for a in range(n):
                anchors[3, a] = h_ids[_argmax_row(sims[a])]
        _factor_z(con_items, con_mean, con_cov, u_con, cand, C[:, 5], A)
    if w_row[6] != 0.0:
        for a in range(n):
            C[a, 6] = vec0[cand[a]]
    if w_row[7] != 0.0:
        for a in range(n):
            C[a, 7] = vec1[cand[a]]
    total_s = np.empty(n, np.float32)
    for a in range(n):
        for c in range(8):
            C[a, c] *= w_row[c]
        # numpy's pairwise sum of 8 float32 (C.sum(axis=1))
        total_s[a] = ((C[a, 0] + C[a, 1]) + (C[a, 2] + C[a, 3])) + ((C[a, 4] + C[a, 5]) + (C[a, 6] + C[a, 7]))
    return total_s, C, anchors


_scratch = threading.local()


def _mark(n_items: int) -> np.ndarray:
    m = getattr(_scratch, "mark", None)
    if m is None or m.shape[0] < n_items:
        m = _scratch.mark = np.zeros(n_items, np.bool_)
    return m


def _neighbour_scratch(n_items: int):
    sc = getattr(_scratch, "nb", None)
    if sc is None or sc[0].shape[0] < n_items:
        sc = _scratch.nb = (np.zeros(n_items, np.float64), np.zeros(n_items, np.float64), np.full(n_items, -1, np.int64))
    return sc


def gather(a, *, hist_items, hist_w, cap: int, seeds, seed_w, fold: bool, u_given, scan_m: int, topn_row,
           per_seed: int, multi: bool, pops, exclude, seen):
    """``(h_ids, h_w, u_als or None, cand, n_generated)``; ``a``: the release's arrays
    (``recs_serving.prepared.RequestArrays``). ``fold``: fold h into an ALS factor (else
    ``u_given``, possibly empty); ``scan_m``: how many of the ALS scan's top to take (0: none)."""
    h_ids, h_w, u, cand, n_gen, status = _gather(
        hist_items, hist_w, cap, seeds, seed_w, fold, a.als_items, a.yty, a.reg, a.alpha, u_given, scan_m,
        topn_row, *a.adjacency, per_seed, *a.multi, multi, *pops, exclude, seen, _mark(a.n_items))
    if status == BAD_FACTORS:
        raise GatherError("item_factors contains non-finite values in the requested rows")
    if status == BAD_SCAN:
        raise GatherError("scores contains non-finite values")
    return h_ids, h_w, (u if u.shape[0] else None), cand, n_gen


def score(a, w_row, cand, *, u_als, u_bpr, h_ids, h_w):
    """``Blend.score_candidates``'s ``(total, contributions, anchors [4, n])`` (anchors rows:
    item_sim, covis, rules, content; -1 where a source gives none)."""
    acc, best, best_seed = _neighbour_scratch(a.n_items)
    return _score(cand, w_row, *a.als, u_als, *a.bpr, u_bpr, *a.content, h_ids, h_w, *a.neighbours,
                  *a.vectors, a.n_items, acc, best, best_seed)
