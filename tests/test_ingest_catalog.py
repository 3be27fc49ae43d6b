"""Source identity across checkouts, catalog precedence, and derived brands/categories on the
bundled data (one real ingest of data/online_retail.parquet, shared by the module)."""
import os
import shutil
import subprocess
import sys

import dagster as dg
import duckdb
import pytest

from recs_assets.ingest.assets import ingest
from recs_assets.resources import Warehouse

from conftest import BUNDLED, REPO

RETAIL = ("InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID\n"
          "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850\n"
          "536366,71053,WHITE METAL LANTERN,6,2010-12-01 08:28:00,3.39,17850\n")


def run_ingest(home, config=None, raise_on_error=True):
    return dg.materialize(
        [ingest], resources={"warehouse": Warehouse(path=str(home / "warehouse.duckdb"))},
        run_config={"ops": {"ingest": {"config": config}}} if config is not None else None,
        raise_on_error=raise_on_error,
    )


def query(home, sql, params=None):
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


# ------------------------------------------------------------------------------ source identity


def _checkout(root):
    """A copy of the code (not a symlink: the repository root is where the code lives) with the
    data directory linked in, as a second clone of the project would be."""
    root.mkdir(parents=True)
    shutil.copytree(REPO / "recs_assets", root / "recs_assets",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "data").mkdir()
    (root / "data" / "shop.csv").write_text(RETAIL)
    return root


def _ingest_from(checkout, home):
    code = (
        "import dagster as dg\n"
        "from recs_assets.ingest.assets import ingest\n"
        "from recs_assets.resources import Warehouse\n"
        "r = dg.materialize([ingest], resources={'warehouse': Warehouse()}, run_config={'ops': {'ingest': {'config': "
        "{'sources': [{'kind': 'online_retail', 'path': 'data/shop.csv'}]}}}})\n"
        "assert r.success\n"
    )
    env = {**os.environ, "RECS_HOME": str(home), "PYTHONPATH": str(checkout)}
    subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env, check=True, timeout=300,
                   capture_output=True)


