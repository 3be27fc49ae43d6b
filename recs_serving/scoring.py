"""Request-time inputs of the one blend (``recs_kernels.blend.Blend``).

The batch top-N and a request score with the same ``Blend``: this module builds it over a
loaded release's arrays, and builds a request's weighted history ``h`` by the definition the
batch uses (the user's ``history_cap`` heaviest history items, as ``blend.cap_history`` keeps
them) plus the request's recent items, weighted as the interaction matrix weighs events:
``recent_weight * log1p(sum of event weights) * exp(-age / decay_days)``, the age measured
from the request's newest event (no wall clock enters an answer).
"""
from __future__ import annotations

import numpy as np

from recs_kernels import blend
from recs_kernels.sources import SOURCES

from .loader import LoadedRelease
from .release import ReleaseContract

__all__ = ["SOURCES", "release_blend", "seed_weights", "request_history"]

_MS_PER_DAY = 86_400_000.0


def release_blend(rel: LoadedRelease) -> blend.Blend:
    """The blend over this release's sources (per-source moments computed once, here)."""
    return blend.Blend(
        als_items=rel.als_item, bpr_items=rel.bpr_item, item_sim=rel.item_sim.csr(), covis=rel.covis.csr(),
        rules=rel.rules.csr(), content=rel.emb, trending=rel.trending, popularity=rel.popularity,
    )


def seed_weights(contract: ReleaseContract, events: dict[int, tuple[float, float]]) -> dict[int, float]:
    """``{item: (sum of event weights, age in ms)}`` -> the items' weights in ``h``."""
    scale = contract.recent_weight
    tau = contract.decay_days * _MS_PER_DAY
    return {i: scale * float(np.log1p(w)) * float(np.exp(-age / tau)) for i, (w, age) in events.items()}


def request_history(rel: LoadedRelease, contract: ReleaseContract, user: int, seeds: np.ndarray,
                    seed_w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``h`` as sorted distinct (item ids, weights): the user's capped history plus the seeds."""
    ids = np.zeros(0, np.int64)
    w = np.zeros(0, np.float64)
    if user >= 0:
        h_items, h_w, _ = rel.history(user)
        ids, w = blend.cap_row(h_items.astype(np.int64), h_w.astype(np.float64), contract.candidates.history_cap)
    if seeds.size:
        ids = np.concatenate([ids, seeds.astype(np.int64)])
        w = np.concatenate([w, seed_w.astype(np.float64)])
        ids, inv = np.unique(ids, return_inverse=True)
        w = np.bincount(inv, weights=w, minlength=ids.size)
    return ids, w
