"""Bad values at ingestion: timestamps, quantities, prices, customer ids, missing columns, a full
disk, a held warehouse. Each test ingests real files through a real Dagster materialize()."""
import errno
import json
import subprocess
import sys
import time

import dagster as dg
import duckdb
import polars as pl
import pytest

from recs_assets.ingest.assets import ingest
from recs_assets.resources import DiskFullError, Warehouse
from recs_assets.resources.warehouse import disk_full

ONLINE_RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID\n"


def run_ingest(home, config, raise_on_error=True, warehouse=None, instance=None):
    return dg.materialize(
        [ingest],
        resources={"warehouse": warehouse or Warehouse(path=str(home / "warehouse.duckdb"))},
        run_config={"ops": {"ingest": {"config": config}}},
        raise_on_error=raise_on_error,
        instance=instance,
    )


def query(home, sql, params=None):
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def reasons(home):
    return dict(query(home, "SELECT reason, count(*) FROM recs.quarantine GROUP BY 1"))


def failure_text(result) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    error = failure.event_specific_data.error
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def meta(result, key):
    return result.asset_materializations_for_node("ingest")[0].metadata[key].value


# ------------------------------------------------------------------------------ timestamps


def test_future_and_pre_floor_timestamps_are_quarantined(home, tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text(
        "user_id,item_id,ts,event\n"
        "u1,a,1700000000000,view\n"             # ms: 2023-11-14
        "u1,b,1700000100000,view\n"
        "u1,c,32503680000000,view\n"            # 3000-01-01 in ms
        "u2,a,-1,view\n"                        # ts -1: 1969
        "u2,b,1700000200,view\n"                # seconds in a ms source: 1970-01-20
        "u2,c,2999-01-01T00:00:00Z,view\n"      # ISO, far future
        "u3,a,2023-11-15T00:00:00Z,view\n"
    )
    result = run_ingest(home, {"sources": [{"kind": "events", "path": str(csv)}]})
    assert reasons(home) == {"future_timestamp": 2, "bad_timestamp": 2}
    assert query(home, "SELECT min(ts) >= TIMESTAMP '1990-01-01', max(ts) < now() FROM recs.interactions")[0] == (True, True)
    assert meta(result, "timestamp_units") == {"events.csv": "ms"}


def test_tolerance_and_floor_are_configurable(home, tmp_path):
    tomorrow_ish = int((time.time() + 6 * 3600) * 1000)  # 6 h ahead: inside 1 day, outside 1 h
    csv = tmp_path / "events.csv"
    csv.write_text(f"user_id,item_id,ts,event\nu1,a,{tomorrow_ish},view\nu1,b,1995-06-01T00:00:00,view\n")
    run_ingest(home, {"sources": [{"kind": "events", "path": str(csv)}]})
    assert reasons(home) == {}
    run_ingest(home, {"sources": [{"kind": "events", "path": str(csv)}],
                      "future_tolerance_hours": 1, "min_timestamp": "2000-01-01"})
    assert reasons(home) == {"future_timestamp": 1, "bad_timestamp": 1}


@pytest.mark.parametrize("unit, scale", [("s", 1), ("ms", 1_000), ("us", 1_000_000), ("ns", 1_000_000_000)])
def test_epoch_unit_is_detected_per_source(home, tmp_path, unit, scale):
    base = 1_700_000_000  # 2023-11-14T22:13:20Z
    frame = pl.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["a", "b", "c"],
                          "ts": [base * scale, (base + 60) * scale, (base + 120) * scale], "event": ["view"] * 3})
    path = tmp_path / f"events_{unit}.parquet"
    frame.write_parquet(path)
    result = run_ingest(home, {"sources": [{"kind": "events", "path": str(path)}]})
    assert meta(result, "timestamp_units") == {path.name: unit}
    assert query(home, "SELECT min(epoch(ts)), max(epoch(ts)) FROM recs.interactions")[0] == (base, base + 120)
    assert reasons(home) == {}


# ------------------------------------------------------------------------------ values


