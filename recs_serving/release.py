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
  covisitation.parquet   item_id, neighbor_id, score                  (within baskets/sessions; the blend's "covis")
  item_similarity.parquet item_id, neighbor_id, score                 (across a user's history; the blend's "item_sim")
  rules.parquet       antecedents (list[str]), consequents (list[str]), support, confidence, lift, …
  popularity.parquet  scope (global|trending|brand|category), key, item_id, score, rank
Arrays (.npy, float32, rows aligned with items.idx / users.idx):
  als_user_factors, als_item_factors, bpr_user_factors, bpr_item_factors, item_embeddings
manifest.json: version, created_at, dagster_run_id, ``contract`` (``ReleaseContract``: every
parameter a request needs; read strictly, no reader defaults), metrics, row_counts, checksums,
lancedb, ``extra`` (free provenance, never read by serving). ``write_release`` is the one writer.
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recs_kernels.sources import SOURCES

SCHEMA_VERSION = 3
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
KEEP_RELEASES = 3

TABLES = ("items", "users", "user_items", "topn", "similar_items", "covisitation", "item_similarity", "rules",
          "popularity")
# For people, not for serving: what the README's SQL and the web pages read (all optional).
ANALYST_TABLES = ("user_history", "quarantine", "evaluation", "substitutes", "customer_saturation", "cross_sell_potential",
                  "item_targeting", "product_graph_nodes", "product_graph_edges", "factor_exports", "business_rules")
TABLES = TABLES + ANALYST_TABLES
ARRAYS = ("als_user_factors", "als_item_factors", "bpr_user_factors", "bpr_item_factors", "item_embeddings")
REQUIRED_TABLES = ("items", "users", "user_items", "topn", "popularity")


class ReleaseError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------
# the contract: every parameter a request needs, written by the pipeline from the configs its
# assets ran with, read strictly (no field has a default here: a reader never fills one in)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceWeights(_Strict):
    """Weight of each source of the blend (``recs_kernels.blend.SOURCES``)."""

    als: float = Field(ge=0, allow_inf_nan=False)
    bpr: float = Field(ge=0, allow_inf_nan=False)
    item_sim: float = Field(ge=0, allow_inf_nan=False)
    covis: float = Field(ge=0, allow_inf_nan=False)
    rules: float = Field(ge=0, allow_inf_nan=False)
    content: float = Field(ge=0, allow_inf_nan=False)
    trending: float = Field(ge=0, allow_inf_nan=False)
    popularity: float = Field(ge=0, allow_inf_nan=False)


class EventWeights(_Strict):
    view: float = Field(ge=0, allow_inf_nan=False)
    add: float = Field(ge=0, allow_inf_nan=False)
    purchase: float = Field(ge=0, allow_inf_nan=False)


class ALSContract(_Strict):
    """What ALS fold-in needs at request time: the training's regularization and alpha."""

    factors: int = Field(ge=1)
    regularization: float = Field(ge=0, allow_inf_nan=False)
    alpha: float = Field(gt=0, allow_inf_nan=False)


class CandidateSizes(_Strict):
    neighbours_per_seed: int = Field(ge=1, description="Neighbours of each seed item taken as candidates")
    max_seeds: int = Field(ge=1, description="Recent items used as seeds, heaviest first")
    history_cap: int = Field(ge=1, description="Heaviest history items a user is blended from (batch and request)")
    topn: int = Field(ge=1, description="Items per user in the batch top-N table")
    als_scan_per_k: int = Field(ge=0, description="A refreshed ALS user's best items taken as candidates: per_k * k + extra")
    als_scan_extra: int = Field(ge=0)
    mmr_pool_per_k: int = Field(ge=1, description="Best-scored candidates MMR re-ranks: max(per_k * k, k + extra)")
    mmr_pool_extra: int = Field(ge=0)
    popular_per_k: int = Field(ge=1, description="Brand/category/global popularity list items taken as candidates per k")


USE_CASES = ("homepage", "session", "item_page", "cart", "cold_start")


class UseCaseBlend(_Strict):
    """The blend one use case is answered with, and why these values (``tuned``,
    ``best_single:<source>`` when the tuned blend did not reach that source on validation, or
    ``configured``)."""

    weights: SourceWeights
    mmr_lambda: float = Field(ge=0, le=1, allow_inf_nan=False)
    chosen: str


class Blends(_Strict):
    """One blend per use case (``USE_CASES``): homepage answers known users and the batch
    top-N table; session anonymous visitors with recent events; item_page similar items; cart
    add-ons; cold_start visitors with no events."""

    homepage: UseCaseBlend
    session: UseCaseBlend
    item_page: UseCaseBlend
    cart: UseCaseBlend
    cold_start: UseCaseBlend


class ReleaseContract(_Strict):
    """The typed parameters of a release (``manifest.json`` key ``contract``)."""

    schema_version: int
    sources: tuple[str, ...]
    blends: Blends
    als: ALSContract
    event_weights: EventWeights
    decay_days: float = Field(gt=0, allow_inf_nan=False, description="Time constant of history and recent-event weights")
    recent_weight: float = Field(ge=0, allow_inf_nan=False, description="A recent event's weight relative to the same event in the history")
    content_dim: int = Field(ge=1, description="Columns of the content vectors (PCA of the embeddings)")
    candidates: CandidateSizes
    configs: dict[str, dict[str, Any]] = Field(description="Every asset's recorded config (provenance)")

    @field_validator("schema_version")
    @classmethod
    def _current_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"contract schema_version {v}, this reader needs {SCHEMA_VERSION}")
        return v

    @field_validator("sources")
    @classmethod
    def _catalogue(cls, v: tuple) -> tuple:
        if tuple(v) != SOURCES:
            raise ValueError(f"source catalogue {list(v)} differs from this reader's {list(SOURCES)}")
        return tuple(v)

    def blend(self, use_case: str) -> UseCaseBlend:
        if use_case not in USE_CASES:
            raise ValueError(f"unknown use case {use_case!r}; known: {USE_CASES}")
        return getattr(self.blends, use_case)

    @property
    def weights(self) -> SourceWeights:
        """The homepage blend's weights: the batch top-N table is scored with them."""
        return self.blends.homepage.weights

    @property
    def mmr_lambda(self) -> float:
        return self.blends.homepage.mmr_lambda

    def replace(self, **changes: Any) -> "ReleaseContract":
        """A validated copy with ``changes``; nested models merge (``blends={"cart": {"mmr_lambda": 1}}``).
        ``weights=`` / ``mmr_lambda=`` set (merge into) every use case's blend."""
        data = self.model_dump()
        every = {k: changes.pop(k) for k in ("weights", "mmr_lambda") if k in changes}
        if every:
            changes["blends"] = _merge({uc: every for uc in USE_CASES}, _plain(changes.get("blends", {})))
        for key, value in changes.items():
            value = _plain(value)
            if isinstance(value, dict) and isinstance(data.get(key), dict) and key != "configs":
                data[key] = _merge(data[key], value)
            else:
                data[key] = value
        return ReleaseContract.model_validate(data)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _merge(base: dict, changes: dict) -> dict:
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_contract(manifest: dict) -> ReleaseContract:
    """The manifest's contract, or ReleaseError naming what is missing or wrong."""
    version = manifest.get("version", "?")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ReleaseError(f"release {version} has schema_version {manifest.get('schema_version')}, "
                           f"this reader needs {SCHEMA_VERSION}; re-run the pipeline to publish a current release")
    if "contract" not in manifest:
        raise ReleaseError(f"release {version}: manifest has no 'contract'")
    try:
        return ReleaseContract.model_validate(manifest["contract"])
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'contract'}: {e['msg']}" for e in exc.errors())
        raise ReleaseError(f"release {version}: bad contract: {problems}") from None


