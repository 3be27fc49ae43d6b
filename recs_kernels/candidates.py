"""Batch top-N by candidates: the blend's exact score on a few hundred items per user instead
of the whole catalogue.

The dense blend of a user block is ``Q @ V + row_const + col_const + N`` (``Blend.parts``):
a factor part, per-user and per-item constants, and a non-negative sparse neighbour part ``N``
(history @ item-item matrices). Any item outside N's support scores ``D = Q @ V + col_const``
(+ the row constant), so the top k is always inside

    top-C of D (C >= k)  U  support of N  U  the top trending items

and is EXACT when the top-C of D is exact (N >= 0 can only lift an item). Computing D on the
whole catalogue is the dense path's cost, so the top-C is taken on a rank-r projection of the
factor part (PCA of the stacked item factors; r << d makes the GEMM r/d as large) with C a
few times k; every candidate is then scored exactly, so an approximation only ever misses an
item whose low-rank score fell below the C-th, never mis-orders the ones it keeps.
``rank=None`` keeps the full factor dimension (exact, still skips the dense assembly).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from . import topk
from ._validate import check_csr, check_int

__all__ = ["Projection", "top_k"]

_BLOCK_BYTES = 64 * 1024 * 1024


class Projection:
    """Rank-r PCA basis of the stacked item factor matrix (d x n_items), uncentred: scores
    are dot products, so the basis keeps the directions carrying most of ||V||^2."""

    def __init__(self, Vt: np.ndarray, rank: int | None):
        d = Vt.shape[0]
        self.exact = rank is None or rank >= d
        if self.exact:
            self.basis = None
            self.Vrt = np.ascontiguousarray(Vt, dtype=np.float32)
            return
        G = np.asarray(Vt @ Vt.T, np.float64)  # d x d; float32 accumulation is ample for a basis
        _, vecs = np.linalg.eigh(G)
        self.basis = np.ascontiguousarray(vecs[:, ::-1][:, :rank], dtype=np.float32)  # d x r
        self.Vrt = np.ascontiguousarray(self.basis.T @ Vt, dtype=np.float32)  # r x n

    def users(self, Q: np.ndarray) -> np.ndarray:
        return Q if self.exact else np.ascontiguousarray(Q @ self.basis, dtype=np.float32)


@njit(cache=True, parallel=True)
def _add_cols(A, col):
    n, m = A.shape
    for r in prange(n):
        for j in range(m):
            A[r, j] += col[j]


# reassoc lets the dot products vectorise; no nnan/ninf, since -inf marks empty heap slots
@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _score_candidates(Q, V, col_const, row_const, top_ids, n_ptr, n_idx, n_dat, extra, ex_indptr, ex_indices,
                      row0, k, n_items, out_ids, out_scores, n_chunks):
    """Per row: the union of ``top_ids[r]``, the neighbour part's support (CSR n_ptr/n_idx/
    n_dat, values already weighted) and ``extra`` (global ids), less the excluded items,
    scored exactly (Q[r] . V[j] + col_const[j] + row_const[r] + N[r, j]); top k into out.
    V is item-major (n_items x d): a candidate's factors are one contiguous row."""
    n = top_ids.shape[0]
    d = Q.shape[1]
    per = (n + n_chunks - 1) // n_chunks
    for t in prange(n_chunks):
        lo = t * per
        hi = min(n, lo + per)
        if lo >= hi:
            continue
        stamp = np.full(n_items, -1, np.int64)  # candidate mark: the row that last added the item
        acc = np.zeros(n_items, np.float32)  # neighbour part of the current row
        cand = np.empty(top_ids.shape[1] + extra.shape[0], np.int64)
        hs = np.empty(k, np.float32)
        hi_ids = np.empty(k, np.int32)
        for r in range(lo, hi):
            g = row0 + r
            # excluded items are stamped first so that nothing adds them
            for p in range(ex_indptr[g], ex_indptr[g + 1]):
                stamp[ex_indices[p]] = -2 - r
            nc = 0
            nn = n_ptr[r + 1] - n_ptr[r]
            if cand.shape[0] < top_ids.shape[1] + extra.shape[0] + nn:
                cand = np.empty(top_ids.shape[1] + extra.shape[0] + nn, np.int64)
            for p in range(n_ptr[r], n_ptr[r + 1]):
                j = n_idx[p]
                acc[j] += n_dat[p]
                if stamp[j] != r and stamp[j] != -2 - r:
                    stamp[j] = r
                    cand[nc] = j
                    nc += 1
            for a in range(top_ids.shape[1]):
                j = top_ids[r, a]
                if j >= 0 and stamp[j] != r and stamp[j] != -2 - r:
                    stamp[j] = r
                    cand[nc] = j
                    nc += 1
            for a in range(extra.shape[0]):
                j = extra[a]
                if stamp[j] != r and stamp[j] != -2 - r:
                    stamp[j] = r
                    cand[nc] = j
                    nc += 1
            for a in range(k):
                hs[a] = -np.inf
                hi_ids[a] = -1
            for c in range(nc):
                j = cand[c]
                s = np.float32(0.0)
                for q in range(d):
                    s += Q[r, q] * V[j, q]
                s = s + col_const[j] + np.float32(row_const[r]) + acc[j]
                # keep the k best by (score desc, id asc): replace the worst when better
                if s > hs[0] or (s == hs[0] and j < hi_ids[0]):
                    hs[0] = s
                    hi_ids[0] = j
                    topk._sift_down(hs, hi_ids, 0, k)
            for p in range(n_ptr[r], n_ptr[r + 1]):
                acc[n_idx[p]] = 0.0
            for end in range(k - 1, 0, -1):
                hs[0], hs[end] = hs[end], hs[0]
                hi_ids[0], hi_ids[end] = hi_ids[end], hi_ids[0]
                topk._sift_down(hs, hi_ids, 0, end)
            for a in range(k):
                out_scores[r, a] = hs[a]
                out_ids[r, a] = hi_ids[a]


