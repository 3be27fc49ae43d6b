import time

import numpy as np
import pytest
import scipy.sparse as sp

from recs_kernels import als


def _random_counts(n_users=120, n_items=80, density=0.08, seed=0):
    rng = np.random.default_rng(seed)
    m = sp.random(n_users, n_items, density=density, format="csr", random_state=seed, dtype=np.float32)
    m.data = rng.integers(1, 6, size=m.nnz).astype(np.float32)
    return m


def test_cg_agrees_with_cholesky_on_one_half_step():
    # With as many CG steps as unknowns, CG is exact up to float32 round-off; tolerance:
    # relative 2e-3 of the solution norm per row.
    ui = _random_counts()
    rng = np.random.default_rng(1)
    k = 8
    Y = rng.standard_normal((ui.shape[1], k)).astype(np.float32) * 0.3
    X0 = rng.standard_normal((ui.shape[0], k)).astype(np.float32) * 0.01
    X_cg, X_ch = X0.copy(), X0.copy()
    als.als_step(ui, X_cg, Y, regularization=0.1, alpha=2.0, solver="cg", cg_steps=3 * k)
    als.als_step(ui, X_ch, Y, regularization=0.1, alpha=2.0, solver="cholesky")
    err = np.linalg.norm(X_cg - X_ch, axis=1) / np.maximum(np.linalg.norm(X_ch, axis=1), 1e-6)
    assert err.max() < 2e-3, err.max()
    # and the default 3 warm-started steps already land close: objective within 1%
    X3 = X0.copy()
    als.als_step(ui, X3, Y, regularization=0.1, alpha=2.0, solver="cg", cg_steps=3)
    l3 = als.loss(ui, X3, Y, regularization=0.1, alpha=2.0)
    lx = als.loss(ui, X_ch, Y, regularization=0.1, alpha=2.0)
    l0 = als.loss(ui, X0, Y, regularization=0.1, alpha=2.0)
    assert lx <= l3 <= lx + 0.01 * (l0 - lx)


def test_cg_fit_close_to_cholesky_fit():
    ui = _random_counts(seed=3)
    kw = dict(factors=6, iterations=15, regularization=1.0, alpha=5.0, seed=0)
    Xc, Yc = als.fit(ui, solver="cg", cg_steps=6, **kw)
    Xe, Ye = als.fit(ui, solver="cholesky", **kw)
    lc = als.loss(ui, Xc, Yc, regularization=1.0, alpha=5.0)
    le = als.loss(ui, Xe, Ye, regularization=1.0, alpha=5.0)
    assert abs(lc - le) / le < 0.02


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_loss_falls_across_iterations(solver):
    ui = _random_counts(seed=5)
    losses = []
    als.fit(
        ui, factors=8, iterations=8, regularization=0.1, alpha=10.0, solver=solver,
        callback=lambda it, X, Y: losses.append(als.loss(ui, X, Y, regularization=0.1, alpha=10.0)),
    )
    assert len(losses) == 8
    assert all(b <= a * (1 + 1e-4) for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0]


