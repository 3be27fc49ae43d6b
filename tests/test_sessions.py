"""Basket-less events: baskets and co-visitation come from sessions, mining stays in budget."""
from datetime import datetime, timedelta

import dagster as dg
import numpy as np
import polars as pl
import pytest

from recs_assets import definitions, modeling, synthetic
from recs_assets.features import basket_matrix, basket_origin, basket_rows
from recs_assets.resources import ArtifactStore, Warehouse

pytestmark = pytest.mark.xdist_group("sessions")


def _events(rows):
    return pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "ts": pl.Datetime("us"),
                                      "event": pl.String, "basket_id": pl.String}, orient="row")


def test_sessions_split_on_the_inactivity_gap():
    t = datetime(2024, 1, 1, 12)
    ev = _events([
        ("u1", "a", t, "purchase", None), ("u1", "b", t + timedelta(minutes=20), "purchase", None),
        ("u1", "c", t + timedelta(minutes=51), "purchase", None),        # 31 min later: a new session
        ("u2", "a", t + timedelta(minutes=1), "purchase", None),         # another user: another session
        ("u3", "d", t, "purchase", "INV1"), ("u3", "e", t + timedelta(days=3), "purchase", "INV1"),  # given id wins
        (None, "a", t, "purchase", None),                                # neither user nor basket: left out
    ])
    s = modeling.with_sessions(ev, 30)
    by = {r["item_id"] + r["user_id"]: r["session"] for r in s.iter_rows(named=True)}
    assert by["au1"] == by["bu1"] != by["cu1"]
    assert by["au2"] not in (by["au1"], by["cu1"])
    assert by["du3"] == by["eu3"] == "INV1"
    assert s.height == 6 and s["derived"].sum() == 4
    # a longer gap joins u1's events
    s60 = modeling.with_sessions(ev, 60)
    assert s60.filter(pl.col("user_id") == "u1")["session"].n_unique() == 1
    items = np.array(["a", "b", "c", "d", "e"], dtype=object)
    rows = basket_rows(ev, 30)
    B, names = basket_matrix(ev, items, rows=rows)
    assert B.shape == (4, 5) and sorted(np.diff(B.indptr).tolist()) == [1, 1, 2, 2]
    assert basket_origin(rows, ev) == {"given_baskets": 1, "session_baskets": 3,
                                       "formed_from": "basket ids + sessions", "basket_events": "purchase"}


def test_covisitation_uses_sessions_not_whole_histories():
    t = datetime(2024, 1, 1)
    # one user, two visits a week apart: a-b together, c-d together, never a with c
    ev = _events([("u", "a", t, "view", None), ("u", "b", t + timedelta(minutes=5), "view", None),
                  ("u", "c", t + timedelta(days=7), "view", None),
                  ("u", "d", t + timedelta(days=7, minutes=5), "view", None)])
    items = np.array(["a", "b", "c", "d"], dtype=object)
    C = modeling.covisitation(ev, items, modeling.CovisParams()).toarray()
    assert C[0, 1] > 0 and C[2, 3] > 0
    assert C[0, 2] == 0 and C[1, 3] == 0


@pytest.fixture(scope="module")
def basketless(tmp_path_factory):
    """A small ratings-like data set: no basket ids, ~40 events per active user-day."""
    out = tmp_path_factory.mktemp("basketless")
    d = synthetic.generate(300, 400, 12_000, shape="ratings", seed=3)
    assert "basket_id" not in d.events.columns
    d.events.write_parquet(out / "events.parquet")
    d.catalog.write_parquet(out / "catalog.parquet")
    return out


