"""The synthetic generator: determinism, schema and domains, planted structure, files, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from polars.testing import assert_frame_equal

from recs_assets import synthetic as syn

REPO = Path(__file__).resolve().parents[1]

SMALL = dict(n_users=3_000, n_items=600, n_events=60_000, n_clusters=6, n_groups=20)


@pytest.fixture(scope="module")
def data() -> syn.SyntheticData:
    return syn.generate(**SMALL, seed=7)


def _idx(col: pl.Expr) -> pl.Expr:
    return col.str.slice(1).cast(pl.Int64)


def _assert_data_equal(a: syn.SyntheticData, b: syn.SyntheticData) -> None:
    assert_frame_equal(a.catalog, b.catalog)
    assert_frame_equal(a.events, b.events)
    np.testing.assert_array_equal(a.user_cluster, b.user_cluster)
    np.testing.assert_array_equal(a.item_cluster, b.item_cluster)
    np.testing.assert_array_equal(a.item_popularity, b.item_popularity)
    np.testing.assert_array_equal(a.cluster_categories, b.cluster_categories)
    assert len(a.copurchase_groups) == len(b.copurchase_groups)
    for x, y in zip(a.copurchase_groups, b.copurchase_groups):
        np.testing.assert_array_equal(x, y)
    assert a.config == b.config


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_data(data):
    _assert_data_equal(data, syn.generate(**SMALL, seed=7))


def test_different_seed_differs(data):
    other = syn.generate(**SMALL, seed=8)
    assert not other.events.equals(data.events)
    assert not other.catalog.equals(data.catalog)
    assert not np.array_equal(other.user_cluster, data.user_cluster)


def test_independent_of_threads_and_blocks_and_streaming(tmp_path):
    # more users than one block, so block boundaries and session-id offsets are exercised
    kw = dict(n_users=syn.BLOCK_USERS + 5_000, n_items=300, n_events=120_000, n_clusters=4, seed=3)
    serial = syn.generate(**kw, threads=1)
    threaded = syn.generate(**kw, threads=3)
    assert_frame_equal(serial.events, threaded.events)
    cfg = syn.SyntheticConfig(**kw)
    info = syn.generate_to_dir(tmp_path, cfg, rows_per_file=50_000)
    assert len(info["files"]) >= 2 and all(f.startswith("events-") for f in info["files"])
    _assert_data_equal(serial, syn.read(tmp_path))
    # sessions are unique across blocks: a basket id never belongs to two users
    per_basket = serial.events.group_by("basket_id").agg(pl.col("user_id").n_unique().alias("n"))
    assert per_basket["n"].max() == 1
    users_per_block = serial.events.select(
        (_idx(pl.col("user_id")) // syn.BLOCK_USERS).alias("b")
    )["b"].unique()
    assert users_per_block.len() == 2


# ------------------------------------------------------------------------ schema and domains


def test_schemas_and_ids(data):
    assert dict(data.events.schema) == syn.EVENT_SCHEMA
    assert dict(data.catalog.schema) == syn.CATALOG_SCHEMA
    assert data.catalog.height == SMALL["n_items"]
    assert data.catalog["item_id"].to_list() == syn.item_ids(range(SMALL["n_items"]))
    assert data.catalog["item_id"].is_unique().all()
    assert data.events["user_id"].str.contains(r"^U\d{7}$").all()
    assert data.events["item_id"].str.contains(r"^I\d{7}$").all()
    assert data.events["basket_id"].str.contains(r"^S\d{9}$").all()
    for col in ("title", "description", "brand", "category"):
        assert (data.catalog[col].str.len_chars() > 0).all(), col
    assert data.catalog.null_count().sum_horizontal().item() == 0
    assert data.events.null_count().sum_horizontal().item() == 0


def test_value_domains(data):
    ev, cfg = data.events, data.config
    assert set(ev["event"].unique()) == set(syn.EVENT_TYPES)
    assert (ev["quantity"] > 0).all()
    assert (ev.filter(pl.col("event") != "purchase")["quantity"] == 1).all()
    assert ev.filter(pl.col("event") == "purchase")["quantity"].max() > 1
    assert (ev["price"] > 0).all() and (data.catalog["price"] > 0).all()
    assert ev["ts"].min() >= cfg.start_ms and ev["ts"].max() < cfg.end_ms
    assert cfg.end_ms == 1_704_067_200_000  # 2024-01-01T00:00Z
    # spread over the whole year, not bunched
    months = (ev["ts"] - cfg.start_ms) // (30 * 86_400_000)
    assert months.n_unique() >= 12
    # every event item is in the catalog, at the catalog's price
    joined = ev.join(data.catalog.select("item_id", pl.col("price").alias("cp")), on="item_id",
                     how="left")
    assert joined["cp"].null_count() == 0
    assert (joined["price"] == joined["cp"]).all()
    # every user has events, and the count is close to the target
    assert ev["user_id"].n_unique() == SMALL["n_users"]
    assert abs(ev.height - SMALL["n_events"]) < 0.05 * SMALL["n_events"]


def test_sorted_by_user_then_time(data):
    ev = data.events
    u = ev.select(_idx(pl.col("user_id")))["user_id"].to_numpy()
    ts = ev["ts"].to_numpy()
    assert (np.diff(u) >= 0).all()
    same = np.diff(u) == 0
    assert (np.diff(ts)[same] >= 0).all()
    # a user's sessions are numbered chronologically and do not interleave
    s = ev.group_by("user_id", "basket_id").agg(
        pl.col("ts").min().alias("t0"), pl.col("ts").max().alias("t1")
    ).sort("user_id", "basket_id")
    nxt = s.with_columns(pl.col("t0").shift(-1).over("user_id").alias("next_t0")).drop_nulls()
    assert (nxt["next_t0"] >= nxt["t0"]).all()


def test_funnel(data):
    ev = data.events
    counts = dict(ev.group_by("event").len().iter_rows())
    assert counts["view"] > counts["add"] > counts["purchase"] > 0
    # rates near the configured ones (group companions add a little)
    assert 0.2 < counts["add"] / counts["view"] < 0.35
    assert 0.35 < counts["purchase"] / counts["add"] < 0.6
    # per (session, item): every add follows a view, every purchase follows an add
    firsts = ev.group_by("basket_id", "item_id").agg(
        pl.col("ts").filter(pl.col("event") == e).min().alias(e) for e in syn.EVENT_TYPES
    )
    added = firsts.filter(pl.col("add").is_not_null())
    bought = firsts.filter(pl.col("purchase").is_not_null())
    assert added["view"].null_count() == 0 and (added["view"] <= added["add"]).all()
    assert bought["add"].null_count() == 0 and (bought["add"] <= bought["purchase"]).all()
    # all purchases of a basket happen at one checkout
    assert ev.filter(pl.col("event") == "purchase").group_by("basket_id").agg(
        pl.col("ts").n_unique().alias("n")
    )["n"].max() == 1


# ------------------------------------------------------------------------- planted structure


def test_taste_clusters(data):
    ev = data.events.select(
        _idx(pl.col("user_id")).alias("u"), _idx(pl.col("item_id")).alias("i"), "event"
    )
    u, i = ev["u"].to_numpy(), ev["i"].to_numpy()
    buy = (ev["event"] == "purchase").to_numpy()
    k = data.config.n_clusters
    in_cluster = data.user_cluster[u] == data.item_cluster[i]
    share = in_cluster[buy].mean()
    assert share > 3.0 / k and share > 0.6
    # recoverable: a user's most viewed cluster is its planted cluster for most active users
    view = ~buy
    counts = np.zeros((data.config.n_users, k))
    np.add.at(counts, (u[view], data.item_cluster[i[view]]), 1)
    active = counts.sum(1) >= 10
    assert active.sum() > 300
    assert (counts.argmax(1)[active] == data.user_cluster[active]).mean() > 0.9


def test_clusters_shape_catalog_text(data):
    cats = data.categories
    cat_idx = data.catalog["category"].replace_strict(cats, list(range(len(cats)))).to_numpy()
    home = data.cluster_categories[data.item_cluster]
    in_home = (cat_idx == home[:, 0]) | (cat_idx == home[:, 1])
    assert in_home.mean() > 0.75  # uniform would be about 2/16
    # a title names a noun of its own category
    for title, cat in data.catalog.select("title", "category").head(200).iter_rows():
        assert any(title.endswith(n) for n in syn._CATEGORIES[cat]["nouns"]), (title, cat)


def _basket_matrix(data) -> sp.csr_matrix:
    p = data.events.filter(pl.col("event") == "purchase").select(
        pl.col("basket_id").rank("dense").cast(pl.Int64).alias("b") - 1,
        _idx(pl.col("item_id")).alias("i"),
    ).unique()
    b, i = p["b"].to_numpy(), p["i"].to_numpy()
    return sp.csr_matrix((np.ones(len(b)), (b, i)), shape=(b.max() + 1, data.config.n_items))


def test_copurchase_groups_have_high_lift(data):
    groups = data.copurchase_groups
    assert len(groups) == SMALL["n_groups"]
    sizes = [len(g) for g in groups]
    assert min(sizes) >= 2 and max(sizes) <= 4
    members = np.concatenate(groups)
    assert len(np.unique(members)) == len(members)  # an item is in at most one group

    B = _basket_matrix(data)
    co = (B.T @ B).toarray()
    support = np.diag(co).copy()
    nb = B.shape[0]

    def lift(pairs):
        obs = sum(co[a, b] for a, b in pairs)
        exp = sum(support[a] * support[b] / nb for a, b in pairs)
        return obs / exp

    planted = [(a, b) for g in groups for a, b in combinations(g.tolist(), 2)]
    # control: for each planted pair, the non-group items closest in purchase support
    rng = np.random.default_rng(0)
    free = np.setdiff1d(np.arange(data.config.n_items), members)
    order = free[np.argsort(support[free])]
    pos = np.searchsorted(support[order], support)

    def twin(x):
        j = int(np.clip(pos[x] + rng.integers(-2, 3), 0, len(order) - 1))
        return int(order[j])

    control = [(twin(a), twin(b)) for a, b in planted]
    control = [(a, b) for a, b in control if a != b]
    lp, lc = lift(planted), lift(control)
    assert lp > 8.0, lp
    assert lp > 4.0 * lc, (lp, lc)


def test_popularity_heavy_tailed(data):
    views = data.events.filter(pl.col("event") == "view").group_by("item_id").len()
    c = np.sort(views["len"].to_numpy())[::-1]
    top = max(1, SMALL["n_items"] // 100)
    assert c[:top].sum() / c.sum() > 0.10  # uniform popularity would give ~1%
    # the knob matters: without the power law the head is small
    flat = syn.generate(**SMALL, seed=7, zipf_a=0.0)
    cf = np.sort(flat.events.filter(pl.col("event") == "view").group_by("item_id").len()["len"]
                 .to_numpy())[::-1]
    assert cf[:top].sum() / cf.sum() < 0.05
    # observed popularity follows the planted weights
    pop = np.zeros(SMALL["n_items"])
    pop[views.select(_idx(pl.col("item_id")))["item_id"].to_numpy()] = views["len"].to_numpy()
    assert np.corrcoef(pop, data.item_popularity)[0, 1] > 0.9


# ----------------------------------------------------------------------------------- files


@pytest.mark.parametrize("rows_per_file", [10_000_000, 15_000])
def test_write_read_round_trip(data, tmp_path, rows_per_file):
    syn.write(data, tmp_path, rows_per_file=rows_per_file)
    files = sorted(p.name for p in tmp_path.glob("events*.parquet"))
    if rows_per_file > data.events.height:
        assert files == ["events.parquet"]
    else:
        assert len(files) == -(-data.events.height // rows_per_file)
        assert files[0] == "events-00000.parquet"
    back = syn.read(tmp_path)
    _assert_data_equal(data, back)
    assert_frame_equal(pl.read_parquet(tmp_path / "events*.parquet"), data.events)
    meta = json.loads((tmp_path / "truth.json").read_text())
    assert meta["n_events"] == data.events.height
    assert meta["copurchase_groups"][0] == syn.item_ids(data.copurchase_groups[0])
    # rewriting into the same directory leaves no stale event files
    syn.write(data, tmp_path, rows_per_file=10_000_000)
    assert sorted(p.name for p in tmp_path.glob("events*.parquet")) == ["events.parquet"]


def test_config_validation():
    with pytest.raises(ValueError):
        syn.SyntheticConfig(p_add=1.5)
    with pytest.raises(ValueError):
        syn.SyntheticConfig(n_items=10, n_clusters=11)
    with pytest.raises(ValueError):
        syn.SyntheticConfig(group_size=(1, 3))


def test_no_dagster_import():
    code = "import sys, recs_assets.synthetic; assert 'dagster' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_cli(tmp_path):
    out = tmp_path / "tmp"
    r = subprocess.run(
        [sys.executable, "-m", "recs_assets.synthetic", "--users", "200", "--items", "100",
         "--events", "2000", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "recs-synth" in r.stderr  # the progress bar
    ev = pl.read_parquet(out / "events.parquet")
    cat = pl.read_parquet(out / "catalog.parquet")
    assert dict(ev.schema) == syn.EVENT_SCHEMA
    assert cat.height == 100 and ev["user_id"].n_unique() == 200
    assert 1_800 < ev.height < 2_200
    assert ev["item_id"].is_in(cat["item_id"].implode()).all()
    # the CLI writes what the API generates
    _assert_data_equal(syn.generate(200, 100, 2000), syn.read(out))


# ------------------------------------------------------------------------------ ratings shape


def test_ratings_shape_is_basketless_dense_and_unique(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "recs_assets.synthetic", "--basketless", "--users", "500", "--items", "1000",
         "--events", "20000", "--seed", "3", "--no-progress", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    ev = pl.read_parquet(tmp_path / "events.parquet")
    assert dict(ev.schema) == syn.RATINGS_SCHEMA and "basket_id" not in ev.columns
    assert 17_000 < ev.height <= 21_000
    assert ev.select(pl.struct("user_id", "item_id").is_unique().all()).item()
    assert ev["rating"].min() >= 1 and ev["rating"].max() <= 5
    # dense sessions: most events fall on user-days with at least 10 events
    per_day = ev.group_by("user_id", pl.col("ts") // 86_400_000).len()["len"]
    assert per_day.filter(per_day >= 10).sum() > 0.6 * ev.height
    # seeded: the API gives the same rows
    again = syn.generate(500, 1000, 20_000, seed=3, shape="ratings").events
    assert_frame_equal(again, ev)
    assert not syn.generate(500, 1000, 20_000, seed=4, shape="ratings").events.equals(ev)
