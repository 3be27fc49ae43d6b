"""Feature assets: the user x item matrix, baskets, popularity, co-visitation, text embeddings."""
import hashlib
from datetime import datetime

import dagster as dg
import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import Field

from recs_assets import aggregates, io, markdown, modeling
from recs_assets.progress import Progress
from recs_assets.resources import ArtifactStore, Embedder, Warehouse
from recs_assets.tuning import apply_tuned_fit
from recs_assets import table_meta

GROUP = "features"
MAX_STALE_CACHE = 100_000
EMBED_CHUNK = 4096  # texts per encode call: progress in the log, and bounded memory for the transformer path


@dg.asset(group_name=GROUP, kinds={"numpy", "duckdb"}, deps=["interactions", "catalog"], pool="duckdb_writer",
          description="Users x items: event-weighted, time-decayed confidence (ALS), binary (BPR) and "
                      "purchase counts, aligned with the catalog; recs.user_items")
def interaction_matrix(context: dg.AssetExecutionContext, config: modeling.MatrixParams, warehouse: Warehouse,
                       artifacts: ArtifactStore) -> dg.MaterializeResult:
    config = apply_tuned_fit(config, artifacts)  # the history decay the last evaluation chose on validation
    # Aggregated in DuckDB, which also writes recs.user_items: no frame of every event here.
    with warehouse.connect() as con:
        m = aggregates.matrix(con, config, user_items_table="user_items")
        n = con.execute("SELECT count(*) FROM recs.user_items").fetchall()[0][0]
    io.save_csr(artifacts, "interaction_matrix", m.weights, meta={"as_of": m.as_of, "params": config.model_dump()},
                user_ids=m.user_ids, item_ids=m.item_ids)
    io.save_csr(artifacts, "purchases", m.purchases)
    density = m.weights.nnz / max(1, m.weights.shape[0] * m.weights.shape[1])
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "user_items"), 
        "users": len(m.user_ids), "items": len(m.item_ids), "nonzeros": m.weights.nnz,
        "density": float(density), "as_of": str(m.as_of), "table_rows": n,
    })


def aligned_values(pattern, values: sp.csr_matrix) -> np.ndarray:
    """values[pattern.row, pattern.col] (0 where absent) without scipy's slow fancy indexing."""
    n_cols = values.shape[1]
    v = values.tocoo()
    keys = v.row.astype(np.int64) * n_cols + v.col
    order = np.argsort(keys)
    keys, data = keys[order], v.data[order]
    want = pattern.row.astype(np.int64) * n_cols + pattern.col
    pos = np.clip(np.searchsorted(keys, want), 0, max(len(keys) - 1, 0))
    hit = (keys[pos] == want) if len(keys) else np.zeros(len(want), bool)
    return np.where(hit, data[pos] if len(keys) else 0, 0)


def load_matrix(artifacts: ArtifactStore) -> modeling.Matrix:
    weights = io.load_csr(artifacts, "interaction_matrix")
    extra = artifacts.load("interaction_matrix", "user_ids", "item_ids")
    binary = weights.copy()
    binary.data = np.ones_like(binary.data)
    as_of = datetime.fromisoformat(str(artifacts.meta("interaction_matrix")["as_of"]))
    return modeling.Matrix(extra["user_ids"], extra["item_ids"], weights, binary, io.load_csr(artifacts, "purchases"), as_of)


class BasketConfig(dg.Config):
    session_gap_minutes: float = Field(modeling.SESSION_GAP_MINUTES, gt=0,
                                       description="Events without a basket id are grouped into sessions: a user's "
                                                   "session ends after this long without an event")


@dg.asset(group_name=GROUP, kinds={"numpy", "duckdb"}, deps=["interactions", "catalog"], pool="duckdb_writer",
          description="Baskets x items (purchases, guests included): the input of FP-growth; the source's basket "
                      "ids, or sessions (split by an inactivity gap) where it has none; recs.baskets")
def baskets(context: dg.AssetExecutionContext, config: BasketConfig, warehouse: Warehouse,
            artifacts: ArtifactStore) -> dg.MaterializeResult:
    with warehouse.connect() as con:
        B, basket_ids, formed = aggregates.baskets(con, config.session_gap_minutes)
    io.save_csr(artifacts, "baskets", B, meta=config.model_dump(), basket_ids=basket_ids)
    sizes = np.diff(B.indptr)
    summary = pl.DataFrame({"basket_id": pl.Series(basket_ids, dtype=pl.String), "n_items": sizes.astype(np.int32)})
    warehouse.replace_table("baskets", summary)
    context.log.info(f"baskets: {formed['given_baskets']} from the sources' basket ids, {formed['session_baskets']} "
                     f"from sessions (gap {config.session_gap_minutes:g} min), events: {formed['basket_events']}")
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "baskets"), 
        "baskets": B.shape[0], "items": B.shape[1], "mean_items_per_basket": float(sizes.mean()) if len(sizes) else 0.0,
        "max_items_per_basket": int(sizes.max()) if len(sizes) else 0, **formed,
        "session_gap_minutes": config.session_gap_minutes,
    })


