import numpy as np
import pytest
import scipy.sparse as sp

from recs_kernels import blend


def _z(S):
    S = S.astype(np.float64)
    sd = S.std(axis=1, keepdims=True)
    return np.where(sd > 1e-10, (S - S.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1), 0.0)


def reference(weights, Ua, Va, Ub, Vb, H, sim, pop):
    """The definition: weighted sum of per-user z-scores computed over the whole catalogue."""
    out = np.zeros((Ua.shape[0], Va.shape[0]))
    out += weights["als"] * _z(Ua @ Va.T)
    out += weights["bpr"] * _z(Ub @ Vb.T)
    out += weights["covis"] * _z((H @ sim).toarray())
    p = pop.astype(np.float64)
    out += weights["popularity"] * (p - p.mean()) / p.std()
    return out


@pytest.fixture
def parts():
    rng = np.random.default_rng(3)
    n_users, n_items = 37, 211
    Ua = rng.normal(size=(n_users, 8)).astype(np.float32)
    Va = rng.normal(size=(n_items, 8)).astype(np.float32)
    Ub = rng.normal(size=(n_users, 5)).astype(np.float32)
    Vb = rng.normal(size=(n_items, 5)).astype(np.float32)
    H = sp.random(n_users, n_items, density=0.05, format="csr", dtype=np.float32, random_state=1)
    sim = sp.random(n_items, n_items, density=0.03, format="csr", dtype=np.float32, random_state=2)
    pop = rng.gamma(1.0, size=n_items).astype(np.float32)
    return Ua, Va, Ub, Vb, H, sim, pop


def test_score_equals_the_z_score_definition(parts):
    Ua, Va, Ub, Vb, H, sim, pop = parts
    w = {"als": 1.0, "bpr": 0.5, "covis": 0.3, "popularity": 0.7}
    bl = blend.Blend(w, als_items=Va, bpr_items=Vb, item_sim=sim, popularity=pop)
    got = bl.score(als_users=Ua, bpr_users=Ub, history=H)
    np.testing.assert_allclose(got, reference(w, Ua, Va, Ub, Vb, H, sim, pop), rtol=1e-4, atol=2e-4)


def test_users_without_history_or_spread_add_nothing(parts):
    Ua, Va, Ub, Vb, H, sim, pop = parts
    H = H.tolil()
    H[0, :] = 0
    H = H.tocsr()
    Ua = Ua.copy()
    Ua[1] = 0  # an empty user: zero factor, constant scores
    bl = blend.Blend({"als": 1.0, "covis": 1.0}, als_items=Va, item_sim=sim)
    got = bl.score(als_users=Ua, history=H)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0], _z((Ua[:1] @ Va.T))[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], _z((H[1] @ sim).toarray())[0], rtol=1e-4, atol=1e-4)


def test_top_k_matches_argsort_and_skips_excluded(parts):
    Ua, Va, Ub, Vb, H, sim, pop = parts
    w = {"als": 1.0, "bpr": 0.5, "covis": 0.3, "popularity": 0.7}
    bl = blend.Blend(w, als_items=Va, bpr_items=Vb, item_sim=sim, popularity=pop)
    ids, scores = bl.top_k(10, als_users=Ua, bpr_users=Ub, history=H, exclude=H, block_users=4)
    full = bl.score(als_users=Ua, bpr_users=Ub, history=H)
    for u in range(Ua.shape[0]):
        s = full[u].copy()
        s[H[u].indices] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))[:10]
        assert ids[u].tolist() == order.tolist()
        assert not set(ids[u]) & set(H[u].indices)
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids.astype(np.int64), 1), rtol=1e-6)


def test_bad_input_is_refused(parts):
    Ua, Va, Ub, Vb, H, sim, pop = parts
    with pytest.raises(ValueError, match="unknown blend sources"):
        blend.Blend({"magic": 1.0}, als_items=Va)
    with pytest.raises(ValueError, match="no bpr data"):
        blend.Blend({"bpr": 1.0}, als_items=Va)
    with pytest.raises(ValueError, match="popularity has"):
        blend.Blend({"popularity": 1.0}, als_items=Va, popularity=pop[:-1])
