import json

import dagster as dg
import duckdb
import polars as pl
import pytest

from recs_assets.definitions import defs
from recs_assets.ingest.assets import ingest
from recs_assets.resources import Warehouse

from conftest import BUNDLED

# The counts the README documents for the bundled Online Retail file.
DOCUMENTED = {
    "read": 541_909,
    "kept": 522_535,
    "quarantined": {
        "cancellation": 9_288,
        "duplicate_row": 5_223,
        "non_product_code": 2_366,
        "non_positive_quantity": 1_336,
        "non_positive_price": 1_161,
    },
    "users": 4_334,
    "items": 3_798,  # 3,907 stock codes, 109 of them differing from another only in case
    "baskets": 19_773,
}


def run_ingest(home, run_config=None, raise_on_error=True):
    return dg.materialize(
        [ingest],
        resources={"warehouse": Warehouse(path=str(home / "warehouse.duckdb"))},
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def query(home, sql, params=None):
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"interactions", "catalog", "quarantine"} <= keys


def test_bundled_counts_match_readme_and_add_up(home):
    result = run_ingest(home)
    assert result.success
    meta = result.asset_materializations_for_node("ingest")[0].metadata
    assert meta["rows_read"].value == DOCUMENTED["read"]
    assert meta["rows_kept"].value == DOCUMENTED["kept"]
    reasons = dict(query(home, "SELECT reason, count(*) FROM recs.quarantine GROUP BY 1"))
    assert reasons == DOCUMENTED["quarantined"]
    assert DOCUMENTED["kept"] + sum(reasons.values()) == DOCUMENTED["read"]
    users, items, baskets = query(
        home, "SELECT count(DISTINCT user_id), count(DISTINCT item_id), count(DISTINCT basket_id) FROM recs.interactions"
    )[0]
    assert (users, items, baskets) == (DOCUMENTED["users"], DOCUMENTED["items"], DOCUMENTED["baskets"])
    # Guest checkouts stay as baskets without a user.
    assert query(home, "SELECT count(*) FROM recs.interactions WHERE user_id IS NULL")[0][0] > 100_000
    # Every kept item is in the catalog, titled by its most frequent description.
    assert query(home, "SELECT count(*) FROM recs.interactions i ANTI JOIN recs.catalog c USING (item_id)")[0][0] == 0
    assert query(home, "SELECT title FROM recs.catalog WHERE item_id = '85123A'")[0][0] == "WHITE HANGING HEART T-LIGHT HOLDER"
    # The raw row is kept with its reason.
    raw = json.loads(query(home, "SELECT raw FROM recs.quarantine WHERE reason = 'cancellation' LIMIT 1")[0][0])
    assert raw["InvoiceNo"].startswith("C")
    assert query(home, "SELECT count(*) FROM recs.interactions WHERE item_id IN ('POST', 'DOT', 'M')")[0][0] == 0


def test_reingest_is_idempotent(home):
    run_ingest(home)
    before = query(home, "SELECT count(*), sum(quantity) FROM recs.interactions")[0]
    q_before = query(home, "SELECT count(*) FROM recs.quarantine")[0][0]
    run_ingest(home)
    assert query(home, "SELECT count(*), sum(quantity) FROM recs.interactions")[0] == before
    assert query(home, "SELECT count(*) FROM recs.quarantine")[0][0] == q_before


def _events_config(path, **extra):
    return {"ops": {"ingest": {"config": {"sources": [{"kind": "events", "path": str(path)}], **extra}}}}


