"""The inbox sensor on real files, a real Dagster instance and real runs: one bad file never
costs a good one, each file ends in done/ or failed/ (with the reason), the cursor keeps only
files in flight."""
import json
import os
import time

import dagster as dg
import duckdb
import pytest

from recs_assets import inbox
from recs_assets.ingest.assets import ingest
from recs_assets.resources import Warehouse

GOOD = "user_id,item_id,ts,event\nu1,a,2023-11-14T10:00:00,view\nu1,b,2023-11-14T10:01:00,purchase\n"


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def drop(folder, name, content):
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    past = time.time() - 60  # written a minute ago: settled
    os.utime(path, (past, past))
    return path


def tick(instance, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    return inbox.inbox_sensor(context), context.cursor


def launch(home, instance, request, assets=(ingest,)):
    return dg.materialize(
        list(assets), resources={"warehouse": Warehouse(path=str(home / "warehouse.duckdb"))},
        run_config=request.run_config, instance=instance, tags=request.tags, raise_on_error=False,
    )


def interactions(home):
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT source, user_id, item_id FROM recs.interactions ORDER BY item_id").fetchall()


def test_garbage_and_good_file_dropped_together(home, instance):
    box = home / "inbox"
    box.mkdir()
    drop(box, "garbage.parquet", b"this is not parquet at all")
    drop(box, "good.csv", GOOD)
    request, cursor = tick(instance, None)
    assert isinstance(request, dg.RunRequest)
    assert {s["name"] for s in request.run_config["ops"]["ingest"]["config"]["sources"]} == {
        "inbox/garbage.parquet", "inbox/good.csv"}
    assert len(json.loads(cursor)) == 2  # both in flight

    result = launch(home, instance, request)
    assert result.success  # the good file landed, so downstream may rebuild
    assert interactions(home) == [("inbox/good.csv", "u1", "a"), ("inbox/good.csv", "u1", "b")]
    assert (box / "done" / "good.csv").exists() and not (box / "good.csv").exists()
    assert (box / "failed" / "garbage.parquet").exists() and not (box / "garbage.parquet").exists()
    reason = (box / "failed" / "garbage.parquet.error.txt").read_text()
    assert "garbage.parquet" in reason and "cannot be read" in reason and result.run_id in reason
    failed = result.asset_materializations_for_node("ingest")[0].metadata["failed_files"].value
    assert list(failed) == ["inbox/garbage.parquet"]

    skip, cursor = tick(instance, cursor)
    assert isinstance(skip, dg.SkipReason) and json.loads(cursor) == {}
    # the same name dropped again later is new work, and replaces (not duplicates) its rows
    drop(box, "good.csv", GOOD)
    request, cursor = tick(instance, cursor)
    assert launch(home, instance, request).success
    assert len(interactions(home)) == 2
    assert sorted(p.name for p in (box / "done").iterdir())[-1] == "good.csv"
    assert len(list((box / "done").iterdir())) == 2


def test_only_bad_files_fail_the_run_and_are_moved(home, instance):
    box = home / "inbox"
    box.mkdir()
    drop(box, "broken.csv", "user_id,item_id,event\nu1,a,view\n")
    request, cursor = tick(instance, None)
    result = launch(home, instance, request)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "every inbox file failed" in str(failure.event_specific_data.error.message)
    assert "missing required column 'ts'" in (box / "failed" / "broken.csv.error.txt").read_text()
    skip, cursor = tick(instance, cursor)
    assert isinstance(skip, dg.SkipReason) and json.loads(cursor) == {}


def test_a_run_that_dies_before_ingesting_settles_its_files(home, instance):
    box = home / "inbox"
    box.mkdir()
    drop(box, "good.csv", GOOD)
    request, cursor = tick(instance, None)
    # still running (no run yet / not finished): the file stays in flight, no second run
    again, cursor = tick(instance, cursor)
    assert isinstance(again, dg.SkipReason) and len(json.loads(cursor)) == 1

    @dg.asset(name="ingest_dies_first")
    def dies():
        raise RuntimeError("killed before the ingest step")

    result = dg.materialize([dies], instance=instance, tags=request.tags, raise_on_error=False)
    assert not result.success
    skip, cursor = tick(instance, cursor)
    assert isinstance(skip, dg.SkipReason) and json.loads(cursor) == {}
    assert (box / "failed" / "good.csv").exists()
    assert result.run_id in (box / "failed" / "good.csv.error.txt").read_text()


def test_a_file_still_being_written_waits(home, instance):
    box = home / "inbox"
    box.mkdir()
    (box / "fresh.csv").write_text(GOOD)  # modified just now
    skip, cursor = tick(instance, None)
    assert isinstance(skip, dg.SkipReason) and json.loads(cursor) == {}
    past = time.time() - 60
    os.utime(box / "fresh.csv", (past, past))
    request, _ = tick(instance, cursor)
    assert isinstance(request, dg.RunRequest)


def test_definitions_use_the_inbox_sensor():
    from recs_assets.definitions import defs

    assert defs.resolve_sensor_def("inbox_sensor") is not None
    from recs_assets import orchestration

    assert orchestration.inbox_sensor is inbox.inbox_sensor
