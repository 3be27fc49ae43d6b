"""Query the current release with SQL, without touching the pipeline's warehouse.

``connect(home)`` opens an in-memory DuckDB and creates one view per release table,
``recs.<table>``, over that release's Parquet files (read-only files: no lock is taken, so
the pipeline keeps writing its warehouse while analysts query). The views pin the release
that was current at connect time; reconnect to see a newer one.

    python -m recs_serving.sql                       # interactive: one statement per line
    python -m recs_serving.sql "SELECT * FROM recs.rules WHERE lift > 3 LIMIT 5"
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import duckdb

from .release import TABLES, open_release


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def connect(home: Path | str | None = None, version: str | None = None) -> duckdb.DuckDBPyConnection:
    home = Path(home or os.environ.get("RECS_HOME") or Path(__file__).resolve().parents[1] / "var")
    rf = open_release(home, version)
    con = duckdb.connect(":memory:")
    con.execute("CREATE SCHEMA IF NOT EXISTS recs").fetchall()
    for name in TABLES:
        path = rf.path / f"{name}.parquet"
        if path.exists():
            # identifiers come from the fixed TABLES tuple, paths are quoted literals
            con.execute(f"CREATE VIEW recs.{name} AS SELECT * FROM read_parquet({_quote(path)})").fetchall()
    con.execute(
        f"CREATE VIEW recs.release AS SELECT {_lit(rf.version)} AS version, {_lit(str(rf.path))} AS path, "
        f"{_lit(str(rf.manifest.get('created_at', '')))} AS created_at"
    ).fetchall()
    return con


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recs_serving.sql", description=__doc__.split("\n\n")[0])
    p.add_argument("query", nargs="*", help="SQL to run; omit for a prompt")
    p.add_argument("--home", default=None)
    p.add_argument("--version", default=None, help="a release version (default: CURRENT)")
    args = p.parse_args(argv)
    con = connect(args.home, args.version)
    version = con.execute("SELECT version FROM recs.release").fetchall()[0][0]
    if args.query:
        print(con.sql(" ".join(args.query)))
        return 0
    print(f"release {version}; views: " + ", ".join(r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'recs' ORDER BY 1").fetchall()), file=sys.stderr)
    while True:
        try:
            line = input("recs> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line:
            continue
        try:
            rel = con.sql(line)
            if rel is not None:
                print(rel)
        except duckdb.Error as exc:
            print(f"error: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
