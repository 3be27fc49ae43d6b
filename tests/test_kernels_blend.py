import numpy as np
import pytest
import scipy.sparse as sp

from recs_kernels import blend


def _z(S):
    S = S.astype(np.float64)
    sd = S.std(axis=1, keepdims=True)
    return np.where(sd > 1e-10, (S - S.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1), 0.0)


def reference(weights, Ua, Va, Ub, Vb, H, sim, pop, covis=None, rules=None, E=None, trend=None):
    """The definition: weighted sum of per-user z-scores computed over the whole catalogue."""
    out = np.zeros((Ua.shape[0], Va.shape[0]))
    out += weights.get("als", 0) * _z(Ua @ Va.T)
    out += weights.get("bpr", 0) * _z(Ub @ Vb.T)
    out += weights.get("item_sim", 0) * _z((H @ sim).toarray())
    for name, S in (("covis", covis), ("rules", rules)):
        if S is not None:
            out += weights[name] * _z((H @ S).toarray())
    if E is not None:
        out += weights["content"] * _z((H @ E) @ E.T)
    for name, v in (("popularity", pop), ("trending", trend)):
        if v is not None and weights.get(name):
            p = v.astype(np.float64)
            out += weights[name] * (p - p.mean()) / p.std()
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
    w = {"als": 1.0, "bpr": 0.5, "item_sim": 0.3, "popularity": 0.7}
    bl = blend.Blend(als_items=Va, bpr_items=Vb, item_sim=sim, popularity=pop)
    got = bl.score(w, als_users=Ua, bpr_users=Ub, history=H)
    np.testing.assert_allclose(got, reference(w, Ua, Va, Ub, Vb, H, sim, pop), rtol=1e-4, atol=2e-4)


@pytest.fixture
def all_sources(parts):
    Ua, Va, Ub, Vb, H, sim, pop = parts
    rng = np.random.default_rng(4)
    n_items = Va.shape[0]
    covis = sp.random(n_items, n_items, density=0.02, format="csr", dtype=np.float32, random_state=5)
    rules = sp.random(n_items, n_items, density=0.01, format="csr", dtype=np.float32, random_state=6)
    E = blend.content_vectors(rng.normal(size=(n_items, 12)).astype(np.float32), 6)
    trend = rng.gamma(0.5, size=n_items).astype(np.float32)
    bl = blend.Blend(als_items=Va, bpr_items=Vb, item_sim=sim, covis=covis, rules=rules, content=E, trending=trend,
                     popularity=pop)
    w = {"als": 1.0, "bpr": 0.5, "item_sim": 0.3, "covis": 0.4, "rules": 0.2, "content": 0.6, "trending": 0.8,
         "popularity": 0.1}
    return bl, w, dict(covis=covis, rules=rules, E=E, trend=trend)


def test_every_source_follows_the_definition(parts, all_sources):
    Ua, Va, Ub, Vb, H, sim, pop = parts
    bl, w, extra = all_sources
    got = bl.score(w, als_users=Ua, bpr_users=Ub, history=H)
    np.testing.assert_allclose(got, reference(w, Ua, Va, Ub, Vb, H, sim, pop, **extra), rtol=1e-4, atol=5e-4)


def test_candidate_scores_equal_the_dense_blend(parts, all_sources):
    """The request path (a few candidates, no catalogue pass) gives the batch path's numbers."""
    Ua, Va, Ub, Vb, H, sim, pop = parts
    bl, w, _ = all_sources
    dense = bl.score(w, als_users=Ua, bpr_users=Ub, history=H)
    rng = np.random.default_rng(7)
    for u in (0, 5, 20):
        cand = np.sort(rng.choice(bl.n_items, 40, replace=False))
        h = H[u]
        total, C, anchors = bl.score_candidates(w, cand, als_user=Ua[u], bpr_user=Ub[u], hist_ids=h.indices.astype(np.int64),
                                                hist_w=h.data.astype(np.float64))
        np.testing.assert_allclose(total, dense[u, cand], rtol=1e-4, atol=5e-4)
        np.testing.assert_allclose(C.sum(axis=1), total, rtol=1e-5, atol=1e-5)
        assert set(anchors) >= {"item_sim", "covis", "rules", "content"}
        assert set(anchors["content"].tolist()) <= set(h.indices.tolist())


