"""Candidate top-N (recs_kernels.candidates) against the dense blend it replaces in batch top-N."""
import numpy as np
import pytest
import scipy.sparse as sp

from recs_kernels import blend, candidates


def _world(n_users=300, n_items=600, seed=0):
    rng = np.random.default_rng(seed)
    k = 8
    # clustered factors, as real ones are: the index's clusters have something to find
    centres = rng.normal(size=(6, k))
    Va = (centres[rng.integers(0, 6, n_items)] + 0.3 * rng.normal(size=(n_items, k))).astype(np.float32)
    Ua = (centres[rng.integers(0, 6, n_users)] + 0.3 * rng.normal(size=(n_users, k))).astype(np.float32)
    Vb = rng.normal(size=(n_items, k + 1)).astype(np.float32)
    Ub = rng.normal(size=(n_users, k + 1)).astype(np.float32)
    S = sp.random(n_items, n_items, density=0.02, random_state=seed, format="csr", dtype=np.float32)
    C = sp.random(n_items, n_items, density=0.01, random_state=seed + 2, format="csr", dtype=np.float32)
    H = sp.random(n_users, n_items, density=0.02, random_state=seed + 1, format="csr", dtype=np.float32)
    emb = rng.normal(size=(n_items, 16)).astype(np.float32)
    trend = rng.gamma(0.5, size=n_items)
    bl = blend.Blend(als_items=Va, bpr_items=Vb, item_sim=S, covis=C, content=emb, trending=trend)
    w = {"als": 1.0, "bpr": 0.5, "item_sim": 0.7, "covis": 0.2, "content": 0.3, "trending": 0.4}
    return bl, w, Ua, Ub, H


def test_scanning_every_cluster_is_the_dense_top_k():
    bl, w, Ua, Ub, H = _world()
    d_ids, d_sc = bl.top_k(w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=H)
    c_ids, c_sc = candidates.top_k(bl, w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=H,
                                   nprobe=1000, cluster_size=40, block_users=64)
    np.testing.assert_allclose(c_sc, d_sc, rtol=1e-4, atol=1e-4)
    assert (c_ids == d_ids).mean() > 0.99  # only float ties may swap
    for u in range(H.shape[0]):
        assert not set(c_ids[u]) & set(H.indices[H.indptr[u]:H.indptr[u + 1]])


@pytest.mark.parametrize("weights", [{"item_sim": 1.0}, {"trending": 1.0, "covis": 0.5}, {"als": 1.0}])
def test_single_kinds_of_source(weights):
    bl, _, Ua, Ub, H = _world(seed=5)
    d_ids, d_sc = bl.top_k(weights, 7, als_users=Ua, bpr_users=Ub, history=H, exclude=H)
    c_ids, c_sc = candidates.top_k(bl, weights, 7, als_users=Ua, bpr_users=Ub, history=H, exclude=H,
                                   nprobe=1000, cluster_size=50, max_support=600)
    np.testing.assert_allclose(c_sc, d_sc, rtol=1e-4, atol=1e-4)
    assert (c_ids == d_ids).mean() > 0.99


def test_few_probed_clusters_recover_most_of_the_dense_top_k():
    bl, w, Ua, Ub, H = _world(seed=3)
    d_ids, _ = bl.top_k(w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=H)
    calls = []
    c_ids, c_sc = candidates.top_k(bl, w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=H,
                                   nprobe=4, cluster_size=30, max_support=50, block_users=100,
                                   callback=lambda d, t: calls.append(d))
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(c_ids, d_ids)])
    assert overlap > 0.9, overlap
    assert calls == [100, 200, 300]
    # best first, and each kept score is the dense score of that item
    assert (np.diff(c_sc, axis=1) <= 0).all()
    dense = bl.score(w, als_users=Ua, bpr_users=Ub, history=H)
    np.testing.assert_allclose(np.take_along_axis(dense, c_ids, 1), c_sc, rtol=1e-4, atol=1e-4)
    # one probed cluster and no support beyond it is worse: the test can fail
    r_ids, _ = candidates.top_k(bl, w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=H,
                                nprobe=1, cluster_size=30, max_support=0, n_extra=0)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r_ids, d_ids)]) < overlap
