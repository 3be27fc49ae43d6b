"""Batch top-N by candidates: the blend's exact score on a few thousand items per user instead
of the whole catalogue, so the cost per user does not grow with the catalogue.

The dense blend of a user is ``D + N + row_const`` (``Blend.parts``): a factor part
``D = Q . V + col_const`` (factor sources and the per-item vectors such as trending), a
non-negative neighbour part ``N`` (history @ item-item matrices, z-scored), and a constant.
Candidates, each scored exactly:
- the items of the ``nprobe`` clusters of an inverted-file index over the augmented item
  factors ``[V, col_const]`` whose centroids score highest for the user (``ivf.Index``):
  where the top of ``D`` lives;
- the neighbour part's support outside those clusters: the ``max_support`` items with the
  highest ``N`` + their cluster centroid's score, each only when ``N + max(D scanned)`` can
  still beat the k-th best score so far;
- the ``n_extra`` items with the highest ``col_const`` (trending), for every user.
The neighbour part's z-score statistics (mean and variance over the whole catalogue) are
computed in full from the history, so every kept score equals the dense one; what the
candidates can miss is an item of an unprobed cluster (measured: benchmarks/bench_topn.py).
"""
from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from . import ivf, topk
from ._validate import check_csr, check_int
from .sources import NEIGHBOUR_SOURCES

__all__ = ["top_k"]

_SCAN_BYTES = 64 * 1024 * 1024


@njit(cache=True)
def _push(hs, hi, s, j, k):
    if s > hs[0] or (s == hs[0] and j < hi[0]):
        hs[0] = s
        hi[0] = j
        topk._sift_down(hs, hi, 0, k)


@njit(cache=True)
def _sort_heap(hs, hi, k):
    for end in range(k - 1, 0, -1):
        hs[0], hs[end] = hs[end], hs[0]
        hi[0], hi[end] = hi[end], hi[0]
        topk._sift_down(hs, hi, 0, end)


@njit(cache=True, fastmath={"reassoc", "contract"})
def _dot(Q, r, X, row):
    a = np.float32(0.0)
    for q in range(Q.shape[1]):
        a += Q[r, q] * X[row, q]
    return a


