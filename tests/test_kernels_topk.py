import numpy as np
import pytest
import scipy.sparse as sp

from recs_kernels import topk


def _reference(U, V, k, exclude=None):
    """Brute force: full score matrix, lexsort by (-score, id), drop excluded, pad."""
    S = U.astype(np.float32) @ V.astype(np.float32).T
    n_users, n_items = S.shape
    ids = np.full((n_users, k), -1, dtype=np.int32)
    scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    for u in range(n_users):
        allowed = np.ones(n_items, dtype=bool)
        if exclude is not None:
            allowed[exclude[u].indices] = False
        cand = np.flatnonzero(allowed)
        order = np.lexsort((cand, -S[u, cand]))[:k]
        ids[u, : len(order)] = cand[order]
        scores[u, : len(order)] = S[u, cand[order]]
    return ids, scores


def _tied_factors(rng, n_users, n_items, f=4):
    # Small integer factors make many exact score ties, in float32 too.
    U = rng.integers(-2, 3, size=(n_users, f)).astype(np.float32)
    V = rng.integers(-2, 3, size=(n_items, f)).astype(np.float32)
    V[5] = V[n_items - 1]  # identical items: always tied
    return U, V


@pytest.mark.parametrize("block_users", [None, 1, 7])
def test_batch_matches_argsort_reference_with_ties(block_users):
    rng = np.random.default_rng(0)
    U, V = _tied_factors(rng, 53, 40)
    ids, scores = topk.batch(U, V, 10, block_users=block_users)
    ref_ids, ref_scores = _reference(U, V, 10)
    # ties are frequent by construction, so this checks the lower-id tie-break
    assert (np.diff(ref_scores, axis=1) == 0).sum() > 50
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    assert ids.dtype == np.int32 and scores.dtype == np.float32


def test_batch_with_exclusions_and_padding():
    rng = np.random.default_rng(1)
    U, V = _tied_factors(rng, 30, 12)
    ex = sp.random(30, 12, density=0.4, format="csr", random_state=2, dtype=np.float32)
    ex = ex.tolil()
    ex[3, :] = 1.0  # user 3: everything excluded -> fully padded
    ex[4, :9] = 1.0  # user 4: at most 3 eligible items -> partially padded
    ex = ex.tocsr()
    ids, scores = topk.batch(U, V, 6, ex, block_users=4)
    ref_ids, ref_scores = _reference(U, V, 6, ex)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    assert (ids[3] == -1).all() and np.isneginf(scores[3]).all()
    assert (ids[4][ids[4] >= 0] >= 9).all() and (ids[4, 3:] == -1).all()
    for u in range(30):
        assert not set(ids[u][ids[u] >= 0]) & set(ex[u].indices)


def test_batch_random_float_factors_match_reference():
    rng = np.random.default_rng(2)
    U = rng.standard_normal((200, 16)).astype(np.float32)
    V = rng.standard_normal((300, 16)).astype(np.float32)
    ex = sp.random(200, 300, density=0.05, format="csr", random_state=3)
    ids, scores = topk.batch(U, V, 20, ex)
    ref_ids, ref_scores = _reference(U, V, 20, ex)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_k_larger_than_items():
    U = np.ones((2, 3), np.float32)
    V = np.arange(9, dtype=np.float32).reshape(3, 3)
    ids, scores = topk.batch(U, V, 5)
    assert ids.tolist() == [[2, 1, 0, -1, -1]] * 2
    assert np.isneginf(scores[:, 3:]).all()


def test_similar_cosine_matches_reference():
    rng = np.random.default_rng(3)
    V = rng.standard_normal((50, 8)).astype(np.float32)
    V[7] = 0.0  # never-seen item: zero factor, must not produce NaN
    ids, scores = topk.similar(V, 5)
    norms = np.linalg.norm(V, axis=1)
    W = V / np.where(norms > 0, norms, 1)[:, None]
    C = W @ W.T
    np.fill_diagonal(C, -np.inf)
    for i in range(50):
        order = np.lexsort((np.arange(50), -C[i]))[:5]
        assert ids[i].tolist() == order.tolist()
        np.testing.assert_allclose(scores[i], C[i, order], atol=1e-5)
    assert np.isfinite(scores).all()
    assert (ids != np.arange(50)[:, None]).all()
    ids2, _ = topk.similar(V, 1, exclude_self=False)
    assert (ids2[np.arange(50) != 7, 0] == np.arange(50)[np.arange(50) != 7]).all()


def test_topk_scores_single_row():
    s = np.array([0.5, 2.0, 2.0, -np.inf, 1.0, 2.0], dtype=np.float32)
    ids, sc = topk.topk_scores(s, 4, exclude_ids=[2])
    assert ids.tolist() == [1, 5, 4, 0]
    assert sc.tolist() == [2.0, 2.0, 1.0, 0.5]
    ids, sc = topk.topk_scores(s, 7)
    assert ids.tolist() == [1, 2, 5, 4, 0, -1, -1]  # -inf entries are never returned


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: topk.batch(np.ones((2, 3)), np.ones((4, 3)), 0), "k must be >= 1"),
        (lambda: topk.batch(np.ones((2, 3)), np.ones((4, 2)), 3), "columns, expected 3"),
        (lambda: topk.batch(np.full((2, 3), np.nan), np.ones((4, 3)), 3), "NaN"),
        (lambda: topk.batch(np.ones(3), np.ones((4, 3)), 3), "must be 2-D"),
        (lambda: topk.batch(np.ones((2, 3)), np.ones((4, 3)), 3, sp.csr_matrix((3, 4))), "shape"),
        (lambda: topk.batch(np.ones((2, 3)), np.ones((4, 3)), 3, np.ones((2, 4))), "scipy.sparse"),
        (lambda: topk.batch(np.ones((2, 3)), np.ones((4, 3)), 2.5), "integer"),
        (lambda: topk.similar(np.ones((4, 3)), -1), "k must be >= 1"),
        (lambda: topk.topk_scores(np.array([1.0, np.nan]), 1), "NaN"),
        (lambda: topk.topk_scores(np.ones(3), 1, exclude_ids=[5]), r"\[0, 3\)"),
    ],
)
def test_validation_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