def basket_rows(events: pl.DataFrame, session_gap_minutes: float = modeling.SESSION_GAP_MINUTES) -> pl.DataFrame:
    """Distinct (session, item_id, derived) of the basket events: purchases, in the source's
    baskets or else in sessions. A source with no purchases at all (ratings, clicks) has its
    sessions of any event as baskets, so the miner still has something to read."""
    ev = events.filter(pl.col("event") == "purchase") if basket_events(events) == "purchase" else events
    return (modeling.with_sessions(ev.select("user_id", "item_id", "ts", "event", "basket_id"), session_gap_minutes)
            .select("session", "item_id", "derived").unique(["session", "item_id"]))


def basket_events(events: pl.DataFrame) -> str:
    return "purchase" if (events["event"] == "purchase").any() else "any"


def basket_origin(rows: pl.DataFrame, events: pl.DataFrame) -> dict:
    """How the baskets were formed, for the asset's metadata."""
    n = rows.group_by("derived").agg(pl.col("session").n_unique().alias("n"))
    counts = dict(zip(n["derived"].to_list(), n["n"].to_list()))
    given, derived = int(counts.get(False, 0)), int(counts.get(True, 0))
    return {"given_baskets": given, "session_baskets": derived,
            "formed_from": "basket ids" if not derived else "sessions" if not given else "basket ids + sessions",
            "basket_events": basket_events(events)}


def basket_matrix(events: pl.DataFrame, item_ids: np.ndarray, session_gap_minutes: float = modeling.SESSION_GAP_MINUTES,
                  *, rows: pl.DataFrame | None = None) -> tuple[sp.csr_matrix, np.ndarray]:
    """Baskets x items (bool) and the basket ids, in a stable order (sorted by id)."""
    if rows is None:
        rows = basket_rows(events, session_gap_minutes)
    items = pl.DataFrame({"item_id": pl.Series(item_ids, dtype=pl.String), "col": np.arange(len(item_ids), dtype=np.int32)})
    p = rows.join(items, on="item_id")
    names = p["session"].unique().sort()
    row = names.search_sorted(p["session"]).to_numpy()
    B = sp.csr_matrix((np.ones(p.height, dtype=bool), (row, p["col"].to_numpy())), shape=(len(names), len(item_ids)))
    B.sort_indices()
    return B, names.to_numpy().astype(object)


@dg.asset(group_name=GROUP, kinds={"duckdb"}, deps=["interactions", "catalog"], pool="duckdb_writer",
          description="Popular and trending items, globally and per brand and category; recs.popularity")
def popularity(context: dg.AssetExecutionContext, config: modeling.PopularityParams, warehouse: Warehouse,
               artifacts: ArtifactStore) -> dg.MaterializeResult:
    catalog = io.load_catalog(warehouse)
    with warehouse.connect() as con:
        glob, trend = aggregates.popularity(con, config.trending_days, config.as_of)
    artifacts.save("popularity", meta=config.model_dump(), global_score=glob, trending=trend)
    table = popularity_table(catalog, glob, trend, config.top_n)
    n = warehouse.replace_table("popularity", table)
    top = table.filter(pl.col("scope") == "trending").head(10).join(catalog.select("item_id", "title"), on="item_id")
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "popularity"), "table_rows": n, "top_trending": dg.MetadataValue.md(markdown.frame(top))})


def popularity_table(catalog: pl.DataFrame, glob: np.ndarray, trend: np.ndarray, top_n: int) -> pl.DataFrame:
    base = catalog.select("item_id", "brand", "category").with_columns(
        pl.Series("global", glob), pl.Series("trending", trend))
    # Trending is broken by global popularity so that a quiet week still has an order.
    blend_trend = pl.col("trending") + 1e-3 * pl.col("global")
    parts = [
        base.select(pl.lit("global").alias("scope"), pl.lit(None, pl.String).alias("key"), "item_id", pl.col("global").alias("score")),
        base.select(pl.lit("trending").alias("scope"), pl.lit(None, pl.String).alias("key"), "item_id", blend_trend.alias("score")),
        base.filter(pl.col("brand").is_not_null()).select(pl.lit("brand").alias("scope"), pl.col("brand").alias("key"), "item_id", pl.col("global").alias("score")),
        base.filter(pl.col("category").is_not_null()).select(pl.lit("category").alias("scope"), pl.col("category").alias("key"), "item_id", pl.col("global").alias("score")),
    ]
    out = pl.concat(parts).filter(pl.col("score") > 0).sort(["scope", "key", "score", "item_id"], descending=[False, False, True, False], nulls_last=True)
    out = out.with_columns(pl.int_range(1, pl.len() + 1).over("scope", "key").alias("rank"))
    return out.filter(pl.col("rank") <= top_n).with_columns(pl.col("score").cast(pl.Float32), pl.col("rank").cast(pl.Int32))


@dg.asset(group_name=GROUP, kinds={"numpy", "duckdb"}, deps=["interactions", "catalog"], pool="duckdb_writer",
          description="Item-item co-visitation within baskets/sessions, weighted by event type and time gap, "
                      "top-k neighbours per item; recs.covisitation")
