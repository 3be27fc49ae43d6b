"""Output assets: per-user top-N (sharded), similar items, the LanceDB vector store."""
import json
import os
import time
import uuid
import zlib
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import lancedb
from lancedb.index import BTree, IvfFlat
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from recs_assets import io, memory, modeling, paths
from recs_assets.features import load_matrix
from recs_assets.progress import Progress
from recs_assets.resources import ArtifactStore, Warehouse
from recs_assets.tuning import apply_tuned
from recs_assets import table_meta
from recs_kernels import blend, candidates, ivf, topk

GROUP = "outputs"
DEFAULT_SHARDS = 2


def shard_count() -> int:
    """The one place the shard count comes from: DEFAULT_SHARDS, or RECS_TOPN_SHARDS to override.

    Dagster needs the partition keys when the definitions load, so this is read once then; every
    process that runs shards (launcher and Celery workers) must see the same value, which
    batch_topn verifies against the run's recs/topn_shards tag.
    """
    raw = os.environ.get("RECS_TOPN_SHARDS", "").strip()
    if not raw:
        return DEFAULT_SHARDS
    if not raw.isdigit() or not 1 <= int(raw) <= 4096:
        raise ValueError(f"RECS_TOPN_SHARDS must be an integer in 1..4096, got {raw!r}")
    return int(raw)


N_SHARDS = shard_count()
shards = dg.StaticPartitionsDefinition([str(i) for i in range(N_SHARDS)])
SHARDS_TAG = "recs/topn_shards"
HOME_TAG = "recs/home_id"


def home_id(home: Path | None = None) -> str:
    """An id stored in RECS_HOME, so a worker can tell that it sees the launcher's RECS_HOME."""
    f = (home or paths.recs_home()) / ".recs-home-id"
    if not f.exists():
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.parent / f".recs-home-id.{uuid.uuid4().hex}.tmp"
        tmp.write_text(uuid.uuid4().hex)
        try:
            os.link(tmp, f)  # the first creator wins; concurrent ones read its id
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return f.read_text().strip()


def parts_dir(n_shards: int = N_SHARDS, home: Path | None = None) -> Path:
    """Shard parts live in a directory per shard count, so parts of another layout never mix in."""
    return (home or paths.recs_home()) / "topn" / f"{n_shards}-shards"


def part_path(shard: int, n_shards: int = N_SHARDS, home: Path | None = None) -> Path:
    return parts_dir(n_shards, home) / f"part-{shard}.parquet"


def _atomic_write(final: Path, write) -> None:
    """write(tmp) then rename over `final`: readers see the old file or the new one, never half of one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    # Leftovers of writers killed mid-write (kill -9, OOM); an hour is far beyond any write.
    for stale in final.parent.glob(f".{final.name}.*.tmp"):
        try:
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
        except FileNotFoundError:
            pass


def write_part(table, shard: int, params: dict, n_shards: int = N_SHARDS) -> tuple[Path, int]:
    """One shard's rows as a Parquet part (and its parameters beside it); no lock, no warehouse.
    ``table``: a frame, or frames (chunks of it) written one after another. Returns (path, rows)."""
    final = part_path(shard, n_shards)
    _atomic_write(final.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(params, sort_keys=True, default=str)))
    frames = [table] if isinstance(table, pl.DataFrame) else table
    rows = 0

    def write(tmp):
        nonlocal rows
        writer = None
        try:
            for frame in frames:
                t = frame.to_arrow()
                writer = writer or pq.ParquetWriter(tmp, t.schema, compression="zstd")
                writer.write_table(t)
                rows += t.num_rows
                del t, frame
                memory.trim()  # else each written block stays resident as freed memory
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError("write_part needs at least one frame (an empty one gives the schema)")

    _atomic_write(final, write)
    return final, rows


def read_parts(n_shards: int = N_SHARDS, home: Path | None = None) -> tuple[pl.DataFrame, dict]:
    """Every shard's rows and the parameters they were computed with; fails naming missing shards."""
    files, params = parts_params(n_shards, home)
    return pl.read_parquet(files), params


def parts_params(n_shards: int = N_SHARDS, home: Path | None = None) -> tuple[list[Path], dict]:
    """Every shard's part file and the parameters they were computed with (the same for all);
    fails naming missing shards."""
    missing = [k for k in range(n_shards) if not part_path(k, n_shards, home).exists()]
    if missing:
        raise RuntimeError(f"batch_topn shards {missing} are not materialized (no part under "
                           f"{parts_dir(n_shards, home)}); the release waits for every shard")
    params = [json.loads(part_path(k, n_shards, home).with_suffix(".json").read_text()) for k in range(n_shards)]
    if any(p != params[0] for p in params[1:]):
        raise RuntimeError("batch_topn shards were computed with different parameters; re-run every shard")
    return [part_path(k, n_shards, home) for k in range(n_shards)], params[0]