def test_deterministic_for_seed_and_seed_matters():
    ui = _random_counts(seed=7)
    a = als.fit(ui, factors=8, iterations=4, seed=11)
    b = als.fit(ui, factors=8, iterations=4, seed=11)
    c = als.fit(ui, factors=8, iterations=4, seed=12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_empty_users_and_items_get_zero_factors():
    ui = _random_counts(seed=9).tolil()
    ui[4, :] = 0
    ui[:, 6] = 0
    ui = ui.tocsr()
    for solver in ("cg", "cholesky"):
        X, Y = als.fit(ui, factors=5, iterations=3, solver=solver)
        assert X.dtype == np.float32 and Y.dtype == np.float32
        assert X.shape == (ui.shape[0], 5) and Y.shape == (ui.shape[1], 5)
        assert np.isfinite(X).all() and np.isfinite(Y).all()
        assert not X[4].any() and not Y[6].any()
        assert np.abs(X).sum() > 0


def test_accepts_other_dtypes_and_formats():
    ui = _random_counts(seed=2)
    a = als.fit(ui, factors=4, iterations=2)
    b = als.fit(ui.astype(np.float64).tocoo(), factors=4, iterations=2)
    np.testing.assert_array_equal(a[0], b[0])


def test_fold_in_reproduces_trained_user():
    ui = _random_counts(n_users=150, n_items=60, density=0.1, seed=4)
    reg, alpha = 0.5, 5.0
    X, Y = als.fit(ui, factors=8, iterations=40, regularization=reg, alpha=alpha, solver="cholesky")
    yty = Y.T @ Y
    for u in (0, 10, 77):
        row = ui[u]
        f = als.fold_in(Y, row.indices, row.data, regularization=reg, alpha=alpha, yty=yty)
        assert f.dtype == np.float32 and f.shape == (8,)
        cos = f @ X[u] / (np.linalg.norm(f) * np.linalg.norm(X[u]))
        assert cos > 0.999, cos
        assert np.linalg.norm(f - X[u]) < 0.02 * np.linalg.norm(X[u])
    # without a cached YtY the answer is the same
    g = als.fold_in(Y, ui[0].indices, ui[0].data, regularization=reg, alpha=alpha)
    np.testing.assert_allclose(g, als.fold_in(Y, ui[0].indices, ui[0].data, regularization=reg, alpha=alpha, yty=yty), rtol=1e-4, atol=1e-6)


def test_fold_in_duplicates_sum_and_empty_is_zero():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((30, 6)).astype(np.float32)
    a = als.fold_in(Y, [3, 3, 5], [1.0, 2.0, 1.0])
    b = als.fold_in(Y, [5, 3], [1.0, 3.0])
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert not als.fold_in(Y, [], []).any()
    assert np.abs(als.fold_in(Y, [1, 2])).sum() > 0  # default weights 1.0


def test_fold_in_latency_under_a_millisecond():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((5000, 64)).astype(np.float32) * 0.1
    yty = Y.T @ Y
    ids = rng.choice(5000, 20, replace=False)
    w = np.ones(20, np.float32)
    als.fold_in(Y, ids, w, yty=yty)  # compile / load from cache
    times = []
    for _ in range(200):
        t = time.perf_counter()
        als.fold_in(Y, ids, w, yty=yty)
        times.append(time.perf_counter() - t)
    assert np.median(times) < 1e-3, np.median(times)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(factors=0), "factors must be >= 1"),
        (dict(iterations=-1), "iterations must be >= 0"),
        (dict(regularization=-0.1), "regularization must be >= 0"),
        (dict(alpha=float("nan")), "alpha must be finite"),
        (dict(solver="qr"), "solver must be one of"),
        (dict(cg_steps=0), "cg_steps must be >= 1"),
    ],
)
def test_fit_parameter_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        als.fit(_random_counts(), **kwargs)


def test_fit_input_validation():
    ui = _random_counts()
    bad = ui.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        als.fit(bad)
    bad.data[0] = -1.0
    with pytest.raises(ValueError, match="negative"):
        als.fit(bad)
    bad.data[0] = np.inf
    with pytest.raises(ValueError, match="inf"):
        als.fit(bad)
    with pytest.raises(ValueError, match="scipy.sparse"):
        als.fit(ui.toarray())


def test_fold_in_and_loss_validation():
    Y = np.ones((10, 4), np.float32)
    with pytest.raises(ValueError, match=r"item_ids must lie in \[0, 10\)"):
        als.fold_in(Y, [0, 10], [1.0, 1.0])
    with pytest.raises(ValueError, match="weights has length 1, expected 2"):
        als.fold_in(Y, [0, 1], [1.0])
    with pytest.raises(ValueError, match="negative"):
        als.fold_in(Y, [0, 1], [1.0, -1.0])
    with pytest.raises(ValueError, match="yty has 3 rows, expected 4"):
        als.fold_in(Y, [0], [1.0], yty=np.eye(3))
    Ybad = Y.copy()
    Ybad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN values in the requested rows"):
        als.fold_in(Ybad, [3], [1.0])
    with pytest.raises(ValueError, match="regularization must be > 0"):
        als.fold_in(Y, [0], [1.0], regularization=0.0)
    ui = _random_counts(n_users=5, n_items=10)
    with pytest.raises(ValueError, match="user_factors has 4 rows, expected 5"):
        als.loss(ui, np.ones((4, 4)), Y, regularization=0.1, alpha=1.0)
