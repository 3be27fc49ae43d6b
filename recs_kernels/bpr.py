"""Bayesian personalised ranking (Rendle et al. 2009) trained by parallel SGD.

Each epoch draws ``nnz`` triples (u, i, j): (u, i) is a uniformly drawn observed interaction
(so active users get proportionally more updates, as in the data), j an item u has not
interacted with, and takes an SGD step on ``log sigmoid(x_u . (y_i - y_j))`` with L2
regularisation.

The item bias is folded into the factors so that every consumer scores with a plain dot
product: ``item_factors[:, -1]`` is the learned item bias and ``user_factors[:, -1]`` is a
constant 1.0. Both returned matrices therefore have ``factors + 1`` columns, and
``score(u, i) = user_factors[u] @ item_factors[i]``.

Threads update shared factors without locks (Hogwild, Niu et al. 2011): with thousands of
items collisions are rare and the races only add noise of the size of one SGD step. The
consequence is that results are bit-for-bit reproducible for a seed only with one numba
thread (``numba.set_num_threads(1)``); with more threads each run differs slightly while the
quality does not.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ._validate import check_choice, check_csr, check_factors, check_float, check_int

__all__ = ["fit"]

_NEGATIVES = ("uniform", "popularity")


@njit(cache=True)
def _next(state):
    # xorshift64*: a few cycles per draw and no shared state between threads.
    x = state
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    return x, x * np.uint64(2685821657736338717)


@njit(cache=True)
def _below(r, n):
    # Lemire's multiply-shift range reduction on the top 32 bits: no division, bias < n/2^32.
    return np.int64(((r >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32))


@njit(cache=True)
def _contains(indices, lo, hi, item):
    while lo < hi:
        mid = (lo + hi) >> 1
        v = indices[mid]
        if v < item:
            lo = mid + 1
        elif v > item:
            hi = mid
        else:
            return True
    return False


@njit(cache=True, fastmath=True, parallel=True)
def _epoch(row_of, indptr, indices, X, Y, lr, reg, seeds, n_samples, popularity, run):
    nnz = indices.shape[0]
    n_items, kk = Y.shape
    k = kk - 1  # last column: user side constant 1, item side bias
    n_threads = seeds.shape[0]
    per = (n_samples + n_threads - 1) // n_threads
    skipped = np.zeros(n_threads, dtype=np.int64)
    losses = np.zeros(n_threads, dtype=np.float64)
    touched = np.zeros(n_threads, dtype=np.float32)
    for t in prange(n_threads):
        state = seeds[t]
        todo = min(n_samples, (t + 1) * per) - t * per
        miss = 0
        loss = 0.0
        done = 0
        # Every draw is made ahead of its use and the memory it will read is touched then
        # (`ahead`, a sum nothing else reads): the next sample's item rows, the next run's user
        # row, and the cell of the run after it. The loads then overlap the current sample's
        # arithmetic instead of stalling it (rows of users and items are random reads from
        # memory at 1M users: 265 -> 187 ns a sample). The samples drawn are the same in law.
        ahead = np.float32(0.0)
        state, r = _next(state)
        jj_next = _below(r, nnz)
        state, r = _next(state)
        jj_after = _below(r, nnz)
        state, r = _next(state)
        j_next = indices[_below(r, nnz)] if popularity else _below(r, n_items)
        i_next = 0
        while done < todo:
            jj = jj_next
            jj_next = jj_after
            state, r = _next(state)
            jj_after = _below(r, nnz)
            ahead += indices[jj_after] + row_of[jj_after]
            u_next = row_of[jj_next]
            ahead += indptr[u_next] + X[u_next, 0] + Y[indices[jj_next], 0]
            u = row_of[jj]
            lo = indptr[u]
            deg = indptr[u + 1] - lo
            # ``run`` samples of this user in a row (the first: the drawn cell, then uniform
            # cells of the same row): the user's factors and items stay in cache, and every
            # observed cell is still drawn with the same probability.
            n_run = min(run, todo - done)
            for rep in range(n_run):
                done += 1
                i = indices[jj] if rep == 0 else i_next
                if rep + 1 < n_run:
                    state, r = _next(state)
                    i_next = indices[lo + _below(r, deg)]
                    ahead += Y[i_next, 0]
                j = j_next
                state, r = _next(state)
                # Drawing a random observed cell's item samples negatives in proportion to
                # popularity: harder negatives, as in implicit's sampler.
                j_next = indices[_below(r, nnz)] if popularity else _below(r, n_items)
                ahead += Y[j_next, 0]
                if j == i or _contains(indices, lo, lo + deg, j):
                    miss += 1
                    continue
                z = Y[i, k] - Y[j, k]
                for a in range(k):
                    z += X[u, a] * (Y[i, a] - Y[j, a])
                # d/dz log sigmoid(z) = sigmoid(-z); clamp so exp never overflows in float32.
                if z > 30.0:
                    g = np.float32(0.0)
                elif z < -30.0:
                    g = np.float32(1.0)
                else:
                    g = np.float32(1.0) / (np.float32(1.0) + np.exp(z))
                # sigmoid(-z): the chance the pair is mis-ordered, before the step; its epoch mean
                # is the convergence signal (no extra exp/log per sample).
                loss += g
                for a in range(k):
                    xu = X[u, a]
                    yi = Y[i, a]
                    yj = Y[j, a]
                    X[u, a] = xu + lr * (g * (yi - yj) - reg * xu)
                    Y[i, a] = yi + lr * (g * xu - reg * yi)
                    Y[j, a] = yj + lr * (-g * xu - reg * yj)
                Y[i, k] += lr * (g - reg * Y[i, k])
                Y[j, k] += lr * (-g - reg * Y[j, k])
        skipped[t] = miss
        losses[t] = loss
        touched[t] = ahead
    # ``touched`` is returned (and ignored) so that the touching loads are not optimised away
    return skipped.sum(), losses.sum(), touched.sum()


def fit(
    user_items,
    *,
    factors: int = 64,
    iterations: int = 100,
    learning_rate: float = 0.05,
    regularization: float = 0.01,
    seed: int = 0,
    negatives: str = "uniform",
    tol: float | None = None,
    callback=None,
    init=None,
    run: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit BPR. Returns ``(user_factors, item_factors)`` of shape ``[n, factors + 1]``
    (float32); the last column carries the item bias (see the module docstring), so
    ``user_factors @ item_factors.T`` are the scores.

    ``user_items`` is read as implicit feedback: any positive value is an interaction, the
    magnitude is ignored. One iteration draws ``nnz`` samples. Users without interactions get
    zero factors (plus the constant 1.0 bias column, so they score by item bias alone);
    items never interacted with get zero factors and the lowest bias of any seen item.

    ``tol``: stop early once an epoch's mean sigmoid(-z) over its samples (the soft share of
    mis-ordered pairs, measured during the epoch) is less than ``tol`` (relative) below the mean of the 5 epochs before it, i.e. the
    fit has stopped learning; checked from epoch 10 on. None runs every iteration.
    ``callback(epoch, user_factors, item_factors)``, if given, runs after each epoch (progress
    reporting); the arrays are the live factors, not copies.
    ``run``: samples drawn for a user in a row (1 = every sample's user drawn afresh): the
    epoch's samples have the same distribution, but a user's factors and items are read from
    cache ``run - 1`` times out of ``run`` (benchmarks/bench_factors.py measures speed and recall).
    ``init``: ``(user_factors, item_factors)`` of shape ``[n, factors + 1]`` to start from
    instead of the random start (a warm start from a fit on similar data, e.g. an earlier
    period, so that few epochs suffice); copied, never modified.
    """
    ui = check_csr(user_items, "user_items")
    factors = check_int(factors, "factors", minimum=1)
    iterations = check_int(iterations, "iterations", minimum=0)
    learning_rate = check_float(learning_rate, "learning_rate", minimum=0.0, exclusive_minimum=True)
    regularization = check_float(regularization, "regularization", minimum=0.0)
    seed = check_int(seed, "seed", minimum=0)
    negatives = check_choice(negatives, "negatives", _NEGATIVES)
    run = check_int(run, "run", minimum=1)

    n_users, n_items = ui.shape
    rng = np.random.default_rng(seed)
    # Uniform start scaled by 1/factors (as implicit does) keeps initial scores near zero
    # whatever the width, so the first epochs see gradients close to 1/2.
    if init is None:
        X = ((rng.random((n_users, factors + 1), dtype=np.float32) - 0.5) / factors).astype(np.float32)
        Y = ((rng.random((n_items, factors + 1), dtype=np.float32) - 0.5) / factors).astype(np.float32)
        Y[:, factors] = 0.0
    else:
        X = check_factors(init[0], "init[0] (user factors)", n_rows=n_users, n_cols=factors + 1).copy()
        Y = check_factors(init[1], "init[1] (item factors)", n_rows=n_items, n_cols=factors + 1).copy()
    X[:, factors] = 1.0
    row_counts = np.diff(ui.indptr)
    empty_items = np.bincount(ui.indices, minlength=n_items) == 0
    X[row_counts == 0, :factors] = 0.0
    Y[empty_items, :factors] = 0.0

    nnz = ui.nnz
    if nnz == 0 or n_items < 2:
        return X, Y
    row_of = np.repeat(np.arange(n_users, dtype=np.int32), row_counts)
    n_threads = numba.get_num_threads()
    seed_seq = np.random.SeedSequence(seed)
    lr = np.float32(learning_rate)
    reg = np.float32(regularization)
    popularity = negatives == "popularity"
    if tol is not None:
        tol = check_float(tol, "tol", minimum=0.0)
    history = []
    for it, child in zip(range(iterations), seed_seq.spawn(iterations)):
        seeds = child.generate_state(n_threads, dtype=np.uint64)
        seeds[seeds == 0] = 0x9E3779B97F4A7C15  # xorshift state must be non-zero
        skipped, loss, _ = _epoch(row_of, ui.indptr, ui.indices, X, Y, lr, reg, seeds, nnz, popularity, run)
        history.append(loss / max(1, nnz - skipped))
        if callback is not None:
            callback(it, X, Y)
        if tol is not None and it >= 10 and history[-1] > (1.0 - tol) * np.mean(history[-6:-1]):
            break
    if empty_items.any():
        # Never-seen items only ever appear as negatives, so SGD drifts them to arbitrary
        # directions. Reset them: zero factors and the lowest learned bias, so they rank
        # after every item with evidence instead of at random.
        Y[empty_items, :factors] = 0.0
        Y[empty_items, factors] = Y[~empty_items, factors].min()
    return X, Y
