"""Implicit-feedback alternating least squares.

Model (Hu, Koren, Volinsky 2008): preference p_ui = 1 if r_ui > 0 else 0, confidence
c_ui = 1 + alpha * r_ui, minimise

    sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + regularization * (|X|^2 + |Y|^2)

by alternating exact-in-one-block solves. Each user's system is

    (Y^T Y + Y^T (C_u - I) Y + regularization * I) x_u = Y^T C_u p_u

and only the rows of the user's own items touch the (C_u - I) term, so Y^T Y is shared.

``solver="cg"`` runs a few conjugate-gradient steps per row warm-started from the previous
iteration's factor (Takács, Pilászy, Tikk 2011): O(cg_steps * (k^2 + nnz_u * k)) per user
instead of O(k^3 + nnz_u * k^2), and it never forms the k x k matrix. ``solver="cholesky"``
forms and factorises the system exactly in float64; it is the reference the CG path is tested
against and the solver ``fold_in`` uses.

Rows are independent within a half-step, so the ``prange`` updates give bit-identical results
for a seed regardless of thread count or scheduling.
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from ._validate import (
    describe_bad,
    check_choice,
    check_csr,
    check_factors,
    check_float,
    check_ids,
    check_int,
    check_vector,
)

__all__ = ["fit", "fold_in", "loss", "als_step"]

_SOLVERS = ("cg", "cholesky")
# Rows per parallel task: large enough that the per-task scratch allocation is noise, small
# enough that the power-law tail (a few very heavy users) still balances across cores.
_ROW_BLOCK = 64
# Blocks handed to a thread at a time. Numba's default splits the range into one contiguous
# slice per thread, which on power-law data leaves one core idle while the other finishes the
# heavy items; small dynamic chunks keep both busy.
_CHUNK = 4
# Fixed partial-sum count for the Gram matrix: independent of the thread count, so the
# summation order (and the result, bit for bit) does not depend on the machine.
_GRAM_PARTS = 16


# --------------------------------------------------------------------------------------------
# kernels


@njit(cache=True, fastmath=True, parallel=True)
def _cg_half_step(indptr, indices, data, X, Y, YtY, reg, alpha, cg_steps):
    n, k = X.shape
    n_blocks = (n + _ROW_BLOCK - 1) // _ROW_BLOCK
    for blk in prange(n_blocks):
        r = np.empty(k, dtype=np.float32)
        p = np.empty(k, dtype=np.float32)
        ap = np.empty(k, dtype=np.float32)
        lo = blk * _ROW_BLOCK
        hi = min(n, lo + _ROW_BLOCK)
        for u in range(lo, hi):
            start = indptr[u]
            end = indptr[u + 1]
            x = X[u]
            if start == end:
                # No evidence: the regularised optimum is exactly zero, and writing it keeps
                # empty rows from carrying their random initialisation into scores.
                for a in range(k):
                    x[a] = 0.0
                continue
            # r = b - A x, with A x expanded so only the user's own items are visited.
            for a in range(k):
                s = np.float32(0.0)
                for b in range(k):
                    s += YtY[a, b] * x[b]
                r[a] = -s - reg * x[a]
            for jj in range(start, end):
                i = indices[jj]
                c1 = alpha * data[jj]  # c_ui - 1
                d = np.float32(0.0)
                for a in range(k):
                    d += Y[i, a] * x[a]
                w = (c1 + np.float32(1.0)) - c1 * d
                for a in range(k):
                    r[a] += w * Y[i, a]
            rs_old = np.float32(0.0)
            for a in range(k):
                p[a] = r[a]
                rs_old += r[a] * r[a]
            for _ in range(cg_steps):
                if rs_old < 1e-20:
                    break
                for a in range(k):
                    s = np.float32(0.0)
                    for b in range(k):
                        s += YtY[a, b] * p[b]
                    ap[a] = s + reg * p[a]
                for jj in range(start, end):
                    i = indices[jj]
                    c1 = alpha * data[jj]
                    d = np.float32(0.0)
                    for a in range(k):
                        d += Y[i, a] * p[a]
                    d *= c1
                    for a in range(k):
                        ap[a] += d * Y[i, a]
                pap = np.float32(0.0)
                for a in range(k):
                    pap += p[a] * ap[a]
                if pap <= 0.0:
                    break
                step = rs_old / pap
                rs_new = np.float32(0.0)
                for a in range(k):
                    x[a] += step * p[a]
                    r[a] -= step * ap[a]
                    rs_new += r[a] * r[a]
                beta = rs_new / rs_old
                for a in range(k):
                    p[a] = r[a] + beta * p[a]
                rs_old = rs_new


@njit(cache=True, fastmath=False)
def _cholesky_solve(A, b):
    """Solve A x = b for symmetric positive definite A in place (A and b are float64)."""
    k = A.shape[0]
    for j in range(k):
        s = A[j, j]
        for m in range(j):
            s -= A[j, m] * A[j, m]
        if s <= 0.0:
            s = 1e-12  # only reachable through round-off when regularization == 0
        d = np.sqrt(s)
        A[j, j] = d
        for i in range(j + 1, k):
            t = A[i, j]
            for m in range(j):
                t -= A[i, m] * A[j, m]
            A[i, j] = t / d
    for i in range(k):
        t = b[i]
        for m in range(i):
            t -= A[i, m] * b[m]
        b[i] = t / A[i, i]
    for i in range(k - 1, -1, -1):
        t = b[i]
        for m in range(i + 1, k):
            t -= A[m, i] * b[m]
        b[i] = t / A[i, i]
    return b


@njit(cache=True, fastmath=False)
def _exact_row(item_rows, weights, Y, YtY, reg, alpha, out):
    k = Y.shape[1]
    A = np.empty((k, k), dtype=np.float64)
    b = np.zeros(k, dtype=np.float64)
    for a in range(k):
        for c in range(k):
            A[a, c] = YtY[a, c]
        A[a, a] += reg
    for jj in range(item_rows.shape[0]):
        i = item_rows[jj]
        c1 = alpha * np.float64(weights[jj])
        for a in range(k):
            ya = np.float64(Y[i, a])
            b[a] += (1.0 + c1) * ya
            t = c1 * ya
            for c in range(a + 1):
                A[a, c] += t * Y[i, c]
    for a in range(k):
        for c in range(a + 1, k):
            A[a, c] = A[c, a]
    _cholesky_solve(A, b)
    for a in range(k):
        out[a] = np.float32(b[a])


@njit(cache=True, parallel=True)
def _cholesky_half_step(indptr, indices, data, X, Y, YtY, reg, alpha):
    n = X.shape[0]
    for u in prange(n):
        start = indptr[u]
        end = indptr[u + 1]
        if start == end:
            X[u, :] = 0.0
            continue
        _exact_row(indices[start:end], data[start:end], Y, YtY, reg, alpha, X[u])


@njit(cache=True, parallel=True, fastmath=True)
def _loss_terms(indptr, indices, data, X, Y, alpha):
    """sum over observed cells of c(1 - d)^2 - d^2 (the correction to the all-zero term)."""
    n, k = X.shape
    total = 0.0
    for u in prange(n):
        acc = 0.0
        for jj in range(indptr[u], indptr[u + 1]):
            i = indices[jj]
            d = np.float32(0.0)
            for a in range(k):
                d += X[u, a] * Y[i, a]
            d64 = np.float64(d)
            c = 1.0 + alpha * np.float64(data[jj])
            acc += c * (1.0 - d64) * (1.0 - d64) - d64 * d64
        total += acc
    return total


@njit(cache=True, fastmath=True, parallel=True)
def _gram_kernel(Y):
    n, k = Y.shape
    parts = np.zeros((_GRAM_PARTS, k, k), dtype=np.float32)
    per = (n + _GRAM_PARTS - 1) // _GRAM_PARTS
    for c in prange(_GRAM_PARTS):
        P = parts[c]
        for r in range(c * per, min(n, (c + 1) * per)):
            for a in range(k):
                ya = Y[r, a]
                for b in range(k):
                    P[a, b] += ya * Y[r, b]
    G = np.zeros((k, k), dtype=np.float32)
    for c in range(_GRAM_PARTS):
        G += parts[c]
    return G


# --------------------------------------------------------------------------------------------
# Python API


def _gram(Y: np.ndarray) -> np.ndarray:
    # Not Y.T @ Y: OpenBLAS would start its own thread pool, whose workers keep spinning after
    # the call and steal the cores from the numba solve that follows (measured: fit 3-4x slower
    # on 2 cores). A numba Gram matrix costs a few ms and shares numba's threads.
    return _gram_kernel(np.ascontiguousarray(Y, dtype=np.float32))


def als_step(
    user_items: sp.csr_matrix,
    X: np.ndarray,
    Y: np.ndarray,
    *,
    regularization: float,
    alpha: float,
    solver: str = "cg",
    cg_steps: int = 3,
) -> None:
    """Recompute every row of ``X`` in place against fixed ``Y`` (no validation; internal)."""
    YtY = _gram(Y)
    with numba.parallel_chunksize(_CHUNK):
        if solver == "cg":
            _cg_half_step(
                user_items.indptr, user_items.indices, user_items.data, X, Y, YtY,
                np.float32(regularization), np.float32(alpha), cg_steps,
            )
        else:
            _cholesky_half_step(
                user_items.indptr, user_items.indices, user_items.data, X, Y, YtY,
                float(regularization), float(alpha),
            )


def fit(
    user_items,
    *,
    factors: int = 64,
    iterations: int = 15,
    regularization: float = 0.01,
    alpha: float = 40.0,
    seed: int = 0,
    solver: str = "cg",
    cg_steps: int = 3,
    callback=None,
    init=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit implicit ALS. Returns ``(user_factors [n_users, factors], item_factors [n_items,
    factors])``, both float32; score(u, i) = user_factors[u] @ item_factors[i].

    ``user_items`` holds non-negative interaction strengths r_ui (counts, log-counts, 1.0);
    the confidence is 1 + alpha * r_ui. Users and items without interactions get zero rows.
    ``callback(iteration, user_factors, item_factors)``, if given, runs after each iteration
    (used by tests and tuning to watch the loss without refitting).
    ``init``: ``(user_factors, item_factors)`` to start from instead of the random start (a
    warm start from a fit on similar data, e.g. an earlier period: a few iterations then reach
    what a cold fit needs ``iterations`` for); copied, never modified.
    """
    ui = check_csr(user_items, "user_items")
    factors = check_int(factors, "factors", minimum=1)
    iterations = check_int(iterations, "iterations", minimum=0)
    regularization = check_float(regularization, "regularization", minimum=0.0)
    alpha = check_float(alpha, "alpha", minimum=0.0)
    seed = check_int(seed, "seed", minimum=0)
    solver = check_choice(solver, "solver", _SOLVERS)
    cg_steps = check_int(cg_steps, "cg_steps", minimum=1)
    if solver == "cholesky" and regularization == 0.0:
        raise ValueError("solver='cholesky' needs regularization > 0 to stay positive definite")

    n_users, n_items = ui.shape
    iu = check_csr(ui.T.tocsr(), "item_users")
    rng = np.random.default_rng(seed)
    # Small random start: large enough to break symmetry between factors, small enough that
    # the first user solve is driven by the data rather than by the initialisation.
    if init is None:
        X = (rng.standard_normal((n_users, factors), dtype=np.float32) * 0.01).astype(np.float32)
        Y = (rng.standard_normal((n_items, factors), dtype=np.float32) * 0.01).astype(np.float32)
    else:
        X = check_factors(init[0], "init[0] (user factors)", n_rows=n_users, n_cols=factors).copy()
        Y = check_factors(init[1], "init[1] (item factors)", n_rows=n_items, n_cols=factors).copy()
    # Empty items never get solved when iterations == 0; keep the contract anyway.
    Y[np.diff(iu.indptr) == 0] = 0.0
    X[np.diff(ui.indptr) == 0] = 0.0
    for it in range(iterations):
        als_step(ui, X, Y, regularization=regularization, alpha=alpha, solver=solver, cg_steps=cg_steps)
        als_step(iu, Y, X, regularization=regularization, alpha=alpha, solver=solver, cg_steps=cg_steps)
        if callback is not None:
            callback(it, X, Y)
    return X, Y


