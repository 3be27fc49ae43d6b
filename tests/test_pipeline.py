"""The whole graph on a small sample of the bundled data, through real Dagster runs."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl
import pytest

from recs_assets import definitions, orchestration, outputs, pipeline, quality
from recs_assets.resources import ArtifactStore
from recs_kernels.sources import SOURCES
from recs_serving import release as release_format

from conftest import BUNDLED

pytestmark = pytest.mark.xdist_group("pipeline")

SMALL = {
    "ops": {
        "ingest": {"config": {"sources": [{"kind": "online_retail", "path": ""}]}},
        "als_factors": {"config": {"factors": 16, "iterations": 5}},
        "bpr_factors": {"config": {"factors": 16, "iterations": 100}},
        "frequent_itemsets": {"config": {"min_support": 0.02}},
        "batch_topn": {"config": {"n": 20}},
        "evaluation": {"config": {"max_users": 100, "budget_seconds": 2, "hyper_budget_seconds": 2}},
    }
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """One customer in eight (and their invoices), plus guest invoices, keeping the time span."""
    path = tmp_path_factory.mktemp("data") / "sample.parquet"
    df = pl.read_parquet(BUNDLED)
    keep = df.filter((pl.col("CustomerID") % 8 == 0) | (pl.col("CustomerID").is_null() & (pl.col("InvoiceNo").str.slice(-1) == "0")))
    keep.write_parquet(path)
    return path


def run_config(sample, **overrides):
    cfg = json.loads(json.dumps(SMALL))
    cfg["ops"]["ingest"]["config"]["sources"][0]["path"] = str(sample)
    for op, c in overrides.items():
        cfg["ops"].setdefault(op, {"config": {}})["config"].update(c)
    return cfg


@pytest.fixture(scope="module")
def built(sample, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("RECS_HOME", str(home))
    (home / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        runs = pipeline.run_all(instance, run_config=run_config(sample), shards_mode="in_process")
        yield home, runs, instance
    mp.undo()


def test_every_asset_and_check_succeeds(built):
    home, runs, instance = built
    materialized = set()
    for name, run_id in runs.items():
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS, name
        materialized |= {e.dagster_event.asset_key.to_user_string()
                         for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)}
        for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
            ev = e.dagster_event.event_specific_data
            assert ev.passed, ev.check_name
    expected = {k.to_user_string() for k in definitions.defs.resolve_all_asset_keys()}
    assert materialized == expected


def test_release_serves_the_tuned_blend(built):
    """The weights and MMR lambda the evaluation chose on its validation window reach the top-N and the contract."""
    # Runs before test_failing_check_leaves_previous_release_current, which re-evaluates in this home.
    home, _, _ = built
    tuned = ArtifactStore(root=str(home / "artifacts")).meta("tuned_blend")
    assert tuned["tuned"] is True and set(tuned["weights"]) == set(SOURCES)
    contract = release_format.read_contract(release_format.open_release(home).manifest)
    assert contract.weights.model_dump() == tuned["weights"]
    assert contract.mmr_lambda == tuned["mmr_lambda"]
    # every use case's own blend, as the evaluation chose it (the homepage's is the batch table's)
    assert set(tuned["blends"]) == set(release_format.USE_CASES)
    for uc, b in tuned["blends"].items():
        assert contract.blend(uc).model_dump() == b, uc
    # the hyperparameters it chose: recent_weight at request time now; ALS/decay for the next fits
    assert contract.recent_weight == tuned["hyperparameters"]["recent_weight"]


def test_runs_are_named_jobs_and_can_be_re_executed(built):
    home, runs, instance = built
    jobs = {r.job_name for r in instance.get_runs()}
    assert jobs == {"recs_models", "recs_topn_shards", "recs_publish"}
    shard_runs = instance.get_runs(dg.RunsFilter(job_name="recs_topn_shards"))
    assert sorted(r.tags["dagster/partition"] for r in shard_runs) == outputs.shards.get_partition_keys()
    parent = shard_runs[0]
    # As the UI's "Re-execute" does: the parent's job (by name, from the definitions) and its tags.
    tags = {k: v for k, v in parent.tags.items() if k.startswith(("dagster/partition", "recs/topn", "recs/home"))}
    with dg.execute_job(pipeline._recon("recs_topn_shards"), instance, tags=tags,
                        reexecution_options=dg.ReexecutionOptions(parent_run_id=parent.run_id)) as result:
        assert result.success
        assert result.dagster_run.tags["dagster/partition"] == parent.tags["dagster/partition"]
        assert result.dagster_run.parent_run_id == parent.run_id


def test_release_round_trips_through_the_reader(built):
    home, _, _ = built
    rel = release_format.open_release(home)
    rel.verify()
    m = rel.manifest
    assert m["dagster_run_id"] and m["row_counts"]["items"] > 100
    items = rel.table("items").to_pydict()
    assert rel.array("als_item_factors").shape[0] == len(items["item_id"])
    assert rel.array("item_embeddings").shape == (len(items["item_id"]), 384)
    topn = pl.from_arrow(rel.table("topn"))
    assert set(topn["item_id"].unique().to_list()) <= set(items["item_id"])
    assert {r["model"] for r in m["metrics"]["evaluation"]} == {*SOURCES, "served"}
    assert m["lancedb"]["version"] >= 1


def test_pipeline_release_loads_into_the_recommender_and_answers_like_its_batch_table(built):
    """A release the real pipeline published: its contract carries the run's configs, it loads
    into Recommender, and a known user's answer (no recent events, MMR off) is its batch row."""
    from recs_serving import Recommender

    home, _, _ = built
    rf = release_format.open_release(home)
    contract = release_format.read_contract(rf.manifest)
    assert contract.als.factors == 16 and contract.candidates.topn == 20  # SMALL's configs, not defaults
    assert contract.configs["bpr_factors"]["iterations"] == 100
    rec = Recommender(home, watch=False)
    try:
        rel = rec.release
        assert rec.contract == contract and rel.item_sim.indices.size > 0  # item_similarity.parquet is read
        topn = pl.from_arrow(rf.table("topn"))
        users = topn["user_id"].unique().sort().to_list()[:5]
        for uid in users:
            res = rec.recommend(user_id=uid, k=10, mmr_lambda=1.0)
            row = topn.filter(pl.col("user_id") == uid).sort("rank")["item_id"].to_list()[:10]
            assert res.metadata["strategy"] == "topn" and [i.item_id for i in res.items] == row
        recent = [{"item_id": rel.item_ids[0], "timestamp": 1_300_000_000_000, "event": "view"}]
        assert len(rec.recommend(user_id=users[0], k=5, recent=recent).items) == 5
        assert len(rec.recommend(user_id="nobody", k=5, recent=recent).items) == 5
        assert rec.similar_items(rel.item_ids[1], 5).items
    finally:
        rec.close()