def create_topn_view(con, n_shards: int = N_SHARDS) -> None:
    """recs.batch_topn as a view over the parts (replaces the table older versions wrote)."""
    kind = con.execute("SELECT table_type FROM information_schema.tables WHERE table_schema = 'recs' "
                       "AND table_name = 'batch_topn'").fetchall()
    if kind and kind[0][0] != "VIEW":
        con.execute("DROP TABLE recs.batch_topn")
    files = ", ".join("'" + str(part_path(k, n_shards)).replace("'", "''") + "'" for k in range(n_shards))
    con.execute(f"CREATE OR REPLACE VIEW recs.batch_topn AS SELECT * FROM read_parquet([{files}])")


def shard_of(user_ids: np.ndarray, n_shards: int = N_SHARDS) -> np.ndarray:
    """Stable across runs, machines and Python versions (unlike hash())."""
    return np.fromiter((zlib.crc32(str(u).encode()) % n_shards for u in user_ids), dtype=np.int32, count=len(user_ids))


class TopNConfig(dg.Config):
    n: int = Field(50, ge=1, le=1000, description="Items per user")
    blend: modeling.BlendParams = Field(default_factory=modeling.BlendParams)
    request: modeling.RequestParams = Field(default_factory=modeling.RequestParams)
    # The candidate path's cost per user does not grow with the catalogue (an inverted-file index
    # over the factor part, the history's neighbours, trending; benchmarks/bench_topn.py); dense
    # costs users x items, so it wins only on small catalogues.
    exact: bool | None = Field(None, description="Score every item of the catalogue (dense) instead of candidates "
                                                 "(the nprobe best clusters of an index over the item factors, the "
                                                 "history's neighbours and trending, each scored exactly); null: "
                                                 "dense below candidates_min_items items")
    candidates_min_items: int = Field(30_000, ge=1, description="Catalogue size from which the candidate path runs "
                                                                "when exact is null")
    nprobe: int = Field(8, ge=1, description="Index clusters scanned per user (candidate path)")
    cluster_size: int = Field(256, ge=8, description="Mean items per index cluster (candidate path)")
    # on the bundled data's models at ~5% of the catalogue scanned, the dense top-10 recovered:
    # 0.88 with no support, 0.964 with 50, 0.989 with 150, 0.997 with 300 (benchmarks/bench_topn.py)
    max_support: int = Field(200, ge=0, description="Neighbour-part items scored per user beyond the scanned "
                                                    "clusters, most promising first (candidate path)")

    def dense(self, n_items: int) -> bool:
        return self.exact if self.exact is not None else n_items < self.candidates_min_items


def load_blend(artifacts: ArtifactStore, request: modeling.RequestParams):
    """The served blend's sources from the model artifacts, and the users' factor rows."""
    als = artifacts.load("als_factors")
    bpr = artifacts.load("bpr_factors")
    pop = artifacts.load("popularity", "trending", "global_score")
    bl = modeling.make_blend(
        als_items=als["item_factors"], bpr_items=bpr["item_factors"],
        item_sim=io.load_csr(artifacts, "item_similarity"), covis=io.load_csr(artifacts, "covisitation"),
        rules=io.load_csr(artifacts, "rules"), embeddings=artifacts.load("catalog_embeddings", "vectors")["vectors"],
        trending=pop["trending"], popularity=pop["global_score"], content_dim=request.content_dim)
    return bl, als["user_factors"], bpr["user_factors"]


@dg.asset(group_name=GROUP, kinds={"numba", "parquet"}, partitions_def=shards,
          deps=["als_factors", "bpr_factors", "item_similarity", "covisitation", "association_rules",
                "catalog_embeddings", "popularity", "interaction_matrix", "evaluation"],
          description="Top-N per known user from the served blend (recs_kernels.blend.SOURCES), "
                      "already-seen items excluded; partitioned by a stable hash of the user id; recs.batch_topn")
