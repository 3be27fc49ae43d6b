"""In-process Recommender: hot swap under load, release reading, SQL views, invariants."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from release_factory import build_release
from serving_fixtures import client, fresh_home, recommender, release_home  # noqa: F401

from recs_serving import RecommendRequest, Recommender
from recs_serving.release import current_version

T0 = 1_323_000_000_000


def test_loader_round_trip(recommender, release_home):
    import polars as pl

    from recs_serving.release import open_release

    rel = recommender.release
    rf = open_release(release_home)
    rf.verify()
    assert rel.version == current_version(release_home) == rf.version
    items = pl.from_arrow(rf.table("items")).sort("idx")
    assert rel.n_items == items.height
    assert rel.n_users == rf.table("users").num_rows
    assert rel.item_ids == items["item_id"].to_list()
    np.testing.assert_array_equal(rel.als_item, rf.array("als_item_factors"))
    topn = pl.from_arrow(rf.table("topn"))
    first = topn.filter(pl.col("user_id") == rel.user_ids[0]).sort("rank")["item_id"].to_list()
    assert [rel.item_ids[i] for i in rel.topn_ids[0] if i >= 0] == first


def test_scores_match_dense_blend(recommender):
    """Request-time scoring of a loaded release equals the dense blend over the whole catalogue."""
    from recs_serving.scoring import SOURCES, request_history

    st = recommender._current()
    rel = st.rel
    u = 3
    seeds = np.array([rel.item_index[i] for i in rel.item_ids[:3]], np.int64)
    h_ids, h_w = request_history(rel, st.contract, u, seeds, np.array([1.0, 2.0, 0.5]))
    weights = {s: 1.0 for s in SOURCES}
    als_u = np.asarray(rel.als_user[u], np.float32)
    bpr_u = np.asarray(rel.bpr_user[u], np.float32)
    cand = np.arange(rel.n_items)
    total, C, _ = st.scorer.score_candidates(weights, cand, als_user=als_u, bpr_user=bpr_u, hist_ids=h_ids, hist_w=h_w)
    import scipy.sparse as sp

    H = sp.csr_matrix((h_w, (np.zeros(h_ids.size, np.int64), h_ids)), shape=(1, rel.n_items))
    dense = st.scorer.score(weights, als_users=als_u[None], bpr_users=bpr_u[None], history=H)[0]
    np.testing.assert_allclose(total, dense, rtol=1e-3, atol=1e-3)
    z = rel.als_item @ als_u
    np.testing.assert_allclose(C[:, 0], (z - z.mean()) / z.std(), rtol=1e-3, atol=1e-3)
    cov = np.asarray(H @ rel.covis.csr().toarray()).ravel()
    np.testing.assert_allclose(C[:, SOURCES.index("covis")], (cov - cov.mean()) / cov.std(), rtol=1e-3, atol=1e-3)


def test_history_purchases_never_returned(recommender):
    rel = recommender.release
    for u in range(0, rel.n_users, 97):
        items, _, bought = rel.history(u)
        res = recommender.recommend(RecommendRequest(user_id=rel.user_ids[u], k=30, recent=[
            {"item_id": rel.item_ids[(u * 7) % rel.n_items], "timestamp": T0, "event": "view"}]))
        assert not {rel.item_ids[i] for i in items[bought]} & {it.item_id for it in res.items}


def test_in_process_api_matches_http(recommender, client):
    rel = recommender.release
    req = {"user_id": rel.user_ids[10], "k": 7, "recent": [{"item_id": rel.item_ids[5], "timestamp": T0, "event": "add"}]}
    a = recommender.recommend(RecommendRequest(**req)).model_dump()
    b = client.post("/v1/recommend", json=req).json()
    # HTTP adds readable fields (title, price, ..., explanation) to the same items
    assert a == {**b, "items": [{k: it[k] for k in ("item_id", "score", "rank", "reasons")} for it in b["items"]]}


def test_hot_swap_under_concurrent_requests(fresh_home):
    rec = Recommender(fresh_home, watch=True, poll_interval=0.05)
    from litestar.testing import TestClient

    from recs_serving.app import create_app

    old = rec.version
    errors: list = []
    versions: list[list[str]] = [[] for _ in range(4)]
    stop = threading.Event()
    rel0 = rec.release
    users = rel0.user_ids[:50]

    def hammer(slot: int, use_http: bool, c=None):
        n = 0
        while not stop.is_set() or n < 20:
            u = users[n % len(users)]
            try:
                if use_http:
                    r = c.post("/v1/recommend", json={"user_id": u, "k": 10, "recent": [
                        {"item_id": rel0.item_ids[n % 100], "timestamp": T0, "event": "view"}]})
                    if r.status_code != 200:
                        errors.append(r.text)
                        continue
                    body = r.json()
                    v, items = body["artifact_version"], body["items"]
                else:
                    res = rec.recommend(user_id=u, k=10)
                    v, items = res.artifact_version, res.items
                if len(items) != 10:
                    errors.append(f"short answer {len(items)}")
                versions[slot].append(v)
            except Exception as exc:  # noqa: BLE001
                errors.append(repr(exc))
            n += 1

    with TestClient(create_app(rec)) as c:
        threads = [threading.Thread(target=hammer, args=(s, s >= 2, c)) for s in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        new_dir = build_release(fresh_home, run_id="second")
        new = new_dir.name
        deadline = time.time() + 10
        while rec.version != new and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(30)
    rec.close()
    assert not errors, errors[:5]
    assert rec.version == new != old
    for vs in versions:
        assert vs and vs[0] == old and vs[-1] == new
        # versions only ever move forward: old ... old new ... new
        switch = vs.index(new)
        assert set(vs[:switch]) == {old} and set(vs[switch:]) == {new}


def test_watcher_keeps_old_release_when_new_one_is_broken(fresh_home):
    import json

    from recs_serving import release as rf

    rec = Recommender(fresh_home, watch=True, poll_interval=0.05)
    old = rec.version
    bad = rf.releases_dir(fresh_home) / "29990101T000000000000Z-broken"
    bad.mkdir()
    (bad / rf.MANIFEST).write_text(json.dumps({"schema_version": rf.SCHEMA_VERSION, "version": bad.name}))
    rf.set_current(fresh_home, bad.name)
    time.sleep(0.4)
    assert rec.version == old and rec.reload_errors >= 1
    assert rec.recommend(k=3).artifact_version == old
    rec.close()


def test_not_ready_without_release(tmp_path):
    from litestar.testing import TestClient

    from recs_serving.app import create_app

    rec = Recommender(tmp_path, watch=False)
    assert not rec.ready
    with TestClient(create_app(rec)) as c:
        assert c.get("/readyz").status_code == 503
        assert c.post("/v1/recommend", json={"k": 3}).status_code == 503
        assert c.get("/healthz").status_code == 200


def test_sql_views_over_current_release(release_home, recommender):
    from recs_serving.sql import connect

    con = connect(release_home)
    (v,), = con.execute("SELECT version FROM recs.release").fetchall()
    assert v == recommender.version
    (n,), = con.execute("SELECT count(*) FROM recs.catalog").fetchall()
    assert n == recommender.release.n_items
    rows = con.execute("SELECT antecedents, consequents, lift FROM recs.association_rules WHERE lift > ? ORDER BY lift DESC LIMIT 3", [3]).fetchall()
    assert rows and all(r[2] > 3 for r in rows)
    con.close()


def test_layering_no_dagster():
    import subprocess
    import sys

    code = ("import sys, recs_serving.app, recs_serving.recommender, recs_serving.sql; "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('dagster','recs_assets')]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_mmr_single_row_path_matches_batched():
    from recs_kernels.mmr import mmr_batch

    rng = np.random.default_rng(0)
    for _ in range(100):
        M, k = int(rng.integers(1, 60)), int(rng.integers(1, 25))
        rel = rng.random((1, M)).astype(np.float32)
        rel[0, rng.random(M) < 0.2] = -np.inf
        V = rng.standard_normal((1, M, 8)).astype(np.float32)
        V /= np.linalg.norm(V, axis=2, keepdims=True)
        lam = float(rng.random())
        one = mmr_batch(rel, V, k, lam)
        two = mmr_batch(np.repeat(rel, 2, 0), np.repeat(V, 2, 0), k, lam)
        assert (one == two[:1]).all() and (one == two[1:]).all()
        picked = one[0][one[0] >= 0]
        assert len(set(picked.tolist())) == len(picked) and np.isfinite(rel[0, picked]).all()


def test_compact_user_ids_answer_like_the_dict(release_home, recommender, monkeypatch):
    from recs_serving import loader
    from recs_serving.loader import CompactIndex

    monkeypatch.setattr(loader, "COMPACT_IDS_ABOVE", 0)
    compact = Recommender(release_home, watch=False)
    rel, crel = recommender.release, compact.release
    assert isinstance(crel.user_index, CompactIndex)
    assert len(crel.user_ids) == rel.n_users and crel.user_ids[:5] == rel.user_ids[:5]
    for u in (0, 1, rel.n_users // 2, rel.n_users - 1):
        assert crel.user_index.get(rel.user_ids[u]) == u and crel.user_ids[u] == rel.user_ids[u]
    assert crel.user_index.get("no-such-user", -1) == -1 and crel.user_index.get("", -1) == -1
    assert crel.user_index.get("x" * 300, -1) == -1
    users = list(rel.user_ids[:40]) + ["nobody"]
    assert compact.recommend_batch(users, 5, as_dict=True)["results"] == recommender.recommend_batch(users, 5, as_dict=True)["results"]
    assert compact.top_customers(rel.item_ids[0], 5).customers == recommender.top_customers(rel.item_ids[0], 5).customers


def _mmr_reference(relevance, vectors, k, lam):
    """The plain-numpy greedy MMR the compiled loops in ``recs_kernels.mmr`` must reproduce."""
    B, M = relevance.shape
    k = min(k, M)
    out = np.full((B, k), -1, np.int64)
    avail = np.isfinite(relevance)
    relevance = relevance.astype(np.float32, copy=False)
    lo = np.where(avail, relevance, np.inf).min(axis=1, keepdims=True)
    hi = np.where(avail, relevance, -np.inf).max(axis=1, keepdims=True)
    lo = np.where(np.isfinite(lo), lo, 0.0)
    span = np.where(hi > lo, hi - lo, 1.0)
    rel = np.where(avail, (np.where(avail, relevance, 0.0) - lo) / span, 0.0).astype(np.float32)
    sims = np.matmul(vectors, vectors.transpose(0, 2, 1))
    maxsim = np.zeros((B, M), np.float32)
    rows = np.arange(B)
    for step in range(k):
        obj = lam * rel - (1.0 - lam) * maxsim
        obj[~avail] = -np.inf
        j = np.argmax(obj, axis=1)
        ok = avail[rows, j]
        out[:, step] = np.where(ok, j, -1)
        if not ok.any():
            break
        avail[rows, j] = False
        maxsim = np.maximum(maxsim, sims[rows, j, :])
    return out


def test_mmr_compiled_loops_match_numpy_reference():
    from recs_kernels.mmr import mmr_batch

    rng = np.random.default_rng(3)
    for trial in range(60):
        B, M, d = int(rng.integers(1, 6)), int(rng.integers(1, 40)), 8
        rel = np.round(rng.random((B, M)), 1).astype(np.float32)  # many ties
        rel[rng.random((B, M)) < 0.3] = -np.inf
        v = rng.standard_normal((B, M, d)).astype(np.float32)
        if trial % 3 == 0:
            v[:, 1::2] = v[:, ::2][:, : v[:, 1::2].shape[1]]  # duplicate vectors: equal similarities
        v /= np.linalg.norm(v, axis=2, keepdims=True)
        for lam in (0.0, 0.3, 0.8, 0.99):
            k = int(rng.integers(1, M + 3))
            want = _mmr_reference(rel, v, k, lam)
            got = mmr_batch(rel.copy(), v, k, lam)
            assert np.array_equal(got, want), (trial, lam)
            if B == 1:  # the single-row path, row by row
                one = mmr_batch(rel[:1].copy(), v[:1], k, lam)
                n = int(np.isfinite(rel[0]).sum())
                assert np.array_equal(one[0, :n], want[0, :n])


def test_batch_wire_form_encodes_like_the_dict_form(recommender):
    import msgspec

    rel = recommender.release
    users = list(rel.user_ids[:60]) + ["nobody", rel.user_ids[3]]
    for kw in ({}, {"k": 3}, {"brand": rel.brands[0] if hasattr(rel, "brands") else None}, {"exclusions": list(rel.item_ids[:50])}):
        kw = {k: v for k, v in kw.items() if v is not None}
        a = recommender.recommend_batch(users, as_dict=True, **kw)
        w = recommender.recommend_batch(users, wire=True, **kw)
        assert msgspec.json.encode(w) == msgspec.json.encode(a)
        assert msgspec.json.decode(msgspec.json.encode(w)) == a


def test_multi_antecedent_rules_match_by_their_seeds_index():
    """The per-item index of multi-antecedent rules finds exactly the rules whose whole
    antecedent is among the seeds (what a scan over every rule found)."""
    from recs_serving.loader import MultiRules

    rng = np.random.default_rng(0)
    n = 50
    rules = [(np.unique(rng.choice(n, rng.integers(2, 4), replace=False)), rng.choice(n, rng.integers(1, 3)).astype(np.int32))
             for _ in range(300)]
    mr = MultiRules.build(n, rules)
    assert len(mr) == 300 and MultiRules.empty(5).consequents(np.array([1, 2])).size == 0
    matched = 0
    for _ in range(200):
        seeds = np.unique(rng.choice(n, rng.integers(2, 8), replace=False))
        ref = [c for a, c in rules if set(a.tolist()) <= set(seeds.tolist())]
        matched += len(ref)
        ref = np.sort(np.concatenate(ref)) if ref else np.zeros(0, np.int32)
        np.testing.assert_array_equal(np.sort(mr.consequents(seeds)), ref)
    assert matched > 20


def test_factor_files_read_block_by_block(tmp_path):
    """The loader reads factor files in blocks (bounded memory), casting and zeroing
    non-finite values exactly as a whole read would; Fortran-ordered files too."""
    from recs_serving.loader import _read_blocks

    a = np.random.default_rng(0).standard_normal((1000, 7)).astype(np.float32)
    a[3, 2], a[999, 0] = np.nan, np.inf
    for arr in (a, np.asfortranarray(a)):
        np.save(tmp_path / "f.npy", arr)
        for dtype in (np.float16, np.float32):
            got = _read_blocks(tmp_path / "f.npy", a.shape, a.dtype, dtype, block_bytes=100)
            np.testing.assert_array_equal(got, np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0).astype(dtype))
            assert got.dtype == dtype


def test_multi_antecedent_rules_from_flat_lists_are_the_per_rule_build():
    """The loader's array build keeps the rules the per-rule loop kept (two or more antecedent
    items, all known, a known consequent; distinct antecedents; known consequents in order)."""
    from recs_serving.loader import MultiRules

    rng = np.random.default_rng(1)
    n, n_rules = 40, 400
    a_len, c_len = rng.integers(1, 5, n_rules), rng.integers(1, 4, n_rules)
    a_flat = rng.integers(-1, n, a_len.sum())  # -1: an item the catalogue no longer has; repeats happen
    c_flat = rng.integers(-1, n, c_len.sum())
    a_ptr, c_ptr = np.r_[0, np.cumsum(a_len)], np.r_[0, np.cumsum(c_len)]
    for limit in (100_000, 50):
        rules = []
        for r in np.flatnonzero(a_len > 1)[:limit]:
            a, c = a_flat[a_ptr[r]:a_ptr[r + 1]], c_flat[c_ptr[r]:c_ptr[r + 1]]
            if (a >= 0).all() and (c >= 0).any():
                rules.append((np.unique(a), c[c >= 0].astype(np.int32)))
        want, got = MultiRules.build(n, rules), MultiRules.from_lists(n, a_len, a_flat, c_len, c_flat, limit=limit)
        assert 0 < len(got) < n_rules and len(got) == len(rules)
        for part in MultiRules.PARTS:
            np.testing.assert_array_equal(getattr(got, part), getattr(want, part), err_msg=part)
            assert getattr(got, part).dtype == getattr(want, part).dtype, part