def covisitation(context: dg.AssetExecutionContext, config: modeling.CovisParams, warehouse: Warehouse,
                 artifacts: ArtifactStore) -> dg.MaterializeResult:
    items = io.load_item_ids(warehouse)
    with warehouse.connect() as con:
        events, n_items = aggregates.covisitation_events(con, config)
    # counted with the connection closed: DuckDB's memory is released before the kernel's
    C = sp.csr_matrix(aggregates.covisitation_counts(events, n_items, config))
    del events
    io.save_csr(artifacts, "covisitation", C, meta=config.model_dump())
    n = warehouse.replace_table("covisitation", io.neighbour_table(items, C))
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "covisitation"), "pairs": n, "items_with_neighbours": int((np.diff(C.indptr) > 0).sum())})


class EmbeddingConfig(dg.Config):
    text_fields: list[str] = Field(default_factory=lambda: ["title", "brand", "category", "description"])


def item_text(catalog: pl.DataFrame, fields: list[str]) -> list[str]:
    """The text embedded per item; a field repeating the title (Online Retail's description) is
    left out, which halves the tokens without changing what the text says."""
    present = [f for f in fields if f in catalog.columns]
    cols = []
    for f in present:
        col = pl.col(f).cast(pl.String)
        if f != "title" and "title" in present:
            col = pl.when(col == pl.col("title")).then(None).otherwise(col)
        cols.append(col)
    return catalog.select(pl.concat_str(cols, separator=" | ", ignore_nulls=True).alias("t"))["t"].to_list()


@dg.asset(group_name=GROUP, kinds={"pytorch", "numpy"}, deps=["catalog"],
          description="L2-normalised sentence-transformers embeddings of title + brand + category + "
                      "description; cached by a hash of the text, so re-runs embed only changed items")
def catalog_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, warehouse: Warehouse,
                       artifacts: ArtifactStore, embedder: Embedder) -> dg.MaterializeResult:
    catalog = io.load_catalog(warehouse)
    texts = item_text(catalog, config.text_fields)
    model_id = embedder.model_id
    hashes = np.array([hashlib.sha1(f"{model_id}\0{t}".encode()).hexdigest() for t in texts], dtype=object)
    cache: dict[str, np.ndarray] = {}
    try:
        old = artifacts.load("embedding_cache", "hashes", "vectors")
        cache = dict(zip(old["hashes"].tolist(), old["vectors"]))
    except FileNotFoundError:
        pass
    todo = [i for i, h in enumerate(hashes) if h not in cache]
    if todo:  # with everything cached, the model is not even loaded
        report = Progress(context.log.info, "embedding", len(todo), unit="texts")
        for c0 in range(0, len(todo), EMBED_CHUNK):
            chunk = todo[c0:c0 + EMBED_CHUNK]
            fresh = embedder.encode([texts[i] for i in chunk], log=context.log.info)
            for j, i in enumerate(chunk):
                cache[hashes[i]] = fresh[j]
            report(c0 + len(chunk))
    dim = len(next(iter(cache.values()))) if cache else embedder.dimension()
    vectors = np.stack([cache[h] for h in hashes]) if len(hashes) else np.zeros((0, dim), np.float32)
    artifacts.save("catalog_embeddings", meta={"model": model_id}, vectors=vectors.astype(np.float32),
                   item_ids=catalog["item_id"].to_numpy().astype(object))
    # Texts no longer in the catalog stay cached (up to a bound): items often come back.
    current = set(hashes.tolist())
    kept = list(current) + [h for h in cache if h not in current][:MAX_STALE_CACHE]
    artifacts.save("embedding_cache", hashes=np.array(kept, dtype=object),
                   vectors=np.stack([cache[h] for h in kept]).astype(np.float32) if kept else np.zeros((0, dim), np.float32))
    context.log.info(f"embedded {len(todo)} items, reused {len(hashes) - len(todo)}")
    return dg.MaterializeResult(metadata={"items": len(hashes), "embedded": len(todo),
                                          "reused": len(hashes) - len(todo), "dimension": int(dim),
                                          "model": model_id})


@dg.asset(group_name=GROUP, kinds={"numba", "duckdb"}, deps=["interactions", "catalog"], pool="duckdb_writer",
          description="Item-item similarity from each user's whole history (co-visitation with the user as the "
                      "session, time-decayed, normalised): the blend's neighbourhood source; recs.item_similarity")
def item_similarity(context: dg.AssetExecutionContext, config: modeling.SimilarityParams, warehouse: Warehouse,
                    artifacts: ArtifactStore) -> dg.MaterializeResult:
    items = io.load_item_ids(warehouse)
    with warehouse.connect() as con:
        events, n_items = aggregates.user_similarity_events(con, config)
    # counted with the connection closed: DuckDB's memory is released before the kernel's
    S = aggregates.user_similarity_counts(events, n_items, config)
    del events
    io.save_csr(artifacts, "item_similarity", S, meta=config.model_dump())
    n = warehouse.replace_table("item_similarity", io.neighbour_table(items, S))
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "item_similarity"), "pairs": n, **config.model_dump()})