def write_release(
    home: Path | str,
    *,
    contract: ReleaseContract,
    tables: dict[str, Any],
    arrays: dict[str, np.ndarray],
    run_id: str = "",
    metrics: dict | None = None,
    lancedb: dict | None = None,
    extra: dict | None = None,
    keep: int = KEEP_RELEASES,
) -> Path:
    """The one release writer (pipeline, test factory, benchmarks): a complete release with
    ``contract`` in its manifest, made current atomically. ``extra``: free provenance
    (``manifest["extra"]``), never read by serving."""
    if not isinstance(contract, ReleaseContract):
        raise TypeError(f"contract must be a ReleaseContract, got {type(contract).__name__}")
    return _publish(home, tables=tables, arrays=arrays, run_id=run_id,
                    manifest_fields={"contract": contract.model_dump(mode="json"), "extra": extra or {}},
                    metrics=metrics, lancedb=lancedb, keep=keep)


def default_home(home: Path | str | None = None) -> Path:
    """RECS_HOME: ``home`` if given, else the environment's, else ``var/`` beside the code
    (the one place every reader and writer resolves it)."""
    return Path(home or os.environ.get("RECS_HOME") or Path(__file__).resolve().parents[1] / "var").resolve()


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


def _write_table(table: Any, path: Path) -> int:
    """A frame, or a ``pyarrow.RecordBatchReader`` (e.g. a warehouse query) written batch by batch,
    so a table of tens of millions of rows is never in memory whole. Returns the row count."""
    if isinstance(table, pa.RecordBatchReader):
        rows = 0
        with pq.ParquetWriter(path, table.schema, compression="zstd") as out:
            for batch in table:
                out.write_batch(batch)
                rows += batch.num_rows
        return rows
    arrow = _to_arrow(table)
    pq.write_table(arrow, path, compression="zstd")
    return arrow.num_rows


def _publish(
    home: Path | str,
    *,
    tables: dict[str, Any],
    arrays: dict[str, np.ndarray],
    run_id: str,
    manifest_fields: dict,
    metrics: dict | None,
    lancedb: dict | None,
    keep: int,
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
            row_counts[name] = _write_table(table, staging / f"{name}.parquet")
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
            **manifest_fields,
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
