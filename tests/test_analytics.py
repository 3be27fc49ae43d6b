"""Retail analytics: pure functions on hand-built cases with a known answer, then the real
assets through dagster.materialize on a small hand-built shop, and the README's queries."""
import re
from datetime import datetime, timedelta

import dagster as dg
import duckdb
import lancedb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from recs_assets import definitions, paths
from recs_assets.analytics import basket_pairs, customers, graph
from recs_assets.resources import ArtifactStore, Embedder, Warehouse

from conftest import REPO


# --------------------------------------------------------------------------- pure functions

def baskets(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    r = [i for i, b in enumerate(rows) for _ in b]
    c = [j for b in rows for j in b]
    return sp.csr_matrix((np.ones(len(c), bool), (r, c)), shape=(len(rows), n_items))


def test_substitute_pair_is_found_and_independent_pairs_are_not():
    # 0 and 1 each in half the baskets, never together; 2 in every other basket (independent of both).
    rows = [[0 if i % 4 < 2 else 1] + ([2] if i % 2 == 0 else []) for i in range(400)]
    out = basket_pairs.substitute_pairs(baskets(rows, 3), max_p_value=0.05)
    assert out.select("a", "b", "together").rows() == [(0, 1, 0)]
    assert out["expected"][0] == pytest.approx(200 * 200 / 400)
    assert out["lift"][0] == 0 and out["rank"][0] == 1 and out["p_value"][0] < 1e-10


def test_items_never_on_sale_together_are_not_substitutes_when_stratified():
    # 0 sells only in period 0, 1 only in period 1: rarely together, but no shopper had the choice.
    rows = [[0, 2] if i < 200 else [1, 2] for i in range(400)]
    B = baskets(rows, 3)
    periods = np.array([0] * 200 + [1] * 200)
    assert basket_pairs.substitute_pairs(B, periods=None).height == 1
    assert basket_pairs.substitute_pairs(B, periods=periods).height == 0


def test_period_codes():
    ts = np.array(["2024-01-05", "2024-01-20", "2024-02-01", "2024-04-01"], dtype="datetime64[ms]")
    assert basket_pairs.period_codes(ts, 4, "month").tolist() == [0, 0, 1, 2]
    assert basket_pairs.period_codes(ts, 4, "quarter").tolist() == [0, 0, 0, 1]
    assert basket_pairs.period_codes(ts, 4, "none").tolist() == [0, 0, 0, 0]


def test_content_similarity_boosts_the_similar_pair():
    rows = [[i % 4] for i in range(400)]   # four items, never together, all equally frequent
    content = np.eye(4, dtype=np.float32)
    content[1] = content[0]                # 0 and 1 are the same kind of product
    out = basket_pairs.substitute_pairs(baskets(rows, 4), content=content, content_weight=1.0)
    assert out.height == 6
    assert out.select("a", "b").row(0) == (0, 1) and out["content_similarity"][0] == pytest.approx(1.0)


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    rng = np.random.default_rng(1)
    centers = np.array([[10, 0], [0, 10], [-10, -10]], float)
    X = np.concatenate([c + rng.normal(size=(50, 2)) for c in centers])
    labels = customers.kmeans(X, 3, seed=0)
    truth = np.repeat([0, 1, 2], 50)
    assert all(len(set(labels[truth == t])) == 1 for t in range(3)) and len(set(labels)) == 3
    assert np.array_equal(labels, customers.kmeans(X, 3, seed=0))


def test_saturation_customer_who_bought_everything():
    groups = np.array([0, 0, 1, 2, 2, -1])           # three groups, one item without a group
    owned = sp.csr_matrix(np.array([[1, 1, 1, 1, 1, 1],   # everything
                                    [1, 0, 0, 0, 0, 0],
                                    [1, 1, 0, 0, 0, 0],
                                    [0, 0, 1, 0, 1, 0]], np.float32))
    got, items, share = customers.saturation(owned, groups, 3)
    assert got.tolist() == [3, 1, 1, 2] and items.tolist() == [6, 1, 2, 2]
    assert share.tolist() == pytest.approx([1, 1 / 3, 1 / 3, 2 / 3])
    deciles = customers.rank_decile(share)
    assert deciles[0] == 10 and deciles[1] == deciles[2] < deciles[3] < 10


def test_cross_sell_excludes_owned_items():
    U = np.array([[1.0, 0], [0, 1.0], [1.0, 1.0]])
    V = np.array([[1.0, 0], [0, 1.0], [0.5, 0.5]])
    owned = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0], [1, 1, 1]], np.float32))
    score, best, open_items = customers.cross_sell_scores(U, V, owned, np.array([0, 1, 2]))
    assert best.tolist() == [2, 1, -1] and open_items.tolist() == [2, 3, 0]
    assert score[0] == pytest.approx(0.5) and score[1] == pytest.approx(1.0) and np.isnan(score[2])
    users, scores = customers.top_customers(U, V, owned, np.array([0, 1]), k=3)
    assert users[0].tolist() == [1, -1, -1]       # item 0: users 0 and 2 own it; user 1 scores 0
    assert users[1].tolist() == [1, 0, -1]         # item 1: user 2 owns it; user 1 scores 1, user 0 scores 0
    assert scores[1][:2].tolist() == pytest.approx([1.0, 0.0])


