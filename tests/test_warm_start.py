"""Warm-started fits (the evaluation's test-period and tuning re-fits) against cold fits, on
small synthetic data with the real kernels."""
import numpy as np
import polars as pl
import pytest

from recs_assets import evaluation as ev
from recs_assets import modeling, synthetic
from recs_kernels import als, bpr


@pytest.fixture(scope="module")
def periods():
    d = synthetic.generate(400, 150, 12_000, seed=5, shape="sessions")
    e = d.events.with_columns(pl.from_epoch("ts", time_unit="ms").alias("ts"))
    for col, dtype in (("quantity", pl.Int32), ("price", pl.Float64), ("basket_id", pl.String)):
        if col not in e.columns:
            e = e.with_columns(pl.lit(None, dtype).alias(col))
    items = d.catalog.sort("item_id")["item_id"].to_numpy().astype(object)
    cut = ev.resolve_cut(e, None)
    early = ev.validation_start(e, cut, 30)
    p = modeling.MatrixParams()
    m1 = modeling.build_matrix(e.filter(pl.col("ts") < early), items, p, as_of=early)
    m2 = modeling.build_matrix(e.filter(pl.col("ts") < cut), items, p, as_of=cut)
    assert len(m2.user_ids) > len(m1.user_ids)  # the later period has new users
    return m1, m2, e.filter(pl.col("ts") >= cut)


def _top10(X, Y):
    return np.argsort(-(X @ Y.T), axis=1, kind="stable")[:, :10]


def _overlap(a, b):
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))


def test_carry_rows_maps_users_by_id_and_new_users_start_at_zero():
    F = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = ev._carry_rows(F, np.array(["a", "c", "d"], dtype=object), np.array(["a", "b", "d", "e"], dtype=object))
    assert out.tolist() == [[0, 1], [0, 0], [4, 5], [0, 0]]


def test_warm_als_reaches_the_cold_fit(periods):
    m1, m2, _ = periods
    p = modeling.ALSParams(factors=16, iterations=15)
    cold = modeling.fit_als(m2, p)
    start = modeling.fit_als(m1, p)
    frozen = [a.copy() for a in start]
    (Xw, Yw), note = ev.fit_als_warm(m2, p, start, m1.user_ids)
    assert "3 of 15" in note and all(np.array_equal(a, b) for a, b in zip(start, frozen))  # the start is not modified
    loss = lambda X, Y: als.loss(m2.weights, X, Y, regularization=p.regularization, alpha=p.alpha)  # noqa: E731
    few_cold = als.fit(m2.weights, factors=16, iterations=3, regularization=p.regularization, alpha=p.alpha)
    # 3 warm iterations land within 2% of 15 cold ones, and far closer than 3 cold ones do
    assert loss(Xw, Yw) <= loss(*cold) * 1.02
    assert loss(Xw, Yw) < loss(*few_cold)
    other_seed = modeling.fit_als(m2, p.model_copy(update={"seed": 1}))
    # the same answers as the cold fit, about as closely as a cold fit with another seed
    assert _overlap(_top10(Xw, Yw), _top10(*cold)) >= _overlap(_top10(*other_seed), _top10(*cold)) - 0.1


def _held_out_recall(m, held: pl.DataFrame, X, Y) -> float:
    """recall@10 of the period after the cut for the users the matrix knows, seen items excluded."""
    row = {u: i for i, u in enumerate(m.user_ids)}
    col = {x: j for j, x in enumerate(m.item_ids)}
    truth: dict = {}
    for u, it in held.select("user_id", "item_id").iter_rows():
        if u in row and it in col:
            truth.setdefault(row[u], set()).add(col[it])
    S = X @ Y.T
    out = []
    for u, t in truth.items():
        s = S[u].copy()
        s[m.binary[u].indices] = -np.inf
        out.append(len(set(np.argsort(-s, kind="stable")[:10].tolist()) & t) / min(10, len(t)))
    return float(np.mean(out))


def test_warm_bpr_predicts_the_next_period_like_the_cold_fit(periods):
    # BPR's cold fit stops on its loss plateau, so two seeds agree mostly on the item bias;
    # what matters is how well the warm fit predicts what the users did next.
    m1, m2, held = periods
    p = modeling.BPRParams(factors=16, iterations=100)
    cold = modeling.fit_bpr(m2, p)
    (Xw, Yw), note = ev.fit_bpr_warm(m2, p, modeling.fit_bpr(m1, p), m1.user_ids)
    assert "20 of 100" in note
    assert Xw.shape == cold[0].shape and (Xw[:, -1] == 1.0).all()  # the bias column stays the constant 1
    other_seed = modeling.fit_bpr(m2, p.model_copy(update={"seed": 1}))
    floor = min(_held_out_recall(m2, held, *cold), _held_out_recall(m2, held, *other_seed))
    assert _held_out_recall(m2, held, Xw, Yw) >= 0.9 * floor > 0


