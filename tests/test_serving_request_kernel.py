"""The request kernel (recs_kernels.request) against the numpy path it replaces
(``Recommender._blend_reference``): the same picks, scores, reasons and metadata, to the bit,
on random requests of every blended use case of a release built from the bundled data."""
from __future__ import annotations

import random

import numpy as np
import pytest

from serving_fixtures import recommender, release_home  # noqa: F401

from recs_kernels import blend, request
from recs_serving.schemas import Interaction

T0 = 1_700_000_000_000


def _requests(rel, n: int, seed: int):
    rnd = random.Random(seed)
    brands = [k for (s, k) in rel.popularity_lists if s == "brand"]
    cats = [k for (s, k) in rel.popularity_lists if s == "category"]
    # long histories first among the known users: the cap and the exclusion of what was seen matter there
    lens = np.diff(rel.hist_indptr)
    heavy = np.argsort(-lens, kind="stable")[:50].tolist()

    def item():
        return rel.item_ids[rnd.randrange(rel.n_items)]

    def user():
        return rel.user_ids[rnd.choice(heavy) if rnd.random() < 0.3 else rnd.randrange(rel.n_users)]

    for t in range(n):
        kind = t % 8
        kw = dict(k=rnd.choice([1, 5, 10, 20, 50]), user_id=None, recent=[], brand=None, filters={}, lam=None,
                  exclusions=[item() for _ in range(rnd.randrange(3))])
        if kind in (0, 1, 5, 6):  # a known user, with recent events except kind 1 (no events: the blend of the batch table)
            kw["user_id"] = user()
        if kind in (0, 2, 5, 6):
            kw["recent"] = [Interaction(item_id=item(), timestamp=T0 - 60_000 * rnd.randrange(5000),
                                        event=rnd.choice(["view", "add", "purchase"])) for _ in range(rnd.randrange(1, 9))]
        if kind == 3:
            kw.update(extra_seeds=[item() for _ in range(rnd.randrange(1, 5))], use_case="cart")
        if kind == 4:
            kw.update(extra_seeds=[item()], seed_event="view", use_case="item_page", lam=rnd.choice([None, 0.5]))
        if kind == 5 and brands:
            kw["brand"] = rnd.choice(brands)
        if kind == 6 and cats:
            kw["filters"] = {"category": [rnd.choice(cats)]}
        # kind 7: anonymous without events (cold start)
        yield kind, kw


def test_request_kernel_answers_as_the_numpy_path(recommender):  # noqa: F811
    st = recommender._current()
    rel = st.rel
    assert st.arrays is not None
    kinds = set()
    for kind, kw in _requests(rel, 320, seed=7):
        q = recommender._query(st, meta={}, **kw)
        m_new, m_ref = {}, {}
        got = recommender._blend(st, q, m_new)
        want = recommender._blend_reference(st, q, m_ref)
        assert got == want, (kind, kw)  # item, score (exact float) and reasons of every pick
        assert m_new == m_ref
        kinds.add(kind)
        # the tie order: equal scores go to the lower item index (when MMR is off)
        if q.lam >= 1.0:
            for (i1, s1, _), (i2, s2, _) in zip(got, got[1:]):
                assert s1 > s2 or (s1 == s2 and i1 < i2)
    assert kinds == set(range(8))


def test_a_scorer_wrapper_sees_the_numpy_path(recommender):  # noqa: F811
    """A scorer that is not the release's Blend (tuning's recorder wraps it) gets every
    ``score_candidates`` call: the kernel path is for the plain Blend only."""
    import dataclasses

    st = recommender._current()
    rel = st.rel
    calls = []

    class Recording:
        def __getattr__(self, name):
            return getattr(st.scorer, name)

        def score_candidates(self, weights, cand, **kw):
            calls.append(cand)
            return st.scorer.score_candidates(weights, cand, **kw)

    wrapped = dataclasses.replace(st, scorer=Recording())
    assert wrapped.arrays is None
    q = recommender._query(st, k=10, user_id=None, recent=[Interaction(item_id=rel.item_ids[3], timestamp=T0, event="view")],
                           brand=None, exclusions=(), filters={}, lam=None, meta={})
    assert recommender._blend(wrapped, q, {}) == recommender._blend(st, q, {})
    assert len(calls) == 1 and calls[0].size > 0


