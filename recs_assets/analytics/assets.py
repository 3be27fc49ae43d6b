"""Retail analytics assets (group "analytics"): substitutes, customer saturation, cross-sell
potential and targeting lists, the product graph, and factor exports.

Each reads what the graph already computed (baskets, rules, factors, embeddings) and writes
recs.<table> tables for analysts, with a preview in the Dagster UI.
"""

from datetime import datetime, timezone
from typing import Literal

import dagster as dg
import lancedb
import numpy as np
import polars as pl
from pydantic import Field

from recs_assets import io, markdown, paths
from recs_assets.analytics import basket_pairs, customers, exports, graph
from recs_assets.features import load_matrix
from recs_assets.resources import ArtifactStore, Warehouse
from recs_assets import table_meta

GROUP = "analytics"


def _titles(catalog: pl.DataFrame) -> dict[str, str]:
    return dict(zip(catalog["item_id"].to_list(), catalog["title"].to_list()))


def _aligned(ids_from: np.ndarray, ids_to: np.ndarray) -> np.ndarray:
    """Index into ids_from for each of ids_to (-1 when absent)."""
    pos = {x: i for i, x in enumerate(ids_from.tolist())}
    return np.array([pos.get(x, -1) for x in ids_to.tolist()], dtype=np.int64)


def _item_embeddings(artifacts: ArtifactStore, item_ids: np.ndarray) -> np.ndarray | None:
    """Catalog embeddings in the order of item_ids (zero rows for unknown items), or None."""
    try:
        E = artifacts.load("catalog_embeddings", "vectors", "item_ids")
    except FileNotFoundError:
        return None
    idx = _aligned(E["item_ids"], item_ids)
    out = np.zeros((len(item_ids), E["vectors"].shape[1]), np.float32)
    out[idx >= 0] = E["vectors"][idx[idx >= 0]]
    return out


def _owned(m, basis: str):
    """users x items, nonzero where the customer bought (or, basis 'interactions', touched) the item."""
    if basis == "purchases" and m.purchases.nnz:
        return m.purchases.tocsr()
    return m.binary.tocsr()


# --------------------------------------------------------------------------- substitutes

class SubstitutesConfig(dg.Config):
    min_item_support: float = Field(0.005, gt=0, le=1, description="Each item in at least this share of baskets")
    min_expected: float = Field(5.0, gt=0, description="Pairs must be expected together in at least this many baskets")
    max_lift: float = Field(0.8, gt=0, description="together / expected below this")
    max_p_value: float = Field(0.05, gt=0, le=1, description="One-sided Poisson p-value of so few co-occurrences")
    period: Literal["none", "week", "month", "quarter"] = Field(
        "month", description="Expected counts are summed per period, so items never on sale at the same time "
                             "are not taken for substitutes; 'none' for plain lift")
    content_weight: float = Field(3.0, ge=0, description="Score boost per unit of embedding cosine similarity "
                                                         "(substitutes are usually similar products); 0 ranks by "
                                                         "the co-occurrence shortfall alone")
    max_pairs: int = Field(5000, ge=1)


def _basket_times(warehouse: Warehouse, basket_ids: np.ndarray) -> np.ndarray:
    with warehouse.connect(read_only=True) as con:
        t = con.sql("SELECT basket_id, min(ts) AS ts FROM recs.interactions WHERE event = 'purchase' "
                    "AND basket_id IS NOT NULL GROUP BY basket_id").pl()
    order = pl.DataFrame({"basket_id": pl.Series(basket_ids, dtype=pl.String)}).with_row_index("i")
    joined = order.join(t, on="basket_id", how="left").sort("i")
    return joined["ts"].cast(pl.Datetime("ms")).to_numpy()