def test_kernels_start_from_init_and_refuse_a_wrong_shape(periods):
    _, m2, _ = periods
    n_u, n_i = m2.weights.shape
    X0, Y0 = np.ones((n_u, 4), np.float32), np.ones((n_i, 4), np.float32)
    X, Y = als.fit(m2.weights, factors=4, iterations=0, init=(X0, Y0))
    empty_users = np.diff(m2.weights.indptr) == 0
    assert (X[~empty_users] == 1).all() and (X0 == 1).all()
    with pytest.raises(ValueError, match="init"):
        als.fit(m2.weights, factors=5, iterations=1, init=(X0, Y0))
    Xb, Yb = bpr.fit(m2.binary, factors=3, iterations=0, init=(X0, Y0))
    assert (Xb[:, -1] == 1).all() and (Yb[:, :3][np.bincount(m2.binary.indices, minlength=n_i) > 0] == 1).all()
    with pytest.raises(ValueError, match="init"):
        bpr.fit(m2.binary, factors=4, iterations=1, init=(X0, Y0))


def test_refit_warm_starts_als_and_says_so(periods):
    m1, _, _ = periods
    cfg = ev.Configs()
    cfg.als = cfg.als.model_copy(update={"factors": 8, "iterations": 10})
    pm = ev.PeriodModels(events=pl.DataFrame(), item_ids=m1.item_ids, as_of=m1.as_of, cfg=cfg, matrix=m1,
                         als=modeling.fit_als(m1, cfg.als), bpr=(None, None), covis=None, similarity=None,
                         popularity=(None, None), rules=None)
    cfg2 = ev.Configs(**{**cfg.__dict__, "als": cfg.als.model_copy(update={"regularization": 10.0})})
    out = ev.refit(pm, cfg2)
    assert out.notes["als"] == "warm-started, 2 of 10 iterations" and out.cfg.als.regularization == 10.0
    assert not np.array_equal(out.als[1], pm.als[1]) and pm.notes == {}


def test_replay_only_release_answers_like_the_full_release():
    """The evaluation publishes only what its requests read (sampled users, reachable neighbour
    rows): every replayed answer must be the full release's, with and without MMR."""
    from test_evaluation import _frames, _small_configs

    events, catalog, emb = _frames(users=200, items=100, events=6_000, seed=7)
    items = catalog["item_id"].to_numpy().astype(object)
    cut = ev.resolve_cut(events, None)
    train, held = events.filter(pl.col("ts") < cut), events.filter(pl.col("ts") >= cut)
    cases = ev.build_cases(train, held, items, max_users=25, recent_events=5, seed=0)
    assert {"homepage", "session", "item_page", "cart", "cold_start"} <= set(cases.queries)
    cfg = _small_configs()
    pm = ev.fit_period(train, items, cfg, cut)
    weights = {"als": 1.0, "bpr": 0.3, "item_sim": 0.1, "covis": 0.05, "rules": 0.05, "content": 0.05, "trending": 0.5}
    with ev.ServedReplay(pm, catalog, emb, cases, ev.topn_config(cfg, weights)) as small, \
            ev.ServedReplay(pm, catalog, emb, cases, ev.topn_config(cfg, weights), replay_only=False) as full:
        assert small.base.release.n_users == len(set(cases.topn_users)) < full.base.release.n_users
        for lam in (1.0, 0.8):
            small.set(weights, lam)
            full.set(weights, lam)
            for uc in cases.queries:
                assert small.answers(uc) == full.answers(uc), (uc, lam)


def test_fit_sample_bounds_the_users_and_keeps_every_replayed_user():
    ev_ = pl.DataFrame({"user_id": [f"u{i}" for i in range(100)] + [None] * 400,
                        "basket_id": [f"b{i}" for i in range(500)]})
    assert ev.fit_sample(ev_, ["u1"], 0, 0) == (None, 1.0) and ev.fit_sample(ev_, ["u1"], 100, 0) == (None, 1.0)
    must = ["u3", "u97", "u50"]
    users, share = ev.fit_sample(ev_, must, 30, seed=1)
    assert users.len() == 30 and set(must) <= set(users.to_list()) and share == pytest.approx(0.3)
    assert users.to_list() == ev.fit_sample(ev_, must, 30, seed=1)[0].to_list()  # seeded
    kept = ev.in_sample(ev_, users, share, seed=1)
    known = kept.filter(pl.col("user_id").is_not_null())
    assert known.height == 30 and 60 < kept.height - 30 < 180  # guests' baskets at about the same share


def test_protocol_with_sampled_users_reports_the_approximation():
    from test_evaluation import _frames, _small_configs

    events, catalog, emb = _frames(users=250, items=100, events=6_000, seed=11)
    s = ev.Settings(max_users=20, recent_events=5, budget_seconds=0.5, hyper_budget_seconds=0.0, fit_users=120)
    out = ev.run(events, catalog, emb, _small_configs(), s)
    notes = out.info["approximations"]
    assert "120 users" in notes["fit_users"] and notes["test bpr"].startswith("warm-started")
    test = out.table.filter(pl.col("split") == "test")
    assert "homepage" in set(test["use_case"]) and test["recall@10"].is_between(0, 1).all()
    assert set(out.info["fit_seconds"]) == {"validation", "test"} and out.info["phase_seconds"]["fit_test"] >= 0