def fold_in(
    item_factors,
    item_ids,
    weights=None,
    *,
    regularization: float = 0.01,
    alpha: float = 40.0,
    yty=None,
) -> np.ndarray:
    """Exact ALS factor (float32, shape ``[factors]``) of a user described by a few items.

    Solves the same normal equations as a training step against fixed ``item_factors``.
    ``weights`` default to 1.0 per item; repeated ids add up, as they would in the matrix.
    ``yty`` (``item_factors.T @ item_factors``) can be precomputed once per model by the
    caller: it is the only O(n_items) part, and without it a request costs a pass over all
    items. No items gives the zero vector (the regularised optimum with no evidence).
    """
    Y = item_factors
    if not (isinstance(Y, np.ndarray) and Y.dtype == np.float32 and Y.ndim == 2 and Y.flags.c_contiguous):
        Y = check_factors(item_factors, "item_factors")
    elif Y.shape[1] == 0:
        raise ValueError("item_factors has zero columns")
    n_items, k = Y.shape
    ids = check_ids(item_ids, "item_ids", upper=n_items)
    # Per request only the rows in use are scanned for NaN/inf: a full scan of a large
    # catalogue would cost more than the solve itself.
    if ids.shape[0] and not np.isfinite(Y[ids]).all():
        raise ValueError(f"item_factors contains {describe_bad(Y[ids])} values in the requested rows")
    if weights is None:
        w = np.ones(ids.shape[0], dtype=np.float64)
    else:
        w = check_vector(weights, "weights", length=ids.shape[0], dtype=np.float64, nonnegative=True)
    regularization = check_float(regularization, "regularization", minimum=0.0, exclusive_minimum=True)
    alpha = check_float(alpha, "alpha", minimum=0.0)
    if yty is None:
        G = _gram(Y)
    else:
        G = check_factors(yty, "yty", n_rows=k, n_cols=k)
    out = np.zeros(k, dtype=np.float32)
    if ids.shape[0] == 0:
        return out
    keep = w > 0
    if not keep.all():
        ids, w = ids[keep], w[keep]
    if ids.shape[0] > 1 and np.unique(ids).shape[0] != ids.shape[0]:
        ids, inv = np.unique(ids, return_inverse=True)
        w = np.bincount(inv, weights=w)
    if ids.shape[0] == 0:
        return out
    _exact_row(ids, w, Y, G, regularization, alpha, out)
    return out


def loss(user_items, user_factors, item_factors, *, regularization: float, alpha: float) -> float:
    """The ALS objective (unnormalised) for the given factors; lower is better."""
    ui = check_csr(user_items, "user_items")
    n_users, n_items = ui.shape
    X = check_factors(user_factors, "user_factors", n_rows=n_users)
    Y = check_factors(item_factors, "item_factors", n_rows=n_items, n_cols=X.shape[1])
    regularization = check_float(regularization, "regularization", minimum=0.0)
    alpha = check_float(alpha, "alpha", minimum=0.0)
    # All-cells term sum_u x_u^T (Y^T Y) x_u, then corrections on the observed cells.
    G = Y.astype(np.float64).T @ Y.astype(np.float64)
    X64 = X.astype(np.float64)
    dense = float(np.einsum("ij,jk,ik->", X64, G, X64))
    observed = _loss_terms(ui.indptr, ui.indices, ui.data, X, Y, alpha)
    reg = regularization * (float(np.square(X64).sum()) + float(np.square(Y.astype(np.float64)).sum()))
    return dense + observed + reg
