"""Releases on disk: list them, compare two, roll back to one.

    python -m recs_serving.releases list [--home DIR] [--format table|json]
    python -m recs_serving.releases diff A B           # B defaults to CURRENT, A to the one before
    python -m recs_serving.releases rollback VERSION   # point CURRENT at an older, complete release

Rollback only moves the ``CURRENT`` pointer (atomically, as a publish does); serving picks it
up on its next poll (or at once with ``POST /v1/admin/reload``). The next pipeline run
publishes a new release as usual. The web page ``/ui/release`` shows the same figures.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import release as release_format

TOP_RANK = 10  # "top items": how often an item sits in a customer's first TOP_RANK


def evaluation_rows(manifest: dict) -> list[dict]:
    ev = (manifest.get("metrics") or {}).get("evaluation")
    if isinstance(ev, dict):  # {model: {metric: value}} or {"rows": [...]}
        ev = ev.get("rows") or [{"model": k, **v} for k, v in ev.items() if isinstance(v, dict)]
    return [r for r in (ev or []) if isinstance(r, dict)]


def _model_key(row: dict) -> str:
    parts = [str(row[k]) for k in ("split", "use_case", "model") if row.get(k) is not None]
    return " / ".join(parts) or "?"


def list_releases(home: str | Path | None = None) -> list[dict]:
    home = release_format.default_home(home)
    current = release_format.current_version(home)
    out = []
    for v in release_format.list_versions(home):
        try:
            m = release_format.open_release(home, v).manifest
        except release_format.ReleaseError as exc:
            out.append({"version": v, "current": v == current, "error": str(exc)})
            continue
        rc = m.get("row_counts", {})
        out.append({"version": v, "current": v == current, "created_at": m.get("created_at"),
                    "run_id": m.get("dagster_run_id"), "items": rc.get("items"), "users": rc.get("users"),
                    "tables": len([k for k in rc if not k.endswith("_factors") and k != "item_embeddings"])})
    return out


def top_items(home: Path, version: str, rank: int = TOP_RANK) -> dict[str, int]:
    """item_id -> customers who have it in their first ``rank`` recommendations."""
    path = release_format.releases_dir(home) / version / "topn.parquet"
    if not path.exists():
        return {}
    t = pq.read_table(path, columns=["item_id", "rank"], filters=[("rank", "<=", rank)])
    vc = pc.value_counts(t.column("item_id").combine_chunks())
    return {str(v["values"]): int(v["counts"]) for v in vc.to_pylist()}


def diff(home: str | Path | None, a: str | None = None, b: str | None = None, top: int = 10) -> dict[str, Any]:
    """Metric deltas and the biggest changes in top items from release ``a`` to ``b``."""
    home = release_format.default_home(home)
    versions = release_format.list_versions(home)
    b = b or release_format.current_version(home)
    if b is None:
        raise release_format.ReleaseError(f"no current release under {release_format.releases_dir(home)}")
    if a is None:
        older = [v for v in versions if v < b]
        if not older:
            return {"from": None, "to": b, "metrics": [], "top_items": []}
        a = older[-1]
    ma, mb = release_format.open_release(home, a).manifest, release_format.open_release(home, b).manifest
    ra = {_model_key(r): r for r in evaluation_rows(ma)}
    rows_b = evaluation_rows(mb)
    if any(r.get("split") == "test" for r in rows_b):  # compare what the held-out split says
        rows_b = [r for r in rows_b if r.get("split") == "test"]
    metrics = []
    for row in rows_b:
        key = _model_key(row)
        old = ra.get(key, {})
        for name, val in row.items():
            if name in ("model", "split", "use_case", "cut") or isinstance(val, bool) or not isinstance(val, (int, float)):
                continue
            prev = old.get(name)
            prev = prev if isinstance(prev, (int, float)) and not isinstance(prev, bool) else None
            delta = None if prev is None or not math.isfinite(val) else val - prev
            metrics.append({"model": key, "metric": name, "before": prev, "after": val, "delta": delta})
    ta, tb = top_items(home, a), top_items(home, b)
    changes = [{"item_id": i, "before": ta.get(i, 0), "after": tb.get(i, 0), "change": tb.get(i, 0) - ta.get(i, 0)}
               for i in set(ta) | set(tb)]
    changes.sort(key=lambda r: (-abs(r["change"]), r["item_id"]))
    return {"from": a, "to": b, "metrics": metrics, "top_items": changes[:top]}


def rollback(home: str | Path | None, version: str) -> str | None:
    """Make ``version`` current (it must be a complete release); returns the previous CURRENT."""
    home = release_format.default_home(home)
    release_format.open_release(home, version)  # a readable manifest of this schema, or ReleaseError
    before = release_format.current_version(home)
    release_format.set_current(home, version)
    return before


def _table(rows: list[dict], cols: list[str]) -> str:
    cells = [[("" if r.get(c) is None else (f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]))) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    line = lambda xs: "  ".join(x.ljust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(x) for x in cells])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recs_serving.releases", description=__doc__.split("\n\n")[0])
    p.add_argument("--home", default=None, help="RECS_HOME (default: $RECS_HOME or the repo's var/)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every release on disk, newest last; * marks CURRENT")
    d = sub.add_parser("diff", help="metric deltas and top-item changes from A to B")
    d.add_argument("a", nargs="?")
    d.add_argument("b", nargs="?")
    r = sub.add_parser("rollback", help="point CURRENT at VERSION")
    r.add_argument("version")
    args = p.parse_args(argv)
    try:
        if args.cmd == "list":
            rows = list_releases(args.home)
            if args.format == "json":
                print(json.dumps(rows, indent=2))
            else:
                for r_ in rows:
                    r_["current"] = "*" if r_["current"] else ""
                print(_table(rows, ["current", "version", "created_at", "items", "users", "tables"]))
        elif args.cmd == "diff":
            out = diff(args.home, args.a, args.b)
            if args.format == "json":
                print(json.dumps(out, indent=2))
            else:
                print(f"from {out['from']} to {out['to']}")
                print(_table(out["metrics"], ["model", "metric", "before", "after", "delta"]))
                print()
                print(_table(out["top_items"], ["item_id", "before", "after", "change"]))
        else:
            before = rollback(args.home, args.version)
            print(f"CURRENT: {before} -> {args.version}")
    except (release_format.ReleaseError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
