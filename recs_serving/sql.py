"""Query the current release with SQL, without touching the pipeline's warehouse.

``connect(home)`` opens an in-memory DuckDB with one view per release table, named as in the
warehouse (``recs.catalog``, ``recs.batch_topn``, ``recs.association_rules``, ``recs.quarantine``,
``recs.evaluation``, ...), over that release's Parquet files: no lock is taken, so the pipeline
keeps writing its warehouse while analysts query. The session pins its release: the files are
hard-linked into a private directory under ``RECS_HOME/.sql-sessions`` (removed on close), so
pruning the release later does not break an open session. Reconnect to see a newer release.

    python -m recs_serving.sql                                   # interactive: one statement per line
    python -m recs_serving.sql "SELECT * FROM recs.association_rules WHERE lift > 3 LIMIT 5"
    python -m recs_serving.sql --format csv "SELECT ..." > out.csv     # table (default), csv or json
    python -m recs_serving.sql --warehouse "SELECT ..."          # the warehouse itself, when the pipeline is idle
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import decimal
import json
import os
import shutil
import sys
import weakref
from pathlib import Path

import duckdb

from . import release as release_format
from .release import TABLES, ReleaseError, open_release

# release file -> warehouse table name (the rest keep their names)
WAREHOUSE_NAMES = {"items": "catalog", "topn": "batch_topn", "rules": "association_rules"}
SESSIONS = ".sql-sessions"


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(root: Path) -> None:
    """Remove pinned copies left by sessions whose process is gone (killed, crashed)."""
    if not root.exists():
        return
    for d in root.iterdir():
        try:
            pid = int(d.name.split("-", 1)[0])
        except ValueError:
            continue
        if not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _pin(home: Path, src: Path, names: list[str]) -> Path:
    """Hard links to the release's Parquet files in a directory of this session (a copy when
    links are impossible, e.g. another file system)."""
    root = home / SESSIONS
    root.mkdir(parents=True, exist_ok=True)
    _sweep(root)
    d = root / f"{os.getpid()}-{id(names):x}-{src.name}"
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        f = src / f"{n}.parquet"
        try:
            os.link(f, d / f.name)
        except FileExistsError:
            pass
        except OSError:
            shutil.copy2(f, d / f.name)
    return d


def connect(home: Path | str | None = None, version: str | None = None, *, pin: bool = True) -> duckdb.DuckDBPyConnection:
    home = release_format.default_home(home)
    rf = open_release(home, version)
    names = [n for n in TABLES if (rf.path / f"{n}.parquet").exists()]
    where = _pin(home, rf.path, names) if pin else rf.path
    con = duckdb.connect(":memory:")
    if pin:
        weakref.finalize(con, shutil.rmtree, str(where), True)
    con.execute("CREATE SCHEMA IF NOT EXISTS recs").fetchall()
    for name in names:
        # identifiers come from the fixed TABLES tuple, paths are quoted literals
        view = WAREHOUSE_NAMES.get(name, name)
        con.execute(f"CREATE VIEW recs.{view} AS SELECT * FROM read_parquet({_quote(where / f'{name}.parquet')})").fetchall()
    con.execute(
        f"CREATE VIEW recs.release AS SELECT {_lit(rf.version)} AS version, {_lit(str(rf.path))} AS path, "
        f"{_lit(str(rf.manifest.get('created_at', '')))} AS created_at"
    ).fetchall()
    return con


def connect_warehouse(home: Path | str | None = None) -> duckdb.DuckDBPyConnection:
    """The warehouse file, read-only. DuckDB lets one process hold it: this fails (one line,
    naming the holder) while the pipeline writes, and makes the pipeline wait while open."""
    path = release_format.default_home(home) / "warehouse.duckdb"
    if not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}; run the pipeline first")
    return duckdb.connect(str(path), read_only=True)


# ----------------------------------------------------------------------------- output


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return repr(v) if v != v or v in (float("inf"), float("-inf")) else f"{v:.6g}" if abs(v) >= 1e-4 or v == 0 else f"{v:.4e}"
    return str(v)


def _json_default(v):
    if isinstance(v, (_dt.date, _dt.datetime, _dt.time, _dt.timedelta)):
        return str(v)
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return str(v)


def write(rel: duckdb.DuckDBPyRelation, fmt: str, out=sys.stdout, max_rows: int | None = None) -> int:
    """Print a result: ``table`` (aligned, every row unless ``max_rows``), ``csv`` or ``json``
    (an array of objects). Returns the number of rows."""
    cols = list(rel.columns)
    rows = rel.fetchall()
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(cols)
        w.writerows([["" if v is None else v for v in r] for r in rows])
    elif fmt == "json":
        json.dump([dict(zip(cols, r)) for r in rows], out, default=_json_default, ensure_ascii=False)
        out.write("\n")
    else:
        shown = rows if max_rows is None else rows[:max_rows]
        cells = [[_cell(v) for v in r] for r in shown]
        numeric = [all(isinstance(r[i], (int, float, decimal.Decimal)) and not isinstance(r[i], bool)
                       for r in shown if r[i] is not None) for i in range(len(cols))]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]

        def line(vals, header=False):
            return " | ".join(v.rjust(w) if numeric[i] and not header else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths))).rstrip()

        out.write(line(cols, True) + "\n")
        out.write("-+-".join("-" * w for w in widths) + "\n")
        for r in cells:
            out.write(line(r) + "\n")
        more = f", {len(rows) - len(shown)} not shown" if len(shown) < len(rows) else ""
        out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''}{more})\n")
    return len(rows)


def run(con: duckdb.DuckDBPyConnection, query: str, fmt: str = "table", out=sys.stdout, max_rows: int | None = None) -> int:
    rel = con.sql(query)
    if rel is None:  # a statement without a result (SET, CREATE VIEW, ...)
        return 0
    return write(rel, fmt, out, max_rows)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"error: {text}" if text else f"error: {type(exc).__name__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recs_serving.sql", description=__doc__.split("\n\n")[0])
    p.add_argument("query", nargs="*", help="SQL to run (several statements: separate with ;); omit for a prompt")
    p.add_argument("--home", default=None, help="RECS_HOME (default: $RECS_HOME or the repo's var/)")
    p.add_argument("--version", default=None, help="a release version (default: CURRENT)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--warehouse", action="store_true", help="query RECS_HOME/warehouse.duckdb read-only instead (pipeline idle)")
    p.add_argument("--max-rows", type=int, default=None, help="rows shown in table format (default: all; 40 at the prompt)")
    args = p.parse_args(argv)
    try:
        con = connect_warehouse(args.home) if args.warehouse else connect(args.home, args.version)
    except (ReleaseError, OSError, duckdb.Error) as exc:
        print(_one_line(exc), file=sys.stderr)
        return 1
    try:
        if args.query:
            try:
                run(con, " ".join(args.query), args.format, sys.stdout, args.max_rows)
            except (duckdb.Error, ValueError, OSError) as exc:
                print(_one_line(exc), file=sys.stderr)
                return 1
            return 0
        if args.warehouse:
            print("warehouse (read-only)", file=sys.stderr)
        else:
            version = con.execute("SELECT version FROM recs.release").fetchall()[0][0]
            print(f"release {version}; tables: " + ", ".join(f"recs.{r[0]}" for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'recs' ORDER BY 1").fetchall()), file=sys.stderr)
        interactive = sys.stdin.isatty()
        limit = args.max_rows if args.max_rows is not None else (40 if interactive and args.format == "table" else None)
        while True:
            try:
                line = input("recs> " if interactive else "").strip()
            except (EOFError, KeyboardInterrupt):
                if interactive:
                    print()
                return 0
            if not line:
                continue
            if line in ("\\q", "quit", "exit", ".quit"):
                return 0
            try:
                run(con, line, args.format, sys.stdout, limit)
            except (duckdb.Error, ValueError, OSError) as exc:
                print(_one_line(exc), file=sys.stderr)
    finally:
        con.close()


if __name__ == "__main__":
    sys.exit(main())