def test_history_cap_keeps_the_heaviest_items():
    H = sp.csr_matrix(np.array([[0.5, 2.0, 0.0, 2.0, 1.0], [1.0, 0.0, 0.0, 0.0, 0.0]], np.float32))
    capped = blend.cap_history(H, 2)
    assert capped[0].indices.tolist() == [1, 3] and capped[1].indices.tolist() == [0]
    ids, w = blend.cap_row(np.array([0, 1, 3, 4]), np.array([0.5, 2.0, 2.0, 1.0]), 3)
    assert ids.tolist() == [1, 3, 4] and w.tolist() == [2.0, 2.0, 1.0]


def test_rules_matrix_keeps_single_antecedent_rules_at_their_best_confidence():
    # rules: 0 -> {1, 2} (0.5), 0 -> {1} (0.7), {0, 1} -> {3} (0.9, two antecedents: not a source edge), 2 -> {-1} (unknown)
    R = blend.rules_matrix(4, np.array([1, 1, 2, 1]), np.array([0, 0, 0, 1, 2]), np.array([2, 1, 1, 1]),
                           np.array([1, 2, 1, 3, -1]), np.array([0.5, 0.7, 0.9, 0.4], np.float32))
    assert R.toarray().tolist() == [[0, np.float32(0.7), np.float32(0.5), 0], [0] * 4, [0] * 4, [0] * 4]


def test_users_without_history_or_spread_add_nothing(parts):
    Ua, Va, Ub, Vb, H, sim, pop = parts
    H = H.tolil()
    H[0, :] = 0
    H = H.tocsr()
    Ua = Ua.copy()
    Ua[1] = 0  # an empty user: zero factor, constant scores
    bl = blend.Blend(als_items=Va, item_sim=sim)
    got = bl.score({"als": 1.0, "item_sim": 1.0}, als_users=Ua, history=H)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[0], _z((Ua[:1] @ Va.T))[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[1], _z((H[1] @ sim).toarray())[0], rtol=1e-4, atol=1e-4)


def test_top_k_matches_argsort_and_skips_excluded(parts):
    Ua, Va, Ub, Vb, H, sim, pop = parts
    w = {"als": 1.0, "bpr": 0.5, "item_sim": 0.3, "popularity": 0.7}
    bl = blend.Blend(als_items=Va, bpr_items=Vb, item_sim=sim, popularity=pop)
    ids, scores = bl.top_k(w, 10, als_users=Ua, bpr_users=Ub, history=H, exclude=H, block_users=4)
    full = bl.score(w, als_users=Ua, bpr_users=Ub, history=H)
    for u in range(Ua.shape[0]):
        s = full[u].copy()
        s[H[u].indices] = -np.inf
        order = np.lexsort((np.arange(len(s)), -s))[:10]
        assert ids[u].tolist() == order.tolist()
        assert not set(ids[u]) & set(H[u].indices)
    np.testing.assert_allclose(scores, np.take_along_axis(full, ids.astype(np.int64), 1), rtol=1e-6)


def test_bad_input_is_refused(parts):
    Ua, Va, Ub, Vb, H, sim, pop = parts
    bl = blend.Blend(als_items=Va)
    with pytest.raises(ValueError, match="unknown blend sources"):
        bl.score({"magic": 1.0}, als_users=Ua)
    with pytest.raises(ValueError, match="no data for them"):
        bl.score({"bpr": 1.0}, als_users=Ua)
    with pytest.raises(ValueError, match=">= 0"):
        bl.score({"als": -1.0}, als_users=Ua)
    with pytest.raises(ValueError, match="popularity has"):
        blend.Blend(als_items=Va, popularity=pop[:-1])