def test_top_customers_matches_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    U, V = rng.normal(size=(3000, 8)), rng.normal(size=(40, 8))
    owned = sp.random(3000, 40, density=0.1, random_state=0, format="csr")
    items = np.array([3, 7, 11])
    users, scores = customers.top_customers(U, V, owned, items, k=5)
    S = U @ V[items].T
    S[owned[:, items].toarray() > 0] = -np.inf
    for j in range(3):
        assert users[j].tolist() == np.argsort(-S[:, j], kind="stable")[:5].tolist()


def test_cross_sell_matches_a_dense_reference_and_bounds_the_max_to_the_head():
    rng = np.random.default_rng(1)
    U, V = rng.normal(size=(2500, 6)), rng.normal(size=(60, 6))
    owned = sp.random(2500, 60, density=0.15, random_state=1, format="csr")
    target = rng.permutation(60)[:25]
    S = (U.astype(np.float32) @ V[target].astype(np.float32).T).astype(np.float64)
    own = owned[:, target].toarray() > 0
    S[own] = -np.inf
    open_items = (~own).sum(axis=1)
    score, best, got_open = customers.cross_sell_scores(U, V, owned, target, "max")
    assert got_open.tolist() == open_items.tolist()
    has = open_items > 0
    assert best[has].tolist() == target[S[has].argmax(axis=1)].tolist()
    assert np.allclose(score[has], S[has].max(axis=1), rtol=1e-6) and np.isnan(score[~has]).all()
    mean, _, _ = customers.cross_sell_scores(U, V, owned, target, "mean")
    dense = np.where(own, 0.0, U @ V[target].T).sum(axis=1) / np.maximum(open_items, 1)
    assert np.allclose(mean[has], dense[has], rtol=1e-5, atol=1e-5)
    # max_items: the best item comes from the first (best-selling) items only; counts and mean are whole
    head = customers.cross_sell_scores(U, V, owned, target, "max", max_items=5)
    head_best = head[1]
    assert set(head_best[head_best >= 0].tolist()) <= set(target[:5].tolist())
    none_open = own[:, :5].all(axis=1)
    assert (head_best[none_open] == -1).all() and np.isnan(head[0][none_open]).all()
    assert head[2].tolist() == open_items.tolist()
    capped_mean = customers.cross_sell_scores(U, V, owned, target, "mean", max_items=5)[0]
    assert np.allclose(capped_mean[has], mean[has])


