"""A release for the readable-answers, web-page and business-rule tests.

``release_factory`` builds the serving tables from the bundled data; this adds what people
read: a catalog ``attributes`` column (``in_stock``, ``image_url`` for a few items, ``colour``),
``user_history`` (dates and quantities) and an ``evaluation`` table with the manifest's
metrics. It derives a new release from the factory's one (hard links for the unchanged files,
a fresh manifest with checksums), so it follows whatever the factory writes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from recs_serving import release as release_format
from release_factory import BUNDLED, build_release

IMAGE = "/ui/static/vendor/favicon-32x32.png"  # a local image: the pages must work offline
OUT_OF_STOCK = ("22423",)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def history_table() -> pl.DataFrame:
    df = pl.read_parquet(BUNDLED).filter(
        pl.col("CustomerID").is_not_null() & (pl.col("Quantity") > 0) & (pl.col("UnitPrice") > 0)
        & ~pl.col("InvoiceNo").str.starts_with("C") & pl.col("StockCode").str.contains(r"^\d"))
    return (df.with_columns(pl.col("CustomerID").cast(pl.Int64).cast(pl.Utf8).alias("user_id"),
                            pl.col("StockCode").str.to_uppercase().alias("item_id"))
            .group_by("user_id", "item_id")
            .agg(pl.col("InvoiceDate").max().alias("last_ts"), pl.col("Quantity").sum().cast(pl.Float64).alias("quantity"),
                 pl.col("InvoiceNo").n_unique().cast(pl.Int64).alias("purchases"))
            .sort("user_id", "item_id"))


def derive(home: Path, base: str, *, tables: dict, metrics: dict | None = None, tag: str = "readable") -> str:
    """A new release = ``base`` + ``tables`` (replacing same-named ones); made current."""
    root = release_format.releases_dir(home)
    src = root / base
    manifest = json.loads((src / release_format.MANIFEST).read_text())
    version = release_format.new_version(tag)
    staging = root / f".staging-{version}"
    staging.mkdir()
    for f in src.iterdir():
        if f.name != release_format.MANIFEST:
            os.link(f, staging / f.name)
    for name, t in tables.items():
        dst = staging / f"{name}.parquet"
        if dst.exists():
            dst.unlink()
        arrow = t.to_arrow() if hasattr(t, "to_arrow") else t
        pq.write_table(arrow, dst)
        manifest.setdefault("row_counts", {})[name] = arrow.num_rows
    manifest["version"] = version
    manifest["created_at"] = datetime.now(timezone.utc).isoformat()
    if metrics is not None:
        manifest["metrics"] = metrics
    manifest["checksums"] = {f.name: _sha(f) for f in sorted(staging.iterdir())}
    (staging / release_format.MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    os.replace(staging, root / version)
    release_format.set_current(home, version)
    return version


def evaluation(scale: float = 1.0) -> pl.DataFrame:
    rows = [("popularity", 0.034, 0.035, 0.018), ("ALS", 0.108, 0.104, 0.227), ("served blend", 0.113, 0.111, 0.19)]
    return pl.DataFrame([(m, r * scale, n * scale, c) for m, r, n, c in rows], schema=["model", "recall@10", "ndcg@10", "coverage"],
                        orient="row")


def build(home: Path) -> tuple[str, str]:
    """Two releases (previous, current) with the readable tables; returns their versions."""
    base = build_release(home, run_id="base").name
    items = pl.read_parquet(release_format.releases_dir(home) / base / "items.parquet")
    attrs = [json.dumps({"in_stock": i not in OUT_OF_STOCK, "colour": "red" if "RED" in (t or "") else "other",
                         **({"image_url": IMAGE} if n % 3 == 0 else {})})
             for n, (i, t) in enumerate(zip(items["item_id"], items["title"]))]
    items = items.with_columns(pl.Series("attributes", attrs))
    hist = history_table()
    ev1 = evaluation(0.9)
    prev = derive(home, base, tables={"items": items, "user_history": hist, "evaluation": ev1},
                  metrics={"evaluation": ev1.to_dicts()}, tag="previous")
    ev2 = evaluation(1.0)
    # the current release: the same models, its top-N reordered for some users (a visible diff)
    topn = pl.read_parquet(release_format.releases_dir(home) / base / "topn.parquet")
    topn = topn.with_columns(pl.when(pl.col("user_id").str.ends_with("7") & (pl.col("rank") <= 20)).then(21 - pl.col("rank")).otherwise(pl.col("rank"))
                             .cast(pl.Int32).alias("rank")).sort("user_id", "rank")
    cur = derive(home, prev, tables={"evaluation": ev2, "topn": topn}, metrics={"evaluation": ev2.to_dicts()}, tag="current")
    shutil.rmtree(release_format.releases_dir(home) / base)
    return prev, cur