@pytest.mark.parametrize("cap", [0, 1, 3, 7, 50])
def test_capped_history_is_cap_row(cap):
    rng = np.random.default_rng(cap)
    for n in (0, 1, 5, 40):
        ids = rng.permutation(200)[:n].astype(np.int32)
        w = rng.choice([0.5, 1.0, 2.0, 3.0], size=n).astype(np.float32)  # many equal weights: the id breaks ties
        pos = request._capped(ids, w, cap)
        want_ids, want_w = blend.cap_row(ids.astype(np.int64), w.astype(np.float64), cap)
        np.testing.assert_array_equal(ids[pos], want_ids)
        np.testing.assert_array_equal(w[pos].astype(np.float64), want_w)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_customer_kernels_answer_as_numpy(recommender, dtype):  # noqa: F811
    """/customers by candidates (the path above SCAN_USERS users), numba against numpy: the same
    candidates, users and scores, with the user factors stored as float16 (the mapped cache) or
    float32."""
    import dataclasses

    from recs_serving.recommender import _customers_by_candidates, _customers_by_candidates_reference

    rel = recommender.release
    rel = dataclasses.replace(rel, als_user=np.ascontiguousarray(rel.als_user, dtype=dtype))
    rng = np.random.default_rng(5)
    for i in rng.choice(rel.n_items, 60, replace=False).tolist() + [0, rel.n_items - 1]:
        for k in (1, 20):
            got = _customers_by_candidates(rel, i, k)
            want = _customers_by_candidates_reference(rel, i, k)
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("chunk", [1 << 17, 1000, -1])
def test_customer_scan_answers_as_numpy(recommender, monkeypatch, chunk):  # noqa: F811
    """/customers' full scan (up to SCAN_USERS users) through the float16 table, block by block,
    against numpy's cast and product: the same float32 scores, also with a one-row last block."""
    from recs_serving import recommender as mod

    rel = recommender.release
    assert rel.als_user.dtype == np.float16
    monkeypatch.setattr(mod, "SCAN_CHUNK", rel.n_users - 1 if chunk == -1 else chunk)
    for i in (0, 7, rel.n_items // 2, rel.n_items - 1):
        np.testing.assert_array_equal(mod._scan_customers(rel, i), mod._scan_customers_reference(rel, i))


def _cosine(rel, a: str, b: str) -> float:
    y = np.asarray(rel.als_item, np.float64)
    u, v = y[rel.item_index[a]], y[rel.item_index[b]]
    return float(u @ v / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-12))


def test_taste_anchors_kernel_names_the_closest_purchase(recommender):  # noqa: F811
    """Explanations' "because you bought X" (recs_kernels.anchors) against the numpy path: the same
    purchase, or one as close to within float32 rounding (a near-tie the float64 sum breaks
    differently), for customers with short and with the longest histories (the 64-purchase cap)."""
    from recs_serving import explain

    rel = recommender.release
    rng = np.random.default_rng(11)
    heavy = np.argsort(-np.diff(rel.hist_indptr), kind="stable")[:40]
    users = [rel.user_ids[u] for u in np.concatenate([heavy, rng.choice(rel.n_users, 200, replace=False)]).tolist()]
    lists = []
    for n, uid in enumerate(users):
        items = [rel.item_ids[i] for i in rng.choice(rel.n_items, 1 + n % 25, replace=False).tolist()]
        own = rel.history(rel.user_index[uid])[0]
        items[0] = rel.item_ids[int(own[0])]  # an item of their own: never its own anchor
        lists.append(items + (["NO-SUCH-ITEM"] if n % 7 == 0 else []))
    users += ["nobody", None]
    lists += [[rel.item_ids[0]], [rel.item_ids[1]]]
    got = explain.taste_anchors_many(rel, users, lists)
    want = explain.taste_anchors_many_reference(rel, users, lists)
    same = total = 0
    for uid, items, g, w in zip(users, lists, got, want):
        assert g.keys() == w.keys(), uid
        assert g == explain.taste_anchors(rel, uid, items) and w == explain.taste_anchors_reference(rel, uid, items) or uid is None
        for it in g:
            total += 1
            assert g[it] != it
            if g[it] == w[it]:
                same += 1
            else:
                assert abs(_cosine(rel, it, g[it]) - _cosine(rel, it, w[it])) < 1e-5, (uid, it)
    assert total > 2000 and same >= 0.99 * total
    assert got[-2] == {} and got[-1] == {}


