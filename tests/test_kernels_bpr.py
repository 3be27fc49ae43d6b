import numba
import numpy as np
import pytest
import scipy.sparse as sp

from recs_kernels import bpr


def _planted(n_users=2000, n_items=500, n_clusters=10, per_user=12, p_in=0.9, seed=0):
    """Users and items split into taste clusters; a user buys mostly inside their cluster."""
    rng = np.random.default_rng(seed)
    user_c = rng.integers(0, n_clusters, n_users)
    item_c = rng.integers(0, n_clusters, n_items)
    by_cluster = [np.flatnonzero(item_c == c) for c in range(n_clusters)]
    rows, cols = [], []
    for u in range(n_users):
        n_in = rng.binomial(per_user, p_in)
        pool = by_cluster[user_c[u]]
        inside = rng.choice(pool, min(n_in, len(pool)), replace=False)
        outside = rng.choice(n_items, per_user - n_in, replace=False)
        items = np.unique(np.concatenate([inside, outside, rng.integers(0, n_items, 1)]))
        rows.extend([u] * len(items))
        cols.extend(items)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    # hold out one interaction per user
    train = m.tolil()
    held = np.empty(n_users, dtype=np.int64)
    for u in range(n_users):
        items = m[u].indices
        held[u] = rng.choice(items)
        train[u, held[u]] = 0
    return train.tocsr(), held


def _auc(X, Y, train, held, seed=0):
    rng = np.random.default_rng(seed)
    S = X @ Y.T
    wins = 0.0
    n = 0
    for u in range(train.shape[0]):
        seen = set(train[u].indices) | {held[u]}
        neg = np.array([j for j in rng.integers(0, Y.shape[0], 50) if j not in seen])
        wins += (S[u, held[u]] > S[u, neg]).sum() + 0.5 * (S[u, held[u]] == S[u, neg]).sum()
        n += len(neg)
    return wins / n


def test_bpr_held_out_auc_on_planted_clusters():
    train, held = _planted()
    X, Y = bpr.fit(train, factors=16, iterations=30, learning_rate=0.05, regularization=0.01, seed=0)
    assert X.shape == (2000, 17) and Y.shape == (500, 17)
    assert X.dtype == np.float32 and Y.dtype == np.float32
    assert (X[:, -1] == 1.0).all()  # bias column folded into the dot product
    auc = _auc(X, Y, train, held)
    assert auc > 0.85, auc
    # an untrained model (iterations=0) is near chance: the test can fail
    X0, Y0 = bpr.fit(train, factors=16, iterations=0, seed=0)
    assert _auc(X0, Y0, train, held) < 0.6


def test_bpr_popularity_negatives_also_learn():
    train, held = _planted(n_users=600, n_items=200, seed=1)
    X, Y = bpr.fit(train, factors=16, iterations=30, seed=0, negatives="popularity")
    assert _auc(X, Y, train, held) > 0.8


def test_bpr_deterministic_single_thread():
    train, _ = _planted(n_users=300, n_items=100, seed=2)
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        a = bpr.fit(train, factors=8, iterations=5, seed=3)
        b = bpr.fit(train, factors=8, iterations=5, seed=3)
        c = bpr.fit(train, factors=8, iterations=5, seed=4)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_bpr_empty_rows_and_columns():
    train, _ = _planted(n_users=200, n_items=80, seed=3)
    train = train.tolil()
    train[5, :] = 0
    train[:, 9] = 0
    train = train.tocsr()
    X, Y = bpr.fit(train, factors=4, iterations=5)
    assert np.isfinite(X).all() and np.isfinite(Y).all()
    assert not X[5, :4].any() and X[5, 4] == 1.0
    assert not Y[9, :4].any() and Y[9, 4] <= np.delete(Y[:, 4], 9).min()
    # everything empty: no crash, zero factors
    X, Y = bpr.fit(sp.csr_matrix((3, 4), dtype=np.float32), factors=2, iterations=2)
    assert not X[:, :2].any() and not Y.any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(factors=0), "factors must be >= 1"),
        (dict(learning_rate=0.0), "learning_rate must be > 0"),
        (dict(regularization=-1.0), "regularization must be >= 0"),
        (dict(iterations=1.5), "iterations must be an integer"),
        (dict(negatives="hard"), "negatives must be one of"),
    ],
)
def test_bpr_validation(kwargs, message):
    train, _ = _planted(n_users=50, n_items=20, per_user=3)
    with pytest.raises(ValueError, match=message):
        bpr.fit(train, **kwargs)


def test_bpr_rejects_bad_matrix():
    m = sp.csr_matrix(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        bpr.fit(m)
    m = sp.csr_matrix(np.array([[1.0, -2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="negative"):
        bpr.fit(m)


def test_bpr_callback_and_convergence_stop():
    train, held = _planted(n_users=600, n_items=200, seed=2)
    epochs = []
    X, Y = bpr.fit(train, factors=8, iterations=400, seed=0, tol=0.01, callback=lambda e, X, Y: epochs.append(e))
    # The loss flattens long before 400 epochs on this small matrix, and stopping there keeps
    # what was learned.
    assert 10 < len(epochs) < 400 and epochs == list(range(len(epochs)))
    assert _auc(X, Y, train, held) > 0.75
    seen = []
    bpr.fit(train, factors=4, iterations=3, seed=0, callback=lambda e, X, Y: seen.append(e))
    assert seen == [0, 1, 2]
    with pytest.raises(ValueError, match="tol"):
        bpr.fit(train, factors=4, iterations=3, tol=-1.0)