def test_product_graph_communities_separate_and_gateway_leads():
    def rule(a, c, conf, lift):
        return {"antecedents": [a], "consequents": [c], "support": 0.1, "confidence": conf, "lift": lift}
    mugs, bags = ["m1", "m2", "m3", "m4"], ["b1", "b2", "b3", "b4"]
    rows = [rule(a, c, 0.9, 5.0) for grp in (mugs, bags) for a in grp for c in grp if a != c]
    rows += [rule("m1", "b1", 0.2, 1.1)]                              # one weak bridge
    rows += [rule("hub", x, 0.8, 3.0) for x in ("s1", "s2", "s3")]    # hub leads to three products
    rows += [{"antecedents": ["m1", "m2"], "consequents": ["m3"], "support": 0.1, "confidence": 1.0, "lift": 6.0}]
    edges = graph.rule_edges(pl.DataFrame(rows))
    assert edges.height == 12 + 12 + 1 + 3              # the 3-item rule is left out (max_rule_items=2)
    nodes, e = graph.analyze(edges, seed=0)
    comm = dict(zip(nodes["item_id"], nodes["community"]))
    assert len({comm[m] for m in mugs}) == 1 and len({comm[b] for b in bags}) == 1
    assert comm["m1"] != comm["b1"] and comm["hub"] not in (comm["m1"], comm["b1"])
    gateway = dict(zip(nodes["item_id"], nodes["gateway"]))
    pagerank = dict(zip(nodes["item_id"], nodes["pagerank"]))
    assert gateway["hub"] > gateway["s1"] and pagerank["s1"] > pagerank["hub"]
    assert e.filter(pl.col("source") == "m1", pl.col("target") == "b1")["source_community"][0] != \
        e.filter(pl.col("source") == "m1", pl.col("target") == "b1")["target_community"][0]
    assert graph.plot_communities(nodes, e, {}).startswith("![product graph](data:image/png;base64,")


# --------------------------------------------------------------------------- the assets, end to end

CATALOG = [  # item_id, title, category, price
    ("m1", "WHITE CERAMIC MUG", "MUG", 3.0), ("m2", "BLUE CERAMIC MUG", "MUG", 3.0), ("m3", "RED CERAMIC MUG", "MUG", 3.0),
    ("b1", "JUTE SHOPPING BAG", "BAG", 2.0), ("b2", "COTTON TOTE BAG", "BAG", 2.0), ("b3", "PAPER GIFT BAG", "BAG", 2.0),
    ("c1", "BIRTHDAY CARD", "CARD", 9.0), ("c2", "CHRISTMAS CARD", "CARD", 9.0), ("c3", "THANK YOU CARD", "CARD", 9.0),
    ("l1", "TABLE LAMP RED", "LAMP", 20.0), ("l2", "TABLE LAMP BLUE", "LAMP", 20.0), ("z1", "GARDEN GNOME", "GNOME", 5.0),
]
MUGS, BAGS, CARDS = ["m1", "m2", "m3"], ["b1", "b2", "b3"], ["c1", "c2", "c3"]