def top_k(blend, weights: dict, k: int, *, als_users=None, bpr_users=None, history=None, exclude=None,
          n_candidates: int | None = None, rank: int | None = 32, extra_ids=None, n_extra: int = 50,
          block_users: int | None = None, projection: Projection | None = None, callback=None):
    """Top k per user of ``blend``'s scores (same numbers and order as ``Blend.top_k``) from
    candidates; see the module docstring.

    n_candidates: C, the factor part's top-C per user (default max(4k, 200)); rank: r of the
    projection that picks them (None: exact factor part); extra_ids: items every user gets as
    candidates (default the n_extra highest of the blend's vector part, e.g. trending);
    callback(done_users, total_users) after each block.
    """
    k = check_int(k, "k", minimum=1)
    n = next(a.shape[0] for a in (als_users, bpr_users, history, exclude) if a is not None)
    m = blend.n_items
    C = min(m, check_int(n_candidates if n_candidates is not None else max(4 * k, 200), "n_candidates", minimum=1))
    if exclude is not None:
        exclude = check_csr(exclude, "exclude", shape=(n, m), nonnegative=False)
        ex_indptr, ex_indices = exclude.indptr.astype(np.int64), exclude.indices.astype(np.int64)
    else:
        ex_indptr, ex_indices = np.zeros(n + 1, np.int64), np.zeros(1, np.int64)
    if history is not None:
        history = sp.csr_matrix(history, dtype=np.float32)
    block = block_users or max(1, _BLOCK_BYTES // (4 * max(m, 1)))
    ids = np.full((n, k), -1, dtype=np.int32)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    n_chunks = 64
    V = None  # item-major stacked factors, for the candidates' exact dot products
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        Q, names, row_const, col_const, sparse_parts = blend.parts(
            weights, als_users=None if als_users is None else als_users[b0:b1],
            bpr_users=None if bpr_users is None else bpr_users[b0:b1],
            history=None if history is None else history[b0:b1], n_users=b1 - b0)
        nb = b1 - b0
        if names:
            Vt = blend._stacked_items(names)
            if projection is None or projection.Vrt.shape[1] != m:
                projection = Projection(Vt, rank)
            if V is None:
                V = np.ascontiguousarray(Vt.T)
            A = np.matmul(projection.users(Q), projection.Vrt)
        else:
            V = np.zeros((m, 1), np.float32)
            Q = np.zeros((nb, 1), np.float32)
            A = np.zeros((nb, m), np.float32)
        _add_cols(A, col_const)
        top_ids = np.full((nb, C), -1, np.int32)
        top_sc = np.full((nb, C), -np.inf, np.float32)
        topk.select_block(A, ex_indptr, ex_indices.astype(np.int32), b0, C, top_ids, top_sc)
        del A
        N = sp.csr_matrix((nb, m), dtype=np.float32)
        for P, scale in sparse_parts:
            N = N + sp.diags(scale.astype(np.float32)) @ P
        N = sp.csr_matrix(N, dtype=np.float32)
        if extra_ids is None:
            order = np.lexsort((np.arange(m), -col_const))
            extra = order[:min(n_extra, m)].astype(np.int64) if np.any(col_const) else np.zeros(0, np.int64)
        else:
            extra = np.asarray(extra_ids, np.int64)
        _score_candidates(np.ascontiguousarray(Q, np.float32), V, col_const, row_const, top_ids,
                          N.indptr.astype(np.int64), N.indices.astype(np.int64), N.data, extra,
                          ex_indptr, ex_indices, b0, k, m, ids[b0:b1], scores[b0:b1], min(n_chunks, nb))
        if callback is not None:
            callback(b1, n)
    return ids, scores
