"""Output assets: per-user top-N (sharded), similar items, the LanceDB vector store."""
import os
import zlib

import dagster as dg
import lancedb
from lancedb.index import BTree
import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import Field

from recs_assets import io, markdown, modeling, paths
from recs_assets.features import load_matrix
from recs_assets.resources import ArtifactStore, Warehouse
from recs_kernels import topk

GROUP = "outputs"
N_SHARDS = int(os.environ.get("RECS_TOPN_SHARDS", "2"))
shards = dg.StaticPartitionsDefinition([str(i) for i in range(N_SHARDS)])


def shard_of(user_ids: np.ndarray, n_shards: int = N_SHARDS) -> np.ndarray:
    """Stable across runs, machines and Python versions (unlike hash())."""
    return np.fromiter((zlib.crc32(str(u).encode()) % n_shards for u in user_ids), dtype=np.int32, count=len(user_ids))


class TopNConfig(dg.Config):
    n: int = Field(50, ge=1, le=1000, description="Items per user")
    blend: modeling.BlendParams = Field(default_factory=modeling.BlendParams)


def load_blend(artifacts: ArtifactStore, params: modeling.BlendParams):
    als = artifacts.load("als_factors")
    bpr = artifacts.load("bpr_factors")
    sim = io.load_csr(artifacts, "item_similarity")
    trending = artifacts.load("popularity", "trending")["trending"]
    bl = modeling.make_blend(params, als["item_factors"], bpr["item_factors"], sim, trending)
    return bl, als["user_factors"], bpr["user_factors"]


@dg.asset(group_name=GROUP, kinds={"numba", "duckdb"}, partitions_def=shards,
          deps=["als_factors", "bpr_factors", "item_similarity", "popularity", "interaction_matrix"],
          description="Top-N per known user from the served blend (ALS + BPR + item similarity + trending), "
                      "already-seen items excluded; partitioned by a stable hash of the user id; recs.batch_topn")
def batch_topn(context: dg.AssetExecutionContext, config: TopNConfig, warehouse: Warehouse,
               artifacts: ArtifactStore) -> dg.MaterializeResult:
    shard = int(context.partition_key)
    m = load_matrix(artifacts)
    rows = np.flatnonzero(shard_of(m.user_ids) == shard)
    bl, ua, ub = load_blend(artifacts, config.blend)
    ids, scores = bl.top_k(config.n, als_users=ua[rows], bpr_users=ub[rows], history=m.weights[rows],
                           exclude=m.binary[rows])
    valid = ids >= 0
    r_idx, c_idx = np.nonzero(valid)
    table = pl.DataFrame({
        "shard": np.full(len(r_idx), shard, np.int32),
        "user_id": pl.Series(m.user_ids[rows[r_idx]], dtype=pl.String),
        "rank": (c_idx + 1).astype(np.int32),
        "item_id": pl.Series(m.item_ids[ids[r_idx, c_idx]], dtype=pl.String),
        "score": scores[r_idx, c_idx].astype(np.float32),
        "reason": pl.Series(["for_you"] * len(r_idx), dtype=pl.String),
    })
    artifacts.save("topn_params", meta=config.model_dump())
    with warehouse.connect() as con:
        con.execute("CREATE TABLE IF NOT EXISTS recs.batch_topn (shard INTEGER, user_id VARCHAR, rank INTEGER, "
                    "item_id VARCHAR, score FLOAT, reason VARCHAR)")
        con.register("_shard", table)
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM recs.batch_topn WHERE shard = ?", [shard])
        con.execute("INSERT INTO recs.batch_topn SELECT * FROM _shard")
        con.execute("COMMIT")
    return dg.MaterializeResult(metadata={"shard": shard, "users": len(rows), "rows": table.height,
                                          "n": config.n, "blend": dg.MetadataValue.json(config.blend.weights())})


class SimilarConfig(dg.Config):
    k: int = Field(20, ge=1, le=500)


@dg.asset(group_name=GROUP, kinds={"numba", "duckdb"}, deps=["als_factors", "catalog_embeddings"],
          pool="duckdb_writer",
          description="Top-k similar items per item, from ALS factors (cosine) and from content embeddings; "
                      "recs.similar_items")
def similar_items(context: dg.AssetExecutionContext, config: SimilarConfig, warehouse: Warehouse,
                  artifacts: ArtifactStore) -> dg.MaterializeResult:
    V = artifacts.load("als_factors", "item_factors")["item_factors"]
    E = artifacts.load("catalog_embeddings", "vectors", "item_ids")
    item_ids = E["item_ids"]
    parts = []
    for source, M in (("factors", V), ("content", E["vectors"])):
        k = min(config.k, max(1, M.shape[0] - 1))
        ids, scores = topk.similar(M, k)
        r, c = np.nonzero(ids >= 0)
        parts.append(pl.DataFrame({
            "item_id": pl.Series(item_ids[r], dtype=pl.String), "rank": (c + 1).astype(np.int32),
            "similar_item_id": pl.Series(item_ids[ids[r, c]], dtype=pl.String),
            "score": scores[r, c].astype(np.float32), "source": [source] * len(r)}))
    table = pl.concat(parts)
    n = warehouse.replace_table("similar_items", table)
    return dg.MaterializeResult(metadata={"rows": n, "k": config.k})


class VectorStoreConfig(dg.Config):
    table: str = "items"
    index_min_rows: int = Field(20_000, description="Build an ANN (IVF-PQ) index once the catalog has this many items")


@dg.asset(group_name=GROUP, kinds={"lancedb"}, deps=["catalog", "catalog_embeddings", "als_factors"],
          description="LanceDB table of items: text embedding, ALS factor, brand, category, price, title; "
                      "ANN index once the catalog is large enough, filterable by attributes")
def vector_store(context: dg.AssetExecutionContext, config: VectorStoreConfig, warehouse: Warehouse,
                 artifacts: ArtifactStore) -> dg.MaterializeResult:
    catalog = io.load_catalog(warehouse)
    E = artifacts.load("catalog_embeddings", "vectors")["vectors"]
    V = artifacts.load("als_factors", "item_factors")["item_factors"]
    data = pa.table({
        # Plain utf8 (polars hands over large_utf8), which LanceDB's scalar indexes accept.
        "item_id": catalog["item_id"].to_arrow().cast(pa.string()), "title": catalog["title"].to_arrow().cast(pa.string()),
        "brand": catalog["brand"].to_arrow().cast(pa.string()), "category": catalog["category"].to_arrow().cast(pa.string()),
        "price": catalog["price"].to_arrow(),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(E.ravel()), E.shape[1]),
        "factor": pa.FixedSizeListArray.from_arrays(pa.array(V.astype(np.float32).ravel()), V.shape[1]),
    })
    uri = str(paths.lancedb_path())
    db = lancedb.connect(uri)
    tbl = db.create_table(config.table, data=data, mode="overwrite")
    indexed = False
    if tbl.count_rows() >= config.index_min_rows:
        tbl.create_index(metric="cosine", vector_column_name="vector",
                         num_partitions=max(1, int(np.sqrt(tbl.count_rows()))), num_sub_vectors=max(1, E.shape[1] // 16))
        indexed = True
    for col in ("brand", "category"):
        try:
            tbl.create_index(col, config=BTree(), replace=True)
        except Exception as exc:  # scalar indexes are an optimisation only
            context.log.warning(f"scalar index on {col} skipped: {exc}")
    version = int(tbl.version)
    return dg.MaterializeResult(metadata={"uri": uri, "table": config.table, "version": version,
                                          "rows": tbl.count_rows(), "ann_index": indexed})