def shop_events() -> pl.DataFrame:
    """60 customers x 4 baskets: mugs alone, bags alone, mugs + bags, nothing else; one lamp in each basket
    (red or blue, never both, balanced against everything else); every third customer adds cards to the
    fourth basket; one customer, 'whale', buys everything once."""
    t0 = datetime(2024, 1, 2)
    rows = []
    for u in range(60):
        for p in range(4):
            items = {0: MUGS, 1: BAGS, 2: MUGS + BAGS, 3: CARDS if u % 3 == 0 else []}[p]
            lamp = "l1" if (p < 2) == (u % 2 == 0) else "l2"
            ts = t0 + timedelta(days=p * 5, minutes=u)
            rows += [(f"u{u:02d}", i, ts, f"u{u:02d}-{p}") for i in items + [lamp]]
    rows += [("whale", i, t0 + timedelta(days=25), "whale-0") for i, *_ in CATALOG]
    df = pl.DataFrame(rows, schema=["user_id", "item_id", "ts", "basket_id"], orient="row")
    return df.with_columns(pl.lit("purchase").alias("event"), pl.lit(1).alias("quantity"),
                           pl.col("item_id").replace_strict({i: p for i, _, _, p in CATALOG}).alias("price"))


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    home = tmp_path_factory.mktemp("analytics_home")
    data = tmp_path_factory.mktemp("shop")
    shop_events().write_parquet(data / "events.parquet")
    pl.DataFrame(CATALOG, schema=["item_id", "title", "category", "price"], orient="row").write_csv(data / "catalog.csv")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECS_HOME", str(home))
    run_config = {"ops": {
        "ingest": {"config": {"sources": [{"kind": "events", "path": str(data / "events.parquet")}],
                              "catalog_paths": [str(data / "catalog.csv")]}},
        "frequent_itemsets": {"config": {"min_support": 0.05}},
        "als_factors": {"config": {"factors": 4, "iterations": 5}},
        "bpr_factors": {"config": {"factors": 4, "iterations": 20}},
        "substitutes": {"config": {"min_item_support": 0.2, "max_p_value": 0.01}},
        "customer_saturation": {"config": {"min_group_items": 1}},
        "cross_sell_potential": {"config": {"target_categories": ["CARD"], "top_customers": 5}},
        "product_graph": {"config": {"min_lift": 1.2}},
        "factor_exports": {"config": {"normalize": True}},
    }}
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(definitions.all_assets, selection=dg.AssetSelection.groups("analytics").upstream().required_multi_asset_neighbors(),
                                resources=definitions.resources, instance=instance, run_config=run_config)
    yield home, result
    mp.undo()


def q(home, sql):
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.sql(sql).pl()


def test_assets_materialize_with_metadata_and_checks(shop):
    home, result = shop
    assert result.success
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"substitutes", "customer_saturation", "cross_sell_potential", "product_graph", "factor_exports"} <= done
    assert all(ev.passed for ev in result.get_asset_check_evaluations())
    meta = result.asset_materializations_for_node("product_graph")[0].metadata
    assert meta["picture"].value.startswith("![product graph](data:image/png;base64,")
    assert meta["communities"].value >= 3


def test_shop_substitutes_are_the_two_lamps(shop):
    home, _ = shop
    t = q(home, "SELECT * FROM recs.substitutes")
    assert t.select("item_a", "item_b", "together").rows() == [("l1", "l2", 1)]
    assert t["lift"][0] < 0.05 and t["title_a"][0] == "TABLE LAMP RED"


def test_shop_saturation(shop):
    home, _ = shop
    t = q(home, "SELECT * FROM recs.customer_saturation")
    whale = t.filter(pl.col("user_id") == "whale").row(0, named=True)
    assert whale["groups_bought"] == whale["groups_total"] == 5 and whale["share"] == 1.0
    assert whale["decile"] == 10 and whale["items_bought"] == 12 and whale["grouping"] == "category"
    shares = dict(zip(t["user_id"], t["share"]))
    assert shares["u00"] == pytest.approx(4 / 5) and shares["u01"] == pytest.approx(3 / 5)
    assert t.height == 61 and t["decile"].min() >= 1


def test_shop_cross_sell_targets_only_customers_without_cards(shop):
    home, _ = shop
    t = q(home, "SELECT * FROM recs.cross_sell_potential")
    assert set(t["target"]) == {"CARD"}
    assert set(t["user_id"]) == {f"u{u:02d}" for u in range(60) if u % 3}
    assert (t["open_items"] == 3).all() and set(t["best_item_id"]) <= set(CARDS)
    assert sorted(t["rank"].to_list()) == list(range(1, 41)) and t["percentile"].max() == 1.0
    tgt = q(home, "SELECT * FROM recs.item_targeting")
    assert set(tgt["item_id"]) == set(CARDS) and tgt.group_by("item_id").len()["len"].to_list() == [5, 5, 5]
    card_buyers = {f"u{u:02d}" for u in range(60) if u % 3 == 0} | {"whale"}
    assert not set(tgt["user_id"]) & card_buyers