@dg.asset(group_name=GROUP, kinds={"numpy", "duckdb"}, pool="duckdb_writer",
          deps=["baskets", "catalog_embeddings", "interactions", "catalog"],
          description="Substitute pairs: two items that each sell well but share a basket much less often than "
                      "chance (period-stratified lift < max_lift, Poisson-significant), ranked by the "
                      "standardised shortfall boosted by content similarity; recs.substitutes")
def substitutes(context: dg.AssetExecutionContext, config: SubstitutesConfig, warehouse: Warehouse,
                artifacts: ArtifactStore) -> dg.MaterializeResult:
    B = io.load_csr(artifacts, "baskets")
    basket_ids = artifacts.load("baskets", "basket_ids")["basket_ids"]
    catalog = io.load_catalog(warehouse)
    item_ids = catalog["item_id"].to_numpy().astype(object)
    ts = _basket_times(warehouse, basket_ids) if config.period != "none" else None
    periods = basket_pairs.period_codes(ts, B.shape[0], config.period)
    pairs = basket_pairs.substitute_pairs(
        B, min_item_support=config.min_item_support, min_expected=config.min_expected, max_lift=config.max_lift,
        max_p_value=config.max_p_value, periods=periods, content=_item_embeddings(artifacts, item_ids),
        content_weight=config.content_weight, max_pairs=config.max_pairs)
    titles = catalog.select("item_id", "title")
    table = (pairs.with_columns(pl.Series("item_a", item_ids[pairs["a"].to_numpy()], dtype=pl.String),
                                pl.Series("item_b", item_ids[pairs["b"].to_numpy()], dtype=pl.String))
             .join(titles.rename({"item_id": "item_a", "title": "title_a"}), on="item_a", how="left")
             .join(titles.rename({"item_id": "item_b", "title": "title_b"}), on="item_b", how="left")
             .select("rank", "item_a", "title_a", "item_b", "title_b", "support_a", "support_b", "together",
                     "expected", "lift", "p_value", "content_similarity", "score")
             .sort("rank"))
    n = warehouse.replace_table("substitutes", table)
    counts = np.asarray(B.sum(axis=0)).ravel()
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "substitutes"), 
        "pairs": n, "baskets": B.shape[0], "periods": int(periods.max() + 1) if len(periods) else 0,
        "items_considered": int((counts >= config.min_item_support * max(B.shape[0], 1)).sum()),
        "preview": dg.MetadataValue.md(markdown.frame(
            table.select("rank", "title_a", "title_b", "together", "expected", "lift", "content_similarity"), 15)),
    })


# --------------------------------------------------------------------------- saturation

class SaturationConfig(dg.Config):
    grouping: Literal["auto", "category", "cluster"] = Field(
        "auto", description="auto: catalog categories when at least min_category_coverage of the items have one, "
                            "else k-means clusters of the item embeddings")
    min_category_coverage: float = Field(0.5, ge=0, le=1)
    min_group_items: int = Field(5, ge=1, description="Categories with fewer catalog items are left out (a "
                                                      "one-item 'category' is no part of a customer's range)")
    n_clusters: int = Field(50, ge=2, le=10_000)
    seed: int = 0
    basis: Literal["purchases", "interactions"] = Field("purchases", description="What counts as 'bought'")


def item_groups(catalog: pl.DataFrame, embeddings: np.ndarray | None, cfg: SaturationConfig):
    """(group index per catalog item, -1 = none; group names; 'category' or 'cluster')."""
    cat = catalog["category"]
    coverage = float(cat.is_not_null().mean()) if catalog.height else 0.0
    use_category = cfg.grouping == "category" or (cfg.grouping == "auto" and coverage >= cfg.min_category_coverage
                                                  and cat.n_unique() > 1)
    if use_category or embeddings is None:
        sizes = cat.drop_nulls().value_counts()
        names = sorted(sizes.filter(pl.col("count") >= cfg.min_group_items)[cat.name].to_list())
        pos = {x: i for i, x in enumerate(names)}
        return np.array([pos.get(x, -1) for x in cat.to_list()], dtype=np.int64), names, "category"
    labels = customers.kmeans(embeddings, cfg.n_clusters, seed=cfg.seed)
    k = int(labels.max()) + 1 if len(labels) else 0
    return labels.astype(np.int64), [f"cluster_{i:03d}" for i in range(k)], "cluster"