def test_generic_events_quarantine_reasons(home, tmp_path):
    csv = tmp_path / "events.csv"
    csv.write_text(
        "user_id,item_id,ts,event,quantity,price,basket_id\n"
        "u1,a,1700000000000,view,1,2.5,s1\n"          # ms since epoch
        "u1,b,2023-11-14T22:13:21Z,addtocart,1,3.0,s1\n"  # ISO-8601 + synonym
        "u1,b,2023-11-14T22:13:25+01:00,purchase,2,3.0,s1\n"
        "u1,b,2023-11-14T22:13:25+01:00,purchase,2,3.0,s1\n"  # duplicate
        "u2,,1700000000000,view,1,1.0,s2\n"            # missing item
        "u2,c,not-a-time,view,1,1.0,s2\n"              # bad timestamp
        "u2,c,1700000000000,like,1,1.0,s2\n"           # unknown event
        "u2,c,1700000000000,purchase,0,1.0,s2\n"       # non-positive quantity
        "u2,c,1700000000000,purchase,1,-1,s2\n"        # negative price
    )
    result = run_ingest(home, _events_config(csv))
    assert result.success
    rows = set(query(home, "SELECT user_id, item_id, event, epoch_ms(ts) FROM recs.interactions"))
    assert rows == {
        ("u1", "a", "view", 1_700_000_000_000),
        ("u1", "b", "add", 1_700_000_001_000),
        ("u1", "b", "purchase", 1_700_000_005_000 - 3_600_000),
    }
    reasons = dict(query(home, "SELECT reason, count(*) FROM recs.quarantine GROUP BY 1"))
    assert reasons == {
        "duplicate_row": 1, "missing_item_id": 1, "bad_timestamp": 1, "unknown_event": 1,
        "non_positive_quantity": 1, "negative_price": 1,
    }


def test_missing_column_fails_naming_file_and_column_and_writes_nothing(home, tmp_path):
    run_ingest(home)
    before = query(home, "SELECT count(*) FROM recs.interactions")[0][0]
    bad = tmp_path / "broken.csv"
    bad.write_text("user_id,item_id,event\nu1,a,view\n")
    result = run_ingest(home, _events_config(bad), raise_on_error=False)
    assert not result.success
    message = str(result.all_events[-1].event_specific_data.error.cause) + str(
        [e.message for e in result.all_events if e.is_failure]
    )
    assert "broken.csv" in message and "'ts'" in message
    assert query(home, "SELECT count(*) FROM recs.interactions")[0][0] == before


def test_unparseable_file_fails_naming_file(home, tmp_path):
    bad = tmp_path / "garbage.parquet"
    bad.write_bytes(b"this is not parquet at all")
    result = run_ingest(home, _events_config(bad), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "garbage.parquet" in str(failure.event_specific_data.error)
    assert not (home / "warehouse.duckdb").exists() or query(
        home, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'interactions' AND table_schema = 'recs'"
    )[0][0] in (0, 1)


def test_sql_source_and_catalog_file(home, tmp_path):
    events = pl.DataFrame({
        "user_id": ["u1", "u1", "u2"], "item_id": ["x", "y", "x"],
        "ts": ["2024-01-01T00:00:00", "2024-01-01T00:01:00", "2024-01-02T00:00:00"],
        "event": ["purchase"] * 3, "basket_id": ["b1", "b1", "b2"],
    })
    ev_path = tmp_path / "ev.parquet"
    events.write_parquet(ev_path)
    cat_path = tmp_path / "catalog.csv"
    cat_path.write_text("item_id,title,brand,category,price,colour\nx,Red mug,Acme,mugs,4.5,red\n")
    config = {"ops": {"ingest": {"config": {
        "sources": [{"kind": "sql", "query": f"SELECT * FROM read_parquet('{ev_path}')", "name": "shop"}],
        "catalog_paths": [str(cat_path)],
    }}}}
    assert run_ingest(home, config).success
    assert query(home, "SELECT count(*) FROM recs.interactions WHERE source = 'shop'")[0][0] == 3
    cat = dict((r[0], r[1:]) for r in query(home, "SELECT item_id, title, brand, category, attributes FROM recs.catalog"))
    assert cat["x"][:3] == ("Red mug", "Acme", "mugs")
    assert json.loads(cat["x"][3]) == {"colour": "red"}
    assert cat["y"][0] == "y"  # derived from events: no title known


def test_warehouse_lock_gives_clear_message(home):
    wh = Warehouse(path=str(home / "w.duckdb"), lock_timeout_seconds=0.5)
    import subprocess, sys, time
    holder = subprocess.Popen([sys.executable, "-c",
        f"import duckdb, time; c = duckdb.connect({str(home / 'w.duckdb')!r}); print('ready', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        from recs_assets.resources import WarehouseLockedError
        with pytest.raises(WarehouseLockedError, match="held by another process"):
            with wh.connect():
                pass
    finally:
        holder.kill()
