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
def _accumulate_z(out, S, weight):
    """out += weight * zscore(S) per row; rows with no spread add nothing."""
    n, m = S.shape
    for r in prange(n):
        s = 0.0
        ss = 0.0
        for j in range(m):
            v = S[r, j]
            s += v
            ss += v * v
        mean = s / m
        var = ss / m - mean * mean
        if var <= 1e-20:
            continue
        scale = weight / np.sqrt(var)
        for j in range(m):
            out[r, j] += (S[r, j] - mean) * scale


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
        self.als_items_t = None if als_items is None else np.ascontiguousarray(np.asarray(als_items, np.float32).T)
        self.bpr_items_t = None if bpr_items is None else np.ascontiguousarray(np.asarray(bpr_items, np.float32).T)
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
        return {"als": self.als_items_t, "bpr": self.bpr_items_t, "covis": self.item_sim,
                "popularity": self.popularity_z}[name]

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
        if out is None:
            out = np.zeros((n, self.n_items), dtype=np.float32)
        else:
            out = out[:n]
            out[:] = 0.0
        tmp = None
        for name, w in self.weights.items():
            if name == "popularity":
                out += w * self.popularity_z
                continue
            if name == "covis":
                if history is None:
                    continue
                part = np.asarray((history @ self.item_sim).todense(), dtype=np.float32)
            else:
                users = als_users if name == "als" else bpr_users
                if users is None:
                    continue
                users = np.asarray(users, dtype=np.float32)
                if tmp is None or tmp.shape[0] != n:
                    tmp = np.empty((n, self.n_items), dtype=np.float32)
                np.matmul(users, self._part(name), out=tmp)
                part = tmp
            _accumulate_z(out, part, np.float32(w))
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
