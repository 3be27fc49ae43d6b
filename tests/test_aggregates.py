"""The DuckDB aggregates the production assets read equal the polars functions the evaluation fits with."""
from datetime import datetime, timedelta

import duckdb
import numpy as np
import polars as pl
import pytest

from recs_assets import aggregates, modeling
from recs_assets.features import basket_matrix, basket_origin, basket_rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Mixed events: given baskets and basket-less ones, guests, many tied timestamps, an item
    nobody touched, an as-of that leaves the last events out."""
    rng = np.random.default_rng(7)
    n = 6000
    t0 = datetime(2024, 1, 1)
    users = rng.integers(0, 250, n)
    minutes = np.sort(rng.integers(0, 60 * 24 * 40, n))  # coarse: many ties
    basket = np.where(rng.random(n) < 0.4, None, np.array([f"B{u}-{m // 600}" for u, m in zip(users, minutes)], dtype=object))
    user = np.where(rng.random(n) < 0.05, None, np.array([f"u{u:03d}" for u in users], dtype=object))
    events = pl.DataFrame({
        "user_id": pl.Series(user.tolist(), dtype=pl.String),
        "item_id": [f"i{x:02d}" for x in rng.integers(0, 60, n)],
        "ts": [t0 + timedelta(minutes=int(m)) for m in minutes],
        "event": rng.choice(["view", "add", "purchase"], n, p=[0.6, 0.25, 0.15]).tolist(),
        "quantity": np.ones(n, np.int32),
        "price": rng.random(n),
        "basket_id": pl.Series(basket.tolist(), dtype=pl.String),
    }).with_columns(pl.col("ts").cast(pl.Datetime("us")))
    catalog = pl.DataFrame({"item_id": sorted({f"i{x:02d}" for x in range(61)})})
    con = duckdb.connect(str(tmp_path_factory.mktemp("wh") / "w.duckdb"))
    con.execute("CREATE SCHEMA recs")
    con.register("_e", events.to_arrow())
    con.execute("CREATE TABLE recs.interactions AS SELECT * FROM _e")
    con.register("_c", catalog.to_arrow())
    con.execute("CREATE TABLE recs.catalog AS SELECT * FROM _c")
    items = catalog["item_id"].to_numpy().astype(object)
    yield con, events, items
    con.close()


def _same(a, b, exact=True):
    a, b = a.tocsr(), b.tocsr()
    a.sort_indices(), b.sort_indices()
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    if exact:
        np.testing.assert_array_equal(a.data, b.data)
    else:
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("as_of", [None, "2024-01-30T12:00:00"])
def test_matrix_and_user_items(data, as_of):
    con, events, items = data
    p = modeling.MatrixParams(as_of=as_of)
    want = modeling.build_matrix(events, items, p)
    got = aggregates.matrix(con, p)
    assert got.as_of == want.as_of
    assert list(got.user_ids) == list(want.user_ids) and list(got.item_ids) == list(items)
    _same(got.weights, want.weights, exact=False)
    _same(got.binary, want.binary)
    _same(got.purchases, want.purchases)
    table = con.sql("SELECT * FROM recs.user_items").pl()
    coo = want.weights.tocoo()
    assert table["user_id"].to_list() == list(want.user_ids[coo.row])
    assert table["item_id"].to_list() == list(items[coo.col])
    np.testing.assert_allclose(table["weight"].to_numpy(), coo.data, rtol=1e-6)
    from recs_assets.features import aligned_values

    assert table["purchases"].to_list() == aligned_values(coo, want.purchases).astype(int).tolist()
    assert table["purchases"].sum() > 0


@pytest.mark.parametrize("as_of", [None, "2024-01-30T12:00:00"])
def test_popularity(data, as_of):
    con, events, items = data
    want = modeling.popularity_scores(events, items, 7, as_of)
    got = aggregates.popularity(con, 7, as_of)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
    assert got[1].sum() > 0 and (got[0] > got[1]).any()


def test_covisitation_and_similarity(data):
    con, events, items = data
    p = modeling.CovisParams(top_k=100)
    _same(aggregates.covisitation(con, p), modeling.covisitation(events, items, p), exact=False)
    s = modeling.SimilarityParams(top_k=100, window=20)
    got = aggregates.user_similarity(con, s)
    assert got.nnz > 100
    _same(got, modeling.user_similarity(events, items, s), exact=False)


@pytest.mark.parametrize("gap", [30.0, 600.0])
def test_baskets(data, gap):
    con, events, items = data
    B, names, formed = aggregates.baskets(con, gap)
    rows = basket_rows(events, gap)
    B0, names0 = basket_matrix(events, items, rows=rows)
    assert list(names) == list(names0)
    _same(B, B0)
    assert formed == basket_origin(rows, events)
    assert formed["given_baskets"] > 0 and formed["session_baskets"] > 0
