"""The evaluation of what is served, on small synthetic data (real kernels, a real release,
the real in-process Recommender)."""
from datetime import datetime

import numpy as np
import polars as pl
import pytest

from recs_assets import evaluation as ev
from recs_assets import synthetic, tuning
from recs_kernels.sources import SOURCES


def _frames(shape: str = "sessions", users: int = 250, items: int = 120, events: int = 8_000, seed: int = 3):
    d = synthetic.generate(users, items, events, seed=seed, shape=shape)
    e = d.events.with_columns(pl.from_epoch("ts", time_unit="ms").alias("ts"))
    for col, dtype in (("quantity", pl.Int32), ("price", pl.Float64), ("basket_id", pl.String)):
        if col not in e.columns:
            e = e.with_columns(pl.lit(None, dtype).alias(col))
    e = e.select("user_id", "item_id", "ts", "event", "quantity", "price", "basket_id")
    catalog = d.catalog.sort("item_id")
    emb = np.random.default_rng(0).normal(size=(catalog.height, 16)).astype(np.float32)
    return e, catalog, emb


def _small_configs() -> ev.Configs:
    cfg = ev.Configs()
    cfg.als = cfg.als.model_copy(update={"factors": 8, "iterations": 4})
    cfg.bpr = cfg.bpr.model_copy(update={"factors": 8, "iterations": 20})
    cfg.itemsets = cfg.itemsets.model_copy(update={"min_support": 0.05, "max_len": 2})  # dense session baskets stay small
    return cfg


@pytest.fixture(scope="module")
def sessions_data():
    return _frames()


def test_resolve_cut_follows_the_data(sessions_data):
    events, _, _ = sessions_data
    lo, hi = events["ts"].min(), events["ts"].max()
    # a date of another data set (Online Retail's) is not assumed: 90% of the events come before the cut
    cut = ev.resolve_cut(events, "2011-11-01")
    assert lo < cut <= hi
    assert abs(events.filter(pl.col("ts") < cut).height / events.height - 0.9) < 0.02
    inside = lo + (hi - lo) / 2
    assert ev.resolve_cut(events, inside.isoformat()) == inside
    vstart = ev.validation_start(events, cut, 10_000)  # longer than the data: half the time before the cut
    assert lo < vstart < cut


def test_use_cases_without_data_are_skipped_with_a_reason():
    events, catalog, _ = _frames("ratings", users=200, items=100, events=4_000)
    items = catalog["item_id"].to_numpy().astype(object)
    cut = ev.resolve_cut(events, None)
    train, held = events.filter(pl.col("ts") < cut), events.filter(pl.col("ts") >= cut)
    cases = ev.build_cases(train, held, items, max_users=50, recent_events=5, seed=0)
    assert "no basket ids" in cases.skipped["cart"]
    assert "homepage" in cases.queries and len(cases.queries["homepage"]) <= 50
    # a hold-out of users never seen before: no homepage requests, cold start only
    newcomers = held.with_columns((pl.lit("new-") + pl.col("user_id")).alias("user_id"))
    cases = ev.build_cases(train, newcomers, items, max_users=50, recent_events=5, seed=0)
    assert "homepage" in cases.skipped and "cold_start" in cases.queries


def test_recorded_replay_is_the_served_answer(sessions_data):
    """Tuning scores weight vectors from one recorded replay: with MMR off it must give exactly
    what the Recommender answers with those weights."""
    events, catalog, emb = sessions_data
    items = catalog["item_id"].to_numpy().astype(object)
    cut = ev.resolve_cut(events, None)
    train, held = events.filter(pl.col("ts") < cut), events.filter(pl.col("ts") >= cut)
    cases = ev.build_cases(train, held, items, max_users=40, recent_events=5, seed=0)
    assert {"homepage", "session", "item_page", "cart", "cold_start"} <= set(cases.queries)
    cfg = _small_configs()
    pm = ev.fit_period(train, items, cfg, cut)
    with ev.ServedReplay(pm, catalog, emb, cases, ev.topn_config(cfg)) as rp:
        rec = tuning.record(rp, list(cases.queries))
        for weights in ({"als": 1.0, "item_sim": 0.3, "trending": 0.5}, {"covis": 1.0, "rules": 2.0, "popularity": 0.1}):
            rp.set(weights, 1.0)
            for uc in cases.queries:
                served = rp.answers(uc)
                recorded = rec.answers(weights, uc, rp.base.release.item_ids)
                truth = [t for _, t in cases.queries[uc]]
                assert [a[:10] for a in served] == recorded, (uc, weights)
                assert rec.recall(weights, uc) == pytest.approx(ev.metrics(served, truth, len(items))["recall@10"])


