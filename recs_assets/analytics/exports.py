"""User and item factors with their original ids: Parquet files and LanceDB tables."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def normalize_rows(M: np.ndarray) -> np.ndarray:
    """L2-normalised rows (all-zero rows stay zero)."""
    M = np.asarray(M, dtype=np.float32)
    norms = np.linalg.norm(M, axis=1, keepdims=True)
    return M / np.where(norms > 0, norms, 1.0)


def factor_table(id_name: str, ids: np.ndarray, factors: np.ndarray, extra: dict | None = None) -> pa.Table:
    """id column, then `vector` (fixed-size float32 list: LanceDB's default vector column), then extras."""
    F = np.ascontiguousarray(factors, dtype=np.float32)
    cols = {id_name: pa.array([str(x) for x in ids], pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(F.ravel()), F.shape[1])}
    for k, v in (extra or {}).items():
        cols[k] = v if isinstance(v, pa.Array) else pa.array(v)
    return pa.table(cols)


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    return path