@njit(cache=True, parallel=True)
def _candidates_kernel(Q, X, pos, order, offsets, probes, buf, start, cscore, cluster_of, h_ptr, h_idx, h_dat,
                       s_ptr0, s_idx0, s_dat0, s_ptr1, s_idx1, s_dat1, s_ptr2, s_idx2, s_dat2, s_w,
                       ex_ptr, ex_idx, grows, extra, row_const, n_items, k, max_support,
                       seen, acc, nsum, touched, sup, out_ids, out_scores):
    """Per-thread scratch over the catalogue, touched at random, so kept to three arrays: ``seen``
    (== the user's row: excluded or already scored), ``acc`` and ``nsum`` (zero outside the
    user's pass, so a zero means untouched: every product is > 0, the parts being non-negative)."""
    n, P = probes.shape
    n_chunks = seen.shape[0]
    per = (n + n_chunks - 1) // n_chunks
    for t in prange(n_chunks):
        lo = t * per
        hi_r = min(n, lo + per)
        hs = np.empty(k, np.float32)
        hi = np.empty(k, np.int32)
        L = max(1, max_support)
        ls = np.empty(L, np.float32)
        li = np.empty(L, np.int32)
        for r in range(lo, hi_r):
            g = np.int32(grows[r])
            for p in range(ex_ptr[g], ex_ptr[g + 1]):
                seen[t, ex_idx[p]] = g
            # neighbour part: every source's full row (its z-score needs all of it)
            rc = row_const[r]
            nsup = 0
            for s in range(3):
                if s_w[s] == 0.0:
                    continue
                if s == 0:
                    sp_, si_, sd_ = s_ptr0, s_idx0, s_dat0
                elif s == 1:
                    sp_, si_, sd_ = s_ptr1, s_idx1, s_dat1
                else:
                    sp_, si_, sd_ = s_ptr2, s_idx2, s_dat2
                nt = 0
                for p in range(h_ptr[r], h_ptr[r + 1]):
                    i = h_idx[p]
                    hw = h_dat[p]
                    for q in range(sp_[i], sp_[i + 1]):
                        j = si_[q]
                        c = sd_[q] * hw
                        if acc[t, j] == 0.0 and c != 0.0:
                            touched[t, nt] = j
                            nt += 1
                        acc[t, j] += c
                s1 = 0.0
                s2 = 0.0
                for a in range(nt):
                    v = np.float64(acc[t, touched[t, a]])
                    s1 += v
                    s2 += v * v
                mean = s1 / n_items
                var = s2 / n_items - mean * mean
                if var > 1e-20:
                    scale = s_w[s] / np.sqrt(var)
                    rc -= mean * scale
                    for a in range(nt):
                        j = touched[t, a]
                        if nsum[t, j] == 0.0:
                            sup[t, nsup] = j
                            nsup += 1
                        nsum[t, j] += np.float32(scale * acc[t, j])
                for a in range(nt):
                    acc[t, touched[t, a]] = 0.0
            for a in range(k):
                hs[a] = -np.inf
                hi[a] = -1
            # the probed clusters: D from the scan, plus N where the item has one
            dmax = -np.inf
            for p in range(P):
                c = probes[r, p]
                b = start[r, p]
                o = offsets[c]
                for a in range(offsets[c + 1] - o):
                    j = order[o + a]
                    if seen[t, j] == g:
                        continue
                    seen[t, j] = g
                    dv = buf[b + a]
                    if dv > dmax:
                        dmax = dv
                    _push(hs, hi, np.float32(np.float64(dv) + nsum[t, j]), j, k)
            # the rest of the support, most promising first: N plus the score of the item's
            # cluster centroid (the mean D there), scored while it can still reach the top k
            for a in range(L):
                ls[a] = -np.inf
                li[a] = -1
            for a in range(nsup):
                j = sup[t, a]
                if seen[t, j] != g:
                    _push(ls, li, np.float32(nsum[t, j] + cscore[r, cluster_of[j]]), j, L)
            for a in range(L):
                j = li[a]
                if j < 0 or (hi[0] >= 0 and nsum[t, j] + dmax <= hs[0]):
                    continue
                seen[t, j] = g
                _push(hs, hi, np.float32(_dot(Q, r, X, pos[j]) + nsum[t, j]), j, k)
            for a in range(extra.shape[0]):
                j = extra[a]
                if seen[t, j] == g:
                    continue
                seen[t, j] = g
                _push(hs, hi, np.float32(np.float64(_dot(Q, r, X, pos[j])) + nsum[t, j]), j, k)
            for a in range(nsup):
                nsum[t, sup[t, a]] = 0.0
            _sort_heap(hs, hi, k)
            for a in range(k):
                out_ids[r, a] = hi[a]
                out_scores[r, a] = np.float32(hs[a] + rc) if hi[a] >= 0 else -np.inf


def _user_order(blend, index, names, als_users, bpr_users, n):
    """Users grouped by the index cluster their ALS (or BPR) factors point to: neighbouring
    users probe the same clusters and share neighbours, so the scanned clusters, the item rows
    and the scratch stay in cache from one user to the next (a block of random users touches
    the whole catalogue). Positive per-user scales do not change the argmax, so the raw
    factors do."""
    off = 0
    for name in names:
        dim = blend.items[name].shape[1]
        U = {"als": als_users, "bpr": bpr_users}.get(name)
        if U is not None:
            C = np.ascontiguousarray(index.centroids[:, off:off + dim])
            key = np.empty(n, np.int64)
            for a in range(0, n, 1 << 15):
                key[a:a + (1 << 15)] = np.argmax(np.asarray(U[a:a + (1 << 15)], np.float32) @ C.T, axis=1)
            return np.argsort(key, kind="stable").astype(np.int64)
        off += dim
    return np.arange(n, dtype=np.int64)


def _csr_parts(S):
    if S is None:
        return np.zeros(2, np.int64), np.zeros(1, np.int32), np.zeros(1, np.float32)
    return S.indptr.astype(np.int64), S.indices.astype(np.int32, copy=False), S.data