def batch_topn(context: dg.AssetExecutionContext, config: TopNConfig, artifacts: ArtifactStore) -> dg.MaterializeResult:
    config = apply_tuned(config, artifacts)  # the weights/MMR the evaluation chose on its validation window
    shard = int(context.partition_key)
    expected = context.run.tags.get(SHARDS_TAG)
    if expected and int(expected) != N_SHARDS:
        raise RuntimeError(f"this process has {N_SHARDS} top-N shards but the run was launched with {expected}; "
                           "set RECS_TOPN_SHARDS the same on the launcher and every worker")
    if context.run.tags.get(HOME_TAG, home_id()) != home_id():
        raise RuntimeError(f"this process's RECS_HOME ({paths.recs_home()}) is not the launcher's; every worker "
                           "must see the same RECS_HOME (shared storage)")
    m = load_matrix(artifacts)
    rows = np.flatnonzero(shard_of(m.user_ids) == shard)
    bl, ua, ub = load_blend(artifacts, config.request)
    history = blend.cap_history(m.weights[rows], config.request.history_cap)
    if config.dense(bl.n_items):
        ids, scores = bl.top_k(config.blend.weights(), config.n, als_users=ua[rows], bpr_users=ub[rows],
                               history=history, exclude=m.binary[rows])
    else:
        ids, scores = candidates.top_k(bl, config.blend.weights(), config.n, als_users=ua[rows], bpr_users=ub[rows],
                                       history=history, exclude=m.binary[rows], nprobe=config.nprobe,
                                       cluster_size=config.cluster_size, max_support=config.max_support,
                                       callback=Progress(context.log.info, "top-N", len(rows), unit="users"))
    del history
    # Shards run at once on several workers: each writes its own part, the warehouse is not touched
    # (DuckDB admits one process per file); recs.batch_topn is a view over the parts. Written a
    # block of users at a time: a shard's rows at 1M users (25M) were a 1.4 GiB frame.
    path, n_rows = write_part(topn_chunks(m.user_ids[rows], m.item_ids, ids, scores, shard), shard, config.model_dump())
    return dg.MaterializeResult(metadata={"shard": shard, "users": len(rows), "rows": n_rows, "path": str(path),
                                          "n": config.n, "blend": dg.MetadataValue.json(config.blend.weights())})


TOPN_CHUNK_USERS = 16_384


def topn_chunks(user_ids: np.ndarray, item_ids: np.ndarray, ids: np.ndarray, scores: np.ndarray, shard: int,
                chunk: int = TOPN_CHUNK_USERS):
    """``topn_table`` a block of ``chunk`` users at a time (at least one block, maybe empty)."""
    for lo in range(0, max(len(user_ids), 1), chunk):
        yield topn_table(user_ids[lo:lo + chunk], item_ids, ids[lo:lo + chunk], scores[lo:lo + chunk], shard)


def topn_table(user_ids: np.ndarray, item_ids: np.ndarray, ids: np.ndarray, scores: np.ndarray, shard: int) -> pl.DataFrame:
    """A shard's rows (users in the order given, ranks ascending) from its top-k arrays: ids are
    gathered from Series of the shard's users and of the items (no object array and no Python
    string per row: 25M rows a shard at 1M users)."""
    r_idx, c_idx = np.nonzero(ids >= 0)
    n = len(r_idx)
    return pl.DataFrame({
        "shard": np.full(n, shard, np.int32),
        "user_id": pl.Series(user_ids, dtype=pl.String).gather(r_idx),
        "rank": (c_idx + 1).astype(np.int32),
        "item_id": pl.Series(item_ids, dtype=pl.String).gather(ids[r_idx, c_idx]),
        "score": scores[r_idx, c_idx].astype(np.float32),
        "reason": pl.repeat("for_you", n, dtype=pl.String, eager=True),
    })


class SimilarConfig(dg.Config):
    k: int = Field(20, ge=1, le=500)
    # exact costs items x items (quadratic); the index costs nprobe * cluster_size per item
    approx_min_items: int = Field(20_000, ge=1, description="Catalogue size from which an inverted-file index "
                                                            "(recs_kernels.ivf) replaces the exact all-pairs search")
    nprobe: int = Field(24, ge=1, description="Index clusters scanned per item (approximate search)")


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
        if M.shape[0] >= config.approx_min_items:
            ids, scores = ivf.similar(M, k, nprobe=config.nprobe)
        else:
            ids, scores = topk.similar(M, k)
        r, c = np.nonzero(ids >= 0)
        parts.append(pl.DataFrame({
            "item_id": pl.Series(item_ids[r], dtype=pl.String), "rank": (c + 1).astype(np.int32),
            "similar_item_id": pl.Series(item_ids[ids[r, c]], dtype=pl.String),
            "score": scores[r, c].astype(np.float32), "source": [source] * len(r)}))
    table = pl.concat(parts)
    n = warehouse.replace_table("similar_items", table)
    return dg.MaterializeResult(metadata={**table_meta.warehouse_metadata(warehouse, "similar_items"), "rows": n, "k": config.k,
                                          "search": "exact" if len(item_ids) < config.approx_min_items else
                                          f"ivf nprobe {config.nprobe}"})