def test_customer_reasons_kernel_names_the_closest_item(recommender):  # noqa: F811
    """/customers' "bought X, whose buyers also buy this" (recs_kernels.anchors) against numpy."""
    from recs_serving import explain

    rel = recommender.release
    rng = np.random.default_rng(12)
    same = total = 0
    for i in rng.choice(rel.n_items, 80, replace=False).tolist():
        item = rel.item_ids[i]
        buyers = rel.buyers.indices[rel.buyers.indptr[i]:rel.buyers.indptr[i + 1]][:5].tolist()
        users = [rel.user_ids[u] for u in rng.choice(rel.n_users, 15, replace=False).tolist() + buyers] + ["nobody"]
        got = explain.customer_reasons(rel, item, users)
        want = explain.customer_reasons_reference(rel, item, users)
        assert got.keys() == want.keys() and got["nobody"] == ["likely_buyer"]
        for u in users:
            total += 1
            g, w = got[u][0], want[u][0]
            assert g != f"bought_similar:{item}"
            if g == w:
                same += 1
            else:
                a, b = g.partition(":")[2], w.partition(":")[2]
                assert a and b and abs(_cosine(rel, item, a) - _cosine(rel, item, b)) < 1e-5, (item, u, g, w)
    assert same >= 0.99 * total


@pytest.mark.parametrize("lam", [None, 0.3, 1.0])
def test_known_user_kernel_picks_as_the_batch_path(recommender, lam):  # noqa: F811
    """A known customer's top-N in one kernel call (recs_kernels.known) against ``_topn`` (the
    batch path, numpy and mmr_batch): the same items and scores, to the bit, for every customer,
    with exclusions, brand and category filters and the MMR off and on."""
    st = recommender._current()
    rel = st.rel
    rng = np.random.default_rng(13)
    brands = [k for (s, k) in rel.popularity_lists if s == "brand"]
    cats = [k for (s, k) in rel.popularity_lists if s == "category"]
    checked = 0
    for u in range(rel.n_users):
        kw = dict(k=int(rng.choice([1, 5, 20, 50, 60])), user_id=rel.user_ids[u], recent=[], brand=None, filters={}, lam=lam,
                  exclusions=[rel.item_ids[int(i)] for i in rel.topn_ids[u][:int(rng.integers(0, 3))] if i >= 0])
        if u % 5 == 1 and brands:
            kw["brand"] = brands[u % len(brands)]
        if u % 5 == 2 and cats:
            kw["filters"] = {"category": [cats[u % len(cats)]]}
        q = recommender._query(st, meta={}, **kw)
        got, want = recommender._topn_picks(st, q), recommender._topn_picks_reference(st, q)
        assert got == want, (u, kw)
        checked += bool(got)
    assert checked > rel.n_users // 2


@pytest.mark.parametrize("lam", [None, 0.3, 1.0])
def test_batch_kernel_picks_as_the_batch_path(recommender, lam):  # noqa: F811
    """The batch path's top-N in one kernel call (recs_kernels.known.topn_many) against ``_topn``
    (numpy and mmr_batch's batched branch): the same items, scores and counts, to the bit."""
    st = recommender._current()
    rel = st.rel
    rng = np.random.default_rng(14)
    brands = [k for (s, k) in rel.popularity_lists if s == "brand"]
    users = rng.permutation(rel.n_users)
    for n, b0 in enumerate(range(0, 1200, 60)):
        batch = users[b0:b0 + 1 + n % 60]
        kw = dict(k=int(rng.choice([1, 5, 20, 50, 60])), user_id=None, recent=[], brand=None, filters={}, lam=lam,
                  exclusions=[rel.item_ids[int(i)] for i in rng.choice(rel.n_items, n % 4, replace=False)], use_case="homepage")
        if n % 3 == 1 and brands:
            kw["brand"] = brands[n % len(brands)]
        base = recommender._query(st, meta={}, **kw)
        got, want = recommender._topn_many(st, batch, base), recommender._topn(st, batch, base)
        assert got[2] == want[2], n
        for b, c in enumerate(got[2]):
            np.testing.assert_array_equal(got[0][b, :c], want[0][b, :c])
            np.testing.assert_array_equal(got[1][b, :c], want[1][b, :c])


def test_pick_without_diversity_is_mmr_batch():
    """``_pick``'s shortcut when MMR is off (lambda >= 1): the positions mmr_batch picks, for rows in
    _pick's order (descending, ties by item), with ties, zeros of both signs, NaN and infinities."""
    from recs_kernels.mmr import mmr_batch
    from recs_serving.recommender import _by_relevance

    rng = np.random.default_rng(15)
    for t in range(500):
        m = int(rng.integers(0, 70))
        total = rng.choice([3.0, 1.5, 1.5, 0.0, -0.0, -2.0, np.nan, np.inf, -np.inf], m) if t % 2 else rng.standard_normal(m)
        cand = rng.permutation(1000)[:m]
        row = total[np.lexsort((cand, -total))]
        for k in (1, 5, 20):
            want = mmr_batch(row[None], None, k, 1.0)[0]
            np.testing.assert_array_equal(_by_relevance(row, k), want[want >= 0])
            assert (want[:(want >= 0).sum()] >= 0).all()  # left-aligned
