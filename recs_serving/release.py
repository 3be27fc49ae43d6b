"""The release format: defined once, written by the pipeline, read by serving.

A release is an immutable directory RECS_HOME/releases/<version>/ holding Parquet tables,
`.npy` arrays and `manifest.json`. `RECS_HOME/releases/CURRENT` names the current one and is
switched atomically (temp file + os.replace) only after the directory is complete, so a
reader never sees a half-written release and a failed run leaves the previous one current.

Tables (Parquet; `idx` is the row in every array of the same entity):
  items.parquet       idx, item_id, title, description, brand, category, price, popularity, trending
  users.parquet       idx, user_id
  user_items.parquet  user_id, item_id, weight, purchases               (history, for exclusion)
  topn.parquet        user_id, rank, item_id, score, reason            (precomputed per known user)
  similar_items.parquet  item_id, rank, similar_item_id, score, source (factors|content)
  covisitation.parquet   item_id, neighbor_id, score                  (within baskets/sessions)
  item_similarity.parquet item_id, neighbor_id, score                 (across a user's history; the blend's "covis")
  rules.parquet       antecedents (list[str]), consequents (list[str]), support, confidence, lift, …
  popularity.parquet  scope (global|trending|brand|category), key, item_id, score, rank
Arrays (.npy, float32, rows aligned with items.idx / users.idx):
  als_user_factors, als_item_factors, bpr_user_factors, bpr_item_factors, item_embeddings
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
KEEP_RELEASES = 3

TABLES = ("items", "users", "user_items", "topn", "similar_items", "covisitation", "item_similarity", "rules",
          "popularity")
ARRAYS = ("als_user_factors", "als_item_factors", "bpr_user_factors", "bpr_item_factors", "item_embeddings")
REQUIRED_TABLES = ("items", "users", "user_items", "topn", "popularity")


class ReleaseError(RuntimeError):
    pass


def releases_dir(home: Path | str) -> Path:
    return Path(home) / "releases"


def new_version(run_id: str = "") -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{(run_id or uuid.uuid4().hex)[:8]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_arrow(table: Any) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    if hasattr(table, "to_arrow"):  # polars
        return table.to_arrow()
    raise TypeError(f"cannot write {type(table).__name__} as a release table")


def publish(
    home: Path | str,
    *,
    tables: dict[str, Any],
    arrays: dict[str, np.ndarray],
    run_id: str = "",
    parameters: dict | None = None,
    metrics: dict | None = None,
    lancedb: dict | None = None,
    keep: int = KEEP_RELEASES,
) -> Path:
    """Write a complete release, then make it current. Returns its directory."""
    missing = [t for t in REQUIRED_TABLES if t not in tables]
    if missing:
        raise ReleaseError(f"release is missing required tables: {missing}")
    unknown = set(tables) - set(TABLES) | set(arrays) - set(ARRAYS)
    if unknown:
        raise ReleaseError(f"unknown release members: {sorted(unknown)}")
    root = releases_dir(home)
    root.mkdir(parents=True, exist_ok=True)
    version = new_version(run_id)
    staging = root / f".staging-{version}"
    staging.mkdir()
    try:
        row_counts: dict[str, int] = {}
        for name, table in tables.items():
            arrow = _to_arrow(table)
            pq.write_table(arrow, staging / f"{name}.parquet", compression="zstd")
            row_counts[name] = arrow.num_rows
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            np.save(staging / f"{name}.npy", arr)
            row_counts[name] = int(arr.shape[0])
        files = sorted(p.name for p in staging.iterdir())
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "version": version,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "dagster_run_id": run_id,
            "parameters": parameters or {},
            "metrics": metrics or {},
            "row_counts": row_counts,
            "checksums": {f: _sha256(staging / f) for f in files},
            "lancedb": lancedb or {},
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        _fsync_dir(staging)
        final = root / version
        os.replace(staging, final)
        set_current(home, version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    prune(home, keep=keep)
    return final


def set_current(home: Path | str, version: str) -> None:
    root = releases_dir(home)
    if not (root / version / MANIFEST).exists():
        raise ReleaseError(f"no complete release {version!r} under {root}")
    tmp = root / f".{CURRENT}.{uuid.uuid4().hex}"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / CURRENT)


def current_version(home: Path | str) -> str | None:
    pointer = releases_dir(home) / CURRENT
    try:
        return pointer.read_text().strip() or None
    except FileNotFoundError:
        return None


def list_versions(home: Path | str) -> list[str]:
    root = releases_dir(home)
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).exists())


def prune(home: Path | str, keep: int = KEEP_RELEASES) -> list[str]:
    """Delete all but the newest `keep` releases; never the current one; stale staging dirs too."""
    root = releases_dir(home)
    current = current_version(home)
    versions = list_versions(home)
    doomed = [v for v in versions[: max(0, len(versions) - keep)] if v != current]
    for v in doomed:
        shutil.rmtree(root / v, ignore_errors=True)
    for stale in root.glob(".staging-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return doomed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ReleaseFiles:
    """A release on disk: its directory and parsed manifest; loads members on request."""

    path: Path
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def has(self, name: str) -> bool:
        return (self.path / f"{name}.parquet").exists() or (self.path / f"{name}.npy").exists()

    def table(self, name: str) -> pa.Table:
        return pq.read_table(self.path / f"{name}.parquet")

    def array(self, name: str, mmap: bool = False) -> np.ndarray:
        return np.load(self.path / f"{name}.npy", mmap_mode="r" if mmap else None)

    def verify(self, required_arrays: tuple[str, ...] = ("als_user_factors", "als_item_factors")) -> None:
        """Everything serving checks before it serves a release (``ReleaseError`` naming the
        first problem): the required tables and arrays are present, every file the manifest
        lists has its sha256, and every array is floating point and finite (checked in
        blocks, so a large memory-mapped array is never copied whole)."""
        where = self.path.name
        missing = [f"{t}.parquet" for t in REQUIRED_TABLES if not (self.path / f"{t}.parquet").exists()]
        missing += [f"{a}.npy" for a in required_arrays if not (self.path / f"{a}.npy").exists()]
        if missing:
            raise ReleaseError(f"release {where}: missing {', '.join(missing)}")
        checksums = self.manifest.get("checksums")
        if not isinstance(checksums, dict) or not checksums:
            raise ReleaseError(f"release {where}: manifest has no checksums")
        for name, digest in checksums.items():
            path = self.path / name
            if "/" in name or name.startswith("."):
                raise ReleaseError(f"release {where}: manifest lists an unexpected path {name!r}")
            if not path.exists():
                raise ReleaseError(f"release {where}: {name} is listed in the manifest but missing")
            if _sha256(path) != digest:
                raise ReleaseError(f"release {where}: checksum mismatch for {name} (sha256 differs from the manifest)")
        for path in sorted(self.path.glob("*.npy")):
            try:
                arr = np.load(path, mmap_mode="r")
            except Exception as exc:  # noqa: BLE001 - any unreadable array is a refusal
                raise ReleaseError(f"release {where}: cannot read {path.name}: {exc}") from exc
            if arr.dtype.kind != "f":
                raise ReleaseError(f"release {where}: {path.name} has dtype {arr.dtype}, expected floating point")
            flat = arr.reshape(-1)
            for a in range(0, flat.size, 1 << 22):
                if not np.isfinite(flat[a:a + (1 << 22)]).all():
                    raise ReleaseError(f"release {where}: {path.name} holds NaN or infinite values")



def open_release(home: Path | str, version: str | None = None) -> ReleaseFiles:
    version = version or current_version(home)
    if not version:
        raise ReleaseError(f"no current release under {releases_dir(home)}; run the pipeline first")
    path = releases_dir(home) / version
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise ReleaseError(f"release {version!r} has no manifest at {path}") from exc
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ReleaseError(
            f"release {version} has schema_version {manifest.get('schema_version')}, this reader needs {SCHEMA_VERSION}"
        )
    return ReleaseFiles(path=path, manifest=manifest)
