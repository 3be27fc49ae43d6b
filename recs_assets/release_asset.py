"""The release asset: publish everything serving needs as one immutable, versioned release."""
import dagster as dg
import lancedb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from recs_assets import outputs, paths
from recs_assets.contract import contract_from_artifacts
from recs_assets.outputs import N_SHARDS
from recs_assets.resources import ArtifactStore, Warehouse
from recs_serving import release as release_format

GROUP = "release"


class ReleaseConfig(dg.Config):
    keep: int = Field(release_format.KEEP_RELEASES, ge=1, description="Releases kept on disk")
    vector_table: str = "items"


STREAM_BATCH = 256 * 1024  # rows per record batch written to a release table


def _table(con, sql: str) -> pl.DataFrame:
    return con.sql(sql).pl()


def _stream(con, sql: str) -> pa.RecordBatchReader:
    """A warehouse query as a reader the release writer consumes batch by batch: the query runs
    (on its own cursor) only when the writer reaches it, so one table at a time is in flight and
    none is ever whole in memory. Strings are large_string, as the polars frames wrote them."""
    schema = con.sql(sql).limit(0).to_arrow_table().schema
    schema = pa.schema([f.with_type(pa.large_string()) if f.type == pa.string() else f for f in schema])

    def batches():
        cur = con.cursor()
        try:
            for batch in cur.sql(sql).to_arrow_reader(STREAM_BATCH):
                yield batch.cast(schema)
        finally:
            cur.close()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _large(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(pa.large_string()) if f.type in (pa.string(), pa.large_string()) else f for f in schema])


def _prefix_through(col: pa.Array, bound: str) -> int:
    """Rows of the sorted string column ``col`` that are <= ``bound`` (binary search)."""
    lo, hi = 0, len(col)
    while lo < hi:
        mid = (lo + hi) // 2
        if col[mid].as_py() <= bound:
            lo = mid + 1
        else:
            hi = mid
    return lo


def merged_parts(files: list, key: str = "user_id", order: str = "rank", drop: tuple = ("shard",),
                 batch_rows: int = STREAM_BATCH) -> pa.RecordBatchReader:
    """The top-N parts, each already sorted by (user_id, rank) (a shard writes its users in the
    matrix's sorted order, ranks ascending), merged into that order batch by batch: the rows of
    ``SELECT ... ORDER BY user_id, rank`` over the parts, without sorting every row at once (at
    1M users DuckDB's sort of the 50M rows filled its memory limit, +1.7 GiB at 300K)."""
    pfs = [pq.ParquetFile(f) for f in files]
    cols = [n for n in pfs[0].schema_arrow.names if n not in drop]
    schema = _large(pa.schema([pfs[0].schema_arrow.field(n) for n in cols]))

    def batches():
        its = [pf.iter_batches(batch_size=batch_rows, columns=cols) for pf in pfs]
        buf: list = [None] * len(its)
        done = [False] * len(its)
        last: list = [None] * len(its)  # each part's last key read: the parts must be sorted
        while True:
            for j, it in enumerate(its):
                while not done[j] and (buf[j] is None or buf[j].num_rows == 0):
                    try:
                        t = pa.Table.from_batches([next(it)]).cast(schema)
                    except StopIteration:
                        done[j] = True
                        continue
                    k = t.column(key)
                    if t.num_rows and ((last[j] is not None and k[0].as_py() < last[j])
                                       or pc.any(pc.less(k.slice(1), k.slice(0, t.num_rows - 1))).as_py()):
                        raise RuntimeError(f"top-N part {files[j]} is not sorted by {key}; re-run the batch_topn shards")
                    if t.num_rows:
                        last[j] = k[t.num_rows - 1].as_py()
                    buf[j] = t
            live = [j for j in range(len(its)) if buf[j] is not None and buf[j].num_rows]
            if not live:
                return
            # every row up to the smallest last key of a part still reading is final: no later
            # batch of any part can hold a smaller key
            reading = [j for j in live if not done[j]]
            bound = min(buf[j].column(key)[buf[j].num_rows - 1].as_py() for j in reading) if reading else None
            take = []
            for j in live:
                n = buf[j].num_rows if bound is None else _prefix_through(buf[j].column(key), bound)
                if n:
                    take.append(buf[j].slice(0, n))
                    buf[j] = buf[j].slice(n)
            chunk = pa.concat_tables(take)
            chunk = chunk.take(pc.sort_indices(chunk, [(key, "ascending"), (order, "ascending")]))
            yield from chunk.combine_chunks().to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def _analyst_tables(con) -> dict:
    """The warehouse tables the README's SQL and the web pages read, so analysts can query a
    release without locking the warehouse; plus each customer's purchases with dates and quantities."""
    have = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'recs'").fetchall()}
    out = {n: _stream(con, f"SELECT * FROM recs.{n}") for n in release_format.ANALYST_TABLES if n in have}
    if "interactions" in have:
        out["user_history"] = _stream(con, """
            SELECT user_id, item_id, max(ts) AS last_ts, sum(quantity)::DOUBLE AS quantity, count(DISTINCT basket_id) AS purchases
            FROM recs.interactions WHERE user_id IS NOT NULL AND event = 'purchase'
            GROUP BY user_id, item_id
            QUALIFY row_number() OVER (PARTITION BY user_id ORDER BY max(ts) DESC, item_id) <= 200  -- what a page shows
            ORDER BY user_id, item_id""")
    return out