@pytest.mark.parametrize("shape", ["sessions", "ratings"])
def test_protocol_tunes_on_validation_and_reports_the_test_split(shape, sessions_data):
    events, catalog, emb = sessions_data if shape == "sessions" else _frames("ratings", users=300, items=120, events=8_000)
    s = ev.Settings(cut=None, valid_days=30, max_users=40, recent_events=5, budget_seconds=1.0, mmr_lambdas=(1.0, 0.8),
                    hyper_budget_seconds=0.01 if shape == "sessions" else 0.0)
    out = ev.run(events, catalog, emb, _small_configs(), s)
    if shape == "sessions":  # one trial (the configured values) within a tiny budget, and what is served says so
        h = out.info["hyperparameters"]
        assert len(h["trials"]) >= 1 and h["chosen"] == out.served["hyperparameters"] == h["trials"][0][0]
    else:
        assert "hyperparameters" not in out.info
    test = out.table.filter(pl.col("split") == "test")
    assert set(test["model"].unique()) == {*SOURCES, "served"}
    assert {"homepage", "cold_start"} <= set(test["use_case"].unique())
    if shape == "ratings":
        assert "cart" in out.info["test_skipped"] and "cart" not in set(test["use_case"])
    assert (test["users"] <= 40).all() and test["recall@10"].is_between(0, 1).all()
    # each use case with validation requests: its own tuned blend, or its best single source
    # when the blend does not reach it there; the others (no requests): the configured blend
    blends = out.served["blends"]
    assert set(blends) == set(ev.USE_CASES) and blends["homepage"]["weights"] == out.served["weights"]
    for uc, b in blends.items():
        assert set(b["weights"]) == set(SOURCES) and max(b["weights"].values()) == 1.0
        if uc in out.info["validation_cases"]:
            assert b["chosen"] == "tuned" or b["chosen"].startswith("best_single:"), (uc, b)
            g = out.gate["use_cases"][uc]
            assert g["served"] >= g["best_single_value"] - 1e-9 and g["passed"]
        else:
            assert b["chosen"] == "configured"
    # the use cases do not all end up with one weight vector (each has its own objective)
    tuned = [tuple(b["weights"].values()) for uc, b in blends.items() if uc in out.info["validation_cases"]]
    assert len(set(tuned)) > 1
    assert out.gate["passed"]  # a weak model costs its weight, never the release
    assert len(out.curve) > len(SOURCES)  # every single source, then the search
    assert datetime.fromisoformat(out.info["validation_start"]) < datetime.fromisoformat(out.info["cut"])


def test_tuned_values_reach_the_top_n_config(tmp_path):
    from recs_assets.outputs import TopNConfig
    from recs_assets.resources import ArtifactStore

    store = ArtifactStore(root=str(tmp_path))
    cfg = TopNConfig()
    assert tuning.apply_tuned(cfg, store) == cfg  # no evaluation yet
    weights = {s: 0.0 for s in SOURCES} | {"als": 1.0, "covis": 0.01}
    store.save("tuned_blend", meta={"weights": weights, "mmr_lambda": 1.0, "source": "tuned", "tuned": True})
    got = tuning.apply_tuned(cfg, store)
    assert got.blend.weights() == weights and got.request.mmr_lambda == 1.0 and got.n == cfg.n
    store.save("tuned_blend", meta={"weights": weights, "mmr_lambda": 1.0, "source": "configured", "tuned": False})
    assert tuning.apply_tuned(cfg, store) == cfg


def test_hyperparameter_search_keeps_a_step_that_helps_and_the_fit_assets_apply_it(tmp_path):
    from recs_assets import modeling
    from recs_assets.resources import ArtifactStore

    start = {"recent_weight": 1.0, "als_regularization": 3.0, "als_alpha": 3.0, "decay_days": 90.0}
    # a made-up validation objective peaking at regularization 1, decay 270 (recent_weight indifferent)
    value = lambda h: -abs(h["als_regularization"] - 1.0) - abs(h["decay_days"] - 270.0) / 100  # noqa: E731
    found = tuning.search_hyperparameters(value, start, budget_seconds=60)
    assert found["chosen"] == {**start, "als_regularization": 1.0, "decay_days": 270.0}
    assert found["trials"][0][0] == start and len(found["trials"]) >= 5
    assert tuning.search_hyperparameters(value, start, budget_seconds=0)["chosen"] == start  # no budget: one trial

    store = ArtifactStore(root=str(tmp_path))
    als, matrix = modeling.ALSParams(), modeling.MatrixParams()
    assert tuning.apply_tuned_fit(als, store) == als  # no evaluation yet
    store.save("tuned_blend", meta={"tuned": True, "hyperparameters": found["chosen"]})
    assert tuning.apply_tuned_fit(als, store).regularization == 1.0 and tuning.apply_tuned_fit(als, store).factors == als.factors
    assert tuning.apply_tuned_fit(matrix, store).decay_days == 270.0


