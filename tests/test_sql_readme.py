"""The lock-free SQL tool: warehouse names, output formats, one-line errors, sessions that
survive pruning; and every ```sql block of the README through it (``check_readme_blocks``,
run on the pipeline-built release by tests/test_pipeline.py)."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from readable_fixtures import readable_home, readable_versions  # noqa: F401

pytestmark = pytest.mark.xdist_group("readable")

REPO = Path(__file__).resolve().parents[1]


def readme_sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def check_readme_blocks(home: Path) -> dict[str, int]:
    """Run every README SQL block on ``home``'s current release; returns rows per block. A block
    may come back empty only when a table it reads is empty in that release."""
    from recs_serving import sql

    con = sql.connect(home)
    out = {}
    for block in readme_sql_blocks():
        rows = con.sql(block).fetchall()
        if not rows:
            tables = set(re.findall(r"recs\.(\w+)", block))
            counts = {t: con.sql(f"SELECT count(*) FROM recs.{t}").fetchall()[0][0] for t in tables}
            assert 0 in counts.values(), f"no rows from a README block although its tables have rows {counts}:\n{block}"
        out[block.strip().splitlines()[0]] = len(rows)
    return out


def test_readme_has_sql_blocks_and_names_only_tables_a_release_carries():
    from recs_serving.release import TABLES
    from recs_serving.sql import WAREHOUSE_NAMES

    blocks = readme_sql_blocks()
    assert len(blocks) >= 12
    views = {WAREHOUSE_NAMES.get(t, t) for t in TABLES}
    named = {t for b in blocks for t in re.findall(r"recs\.(\w+)", b)}
    assert named <= views, named - views
    assert ".venv/bin/duckdb" not in (REPO / "README.md").read_text()


def _cli(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECS_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "recs_serving.sql", *args], capture_output=True, text=True, env=env,
                          input=stdin, cwd=REPO, timeout=120)


def test_views_are_named_as_in_the_warehouse(readable_home):
    from recs_serving import sql

    con = sql.connect(readable_home)
    names = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'recs'").fetchall()}
    assert {"catalog", "batch_topn", "association_rules", "popularity", "evaluation", "user_history", "release"} <= names
    assert not {"items", "topn", "rules"} & names
    title = con.sql("SELECT title FROM recs.catalog WHERE item_id = '85123A'").fetchall()[0][0]
    assert title == "WHITE HANGING HEART T-LIGHT HOLDER"


def test_formats_print_every_row_when_not_interactive(readable_home):
    q = "SELECT item_id, title, price FROM recs.catalog ORDER BY item_id LIMIT 57"
    table = _cli(readable_home, q)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split("|")[0].strip() == "item_id" and lines[-1] == "(57 rows)" and len(lines) == 57 + 3
    rows = list(csv.reader(io.StringIO(_cli(readable_home, "--format", "csv", q).stdout)))
    assert rows[0] == ["item_id", "title", "price"] and len(rows) == 58
    data = json.loads(_cli(readable_home, "--format", "json", q).stdout)
    assert len(data) == 57 and set(data[0]) == {"item_id", "title", "price"}
    assert [r[0] for r in rows[1:]] == [d["item_id"] for d in data] == [ln.split("|")[0].strip() for ln in lines[2:-1]]


def test_errors_are_one_line_without_a_traceback(readable_home, tmp_path):
    for args in (["SELEC 1"], ["SELECT * FROM recs.nope"], ["--home", str(tmp_path), "SELECT 1"]):
        r = _cli(readable_home, *args)
        assert r.returncode == 1 and r.stdout == ""
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr
    piped = _cli(readable_home, stdin="SELECT 1 AS one\nSELEC 2\nSELECT 3 AS three\n")
    assert piped.returncode == 0 and "one" in piped.stdout and "three" in piped.stdout
    assert "Traceback" not in piped.stderr and sum(ln.startswith("error: ") for ln in piped.stderr.splitlines()) == 1


def test_an_open_session_survives_pruning_of_its_release(readable_home, tmp_path):
    from recs_serving import release as release_format
    from recs_serving import sql

    home = tmp_path / "home"
    shutil.copytree(readable_home, home, copy_function=os.link)
    cur = release_format.current_version(home)
    con = sql.connect(home)
    before = con.sql("SELECT count(*) FROM recs.batch_topn").fetchall()
    release_format.set_current(home, release_format.list_versions(home)[0])
    shutil.rmtree(release_format.releases_dir(home) / cur)  # what prune does to a release no longer current
    assert con.sql("SELECT count(*) FROM recs.batch_topn").fetchall() == before
    assert con.sql("SELECT version FROM recs.release").fetchall()[0][0] == cur
    sessions = list((home / sql.SESSIONS).iterdir())
    assert sessions
    con.close()
    del con
    import gc

    gc.collect()
    assert not any(p.exists() for p in sessions)  # the session's pinned files go with it


def test_warehouse_mode_reports_a_missing_file_in_one_line(tmp_path):
    r = _cli(tmp_path, "--warehouse", "SELECT 1")
    assert r.returncode == 1 and "no warehouse at" in r.stderr and "Traceback" not in r.stderr


def _releases(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recs_serving.releases", "--home", str(home), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_releases_cli_list_diff_rollback(readable_home, readable_versions, tmp_path):
    from recs_serving import release as release_format

    prev, cur = readable_versions
    home = tmp_path / "home"
    shutil.copytree(readable_home, home, copy_function=os.link)
    listed = _releases(home, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [ln.split() for ln in listed.stdout.splitlines()[2:]]
    assert len(rows) == 2 and rows[0][0] == prev and rows[1][:2] == ["*", cur]  # * marks CURRENT
    diff = json.loads(_releases(home, "--format", "json", "diff").stdout)
    assert (diff["from"], diff["to"]) == (prev, cur)
    blend = {m["metric"]: m for m in diff["metrics"] if m["model"] == "served blend"}
    assert blend["recall@10"]["delta"] == pytest.approx(0.113 - 0.9 * 0.113)
    assert diff["top_items"] and all(t["change"] != 0 for t in diff["top_items"])
    assert "served blend" in _releases(home, "diff", prev, cur).stdout
    rb = _releases(home, "rollback", prev)
    assert rb.returncode == 0 and release_format.current_version(home) == prev and f"{cur} -> {prev}" in rb.stdout
    bad = _releases(home, "rollback", "nope")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert release_format.current_version(home) == prev
