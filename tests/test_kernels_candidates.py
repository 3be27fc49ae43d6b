"""Candidate top-N against the dense blend it replaces in batch top-N."""
import numpy as np
import scipy.sparse as sp

from recs_kernels import blend, candidates


def _world(n_users=300, n_items=400, seed=0):
    rng = np.random.default_rng(seed)
    k = 8
    # clustered factors: a realistic spectrum, so that a low rank picks good candidates
    centres = rng.normal(size=(6, k))
    Va = (centres[rng.integers(0, 6, n_items)] + 0.3 * rng.normal(size=(n_items, k))).astype(np.float32)
    Ua = (centres[rng.integers(0, 6, n_users)] + 0.3 * rng.normal(size=(n_users, k))).astype(np.float32)
    Vb = rng.normal(size=(n_items, k + 1)).astype(np.float32)
    Ub = rng.normal(size=(n_users, k + 1)).astype(np.float32)
    S = sp.random(n_items, n_items, density=0.02, random_state=seed, format="csr", dtype=np.float32)
    H = sp.random(n_users, n_items, density=0.02, random_state=seed + 1, format="csr", dtype=np.float32)
    emb = rng.normal(size=(n_items, 16)).astype(np.float32)
    trend = rng.gamma(0.5, size=n_items)
    bl = blend.Blend(als_items=Va, bpr_items=Vb, item_sim=S, content=emb, trending=trend)
    w = {"als": 1.0, "bpr": 0.5, "item_sim": 0.7, "content": 0.3, "trending": 0.4}
    return bl, w, Ua, Ub, H


def test_exact_rank_matches_dense_top_k():
    bl, w, Ua, Ub, H = _world()
    exclude = H.copy()
    d_ids, d_sc = bl.top_k(w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=exclude)
    c_ids, c_sc = candidates.top_k(bl, w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=exclude,
                                   rank=None, n_candidates=10, block_users=64)
    np.testing.assert_allclose(c_sc, d_sc, rtol=1e-4, atol=1e-4)
    same = (c_ids == d_ids).mean()
    assert same > 0.99, same  # only float ties may swap
    # never an excluded item
    for u in range(H.shape[0]):
        assert not set(c_ids[u]) & set(H.indices[H.indptr[u]:H.indptr[u + 1]])


def test_low_rank_candidates_recover_dense_top_k():
    bl, w, Ua, Ub, H = _world(seed=3)
    d_ids, _ = bl.top_k(w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=H)
    calls = []
    c_ids, c_sc = candidates.top_k(bl, w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=H,
                                   rank=6, n_candidates=60, block_users=100, callback=lambda d, t: calls.append(d))
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(c_ids, d_ids)])
    assert overlap > 0.95, overlap
    assert calls == [100, 200, 300]
    # best first, and each kept score is the dense score of that item
    assert (np.diff(c_sc, axis=1) <= 0).all()
    dense = bl.score(w, als_users=Ua, bpr_users=Ub, history=H)
    np.testing.assert_allclose(np.take_along_axis(dense, c_ids, 1), c_sc, rtol=1e-4, atol=1e-4)
    # a rank-1 projection with few candidates is worse: the test can fail
    r_ids, _ = candidates.top_k(bl, w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=H, rank=1, n_candidates=10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r_ids, d_ids)]) < overlap