@dg.asset(group_name=GROUP, kinds={"numpy", "duckdb"}, pool="duckdb_writer",
          deps=["interaction_matrix", "catalog", "catalog_embeddings"],
          check_specs=[dg.AssetCheckSpec("shares_valid", asset="customer_saturation",
                                         description="One row per customer; shares in [0, 1]; deciles 1..10")],
          description="Per customer: the share of the catalog's categories (or, without categories, of "
                      "embedding clusters) already bought, and the customer's decile (10 = most saturated); "
                      "recs.customer_saturation")
def customer_saturation(context: dg.AssetExecutionContext, config: SaturationConfig, warehouse: Warehouse,
                        artifacts: ArtifactStore):
    m = load_matrix(artifacts)
    catalog = io.load_catalog(warehouse)
    cat_idx = _aligned(catalog["item_id"].to_numpy().astype(object), m.item_ids)
    cat = catalog[np.maximum(cat_idx, 0).tolist()]
    emb = _item_embeddings(artifacts, m.item_ids)
    groups, names, kind = item_groups(cat, emb, config)
    got, items, share = customers.saturation(_owned(m, config.basis), groups, len(names))
    table = pl.DataFrame({
        "user_id": pl.Series(m.user_ids, dtype=pl.String), "groups_bought": got,
        "groups_total": np.full(len(got), len(names), np.int32), "share": share,
        "items_bought": items, "decile": customers.rank_decile(share),
        "grouping": pl.Series([kind] * len(got), dtype=pl.String),
    }).sort(["share", "user_id"], descending=[True, False])
    n = warehouse.replace_table("customer_saturation", table)
    deciles = (table.group_by("decile").agg(pl.len().alias("customers"), pl.col("share").min().alias("min_share"),
                                            pl.col("share").max().alias("max_share"),
                                            pl.col("items_bought").mean().alias("mean_items")).sort("decile"))
    yield dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "customer_saturation"), 
        "customers": n, "grouping": kind, "groups": len(names),
        "mean_share": float(share.mean()) if len(share) else 0.0,
        "deciles": dg.MetadataValue.md(markdown.frame(deciles)),
        "preview": dg.MetadataValue.md(markdown.frame(table.head(10))),
    })
    ok = n == len(m.user_ids) and bool(((share >= 0) & (share <= 1)).all()) and (
        n == 0 or (table["decile"].min() >= 1 and table["decile"].max() <= 10))
    yield dg.AssetCheckResult(passed=bool(ok), metadata={"rows": n, "customers": len(m.user_ids)})


# --------------------------------------------------------------------------- cross-sell

class CrossSellConfig(dg.Config):
    target_items: list[str] = Field(default_factory=list, description="Item ids scored together as target 'items'")
    target_categories: list[str] = Field(default_factory=list, description="Categories, each its own target")
    top_categories: int = Field(3, ge=1, description="Without explicit targets: the top categories by revenue "
                                                     "(or, without categories, the top_items items by revenue)")
    top_items: int = Field(20, ge=1)
    factors: Literal["als", "bpr"] = "als"
    aggregate: Literal["max", "mean"] = Field("max", description="Over the target items the customer lacks")
    exclude_category_buyers: bool = Field(True, description="A customer who already bought from a target "
                                                            "category is no cross-sell prospect for it")
    basis: Literal["purchases", "interactions"] = "purchases"
    top_customers: int = Field(100, ge=1, description="Customers per item in recs.item_targeting")
    max_targeting_items: int = Field(1000, ge=1, description="Targeting lists for at most this many target "
                                                             "items (highest revenue first)")
    max_items_per_target: int = Field(1000, ge=1, description="A customer's best item and max score look at the "
                                      "target's this many best sellers (the open-item count and the mean at all): "
                                      "the work per customer stays bounded as categories grow with the catalogue")