ANN_SAMPLE = 32_768  # vectors the partitions' k-means trains on, whatever the catalogue's size
ANN_ITERATIONS = 20


def ann_index_params(n_rows: int) -> dict:
    """The ANN index from the row count, so that its build grows about linearly: IVF_FLAT with
    sqrt(n) partitions whose k-means trains on a sample of a fixed size for a bounded number of
    iterations (lance's defaults, 256 rows per partition x 50 iterations, cost n^1.5 x 50). Flat
    partitions, not PQ: at 30K real catalogue embeddings IVF-PQ (24 sub-vectors) took 45 CPU s
    for recall@10 0.77 against exact, IVF_FLAT 8 CPU s for 1.00, with queries as fast
    (benchmarks/bench_vector_store.py)."""
    partitions = max(1, int(round(np.sqrt(n_rows))))
    return {"index_type": "IVF_FLAT", "num_partitions": partitions,
            "sample_rate": max(16, ANN_SAMPLE // partitions), "max_iterations": ANN_ITERATIONS}


class VectorStoreConfig(dg.Config):
    table: str = "items"
    index_min_rows: int = Field(20_000, description="Build an ANN (IVF_FLAT) index once the catalog has this many items")
    prune: bool = Field(True, description="Compact the store and delete table versions no release on disk pins")


# A version written this close before the oldest pinned one is kept too: lance measures
# "older than" from its own clock, read a moment after ours (compaction runs before, apart).
PRUNE_MARGIN = timedelta(seconds=1)


def pinned_versions(home: Path, uri: str, table: str) -> set[int]:
    """LanceDB versions of `table` that releases on disk (the current one and the kept ones) pin."""
    out: set[int] = set()
    for manifest in (home / "releases").glob("*/manifest.json"):
        try:
            pin = json.loads(manifest.read_text()).get("lancedb") or {}
            if pin.get("table") == table and Path(pin["uri"]).resolve() == Path(uri).resolve():
                out.add(int(pin["version"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a half-written or foreign manifest pins nothing
    return out


def prune_versions(tbl, pinned: set[int]) -> dict:
    """Compact `tbl` and delete every version older than the oldest pinned one (all but the
    latest when nothing is pinned). Lance prunes by age only, and tags would make it fail, so
    versions between pinned ones stay: at most a few per kept release, so the size is flat."""
    import warnings

    tbl.optimize(cleanup_older_than=timedelta(days=36500))  # compaction alone (compact_files needs pylance)
    versions = tbl.list_versions()
    stamps = [v["timestamp"] for v in versions if int(v["version"]) in pinned]
    if stamps:
        oldest = min(stamps)
        now = datetime.now(oldest.tzinfo)
        older_than = max(now - oldest + PRUNE_MARGIN, timedelta(0))
    else:
        older_than = timedelta(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "removes every version": that is the point
        # This asset is the table's only writer: files of killed writes can go at once.
        tbl.optimize(cleanup_older_than=older_than, delete_unverified=True)
    after = tbl.list_versions()
    return {"versions_before": len(versions), "versions_after": len(after), "pinned": sorted(pinned)}


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
        p = ann_index_params(tbl.count_rows())
        tbl.create_index("vector", replace=True, config=IvfFlat(
            distance_type="cosine", num_partitions=p["num_partitions"], sample_rate=p["sample_rate"],
            max_iterations=p["max_iterations"]))
        indexed = True
    for col in ("brand", "category"):
        try:
            tbl.create_index(col, config=BTree(), replace=True)
        except Exception as exc:  # scalar indexes are an optimisation only
            context.log.warning(f"scalar index on {col} skipped: {exc}")
    hygiene = {}
    if config.prune:
        hygiene = prune_versions(tbl, pinned_versions(paths.recs_home(), uri, config.table))
        # Other tables here (factor exports) are pinned by no release: their latest version only.
        for name in db.list_tables().tables:
            if name != config.table:
                try:
                    prune_versions(db.open_table(name), set())
                except Exception as exc:  # hygiene must never fail the store
                    context.log.warning(f"pruning LanceDB table {name} skipped: {exc}")
    version = int(tbl.version)
    return dg.MaterializeResult(metadata={"uri": uri, "table": config.table, "version": version,
                                          "rows": tbl.count_rows(), "ann_index": indexed,
                                          "pinned_versions": ", ".join(map(str, hygiene.get("pinned", []))) or "none",
                                          "versions_kept": hygiene.get("versions_after", len(tbl.list_versions()))})