def test_moving_the_checkout_reingests_nothing(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    first, second = _checkout(tmp_path / "a" / "recs"), _checkout(tmp_path / "b" / "elsewhere")
    _ingest_from(first, home)
    assert query(home, "SELECT source, count(*) FROM recs.interactions GROUP BY 1") == [("data/shop.csv", 2)]
    _ingest_from(second, home)  # same RECS_HOME, the repository at another path
    assert query(home, "SELECT source, count(*) FROM recs.interactions GROUP BY 1") == [("data/shop.csv", 2)]
    assert query(home, "SELECT count(*) FROM recs.catalog_sources")[0][0] == 2


def test_rows_under_an_old_absolute_key_are_replaced(home, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shop = data / "shop.csv"
    shop.write_text(RETAIL)
    run_ingest(home, {"sources": [{"kind": "online_retail", "path": str(shop), "name": "keep-me"}]})
    # A warehouse written before keys were stable: the same file under its old absolute path.
    old = "/old/checkout/data/shop.csv"
    with duckdb.connect(str(home / "warehouse.duckdb")) as con:
        for table in ("interactions", "quarantine", "catalog_sources"):
            con.execute(f"INSERT INTO recs.{table} SELECT * REPLACE (? AS source) FROM recs.{table} "
                        "WHERE source = 'keep-me'", [old])
    before = query(home, "SELECT source, count(*) FROM recs.interactions GROUP BY 1 ORDER BY 1")
    assert before == [("/old/checkout/data/shop.csv", 2), ("keep-me", 2)]
    result = run_ingest(home, {"sources": [{"kind": "online_retail", "path": str(shop)}]})
    after = query(home, "SELECT source, count(*) FROM recs.interactions GROUP BY 1 ORDER BY 1")
    assert after == [("keep-me", 2), ("shop.csv", 2)]  # a file outside home and repo: its name
    sources = result.asset_materializations_for_node("ingest")[0].metadata["sources"].value
    assert sources[0]["replaced_legacy_keys"] == [old]


# ------------------------------------------------------------------------------ bundled data


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    home = tmp_path_factory.mktemp("bundled")
    assert run_ingest(home).success
    return home


def test_case_variants_are_one_item(bundled):
    assert query(bundled, "SELECT count(*) FROM recs.catalog WHERE item_id <> upper(item_id)")[0][0] == 0
    assert query(bundled, "SELECT count(*) FROM recs.interactions WHERE item_id = '85123A'")[0][0] > 2_000
    # 85123a's lines are counted under 85123A
    raw = duckdb.sql(f"SELECT count(*) FROM '{BUNDLED}' WHERE StockCode IN ('85123A', '85123a') "
                     "AND Quantity > 0 AND NOT InvoiceNo LIKE 'C%'").fetchall()[0][0]
    kept = query(bundled, "SELECT count(*) FROM recs.interactions WHERE item_id = '85123A'")[0][0]
    assert raw - 20 < kept <= raw  # less only the duplicate lines


def test_derived_brands_and_categories(bundled):
    brands = {r[0] for r in query(bundled, "SELECT DISTINCT brand FROM recs.catalog WHERE brand IS NOT NULL")}
    categories = {r[0] for r in query(bundled, "SELECT DISTINCT category FROM recs.catalog WHERE category IS NOT NULL")}
    assert not {"WALL", "KEY", "PHOTO", "PLASTERS"} & brands
    assert "RETROSPOT" in brands and "RETROSPOT" not in categories
    assert query(bundled, "SELECT category, brand FROM recs.catalog WHERE title = 'REGENCY CAKESTAND 3 TIER'") == [
        ("CAKESTAND", "REGENCY")]
    assert query(bundled, "SELECT category FROM recs.catalog WHERE item_id = '85123A'")[0][0] == "HOLDER"
    # most RETROSPOT products carry the line as their brand
    share = query(bundled, "SELECT avg((brand = 'RETROSPOT')::INT) FROM recs.catalog WHERE title LIKE '%RETROSPOT%'")
    assert share[0][0] > 0.6


def test_one_line_source_cannot_retitle_a_product(bundled, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(bundled / "warehouse.duckdb", home / "warehouse.duckdb")
    before = query(home, "SELECT title, price, category, brand FROM recs.catalog WHERE item_id = '85123A'")[0]
    assert before[0] == "WHITE HANGING HEART T-LIGHT HOLDER" and before[1] > 0 and before[2] == "HOLDER"
    drop = tmp_path / "drop.csv"  # an inbox-like file: one event, no title, no price
    drop.write_text("user_id,item_id,ts,event\nzz-shopper,85123A,2011-12-01T10:00:00,purchase\n")
    assert run_ingest(home, {"sources": [{"kind": "events", "path": str(drop), "name": "aaa-first-by-name"}]}).success
    assert query(home, "SELECT title, price, category, brand FROM recs.catalog WHERE item_id = '85123A'")[0] == before
    # a NaN price or an id-only title from a bigger source does not win either
    assert query(home, "SELECT count(*) FROM recs.catalog WHERE isnan(price) OR title = item_id AND item_id IN "
                       "(SELECT item_id FROM recs.catalog_sources WHERE title <> item_id)")[0][0] == 0
    # a catalog file still outranks everything
    cat = tmp_path / "catalog.csv"
    cat.write_text("item_id,title,price\n85123A,Heart holder (catalog),9.5\n")
    assert run_ingest(home, {"sources": [], "catalog_paths": [str(cat)]}).success
    assert query(home, "SELECT title, price, category FROM recs.catalog WHERE item_id = '85123A'")[0] == (
        "Heart holder (catalog)", 9.5, "HOLDER")


def test_same_key_from_another_file_is_replaced_with_a_warning(home, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, user in ((a, "ua"), (b, "ub")):
        folder.mkdir()
        (folder / "events.csv").write_text(f"user_id,item_id,ts,event\n{user},x,2023-01-01,view\n")
    instance = dg.DagsterInstance.ephemeral()
    for folder in (a, b):
        result = dg.materialize([ingest], resources={"warehouse": Warehouse(path=str(home / "warehouse.duckdb"))},
                                run_config={"ops": {"ingest": {"config": {"sources": [
                                    {"kind": "events", "path": str(folder / "events.csv")}]}}}}, instance=instance)
    assert query(home, "SELECT source, user_id FROM recs.interactions") == [("events.csv", "ub")]
    warnings = [r.user_message for r in instance.all_logs(result.run_id) if "was last read from" in r.user_message]
    assert warnings and str(a / "events.csv") in warnings[0] and "`name`" in warnings[0]
