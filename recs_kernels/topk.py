"""Exact top-k by dot product, with per-user exclusions.

``batch`` scores a block of users against every item with one float32 GEMM (BLAS does this
far better than a hand-written loop), then selects each row's top k in parallel with a size-k
heap. Blocking bounds the score buffer at about ``block_bytes`` whatever the catalogue and
user counts (1M users x 100K items never materialises more than one block).

Ordering is total and deterministic: higher score first, and among equal scores the lower
item id. Rows with fewer than k eligible items are padded with id -1 and score -inf.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from ._validate import check_csr, check_factors, check_ids, check_int, check_vector

__all__ = ["batch", "similar", "topk_scores", "select_block"]

# Score buffer per block; 64 MiB keeps it in RAM comfortably next to the factors and large
# enough that each GEMM call is efficient.
_BLOCK_BYTES = 64 * 1024 * 1024


@njit(cache=True)
def _worse(s_a, id_a, s_b, id_b):
    return s_a < s_b or (s_a == s_b and id_a > id_b)


@njit(cache=True)
def _sift_down(hs, hi, pos, k):
    # Min-heap on "worse first": the root is the current k-th best, the one to evict.
    while True:
        left = 2 * pos + 1
        if left >= k:
            break
        child = left
        right = left + 1
        if right < k and _worse(hs[right], hi[right], hs[left], hi[left]):
            child = right
        if _worse(hs[child], hi[child], hs[pos], hi[pos]):
            hs[pos], hs[child] = hs[child], hs[pos]
            hi[pos], hi[child] = hi[child], hi[pos]
            pos = child
        else:
            break


@njit(cache=True)
def _select_row(scores, ex_idx, ex_lo, ex_hi, k, out_ids, out_scores, hs, hi):
    """Top k of ``scores`` skipping the sorted ids ``ex_idx[ex_lo:ex_hi]``."""
    for a in range(k):
        hs[a] = -np.inf
        hi[a] = -1
    n = scores.shape[0]
    e = ex_lo
    next_ex = ex_idx[e] if e < ex_hi else n
    thresh = hs[0]
    for i in range(n):
        if i == next_ex:
            e += 1
            next_ex = ex_idx[e] if e < ex_hi else n
            continue
        s = scores[i]
        # Items arrive in increasing id, so an equal score loses the tie to what is already
        # kept: strict ">" is exactly the (score desc, id asc) order.
        if s > thresh:
            hs[0] = s
            hi[0] = i
            _sift_down(hs, hi, 0, k)
            thresh = hs[0]
    # Heap-sort the survivors into best-first order.
    for end in range(k - 1, 0, -1):
        hs[0], hs[end] = hs[end], hs[0]
        hi[0], hi[end] = hi[end], hi[0]
        _sift_down(hs, hi, 0, end)
    for a in range(k):
        out_scores[a] = hs[a]
        out_ids[a] = hi[a]


@njit(cache=True, parallel=True)
def select_block(S, ex_indptr, ex_indices, row0, k, out_ids, out_scores):
    """Top k of each row of the float32 score block ``S`` (rows ``row0..`` of the exclusion
    CSR ``ex_indptr``/``ex_indices``, sorted per row) into ``out_ids``/``out_scores``."""
    n = S.shape[0]
    for r in prange(n):
        hs = np.empty(k, dtype=np.float32)
        hi = np.empty(k, dtype=np.int32)
        _select_row(
            S[r], ex_indices, ex_indptr[row0 + r], ex_indptr[row0 + r + 1], k,
            out_ids[r], out_scores[r], hs, hi,
        )


def _empty_exclusions(n_rows):
    return np.zeros(n_rows + 1, dtype=np.int64), np.zeros(1, dtype=np.int32)


def batch(user_factors, item_factors, k: int, exclude=None, *, block_users: int | None = None):
    """Top ``k`` items per user by ``user_factors @ item_factors.T``.

    ``exclude``: optional CSR (users x items) whose non-zero pattern lists items to skip per
    user (typically the training matrix, to hide already-seen items); values are ignored.
    Returns ``(ids int32 [n_users, k], scores float32 [n_users, k])``, best first, ties by lower
    item id, padded with -1 / -inf when fewer than k items are eligible.
    """
    U = check_factors(user_factors, "user_factors")
    V = check_factors(item_factors, "item_factors", n_cols=U.shape[1])
    k = check_int(k, "k", minimum=1)
    n_users, n_items = U.shape[0], V.shape[0]
    if exclude is not None:
        ex = check_csr(exclude, "exclude", shape=(n_users, n_items), nonnegative=False)
        ex_indptr, ex_indices = ex.indptr, ex.indices
    else:
        ex_indptr, ex_indices = _empty_exclusions(n_users)
    if block_users is None:
        block_users = max(1, _BLOCK_BYTES // (4 * max(n_items, 1)))
    block_users = check_int(block_users, "block_users", minimum=1)

    ids = np.full((n_users, k), -1, dtype=np.int32)
    scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    if n_users == 0 or n_items == 0:
        return ids, scores
    Vt = np.ascontiguousarray(V.T)
    buf = np.empty((min(block_users, n_users), n_items), dtype=np.float32)
    for b0 in range(0, n_users, block_users):
        b1 = min(n_users, b0 + block_users)
        S = buf[: b1 - b0]
        np.matmul(U[b0:b1], Vt, out=S)
        select_block(S, ex_indptr, ex_indices, b0, k, ids[b0:b1], scores[b0:b1])
    return ids, scores



def similar(item_factors, k: int, *, exclude_self: bool = True, block_items: int | None = None):
    """Item-item cosine top ``k``: ``(ids int32 [n_items, k], scores float32 [n_items, k])``.

    Items with an all-zero factor (never seen in training) have cosine 0 with everything, so
    they neither attract nor get meaningful neighbours, but never produce NaN.
    """
    V = check_factors(item_factors, "item_factors")
    k = check_int(k, "k", minimum=1)
    norms = np.linalg.norm(V.astype(np.float64), axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    W = (V / safe[:, None]).astype(np.float32)
    n = W.shape[0]
    exclude = sp.identity(n, dtype=np.float32, format="csr") if exclude_self else None
    return batch(W, W, k, exclude, block_users=block_items)


@njit(cache=True)
def _select_1d(scores, ex, k):
    hs = np.empty(k, dtype=np.float32)
    hi = np.empty(k, dtype=np.int32)
    out_ids = np.empty(k, dtype=np.int32)
    out_scores = np.empty(k, dtype=np.float32)
    _select_row(scores, ex, 0, ex.shape[0], k, out_ids, out_scores, hs, hi)
    return out_ids, out_scores


def topk_scores(scores, k: int, exclude_ids=None):
    """Top ``k`` of one score vector (serving path for a single user).

    ``scores`` may contain ``-inf`` for items already filtered out; those are never returned.
    Same ordering and padding rules as ``batch``.
    """
    s = check_vector(scores, "scores", allow_neg_inf=True)
    k = check_int(k, "k", minimum=1)
    if exclude_ids is None:
        ex = np.zeros(0, dtype=np.int32)
    else:
        ex = np.unique(check_ids(exclude_ids, "exclude_ids", upper=max(s.shape[0], 1), dtype=np.int32))
        ex = ex.astype(np.int32)
    return _select_1d(s, ex, k)