def _business_rules() -> dict:
    """RECS_HOME/business_rules.yaml as the release's ``business_rules`` table (reloaded with it)."""
    from recs_serving import business_rules

    f = business_rules.home_file(paths.recs_home())
    return {business_rules.TABLE: business_rules.to_table(business_rules.read_file(f))} if f else {}


@dg.asset(group_name=GROUP, kinds={"parquet", "numpy"},
          deps=["batch_topn", "similar_items", "vector_store", "evaluation", "association_rules", "covisitation",
                "popularity", "als_factors", "bpr_factors", "catalog_embeddings", "interaction_matrix", "catalog"],
          description="An immutable, versioned release under RECS_HOME/releases (Parquet, .npy, manifest with "
                      "the typed contract, metrics, row counts, checksums, pinned LanceDB version); CURRENT switches "
                      "atomically, old releases are pruned")
def release(context: dg.AssetExecutionContext, config: ReleaseConfig, warehouse: Warehouse,
            artifacts: ArtifactStore) -> dg.MaterializeResult:
    ids = artifacts.load("interaction_matrix", "user_ids", "item_ids")  # not the matrix: only its ids
    # The shards' parts, not the warehouse (shards never write it); they record the config they ran with.
    part_files, topn_params = outputs.parts_params()
    artifacts.save("topn_params", meta=topn_params)
    pop = artifacts.load("popularity")
    als = artifacts.load("als_factors")
    bpr = artifacts.load("bpr_factors")
    emb = artifacts.load("catalog_embeddings", "vectors")["vectors"]
    tbl = lancedb.connect(str(paths.lancedb_path())).open_table(config.vector_table)
    contract = contract_from_artifacts(artifacts)
    with warehouse.connect() as con:
        outputs.create_topn_view(con)
        catalog = _table(con, "SELECT item_id, title, description, brand, category, price, attributes FROM recs.catalog ORDER BY item_id")
        if not np.array_equal(catalog["item_id"].to_numpy().astype(object), ids["item_ids"]):
            raise RuntimeError("the catalog changed since interaction_matrix was built; re-materialize the graph")
        items = catalog.with_columns(
            pl.int_range(pl.len(), dtype=pl.Int32).alias("idx"),
            pl.Series("popularity", pop["global_score"].astype(np.float32)),
            pl.Series("trending", pop["trending"].astype(np.float32)),
        ).select("idx", "item_id", "title", "description", "brand", "category", "price", "popularity", "trending", "attributes")
        users = pl.DataFrame({"idx": np.arange(len(ids["user_ids"]), dtype=np.int32),
                              "user_id": pl.Series(ids["user_ids"], dtype=pl.String)})
        del ids
        metrics = _table(con, "SELECT * EXCLUDE (cut) FROM recs.evaluation").to_dicts()
        # The big tables (user_items, topn: tens of millions of rows at 1M users) stream from DuckDB
        # into the release's Parquet files; DuckDB sorts the top-N parts under its memory limit.
        tables = {
            "items": items, "users": users,
            "user_items": _stream(con, "SELECT user_id, item_id, weight, purchases FROM recs.user_items"),
            "topn": merged_parts(part_files),
            "similar_items": _stream(con, "SELECT item_id, rank, similar_item_id, score, source FROM recs.similar_items"),
            "covisitation": _stream(con, "SELECT item_id, neighbor_id, score FROM recs.covisitation"),
            "item_similarity": _stream(con, "SELECT item_id, neighbor_id, score FROM recs.item_similarity"),
            "rules": _stream(con, "SELECT * FROM recs.association_rules"),
            "popularity": _stream(con, "SELECT scope, key, item_id, score, rank FROM recs.popularity"),
            **_analyst_tables(con), **_business_rules()}
        path = release_format.write_release(
            paths.recs_home(), contract=contract, extra={"topn_shards": N_SHARDS}, tables=tables,
            arrays={"als_user_factors": als["user_factors"], "als_item_factors": als["item_factors"],
                    "bpr_user_factors": bpr["user_factors"], "bpr_item_factors": bpr["item_factors"],
                    "item_embeddings": emb},
            run_id=context.run.run_id, metrics={"evaluation": metrics},
            lancedb={"uri": str(paths.lancedb_path()), "table": config.vector_table, "version": int(tbl.version)},
            keep=config.keep,
        )
    manifest = release_format.open_release(paths.recs_home(), path.name).manifest
    return dg.MaterializeResult(metadata={
        "version": manifest["version"], "path": str(path),
        "row_counts": dg.MetadataValue.json(manifest["row_counts"]),
        "releases_on_disk": len(release_format.list_versions(paths.recs_home())),
    })