def test_models_stage_on_basketless_data(basketless, tmp_path, monkeypatch):
    monkeypatch.setenv("RECS_HOME", str(tmp_path))
    config = {"ops": {
        "ingest": {"config": {"sources": [{"kind": "events", "path": str(basketless / "events.parquet")}],
                              "catalog_paths": [str(basketless / "catalog.parquet")]}},
        # a support low enough to explode on dense sessions, and a small budget
        "frequent_itemsets": {"config": {"min_support": 0.0005, "max_len": 6, "max_itemsets": 3_000}},
        "association_rules": {"config": {"min_threshold": 0.0, "max_rules": 2_000}},
    }}
    keys = ["interactions", "baskets", "frequent_itemsets", "association_rules", "covisitation"]
    selection = dg.AssetSelection.assets(*keys).required_multi_asset_neighbors()
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(definitions.all_assets, selection=selection,
                                resources=definitions.resources, instance=instance, run_config=config)
    assert result.success
    meta = {k: result.asset_materializations_for_node(k)[0].metadata for k in keys[1:]}
    b = meta["baskets"]
    assert b["given_baskets"].value == 0 and b["session_baskets"].value == b["baskets"].value > 100
    assert b["formed_from"].value == "sessions"
    f = meta["frequent_itemsets"]
    assert 0 < f["itemsets"].value <= 3_000
    assert f["budget_hit"].value is True
    assert f["min_support_used"].value > f["min_support_requested"].value == 0.0005
    r = meta["association_rules"]
    assert 0 < r["rules"].value <= 2_000 and r["rules_passing_threshold"].value > 2_000
    assert meta["covisitation"]["pairs"].value > 0
    with Warehouse().connect(read_only=True) as con:
        assert con.sql("SELECT count(*) FROM recs.frequent_itemsets").fetchall()[0][0] == f["itemsets"].value
        assert con.sql("SELECT count(*) FROM recs.covisitation").fetchall()[0][0] > 0
        # kept rules are the best by the metric: nothing better was dropped
        kept_min = con.sql("SELECT min(confidence) FROM recs.association_rules").fetchall()[0][0]
    assert kept_min > 0


def test_no_baskets_at_all_gives_empty_itemsets_and_rules(tmp_path, monkeypatch):
    """Guest-only views with no user and no basket id are quarantined; here: a catalog with
    items nobody bought in a basket -> zero baskets, and the models stage still succeeds."""
    monkeypatch.setenv("RECS_HOME", str(tmp_path))
    items = np.array([f"I{i}" for i in range(5)], dtype=object)
    art = ArtifactStore()
    from recs_assets import io
    import scipy.sparse as sp

    io.save_csr(art, "baskets", sp.csr_matrix((0, 5), dtype=bool), basket_ids=np.zeros(0, dtype=object))
    with Warehouse().connect() as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS recs")
        con.execute("CREATE TABLE recs.catalog (item_id VARCHAR)")
        con.executemany("INSERT INTO recs.catalog VALUES (?)", [[i] for i in items])
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(definitions.all_assets,
                                selection=dg.AssetSelection.assets("frequent_itemsets", "association_rules"),
                                resources=definitions.resources, instance=instance)
    assert result.success
    f = result.asset_materializations_for_node("frequent_itemsets")[0].metadata
    r = result.asset_materializations_for_node("association_rules")[0].metadata
    assert f["itemsets"].value == 0 and "no baskets" in f["reason"].value
    assert r["rules"].value == 0 and "no frequent itemsets" in r["reason"].value


def test_as_of_measures_ages_and_trending_and_leaves_later_events_out():
    t = datetime(2024, 1, 1)
    ev = _events([("u1", "a", t, "purchase", None), ("u1", "b", t + timedelta(days=30), "purchase", None),
                  ("u2", "b", t + timedelta(days=30), "purchase", None),
                  ("u2", "c", datetime(2999, 1, 1), "purchase", None)])   # a stray future event
    items = np.array(["a", "b", "c"], dtype=object)
    p = modeling.MatrixParams(decay_days=30)
    m = modeling.build_matrix(ev, items, p, as_of=t + timedelta(days=30))
    W = m.weights.toarray()
    assert m.as_of == t + timedelta(days=30) and W[:, 2].sum() == 0          # 2999 left out
    assert np.isclose(W[0, 1] / W[0, 0], np.e, rtol=1e-4)                     # a is 30 days (one decay) older
    # the config's as_of is used when no argument is given; the default is the newest event
    assert modeling.build_matrix(ev, items, modeling.MatrixParams(as_of="2024-01-31")).as_of == m.as_of
    assert modeling.build_matrix(ev, items, p).as_of == datetime(2999, 1, 1)
    glob, trend = modeling.popularity_scores(ev, items, 7, as_of="2024-01-31T00:00:00+00:00")
    assert glob[2] == 0 and trend[0] == 0 and trend[1] > 0
