"""LanceDB hygiene: versions no release pins are deleted, pinned ones stay readable, the
store's size stays flat over repeated vector_store runs."""
import json

import dagster as dg
import lancedb
import numpy as np
import polars as pl
import pytest

from recs_assets import definitions, outputs, paths
from recs_assets.resources import ArtifactStore, Warehouse

pytestmark = pytest.mark.xdist_group("lancedb_hygiene")


def _size(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _inputs(n_items: int = 300):
    rng = np.random.default_rng(0)
    ids = [f"I{i:04d}" for i in range(n_items)]
    with Warehouse().connect() as con:
        con.execute("CREATE SCHEMA IF NOT EXISTS recs")
        con.register("_c", pl.DataFrame({
            "item_id": ids, "title": [f"t{i}" for i in range(n_items)], "description": [None] * n_items,
            "brand": [f"b{i % 7}" for i in range(n_items)], "category": [f"c{i % 5}" for i in range(n_items)],
            "price": rng.random(n_items), "attributes": [None] * n_items},
            schema_overrides={"description": pl.String, "attributes": pl.String}))
        con.execute("CREATE OR REPLACE TABLE recs.catalog AS SELECT * FROM _c")
    art = ArtifactStore()
    art.save("catalog_embeddings", vectors=rng.random((n_items, 384)).astype(np.float32))
    art.save("als_factors", user_factors=np.zeros((1, 16), np.float32),
             item_factors=rng.random((n_items, 16)).astype(np.float32))


def _release(home, version: int, keep: int = 3):
    """What the release asset records: a manifest pinning the store's version; the oldest go."""
    d = home / "releases" / f"{version:06d}"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"lancedb": {"uri": str(paths.lancedb_path()), "table": "items",
                                                              "version": version}}))
    for old in sorted((home / "releases").iterdir())[:-keep]:
        (old / "manifest.json").unlink()
        old.rmdir()


def test_store_size_stays_flat_and_pinned_versions_stay_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("RECS_HOME", str(tmp_path))
    # runs here are a fraction of a second apart (minutes in production): a tighter margin
    monkeypatch.setattr(outputs, "PRUNE_MARGIN", outputs.timedelta(milliseconds=100))
    _inputs()
    sizes, versions = [], []
    with dg.DagsterInstance.ephemeral() as instance:
        for _ in range(10):
            result = dg.materialize(definitions.all_assets, selection=dg.AssetSelection.assets("vector_store"),
                                    resources=definitions.resources, instance=instance)
            assert result.success
            v = result.asset_materializations_for_node("vector_store")[0].metadata["version"].value
            versions.append(v)
            _release(tmp_path, v)
            sizes.append(_size(tmp_path / "lancedb"))
    assert versions == sorted(set(versions))
    # flat: after the keep window fills, the store does not grow run over run. Left unpruned it
    # grows by one table's worth (~sizes[0]) a run, 10x by the tenth; pruned, it holds the kept
    # releases' versions and the few between them (how many depends on the machine's speed)
    assert max(sizes) <= 6 * sizes[0], sizes
    tbl = lancedb.connect(str(paths.lancedb_path())).open_table("items")
    left = {int(v["version"]) for v in tbl.list_versions()}
    assert set(versions[-3:]) <= left            # every kept release's version is still there
    # versions of pruned releases are gone (the last one may sit within the margin of the window)
    assert not (set(versions[:5]) & left)
    for v in versions[-3:]:
        tbl.checkout(v)
        assert tbl.count_rows() == 300


def test_pinned_versions_reads_only_matching_manifests(tmp_path):
    uri = str(tmp_path / "lancedb")
    for name, pin in {"a": {"uri": uri, "table": "items", "version": 4},
                      "b": {"uri": uri, "table": "other", "version": 5},
                      "c": {"uri": str(tmp_path / "elsewhere"), "table": "items", "version": 6}}.items():
        (tmp_path / "releases" / name).mkdir(parents=True)
        (tmp_path / "releases" / name / "manifest.json").write_text(json.dumps({"lancedb": pin}))
    (tmp_path / "releases" / "broken").mkdir()
    (tmp_path / "releases" / "broken" / "manifest.json").write_text("{not json")
    assert outputs.pinned_versions(tmp_path, uri, "items") == {4}


def test_ann_index_is_built_from_the_row_count_and_finds_the_exact_neighbours(tmp_path, monkeypatch):
    monkeypatch.setenv("RECS_HOME", str(tmp_path))
    _inputs(1200)
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(definitions.all_assets, selection=dg.AssetSelection.assets("vector_store"),
                                resources=definitions.resources, instance=instance,
                                run_config={"ops": {"vector_store": {"config": {"index_min_rows": 1000}}}})
    assert result.success
    assert result.asset_materializations_for_node("vector_store")[0].metadata["ann_index"].value is True
    tbl = lancedb.connect(str(paths.lancedb_path())).open_table("items")
    vector_index = [i for i in tbl.list_indices() if "vector" in i.columns]
    assert vector_index and vector_index[0].index_type == "IvfFlat"
    assert outputs.ann_index_params(1200)["num_partitions"] == 35
    E = ArtifactStore().load("catalog_embeddings", "vectors")["vectors"]
    E = E / np.linalg.norm(E, axis=1, keepdims=True)
    ids = tbl.to_arrow()["item_id"].to_pylist()
    hits = 0
    for q in range(0, 1200, 60):
        got = tbl.search(E[q]).metric("cosine").nprobes(35).limit(10).to_arrow()["item_id"].to_pylist()
        exact = [ids[j] for j in np.argsort(-(E @ E[q]))[:10]]
        hits += len(set(got) & set(exact))
    assert hits == 10 * 20  # every partition probed: flat partitions are exact