def top_k(blend, weights: dict, k: int, *, als_users=None, bpr_users=None, history=None, exclude=None,
          nprobe: int = 16, cluster_size: int = 256, max_support: int = 100, n_extra: int = 50, extra_ids=None,
          block_users: int | None = None, index: ivf.Index | None = None, seed: int = 0, callback=None):
    """Top k per user of ``blend``'s scores from candidates (see the module docstring): the
    same numbers and order as ``Blend.top_k`` for every item it returns.

    nprobe / cluster_size: clusters scanned per user and mean items per cluster of the index
    (built here unless ``index`` is given, over ``[stacked item factors, col_const]``);
    max_support: most neighbour-support items scored per user beyond the scanned ones;
    extra_ids: items every user gets as candidates (default the n_extra highest of the
    blend's vector part, e.g. trending); callback(done_users, total_users) after each block.
    """
    k = check_int(k, "k", minimum=1)
    nprobe = check_int(nprobe, "nprobe", minimum=1)
    max_support = check_int(max_support, "max_support", minimum=0)
    n = next(a.shape[0] for a in (als_users, bpr_users, history, exclude) if a is not None)
    m = blend.n_items
    if exclude is not None:
        exclude = check_csr(exclude, "exclude", shape=(n, m), nonnegative=False)
        ex_ptr, ex_idx = exclude.indptr.astype(np.int64), exclude.indices
    else:
        ex_ptr, ex_idx = np.zeros(n + 1, np.int64), np.zeros(1, np.int32)
    if history is not None:
        history = sp.csr_matrix(history, dtype=np.float32)
    w_all = blend._weights(weights)  # validates, drops zeros
    w_factor = {s: x for s, x in w_all.items() if s not in NEIGHBOUR_SOURCES}
    srcs = [(blend.neighbours[s], w_all[s]) if (s in w_all and history is not None) else (None, 0.0)
            for s in NEIGHBOUR_SOURCES]
    s_w = np.array([x for _, x in srcs], np.float64)
    s_parts = [p for S, _ in srcs for p in _csr_parts(S)]
    ids = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    if n == 0:
        return ids, scores
    # Per-thread scratch over the catalogue, touched at random: 32-bit, so that more of it
    # stays in cache (``seen`` holds the user's row).
    n_chunks = max(1, numba.get_num_threads())
    if n >= 2 ** 31 - 1:
        raise ValueError(f"{n} users in one call: split the batch")
    seen = np.full((n_chunks, m), -1, np.int32)
    acc = np.zeros((n_chunks, m), np.float32)  # the dense path's float32 H @ S
    nsum = np.zeros((n_chunks, m), np.float32)
    touched = np.empty((n_chunks, m), np.int32)
    sup = np.empty((n_chunks, m), np.int32)

    def factor_parts(rows):
        # factor part only: the kernel computes the neighbour part itself (no users x items product)
        return blend.parts(w_factor, als_users=None if als_users is None else als_users[rows],
                           bpr_users=None if bpr_users is None else bpr_users[rows],
                           history=None if history is None else history[rows], n_users=rows.size)

    _, names, _, col_const, _ = factor_parts(np.arange(1))
    Vt = blend._stacked_items(names) if names else np.zeros((0, m), np.float32)
    if index is None:
        index = ivf.Index(np.vstack([Vt, col_const[None, :]]).T, cluster_size=cluster_size, seed=seed)
    if index.n_items != m or index.d != Vt.shape[0] + 1:
        raise ValueError(f"index is over {index.n_items} x {index.d}, the blend needs {m} x {Vt.shape[0] + 1}")
    if extra_ids is None:
        order = np.lexsort((np.arange(m), -col_const))
        extra = order[:min(n_extra, m)].astype(np.int64) if np.any(col_const) else np.zeros(0, np.int64)
    else:
        extra = np.asarray(extra_ids, np.int64)
    P = min(nprobe, index.n_clusters)
    biggest = int(np.sort(np.diff(index.offsets))[-P:].sum())
    block = block_users or max(1, _SCAN_BYTES // (4 * biggest))
    perm = _user_order(blend, index, names, als_users, bpr_users, n)
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        nb = b1 - b0
        rows = perm[b0:b1]
        Qf, names, row_const, _, _ = factor_parts(rows)
        Q = np.empty((nb, index.d), np.float32)
        if names:
            Q[:, :-1] = Qf
        Q[:, -1] = 1.0
        probes, cscore = index.probe(Q, P, with_scores=True)
        buf, start = index.scan(Q, probes)
        H = history[rows] if history is not None else sp.csr_matrix((nb, m), dtype=np.float32)
        b_ids = np.empty((nb, k), np.int32)
        b_scores = np.empty((nb, k), np.float32)
        _candidates_kernel(Q, index.X_sorted, index.pos, index.order, index.offsets, probes, buf, start, cscore,
                           index.cluster_of,
                           H.indptr.astype(np.int64), H.indices.astype(np.int32, copy=False), H.data, *s_parts, s_w,
                           ex_ptr, ex_idx, rows, extra, row_const, m, k, max_support,
                           seen, acc, nsum, touched, sup, b_ids, b_scores)
        ids[rows] = b_ids
        scores[rows] = b_scores
        if callback is not None:
            callback(b1, n)
    return ids, scores