def _revenue(warehouse: Warehouse) -> pl.DataFrame:
    with warehouse.connect(read_only=True) as con:
        return con.sql("SELECT i.item_id, sum(coalesce(i.quantity, 1) * coalesce(i.price, c.price, 0)) AS revenue "
                       "FROM recs.interactions i LEFT JOIN recs.catalog c USING (item_id) "
                       "WHERE i.event = 'purchase' GROUP BY i.item_id").pl()


def resolve_targets(catalog: pl.DataFrame, revenue: pl.DataFrame, item_ids: np.ndarray, cfg: CrossSellConfig):
    """[(target name, 'category' | 'items', column indices)], items ordered by revenue (highest first)."""
    cols = pl.DataFrame({"item_id": pl.Series(item_ids, dtype=pl.String)}).with_row_index("col")
    rich = (cols.join(catalog.select("item_id", "category"), on="item_id", how="left")
            .join(revenue, on="item_id", how="left").with_columns(pl.col("revenue").fill_null(0.0))
            .sort(["revenue", "item_id"], descending=[True, False]))
    targets = []
    if cfg.target_items:
        sel = rich.filter(pl.col("item_id").is_in(cfg.target_items))
        targets.append(("items", "items", sel["col"].to_numpy().astype(np.int64)))
    categories = list(cfg.target_categories)
    if not targets and not categories:
        by_cat = (rich.filter(pl.col("category").is_not_null()).group_by("category").agg(pl.col("revenue").sum())
                  .sort(["revenue", "category"], descending=[True, False]))
        categories = by_cat["category"].head(cfg.top_categories).to_list()
        if not categories:
            targets.append(("items", "items", rich["col"].head(cfg.top_items).to_numpy().astype(np.int64)))
    for c in categories:
        targets.append((c, "category", rich.filter(pl.col("category") == c)["col"].to_numpy().astype(np.int64)))
    return targets


@dg.asset(group_name=GROUP, kinds={"numpy", "duckdb"}, pool="duckdb_writer",
          deps=["als_factors", "bpr_factors", "interaction_matrix", "catalog", "interactions"],
          check_specs=[dg.AssetCheckSpec("targets_not_bought", asset="cross_sell_potential",
                                         description="No targeting list names a customer who already bought the item")],
          description="Per customer and target (default: the top categories by revenue), how likely they are to "
                      "buy target items they have not bought yet (factor preference, as a percentile among "
                      "customers), recs.cross_sell_potential; and per target item the customers most likely to "
                      "buy it next, recs.item_targeting")