def test_shop_product_graph_separates_mugs_bags_cards(shop):
    home, _ = shop
    nodes = q(home, "SELECT * FROM recs.product_graph_nodes")
    comm = dict(zip(nodes["item_id"], nodes["community"]))
    groups = [{comm[i] for i in g} for g in (MUGS, BAGS, CARDS)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3
    edges = q(home, "SELECT * FROM recs.product_graph_edges")
    assert (edges["source_community"] == edges["target_community"]).all()   # no bridge above the lift threshold
    assert "l1" not in comm                                                 # lamps are independent of everything


def test_shop_factor_exports(shop):
    home, _ = shop
    t = q(home, "SELECT * FROM recs.factor_exports ORDER BY model, side")
    assert t.select("model", "side").rows() == [("als", "item"), ("als", "user"), ("bpr", "item"), ("bpr", "user")]
    db = lancedb.connect(str(paths.lancedb_path(home)))
    for row in t.iter_rows(named=True):
        table = pq.read_table(row["parquet_path"])
        assert table.num_rows == row["rows"] == (12 if row["side"] == "item" else 61)
        vec = np.asarray(table.column("vector").to_pylist(), np.float32)
        assert vec.shape[1] == row["dimension"] and np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-5)
        assert db.open_table(row["lance_table"]).count_rows() == row["rows"]
    items = pq.read_table(home / "exports" / "als_item_factors.parquet").to_pydict()
    assert dict(zip(items["item_id"], items["title"]))["l1"] == "TABLE LAMP RED"
    hits = db.open_table("als_item_factors").search(items["vector"][0]).limit(1).to_list()
    assert hits[0]["item_id"] == items["item_id"][0]


def readme_queries() -> dict[str, str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Retail analytics"):]
    return {re.search(r"recs\.(\w+)", sql).group(1): sql for sql in re.findall(r"```sql\n(.*?)```", section, re.S)}


def test_readme_has_a_query_per_table_and_each_runs(shop):
    home, _ = shop
    queries = readme_queries()
    assert {"substitutes", "customer_saturation", "cross_sell_potential", "item_targeting",
            "product_graph_nodes", "product_graph_edges", "factor_exports"} <= set(queries)
    for table, sql in queries.items():
        assert q(home, sql).height > 0, table


def test_warehouse_assets_carry_row_count_and_column_schema(shop):
    """dagster/row_count and dagster/column_schema on every warehouse asset, equal to the table."""
    home, result = shop
    tables = {"interactions": ["interactions"], "catalog": ["catalog"], "quarantine": ["quarantine"],
              "interaction_matrix": ["user_items"], "baskets": ["baskets"], "popularity": ["popularity"],
              "covisitation": ["covisitation"], "item_similarity": ["item_similarity"],
              "frequent_itemsets": ["frequent_itemsets"], "association_rules": ["association_rules"],
              "als_factors": ["als_item_factors"], "bpr_factors": ["bpr_item_factors"],
              "substitutes": ["substitutes"], "customer_saturation": ["customer_saturation"],
              "cross_sell_potential": ["cross_sell_potential"], "product_graph": ["product_graph_nodes"],
              "factor_exports": ["factor_exports"]}
    seen = set()
    for ev in result.get_asset_materialization_events():
        key = ev.asset_key.to_user_string()
        if key not in tables:
            continue
        meta = ev.materialization.metadata
        table = tables[key][0]
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
            n = con.execute(f"SELECT count(*) FROM recs.{table}").fetchall()[0][0]
            cols = [r[0] for r in con.execute(f"DESCRIBE recs.{table}").fetchall()]
        assert meta["dagster/row_count"].value == n, key
        assert [c.name for c in meta["dagster/column_schema"].schema.columns] == cols, key
        seen.add(key)
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} & set(tables)
    assert seen == done and len(done) >= 10, done - seen
    graph_meta = result.asset_materializations_for_node("product_graph")[0].metadata
    assert len(graph_meta["community_sizes"].value) < 1000  # short Markdown: shown inline on the asset page