def test_fractional_quantity_and_nan_or_inf_price(home, tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text(
        "user_id,item_id,ts,event,quantity,price\n"
        "u1,a,2023-01-01T00:00:00,purchase,2,1.5\n"
        "u1,b,2023-01-01T00:00:00,purchase,1.5,1.0\n"     # not rounded to 2
        "u1,c,2023-01-01T00:00:00,purchase,3.0,1.0\n"     # a whole number written as 3.0 is 3
        "u1,d,2023-01-01T00:00:00,purchase,1,NaN\n"
        "u1,e,2023-01-01T00:00:00,purchase,1,inf\n"
        "u1,f,2023-01-01T00:00:00,purchase,1,-Infinity\n"
    )
    run_ingest(home, {"sources": [{"kind": "events", "path": str(csv)}]})
    assert reasons(home) == {"bad_quantity": 1, "bad_price": 3}
    assert sorted(query(home, "SELECT item_id, quantity FROM recs.interactions")) == [("a", 2), ("c", 3)]


def test_online_retail_bad_rows_quarantined_not_the_file(home, tmp_path):
    csv = tmp_path / "retail.csv"
    csv.write_text(
        ONLINE_RETAIL_HEADER
        + "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850\n"
        + "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,N/A\n"
        + "536366,22633,HAND WARMER UNION JACK,1.5,2010-12-01 08:28:00,1.85,17850\n"
        + "536366,22632,HAND WARMER RED POLKA DOT,6,2010-12-01 08:28:00,NaN,17850\n"
        + "536367,84879,ASSORTED COLOUR BIRD ORNAMENT,32,2010-12-01 08:34:00,1.69,\n"
        + "536368,85123a,WHITE HANGING HEART T-LIGHT HOLDER,2,2010-12-01 08:35:00,2.55,13047\n"
    )
    result = run_ingest(home, {"sources": [{"kind": "online_retail", "path": str(csv)}]})
    assert result.success
    assert reasons(home) == {"bad_user_id": 1, "bad_quantity": 1, "bad_price": 1}
    raw = json.loads(query(home, "SELECT raw FROM recs.quarantine WHERE reason = 'bad_user_id'")[0][0])
    assert raw["CustomerID"] == "N/A"
    kept = sorted(query(home, "SELECT item_id, user_id FROM recs.interactions"), key=str)
    # a guest line (no CustomerID) stays; 85123a is the same product as 85123A
    assert kept == sorted([("85123A", "17850"), ("84879", None), ("85123A", "13047")], key=str)


def test_case_merge_is_a_switch(home, tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,ts,event\nu1,Ab,2023-01-01,view\nu2,aB,2023-01-02,view\n")
    run_ingest(home, {"sources": [{"kind": "events", "path": str(csv)}]})  # off for generic events
    assert query(home, "SELECT count(DISTINCT item_id) FROM recs.interactions")[0][0] == 2
    run_ingest(home, {"sources": [{"kind": "events", "path": str(csv), "merge_case_ids": True}]})
    assert query(home, "SELECT DISTINCT item_id FROM recs.interactions")[0] == ("AB",)


def test_missing_unit_price_is_named_not_user_id(home, tmp_path):
    csv = tmp_path / "retail.csv"
    csv.write_text("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,CustomerID\n"
                   "536365,85123A,HOLDER,6,2010-12-01 08:26:00,17850\n")
    for kind in ("auto", "online_retail"):
        result = run_ingest(home, {"sources": [{"kind": kind, "path": str(csv)}]}, raise_on_error=False)
        text = failure_text(result)
        assert "'UnitPrice'" in text and "retail.csv" in text and "user_id" not in text.split("found")[0]


def test_ragged_csv_rows_are_quarantined_and_the_header_kept(home, tmp_path):
    csv = tmp_path / "ragged.csv"
    csv.write_text("user_id,item_id,ts,event\n"
                   "u1,a,1700000000000,view\n"
                   "u2,b,1700000000000,view,extra,more\n"
                   "u3,c,1700000060000,view\n")
    result = run_ingest(home, {"sources": [{"kind": "events", "path": str(csv)}]}, raise_on_error=False)
    assert result.success, failure_text(result)
    assert reasons(home) == {"ragged_row": 1}
    assert sorted(r[0] for r in query(home, "SELECT user_id FROM recs.interactions")) == ["u1", "u3"]


def test_quoted_newlines_still_read_and_a_late_ragged_line_is_quarantined(home, tmp_path):
    quoted = tmp_path / "quoted.csv"
    quoted.write_text('user_id,item_id,ts,event,note\nu1,a,1700000000000,view,"two\nlines"\nu2,b,1700000000000,view,"x, y"\n')
    assert run_ingest(home, {"sources": [{"kind": "events", "path": str(quoted)}]}).success
    assert query(home, "SELECT count(*) FROM recs.interactions")[0][0] == 2
    late = tmp_path / "late.csv"  # the ragged line lies beyond the sniffer's sample
    late.write_text("user_id,item_id,ts,event\n" + "".join(f"u{i},a,1700000000000,view\n" for i in range(30_000))
                    + "u9,b,1700000000000,view,extra\n")
    run_ingest(home, {"sources": [{"kind": "events", "path": str(late)}]})
    assert reasons(home) == {"ragged_row": 1}
    raw = json.loads(query(home, "SELECT raw FROM recs.quarantine")[0][0])
    assert raw["line"] == 30002 and raw["csv_line"] == "u9,b,1700000000000,view,extra" and raw["file"].endswith("late.csv")
    assert query(home, "SELECT count(*) FROM recs.interactions WHERE source = 'late.csv'")[0][0] == 30_000
    typed = tmp_path / "typed.csv"  # a value that does not fit the sniffed column type
    typed.write_text("user_id,item_id,ts,event,quantity\n" + "".join(f"u{i},a,1700000000000,view,1\n" for i in range(30_000))
                     + "u9,b,1700000000000,view,lots\n")
    run_ingest(home, {"sources": [{"kind": "events", "path": str(typed)}]})
    assert reasons(home) == {"ragged_row": 1, "unparseable_row": 1}
    raw = json.loads(query(home, "SELECT raw FROM recs.quarantine WHERE reason = 'unparseable_row'")[0][0])
    assert "lots" in raw["csv_line"] and raw["error"]


def test_unreadable_catalog_lines_are_quarantined(home, tmp_path):
    cat = tmp_path / "catalog.csv"
    cat.write_text("item_id,title,price\nx,Red mug,4.5\ny,Blue mug,3.0,oops\nz,Green mug,2.0\n")
    assert run_ingest(home, {"sources": [], "catalog_paths": [str(cat)]}).success
    assert sorted(r[0] for r in query(home, "SELECT item_id FROM recs.catalog")) == ["x", "z"]
    assert query(home, "SELECT source, reason FROM recs.quarantine") == [("catalog.csv", "ragged_row")]


# ------------------------------------------------------------------------------ disk and lock


def test_disk_full_translation_names_enospc_and_path(tmp_path):
    target = tmp_path / "warehouse.duckdb"
    exc = duckdb.IOException(f'IO Error: Could not write file "{target}": No space left on device')
    full = disk_full(exc, target)
    assert isinstance(full, DiskFullError) and full.errno == errno.ENOSPC
    assert "ENOSPC" in str(full) and str(target) in str(full)
    # the symptom seen before: the rollback error hid the cause
    try:
        try:
            raise exc
        except duckdb.IOException:
            raise duckdb.TransactionException("cannot rollback - no transaction is active")
    except duckdb.TransactionException as masked:
        assert "ENOSPC" in str(disk_full(masked, target))
    assert disk_full(duckdb.CatalogException("Table x does not exist"), target) is None


@pytest.fixture
def tiny_fs(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_ingest_names_enospc_and_path(tiny_fs, tmp_path):
    rows = 60_000
    frame = pl.DataFrame({"user_id": [f"u{i % 5000}" for i in range(rows)],
                          "item_id": [f"item-{i}-{'x' * 20}" for i in range(rows)],
                          "ts": [1_700_000_000_000 + i for i in range(rows)], "event": ["view"] * rows})
    path = tmp_path / "big.parquet"
    frame.write_parquet(path)
    home = tiny_fs
    result = run_ingest(home, {"sources": [{"kind": "events", "path": str(path)}]}, raise_on_error=False,
                        warehouse=Warehouse(path=str(home / "warehouse.duckdb")))
    assert not result.success
    text = failure_text(result)
    assert "ENOSPC" in text and str(home / "warehouse.duckdb") in text
    assert "no transaction is active" not in text.splitlines()[0]


def test_lock_wait_is_logged_with_holder_and_time(home, tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text("user_id,item_id,ts,event\nu1,a,2023-01-01,view\n")
    db = home / "warehouse.duckdb"
    holder = subprocess.Popen([sys.executable, "-c",
        f"import duckdb, time; c = duckdb.connect({str(db)!r}); print('ready', flush=True); time.sleep(2); c.close();"
        "time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    instance = dg.DagsterInstance.ephemeral()
    try:
        assert holder.stdout.readline().strip() == "ready"
        result = run_ingest(home, {"sources": [{"kind": "events", "path": str(csv)}]},
                            warehouse=Warehouse(path=str(db), lock_timeout_seconds=30), instance=instance)
    finally:
        holder.kill()
    assert result.success
    messages = [r.user_message for r in instance.all_logs(result.run_id)]
    waiting = [m for m in messages if "is held by" in m]
    released = [m for m in messages if "waited" in m]
    assert waiting and f"PID {holder.pid}" in waiting[0], messages
    assert released and float(released[0].rsplit("waited ", 1)[1].split(" s")[0]) >= 1.0
