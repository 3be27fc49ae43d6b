"""The served blend: one score per (user, item) from several models.

Each source's scores are standardised per user (z-score over the whole catalogue) before
they are weighted and summed, so a weight means the same thing whatever the scale of the
model behind it. Sources:
  als, bpr     factor models: user row . item factors
  covis        item-item similarity (co-visitation) applied to the user's weighted history
  popularity   one global vector (e.g. trending), standardised once

The same function scores a block of users in the batch top-N job, in the offline
evaluation, and a single user at request time, so what is evaluated is what is served.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from . import topk
from ._validate import check_csr, check_factors, check_int

SOURCES = ("als", "bpr", "covis", "popularity")
DEFAULT_WEIGHTS = {"als": 1.0, "bpr": 0.5, "covis": 0.5, "popularity": 0.5}
_BLOCK_BYTES = 64 * 1024 * 1024


@njit(cache=True, parallel=True)
def _add_row_col(out, row_const, col_const):
    """out[r, j] += row_const[r] + col_const[j]: the z-score offsets, in one pass."""
    n, m = out.shape
    for r in prange(n):
        c = row_const[r]
        for j in range(m):
            out[r, j] += c + col_const[j]


@njit(cache=True, parallel=True)
def _scatter_rows(out, indptr, indices, data, scale):
    """out[r, j] += data * scale[r] at the non-zeros of a CSR block."""
    n = out.shape[0]
    for r in prange(n):
        s = scale[r]
        if s == 0.0:
            continue
        for p in range(indptr[r], indptr[r + 1]):
            out[r, indices[p]] += data[p] * s


def _scale_for(var: np.ndarray, weight: float) -> np.ndarray:
    """weight / std per row; rows with no spread get 0 (they add nothing)."""
    sd = np.sqrt(np.maximum(var, 0.0))
    return np.where(var > 1e-20, weight / np.where(sd > 0, sd, 1.0), 0.0)


def _zscore_vector(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    sd = v.std()
    return ((v - v.mean()) / sd).astype(np.float32) if sd > 0 else np.zeros_like(v, dtype=np.float32)


class Blend:
    """Model parts and weights; `score` gives dense blended scores for a block of users."""

    def __init__(self, weights: dict, *, als_items=None, bpr_items=None, item_sim=None, popularity=None):
        unknown = set(weights) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown blend sources {sorted(unknown)}; known: {SOURCES}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0.0}
        n_items = None
        for name, arr in (("als_items", als_items), ("bpr_items", bpr_items)):
            if arr is not None:
                arr = check_factors(arr, name)
                if n_items is not None and arr.shape[0] != n_items:
                    raise ValueError(f"{name} has {arr.shape[0]} items, expected {n_items}")
                n_items = arr.shape[0]
        # Each factor source's per-user z-score comes from the item factors' mean and
        # covariance (mean_u = u.m, var_u = u'Cu), so all sources share one GEMM and the
        # dense block is touched once instead of twice per source.
        self._factors = {}
        for name, arr in (("als", als_items), ("bpr", bpr_items)):
            if arr is not None:
                V = np.asarray(arr, dtype=np.float64)
                mean = V.mean(axis=0)
                cov = V.T @ V / max(V.shape[0], 1) - np.outer(mean, mean)
                self._factors[name] = (np.ascontiguousarray(np.asarray(arr, np.float32).T), mean, cov)
        self._stacked = {}
        if item_sim is not None:
            item_sim = check_csr(item_sim, "item_sim", nonnegative=False)
            n_items = n_items or item_sim.shape[0]
            if item_sim.shape != (n_items, n_items):
                raise ValueError(f"item_sim must be {n_items} x {n_items}, got {item_sim.shape}")
        self.item_sim = item_sim
        self.popularity_z = None
        if popularity is not None:
            popularity = np.asarray(popularity, dtype=np.float32).ravel()
            n_items = n_items or popularity.shape[0]
            if popularity.shape[0] != n_items:
                raise ValueError(f"popularity has {popularity.shape[0]} items, expected {n_items}")
            self.popularity_z = _zscore_vector(popularity)
        if n_items is None:
            raise ValueError("a blend needs at least one source")
        self.n_items = n_items
        for name in self.weights:
            if self._part(name) is None:
                raise ValueError(f"blend weight given for {name!r} but no {name} data")

    def _part(self, name):
        if name in ("als", "bpr"):
            return self._factors.get(name)
        return {"covis": self.item_sim, "popularity": self.popularity_z}[name]

    def _stacked_items(self, names: tuple[str, ...]) -> np.ndarray:
        if names not in self._stacked:
            self._stacked[names] = np.ascontiguousarray(np.vstack([self._factors[n][0] for n in names]))
        return self._stacked[names]

    def score(self, *, als_users=None, bpr_users=None, history=None, n_users: int | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
        """Dense float32 [n_users, n_items] blended scores.

        als_users/bpr_users: factor rows of these users (or fold-in vectors); history: CSR
        (n_users x n_items) of weighted past items, used by covis.
        """
        n = n_users
        for arr in (als_users, bpr_users, history):
            if arr is not None:
                n = arr.shape[0]
                break
        if n is None:
            raise ValueError("score needs the users' factors or history (or n_users for popularity only)")
        out = np.empty((n, self.n_items), dtype=np.float32) if out is None else out[:n]
        row_const = np.zeros(n, dtype=np.float64)
        names, scaled = [], []
        for name, users in (("als", als_users), ("bpr", bpr_users)):
            w = self.weights.get(name)
            if not w or users is None:
                continue
            _, mean, cov = self._factors[name]
            U = np.asarray(users, dtype=np.float64)
            scale = _scale_for(np.einsum("ij,jk,ik->i", U, cov, U), w)
            row_const -= (U @ mean) * scale
            names.append(name)
            scaled.append(U * scale[:, None])
        if names:
            np.matmul(np.hstack(scaled).astype(np.float32), self._stacked_items(tuple(names)), out=out)
        else:
            out[:] = 0.0
        sparse_part = None
        w = self.weights.get("covis")
        if w and history is not None:
            H = sp.csr_matrix(history @ self.item_sim, dtype=np.float32)
            m = float(self.n_items)
            s1 = np.asarray(H.sum(axis=1), dtype=np.float64).ravel()
            s2 = np.asarray(H.multiply(H).sum(axis=1), dtype=np.float64).ravel()
            mean = s1 / m
            scale = _scale_for(s2 / m - mean * mean, w)
            row_const -= mean * scale
            sparse_part = (H, scale)
        w = self.weights.get("popularity")
        col_const = (w * self.popularity_z).astype(np.float32) if w else np.zeros(self.n_items, np.float32)
        _add_row_col(out, row_const.astype(np.float32), col_const)
        if sparse_part is not None:
            H, scale = sparse_part
            _scatter_rows(out, H.indptr, H.indices, H.data, scale.astype(np.float32))
        return out

    def top_k(self, k: int, *, als_users=None, bpr_users=None, history=None, exclude=None,
              block_users: int | None = None):
        """Top k per user of the blended scores, skipping `exclude` (CSR users x items)."""
        k = check_int(k, "k", minimum=1)
        n = next(a.shape[0] for a in (als_users, bpr_users, history, exclude) if a is not None)
        if exclude is not None:
            exclude = check_csr(exclude, "exclude", shape=(n, self.n_items), nonnegative=False)
            ex_indptr, ex_indices = exclude.indptr, exclude.indices
        else:
            ex_indptr, ex_indices = np.zeros(n + 1, np.int64), np.zeros(1, np.int32)
        if history is not None:
            history = sp.csr_matrix(history, dtype=np.float32)
        block = block_users or max(1, _BLOCK_BYTES // (4 * max(self.n_items, 1)))
        ids = np.full((n, k), -1, dtype=np.int32)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        buf = np.empty((min(block, n), self.n_items), dtype=np.float32)
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            S = self.score(
                als_users=None if als_users is None else als_users[b0:b1],
                bpr_users=None if bpr_users is None else bpr_users[b0:b1],
                history=None if history is None else history[b0:b1],
                n_users=b1 - b0, out=buf,
            )
            topk._select_block(S, ex_indptr, ex_indices, b0, k, ids[b0:b1], scores[b0:b1])
        return ids, scores