def cross_sell_potential(context: dg.AssetExecutionContext, config: CrossSellConfig, warehouse: Warehouse,
                         artifacts: ArtifactStore):
    m = load_matrix(artifacts)
    F = artifacts.load(f"{config.factors}_factors", "user_factors", "item_factors")
    U, V = F["user_factors"], F["item_factors"]
    catalog = io.load_catalog(warehouse)
    titles = _titles(catalog)
    owned = _owned(m, config.basis)
    targets = resolve_targets(catalog, _revenue(warehouse), m.item_ids, config)
    parts, lists, seen_items = [], [], set()
    user_keys = np.asarray(m.user_ids).astype(str)
    for name, kind, cols in targets:
        score, best, open_items = customers.cross_sell_scores(U, V, owned, cols, config.aggregate,
                                                              max_items=config.max_items_per_target)
        if kind == "category" and config.exclude_category_buyers and len(cols):
            buyers = np.asarray((owned[:, cols] > 0).sum(axis=1)).ravel() > 0
            score[buyers] = np.nan
        ok = np.flatnonzero(np.isfinite(score))
        pct = customers.rank_percentile(score[ok])
        rank = np.empty(len(ok), np.int32)
        rank[np.lexsort((user_keys[ok], -score[ok]))] = np.arange(1, len(ok) + 1, dtype=np.int32)
        parts.append(pl.DataFrame({
            "target": pl.Series([name] * len(ok), dtype=pl.String), "target_kind": pl.Series([kind] * len(ok), dtype=pl.String),
            "user_id": pl.Series(m.user_ids[ok], dtype=pl.String), "score": score[ok].astype(np.float32),
            "percentile": pct.astype(np.float32), "rank": rank,
            "best_item_id": pl.Series(m.item_ids[best[ok]], dtype=pl.String), "open_items": open_items[ok],
        }))
        for c in cols:
            if c not in seen_items:
                seen_items.add(int(c))
                lists.append((name, int(c)))
    lists = lists[:config.max_targeting_items]
    item_cols = np.array([c for _, c in lists], dtype=np.int64)
    users, scores = customers.top_customers(U, V, owned, item_cols, config.top_customers)
    r, k = np.nonzero(users >= 0)
    targeting = pl.DataFrame({
        "item_id": pl.Series(m.item_ids[item_cols[r]], dtype=pl.String),
        "target": pl.Series([lists[i][0] for i in r], dtype=pl.String),
        "rank": (k + 1).astype(np.int32),
        "user_id": pl.Series(m.user_ids[users[r, k]], dtype=pl.String),
        "score": scores[r, k].astype(np.float32),
    }, schema={"item_id": pl.String, "target": pl.String, "rank": pl.Int32, "user_id": pl.String, "score": pl.Float32})
    title_df = pl.DataFrame({"item_id": list(titles), "title": list(titles.values())}, schema={"item_id": pl.String, "title": pl.String})
    targeting = targeting.join(title_df, on="item_id", how="left").select(
        "item_id", "title", "target", "rank", "user_id", "score").sort(["item_id", "rank"])
    potential = (pl.concat(parts) if parts else pl.DataFrame(schema={"target": pl.String}))
    if parts:
        potential = (potential.join(title_df.rename({"item_id": "best_item_id", "title": "best_title"}),
                                    on="best_item_id", how="left")
                     .select("target", "target_kind", "user_id", "rank", "score", "percentile", "best_item_id",
                             "best_title", "open_items").sort(["target", "rank"]))
    with warehouse.connect() as con:
        n = warehouse.replace_table("cross_sell_potential", potential, con=con)
        n_t = warehouse.replace_table("item_targeting", targeting, con=con)
    summary = (potential.group_by("target", "target_kind").agg(pl.len().alias("prospects"),
                                                              pl.col("open_items").max().alias("target_items"))
               .sort("target") if parts else pl.DataFrame())
    yield dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "cross_sell_potential", "item_targeting"), 
        "rows": n, "targeting_rows": n_t, "factors": config.factors, "aggregate": config.aggregate,
        "max_items_per_target": config.max_items_per_target,
        "targets": dg.MetadataValue.md(markdown.frame(summary)),
        "preview": dg.MetadataValue.md(markdown.frame(potential.head(10) if parts else potential)),
    })
    bought = 0
    if len(r):
        bought = int((np.asarray(owned[users[r, k], item_cols[r]]).ravel() > 0).sum())
    yield dg.AssetCheckResult(passed=bought == 0, metadata={"already_bought": bought, "rows": n_t})


# --------------------------------------------------------------------------- product graph

class ProductGraphConfig(dg.Config):
    max_rule_items: int = Field(2, ge=2, le=10, description="Rules with at most this many items in total become "
                                                            "edges (2: one antecedent, one consequent)")
    min_lift: float = Field(1.0, ge=0, description="Only rules at least this lift")
    community_weight: Literal["lift", "confidence", "support"] = "lift"
    resolution: float = Field(1.0, gt=0, description="Louvain resolution: above 1 gives smaller communities")
    damping: float = Field(0.85, gt=0, lt=1)
    seed: int = 0
    plot_communities: int = Field(6, ge=1, le=20)