def _synthetic_record(n_q: int = 60, seed: int = 0, tied: bool = True) -> tuning.Recorded:
    """A made-up record: per request 5..40 candidates, per-source contributions (rounded, so
    totals tie), 1..3 truth items among the candidates."""
    rng = np.random.default_rng(seed)
    rec, uc = tuning.Recorded(), "homepage"
    C, cand, seg, tpos, tptr, denom = [], [], [0], [], [0], []
    for _ in range(n_q):
        n = int(rng.integers(5, 41))
        c = rng.normal(size=(n, len(SOURCES))).astype(np.float32)
        C.append(np.round(c, 1) if tied else c)
        cand.append(rng.permutation(500)[:n])
        tpos.extend(seg[-1] + rng.choice(n, int(rng.integers(1, 4)), replace=False))
        tptr.append(len(tpos))
        denom.append(float(min(10, tptr[-1] - tptr[-2] + int(rng.integers(0, 2)))))
        seg.append(seg[-1] + n)
    rec.contrib[uc] = np.ascontiguousarray(np.concatenate(C))
    rec.cand[uc], rec.seg[uc] = np.concatenate(cand).astype(np.int64), np.asarray(seg, np.int64)
    rec.tpos[uc], rec.tptr[uc], rec.denom[uc] = np.asarray(tpos, np.int64), np.asarray(tptr, np.int64), np.asarray(denom)
    return rec


def test_fused_recall_kernel_ranks_like_the_served_order():
    # one pass keeping the k best must count the hits the rank count does, ties to the lower item index included
    rec, uc = _synthetic_record(), "homepage"
    rng = np.random.default_rng(1)
    for trial in range(20):
        w = (rng.random(len(SOURCES)) * (rng.random(len(SOURCES)) < 0.6)).astype(np.float32)
        if trial == 0:
            w[:] = 0  # every total ties: the item index decides alone
        want = tuning._recalls(rec.contrib[uc] @ w, rec.cand[uc], rec.seg[uc], rec.tpos[uc], rec.tptr[uc], rec.denom[uc], 10)
        got = rec.recalls(dict(zip(SOURCES, w.tolist())), uc)
        np.testing.assert_array_equal(got, want)
        assert got.max() > 0


def test_a_converged_search_stops_early_and_returns_its_budget():
    rec, uc = _synthetic_record(tied=False), "homepage"
    # only the first source ranks the truth first: the search reaches recall 1 and then has nothing to gain
    rec.contrib[uc][:, 0] = 0.0
    rec.contrib[uc][rec.tpos[uc], 0] = 5.0
    res = tuning.search(rec, {s: 1.0 for s in SOURCES}, {}, budget_seconds=30.0, use_cases=[uc], patience=50)
    assert res.per_use_case[uc] == pytest.approx(rec.recall({SOURCES[0]: 1.0}, uc))
    assert res.seconds < 15.0 and res.trials < 5000


def test_bagged_weights_replace_the_searched_ones_unless_those_are_clearly_better():
    rec, uc = _synthetic_record(n_q=200, tied=False), "homepage"
    rec.contrib[uc][rec.tpos[uc], 0] += 4.0  # the first source finds the truth; the others are noise
    good = {s: float(s == SOURCES[0]) for s in SOURCES}
    noise = {s: float(s == SOURCES[1]) for s in SOURCES}
    # the halves agree with the full search: their mean is the same blend, and it is taken
    w, took = tuning.bagged(rec, uc, good, [dict(good), dict(good)])
    assert took and w == good
    # halves that found noise: the mean is far worse on these requests, the searched weights stay
    w, took = tuning.bagged(rec, uc, good, [noise, noise])
    assert not took and w == good
    assert rec.recall(good, uc) > rec.recall({SOURCES[0]: 0.5, SOURCES[1]: 1.0}, uc)  # that mean
    # a slightly different half (a small weight on noise): within one standard error, the mean is served
    w, took = tuning.bagged(rec, uc, good, [good, {**good, SOURCES[1]: 0.01}])
    assert took and w[SOURCES[1]] > 0 and max(w.values()) == 1.0
    assert tuning.bagged(rec, uc, good, []) == (good, False)  # no halves (too few requests): unchanged
    # a mean below the best single source's recall is never taken (the fallback would serve that source)
    assert tuning.bagged(rec, uc, good, [good, {**good, SOURCES[1]: 0.01}], floor=rec.recall(good, uc) + 1e-6) == (good, False)


