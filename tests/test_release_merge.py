"""The top-N parts (written a block of users at a time) and the release's top-N table (the sorted parts merged batch by batch, no global sort)."""
import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from recs_assets.outputs import shard_of
from recs_assets.release_asset import merged_parts


def _parts(tmp_path, n_users=60, n_shards=3, seed=0):
    rng = np.random.default_rng(seed)
    users = np.array(sorted(f"u{rng.integers(0, 10**6):06d}-{i}" for i in range(n_users)), dtype=object)
    shard = shard_of(users, n_shards)
    files = []
    for k in range(n_shards):
        rows = []
        for u in users[shard == k]:  # a shard writes its users in sorted order, ranks ascending
            n = int(rng.integers(1, 9))
            rows += [{"shard": k, "user_id": u, "rank": r + 1, "item_id": f"i{rng.integers(0, 50)}",
                      "score": float(rng.random()), "reason": "for_you"} for r in range(n)]
        f = tmp_path / f"part-{k}.parquet"
        pl.DataFrame(rows, schema={"shard": pl.Int32, "user_id": pl.String, "rank": pl.Int32, "item_id": pl.String,
                                   "score": pl.Float32, "reason": pl.String}).write_parquet(f)
        files.append(f)
    return files


@pytest.mark.parametrize("batch_rows", [1, 3, 7, 1000])
def test_merge_equals_a_sort_of_every_row(tmp_path, batch_rows):
    files = _parts(tmp_path)
    got = merged_parts(files, batch_rows=batch_rows).read_all()
    listed = ", ".join(f"'{f}'" for f in files)
    want = duckdb.sql(f"SELECT * EXCLUDE (shard) FROM read_parquet([{listed}]) ORDER BY user_id, rank").arrow()
    want = want.read_all() if isinstance(want, pa.RecordBatchReader) else want
    assert got.column_names == ["user_id", "rank", "item_id", "score", "reason"]
    assert got.schema.field("user_id").type == pa.large_string()
    assert got.num_rows == want.num_rows > 0
    for name in got.column_names:
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


def test_an_unsorted_part_is_refused(tmp_path):
    files = _parts(tmp_path)
    t = pl.read_parquet(files[1])
    t.reverse().write_parquet(files[1])
    with pytest.raises(RuntimeError, match="not sorted by user_id"):
        merged_parts(files, batch_rows=4).read_all()


def test_a_part_written_in_blocks_equals_the_whole_table(tmp_path, monkeypatch):
    from recs_assets import outputs

    monkeypatch.setenv("RECS_HOME", str(tmp_path))
    rng = np.random.default_rng(3)
    users = np.array([f"u{i:04d}" for i in range(50)], dtype=object)
    items = np.array([f"i{i:03d}" for i in range(40)], dtype=object)
    ids = rng.integers(-1, 40, (50, 6))
    scores = rng.random((50, 6)).astype(np.float32)
    whole = outputs.topn_table(users, items, ids, scores, 1)
    path, rows = outputs.write_part(outputs.topn_chunks(users, items, ids, scores, 1, chunk=7), 1, {"n": 6})
    assert rows == whole.height == int((ids >= 0).sum())
    assert pl.read_parquet(path).equals(whole)
    path, rows = outputs.write_part(outputs.topn_chunks(users[:0], items, ids[:0], scores[:0], 1), 1, {"n": 6})
    assert rows == 0 and pl.read_parquet(path).schema == whole.schema