@dg.asset(group_name=GROUP, kinds={"networkx", "duckdb"}, pool="duckdb_writer",
          deps=["association_rules", "catalog"],
          description="The association rules as a weighted directed graph: PageRank (destinations) and reversed "
                      "PageRank (gateway products), Louvain communities, a picture of the largest; "
                      "recs.product_graph_nodes, recs.product_graph_edges")
def product_graph(context: dg.AssetExecutionContext, config: ProductGraphConfig, warehouse: Warehouse
                  ) -> dg.MaterializeResult:
    with warehouse.connect(read_only=True) as con:
        rules = con.sql("SELECT antecedents, consequents, support, confidence, lift FROM recs.association_rules").pl()
    catalog = io.load_catalog(warehouse)
    titles = _titles(catalog)
    edges = graph.rule_edges(rules, max_rule_items=config.max_rule_items, min_lift=config.min_lift)
    nodes, edges = graph.analyze(edges, weight=config.community_weight, resolution=config.resolution,
                                 seed=config.seed, damping=config.damping)
    info = catalog.select("item_id", "title", "category")
    nodes = (nodes.join(info, on="item_id", how="left")
             .with_columns(pl.col("pagerank").rank("ordinal", descending=True).cast(pl.Int32).alias("pagerank_rank"),
                           pl.col("gateway").rank("ordinal", descending=True).cast(pl.Int32).alias("gateway_rank")))
    leaders = (nodes.sort(["pagerank", "item_id"], descending=[True, False]).group_by("community", maintain_order=True)
               .first().select("community", pl.col("title").alias("community_label")))
    nodes = (nodes.join(leaders, on="community", how="left")
             .select("item_id", "title", "category", "pagerank", "pagerank_rank", "gateway", "gateway_rank",
                     "in_degree", "out_degree", "community", "community_size", "community_label")
             .sort("pagerank_rank"))
    t = info.select("item_id", "title")
    edges = (edges.join(t.rename({"item_id": "source", "title": "source_title"}), on="source", how="left")
             .join(t.rename({"item_id": "target", "title": "target_title"}), on="target", how="left")
             .select("source", "source_title", "target", "target_title", "support", "confidence", "lift", "rules",
                     "source_community", "target_community")
             .sort(["confidence", "source", "target"], descending=[True, False, False]))
    with warehouse.connect() as con:
        n_nodes = warehouse.replace_table("product_graph_nodes", nodes, con=con)
        n_edges = warehouse.replace_table("product_graph_edges", edges, con=con)
    comms = (nodes.group_by("community", "community_label").agg(pl.len().alias("size"),
                                                                pl.col("pagerank").sum().alias("pagerank"))
             .sort("community"))
    within = float((edges["source_community"] == edges["target_community"]).mean()) if n_edges else 0.0
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "product_graph_nodes", "product_graph_edges"), 
        "nodes": n_nodes, "edges": n_edges, "communities": comms.height, "edges_within_communities": within,
        "gateways": dg.MetadataValue.md(markdown.frame(
            nodes.sort("gateway_rank").select("gateway_rank", "item_id", "title", "gateway", "out_degree"), 10)),
        "top_communities": dg.MetadataValue.md(markdown.frame(comms, 10)),
        "community_sizes": _community_chart(comms),
        "picture": dg.MetadataValue.md(graph.plot_communities(nodes, edges, titles, top=config.plot_communities,
                                                              seed=config.seed)),
    })


def _community_chart(comms: pl.DataFrame):
    """Products per community (the ten largest), short enough to show on the asset page."""
    top = comms.sort(["size", "community"], descending=[True, False]).head(10)
    labels = [f"{c}: {(lab or '')[:22]}" for c, lab in zip(top["community"], top["community_label"])]
    return table_meta.bars(labels, top["size"], title="community", fmt="{:.0f}")