def test_the_chosen_hyperparameter_trial_replays_every_validation_request_like_a_fresh_release(sessions_data):
    events, catalog, emb = sessions_data
    cfg, items = _small_configs(), catalog["item_id"].to_numpy().astype(object)
    cut = ev.resolve_cut(events, None)
    train, held = events.filter(pl.col("ts") < cut), events.filter(pl.col("ts") >= cut)
    cases = ev.build_cases(train, held, items, max_users=30, recent_events=5, seed=0)
    pm = ev.fit_period(train, items, cfg, cut)
    s = ev.Settings(hyper_budget_seconds=0.01, hyper_trial_seconds=0.2)
    best, pm_b, found, rp = ev.tune_hyperparameters(pm, cfg, catalog, emb, cases, s)
    # the trials replay the first homepage/session requests only; the kept release answers every use case
    assert rp is not None and rp.cases is cases and found["chosen"] == found["trials"][0][0]
    with rp:
        kept = tuning.record(rp, list(cases.queries))
    with ev.ServedReplay(pm_b, catalog, emb, cases, ev.topn_config(best)) as fresh:
        want = tuning.record(fresh, list(cases.queries))
    assert set(kept.contrib) == set(want.contrib) >= {"homepage", "item_page", "cart"}
    for uc in want.contrib:
        np.testing.assert_array_equal(kept.cand[uc], want.cand[uc])
        np.testing.assert_array_equal(kept.contrib[uc], want.contrib[uc])


def test_a_hyperparameter_step_or_an_mmr_lambda_is_taken_only_when_it_wins_by_more_than_its_noise():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    noise = base + rng.normal(0, 0.05, 400)  # the same mean, different per request
    old = tuning.Trial(float(base.mean()), terms={"homepage": (1.0, base)})
    tiny = tuning.Trial(float(noise.mean()) + 1e-3, terms={"homepage": (1.0, noise + 1e-3)})
    clear = tuning.Trial(float(base.mean()) + 0.05, terms={"homepage": (1.0, base + 0.05)})
    assert not tuning.beats(tiny, old) and tiny.value > old.value
    assert tuning.beats(clear, old) and not tuning.beats(old, clear)
    assert tuning.beats(0.5, 0.4) and not tuning.beats(0.4, 0.4)  # plain values: by value
    # the coordinate search keeps the start unless a step clearly wins
    start = {"recent_weight": 1.0, "als_regularization": 3.0, "als_alpha": 3.0, "decay_days": 90.0}
    value = lambda h: clear if h["als_regularization"] == 1.0 else tiny if h != start else old  # noqa: E731
    found = tuning.search_hyperparameters(value, start, budget_seconds=60)
    assert found["chosen"] == {**start, "als_regularization": 1.0}

    # MMR: a lambda below 1 that wins on the first requests by less than one standard error is not served
    rec, uc = _synthetic_record(n_q=200, tied=False), "homepage"
    w = {s: 1.0 for s in SOURCES}
    r1 = rec.recalls(w, uc)[:100]
    flip = np.where(np.arange(100) % 2 == 0, np.minimum(r1 + 0.2, 1.0), np.maximum(r1 - 0.19, 0.0))
    scores, lam = tuning.mmr_choice(rec, uc, w, (1.0, 0.8), lambda *a: flip, 100)
    assert scores[0.8] > scores[1.0] and lam == 1.0
    scores, lam = tuning.mmr_choice(rec, uc, w, (1.0, 0.8), lambda *a: np.minimum(r1 + 0.3, 1.0), 100)
    assert lam == 0.8
    assert tuning.mmr_choice(rec, uc, w, (0.8,), lambda *a: r1, 100)[1] == 0.8  # one (configured) lambda: that one
