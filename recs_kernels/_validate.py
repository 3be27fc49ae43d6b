"""Input validation shared by the kernels.

Kernels are compiled with numba and index raw arrays without bounds checks, so bad input
(a NaN weight, a float64 factor matrix, an unsorted CSR) turns into silent garbage or a
segfault instead of an exception. Every public kernel entry point therefore funnels its
arguments through these helpers, which either return a canonical array the kernels can trust
(C-contiguous, expected dtype, finite) or raise ``ValueError`` naming the argument and the
problem.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

__all__ = [
    "check_csr",
    "check_factors",
    "check_vector",
    "check_ids",
    "check_int",
    "check_float",
    "check_choice",
    "describe_bad",
]


def describe_bad(values: np.ndarray) -> str:
    n_nan = int(np.isnan(values).sum())
    n_inf = int(np.isinf(values).sum())
    parts = []
    if n_nan:
        parts.append(f"{n_nan} NaN")
    if n_inf:
        parts.append(f"{n_inf} inf")
    return " and ".join(parts)


def check_csr(
    matrix,
    name: str = "user_items",
    *,
    dtype=np.float32,
    nonnegative: bool = True,
    shape: tuple[int | None, int | None] | None = None,
    allow_empty: bool = True,
) -> sp.csr_matrix:
    """Return ``matrix`` as a canonical CSR the kernels can index blindly.

    Canonical means: ``csr_matrix`` with ``dtype`` data, int32 (or int64 when too large)
    indices, sorted indices without duplicates, no explicit zeros. The input is never modified.
    Duplicates are summed, matching scipy's own ``sum_duplicates`` semantics.
    """
    if not (sp.issparse(matrix)):
        raise ValueError(
            f"{name} must be a scipy.sparse CSR matrix, got {type(matrix).__name__}"
        )
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got {matrix.ndim}-D")
    if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
        raise ValueError(f"{name} must have real numeric values, got dtype {matrix.dtype}")
    if shape is not None:
        for axis, want in enumerate(shape):
            if want is not None and matrix.shape[axis] != want:
                raise ValueError(
                    f"{name} has shape {matrix.shape}, expected {want} along axis {axis}"
                )
    if not allow_empty and (matrix.shape[0] == 0 or matrix.shape[1] == 0):
        raise ValueError(f"{name} is empty (shape {matrix.shape})")

    csr = sp.csr_matrix(matrix, dtype=dtype, copy=True)
    data = csr.data
    if data.size and not np.isfinite(data).all():
        raise ValueError(f"{name} contains {describe_bad(data)} values")
    if nonnegative and data.size and (data < 0).any():
        n_neg = int((data < 0).sum())
        raise ValueError(f"{name} contains {n_neg} negative values; weights must be >= 0")
    csr.sum_duplicates()  # also sorts indices
    csr.eliminate_zeros()
    if not csr.has_sorted_indices:
        csr.sort_indices()
    # One index dtype for every kernel signature keeps numba's compiled-variant count low.
    idx_dtype = np.int32 if csr.nnz < np.iinfo(np.int32).max else np.int64
    csr.indptr = np.ascontiguousarray(csr.indptr, dtype=np.int64)
    csr.indices = np.ascontiguousarray(csr.indices, dtype=idx_dtype)
    csr.data = np.ascontiguousarray(csr.data, dtype=dtype)
    return csr


def check_factors(
    factors,
    name: str = "factors",
    *,
    n_rows: int | None = None,
    n_cols: int | None = None,
    dtype=np.float32,
) -> np.ndarray:
    """Return a C-contiguous 2-D ``dtype`` copy-if-needed of a finite factor matrix."""
    if isinstance(factors, np.ndarray) is False and sp.issparse(factors):
        raise ValueError(f"{name} must be a dense array, got a sparse matrix")
    arr = np.asarray(factors)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x factors), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be a real float array, got dtype {arr.dtype}")
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected {n_rows}")
    if n_cols is not None and arr.shape[1] != n_cols:
        raise ValueError(f"{name} has {arr.shape[1]} columns, expected {n_cols}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has zero columns")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {describe_bad(arr)} values")
    return arr


def check_vector(
    values,
    name: str,
    *,
    length: int | None = None,
    dtype=np.float32,
    nonnegative: bool = False,
    allow_neg_inf: bool = False,
) -> np.ndarray:
    """Return a finite 1-D ``dtype`` array (``-inf`` allowed when ``allow_neg_inf``)."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size and not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {length}")
    arr = np.ascontiguousarray(arr, dtype=dtype)
    if arr.size:
        bad = np.isnan(arr) | np.isposinf(arr)
        if not allow_neg_inf:
            bad |= np.isneginf(arr)
        if bad.any():
            raise ValueError(f"{name} contains {describe_bad(arr[bad])} values")
        if nonnegative and (arr < 0).any():
            raise ValueError(f"{name} contains {int((arr < 0).sum())} negative values")
    return arr


def check_ids(ids, name: str, *, upper: int, dtype=np.int64) -> np.ndarray:
    """Return a 1-D integer id array with every id in ``[0, upper)``."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=dtype)
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= upper:
        raise ValueError(f"{name} must lie in [0, {upper}), got values in [{lo}, {hi}]")
    return np.ascontiguousarray(arr, dtype=dtype)


def check_int(value, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    value,
    name: str,
    *,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None:
        if exclusive_minimum and value <= minimum:
            raise ValueError(f"{name} must be > {minimum}, got {value}")
        if not exclusive_minimum and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value