def test_warehouse_tables_exist(built):
    home, _, _ = built
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema='recs'").fetchall()}
    assert {"interactions", "catalog", "quarantine", "user_items", "baskets", "frequent_itemsets", "association_rules",
            "covisitation", "popularity", "als_user_factors", "als_item_factors", "bpr_item_factors", "batch_topn",
            "similar_items", "evaluation"} <= tables


def test_second_run_reuses_embedding_cache(built, sample):
    home, _, instance = built
    result = dg.materialize([*definitions.all_assets], selection=dg.AssetSelection.assets("catalog_embeddings"),
                            resources=definitions.resources, instance=instance)
    meta = result.asset_materializations_for_node("catalog_embeddings")[0].metadata
    assert meta["embedded"].value == 0 and meta["reused"].value == meta["items"].value > 0


def test_failing_check_leaves_previous_release_current(built, sample):
    home, _, instance = built
    before = release_format.current_version(home)
    result = dg.materialize([*definitions.all_assets, *quality.CHECKS],
                            selection=orchestration.PUBLISH | dg.AssetSelection.assets("evaluation"),
                            resources=definitions.resources, instance=instance, raise_on_error=False,
                            run_config={"ops": {"evaluation": {"config": {**SMALL["ops"]["evaluation"]["config"],
                                                                          "min_ratio_over_popularity": 1000.0}}}})
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["served_beats_popularity"] is False
    assert "release" not in {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert release_format.current_version(home) == before


SHARD_SCRIPT = """
import sys, dagster as dg
from recs_assets import definitions, orchestration
r = dg.materialize(definitions.all_assets, selection=orchestration.SHARDS, partition_key=sys.argv[1],
                   resources=definitions.resources, run_config={"ops": {"batch_topn": {"config": {"n": 5}}}})
sys.exit(0 if r.success else 1)
"""


def test_two_shards_materialize_in_parallel_without_the_warehouse(built):
    """Two shard runs at once, in two processes (as two workers would), while another process
    holds the warehouse file: shards write Parquet parts and never wait for it."""
    home, _, _ = built
    env = {**os.environ, "RECS_HOME": str(home)}
    with duckdb.connect(str(home / "warehouse.duckdb")):  # DuckDB: no other process can open the file now
        procs = [subprocess.Popen([sys.executable, "-c", SHARD_SCRIPT, key], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for key in outputs.shards.get_partition_keys()[:2]]
        outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    frame, params = outputs.read_parts(home=home)
    assert params["n"] == 5
    assert frame.group_by("shard").agg(pl.col("rank").max()).sort("shard").rows() == [(0, 5), (1, 5)]
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:  # the view reads the parts
        rows = con.execute("SELECT shard, max(rank) FROM recs.batch_topn GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [(0, 5), (1, 5)]
    assert not list(outputs.parts_dir(home=home).glob(".*"))


def _readme_queries():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Querying results with SQL", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_readme_sql_queries_run(built):
    home, _, _ = built
    queries = _readme_queries()
    assert len(queries) == 5
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        for q in queries:
            rows = con.execute(q).fetchall()
            assert rows, q


def test_release_views_query_without_the_warehouse(built):
    from recs_serving import sql

    home, _, _ = built
    con = sql.connect(home)
    n = con.execute("SELECT count(*) FROM recs.batch_topn").fetchall()[0][0]
    assert n > 0


def test_every_readme_sql_block_runs_through_the_lock_free_tool(built):
    from test_sql_readme import check_readme_blocks, readme_sql_blocks

    home, _, _ = built
    rows = check_readme_blocks(home)
    assert len(rows) == len(readme_sql_blocks()) >= 12
    assert sum(n > 0 for n in rows.values()) >= 10, rows


def test_evaluation_refits_with_the_model_assets_configs(built):
    """One config: the run_config overrides of the model assets reach the evaluation's re-fits."""
    _, runs, instance = built
    meta = next(e.dagster_event.event_specific_data.materialization.metadata for run_id in runs.values()
                for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
                if e.dagster_event.asset_key.to_user_string() == "evaluation")
    used = meta["configs_used"].value
    assert used["als"]["factors"] == 16 and used["als"]["iterations"] == 5
    assert used["itemsets"]["min_support"] == 0.02 and used["bpr"]["factors"] == 16
    assert meta["served_source"].value in {"tuned", "configured"} or meta["served_source"].value.startswith("best_single:")


def test_schedule_and_sensors_are_on_by_default():
    defs = definitions.defs
    assert defs.get_schedule_def("recs_daily").default_status == dg.DefaultScheduleStatus.RUNNING
    for name in ("inbox_sensor", "recs_automation"):
        assert defs.get_sensor_def(name).default_status == dg.DefaultSensorStatus.RUNNING, name
    # The embedded instance sets no pool limit a killed run could keep claimed.
    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "dagster.yaml").read_text())
    assert "default_limit" not in config.get("concurrency", {}).get("pools", {})