# --------------------------------------------------------------------------- factor exports

class FactorExportConfig(dg.Config):
    models: list[str] = Field(default_factory=lambda: ["als", "bpr"], description="Any of als, bpr")
    normalize: bool = Field(False, description="L2-normalise every vector (cosine = dot product)")
    directory: str = Field("", description="Parquet directory; empty means RECS_HOME/exports")


@dg.asset(group_name=GROUP, kinds={"parquet", "lancedb", "duckdb"}, pool="duckdb_writer",
          deps=["als_factors", "bpr_factors", "interaction_matrix", "catalog"],
          description="User and item factors (ALS, BPR) with their original ids, optionally L2-normalised: "
                      "Parquet files under RECS_HOME/exports/ and LanceDB tables <model>_<user|item>_factors; "
                      "recs.factor_exports lists them")
def factor_exports(context: dg.AssetExecutionContext, config: FactorExportConfig, warehouse: Warehouse,
                   artifacts: ArtifactStore) -> dg.MaterializeResult:
    from pathlib import Path

    ids = artifacts.load("interaction_matrix", "user_ids", "item_ids")
    catalog = io.load_catalog(warehouse)
    pos = _aligned(catalog["item_id"].to_numpy().astype(object), ids["item_ids"])
    sub = catalog[np.maximum(pos, 0).tolist()]
    item_extra = {c: sub[c].to_arrow() for c in ("title", "brand", "category")}
    item_extra["price"] = sub["price"].cast(pl.Float64).to_arrow()
    base = Path(config.directory) if config.directory else paths.recs_home() / "exports"
    uri = str(paths.lancedb_path())
    db = lancedb.connect(uri)
    rows, now = [], datetime.now(timezone.utc).replace(tzinfo=None)
    unknown = set(config.models) - {"als", "bpr"}
    if unknown:
        raise ValueError(f"factor_exports: unknown models {sorted(unknown)}; choose from als, bpr")
    for model in config.models:
        F = artifacts.load(f"{model}_factors", "user_factors", "item_factors")
        for side, id_name, M, extra in (("user", "user_id", F["user_factors"], None),
                                        ("item", "item_id", F["item_factors"], item_extra)):
            M = exports.normalize_rows(M) if config.normalize else np.asarray(M, np.float32)
            tbl = exports.factor_table(id_name, ids[f"{side}_ids"], M, extra)
            name = f"{model}_{side}_factors"
            path = exports.write_parquet_atomic(tbl, base / f"{name}.parquet")
            lt = db.create_table(name, data=tbl, mode="overwrite")
            rows.append({"model": model, "side": side, "rows": tbl.num_rows, "dimension": int(M.shape[1]),
                         "normalized": config.normalize, "parquet_path": str(path), "lance_uri": uri,
                         "lance_table": name, "lance_version": int(lt.version), "exported_at": now})
    table = pl.DataFrame(rows, schema={"model": pl.String, "side": pl.String, "rows": pl.Int64, "dimension": pl.Int32,
                                       "normalized": pl.Boolean, "parquet_path": pl.String, "lance_uri": pl.String,
                                       "lance_table": pl.String, "lance_version": pl.Int64,
                                       "exported_at": pl.Datetime("us")})
    n = warehouse.replace_table("factor_exports", table)
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "factor_exports"), 
        "exports": n, "directory": dg.MetadataValue.path(str(base)), "lancedb": uri, "normalized": config.normalize,
        "files": dg.MetadataValue.md(markdown.frame(table.select("model", "side", "rows", "dimension", "lance_table",
                                                                 "parquet_path"))),
    })


ASSETS = [substitutes, customer_saturation, cross_sell_potential, product_graph, factor_exports]
