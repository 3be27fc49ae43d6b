"""What a serving process derives from a loaded release, computed once per release where the
release is loaded (the mapped cache's builder), so that a swap is a pointer flip.

Deriving in each worker at swap time is what stalled requests: the blend's per-source moments
(a pass over every factor matrix), the item-id array, and the readable catalog (a Parquet read
and 100K-entry lists, which the first request after a swap used to pay on the event loop).
``derive`` returns all of it as arrays (memory-mapped by every worker) and plain lists (read
in slices); ``blend_of`` and ``catalog_of`` rebuild the objects from them without a pass over
the data. A release loaded without the cache (``derived`` empty) derives them here instead.
"""
from __future__ import annotations

import numpy as np

from recs_kernels.als import _gram
from recs_kernels.blend import Blend

from .loader import LoadedRelease
from .scoring import release_blend

BLEND = "blend."
CATALOG = "catalog."
CATALOG_FIELDS = ("prices", "brands", "categories", "descriptions", "attributes", "popularity")


def derive(rel: LoadedRelease) -> dict:
    """Everything ``blend_of``/``catalog_of``/``item_id_array`` need, keyed for the cache."""
    from .explain import CatalogView

    out: dict = {f"{BLEND}{k}": np.ascontiguousarray(v) for k, v in release_blend(rel).state().items()}
    out["item_id_arr"] = item_id_array(rel)
    view = CatalogView.read(rel.path, rel.version)
    for f in CATALOG_FIELDS:
        out[f"{CATALOG}{f}"] = getattr(view, f)
    return out


def _neighbour_csrs(rel: LoadedRelease) -> dict:
    return {"item_sim": rel.item_sim.csr(), "covis": rel.covis.csr(), "rules": rel.rules.csr()}


def blend_of(rel: LoadedRelease) -> Blend:
    """The release's blend: from the derived state when the release carries it (no pass over
    the data), else built (and validated) over the release's arrays."""
    d = rel.derived
    if d and f"{BLEND}n_items" in d:
        state = {k[len(BLEND):]: v for k, v in d.items() if k.startswith(BLEND)}
        return Blend.from_state(state, items={"als": rel.als_item, "bpr": rel.bpr_item, "content": rel.emb},
                                neighbours=_neighbour_csrs(rel))
    return release_blend(rel)


def item_id_array(rel: LoadedRelease) -> np.ndarray:
    """The item ids as one numpy string array (ids of many picks in one take)."""
    d = rel.derived
    if d and "item_id_arr" in d:
        return d["item_id_arr"]
    return np.asarray(list(rel.item_ids), dtype=str) if rel.n_items else np.zeros(0, dtype="U1")


def catalog_fields(rel: LoadedRelease) -> dict | None:
    """The readable catalog's columns derived with the release, or None (read them from Parquet)."""
    d = rel.derived
    if d and all(f"{CATALOG}{f}" in d for f in CATALOG_FIELDS):
        return {f: d[f"{CATALOG}{f}"] for f in CATALOG_FIELDS}
    return None


_NO_INT = np.zeros(0, np.int32)
_NO_F = np.zeros((1, 1), np.float32)
_NO_V = np.zeros(1, np.float64)


def _factor_parts(scorer: Blend, name: str) -> tuple:
    """(item matrix, mean, covariance) of a factor source, placeholders when the blend has none
    (the kernel then never reads them: such a source's weight is refused as 0 or absent)."""
    items = scorer.items.get(name)
    if items is None:
        return _NO_F, _NO_V, np.zeros((1, 1), np.float64)
    mom = scorer.moments[name]
    return items, np.asarray(mom.mean, np.float64), np.asarray(mom.cov, np.float64)


class RequestArrays:
    """The release's arrays as ``recs_kernels.request`` takes them, gathered once per served
    state (references, no copies, except a small ALS Gram matrix in float32): the request
    kernel's arguments are then attribute reads, not a per-request walk over the release."""

    __slots__ = ("n_items", "als_items", "yty", "reg", "alpha", "adjacency", "multi", "als", "bpr", "content",
                 "neighbours", "vectors")

    def __init__(self, rel: LoadedRelease, scorer: Blend, contract):
        self.n_items = int(scorer.n_items)
        Y = rel.als_item
        if Y is not None:
            Y = np.ascontiguousarray(Y, dtype=np.float32)  # what fold_in and the scan's BLAS call take
            k = Y.shape[1]
            yty = rel.als_yty if rel.als_yty is not None else _gram(Y)
            self.yty = np.ascontiguousarray(yty, dtype=np.float32).reshape(k, k)
        else:
            Y, self.yty = _NO_F, _NO_F
        self.als_items = Y
        self.reg, self.alpha = float(contract.als.regularization), float(contract.als.alpha)
        self.adjacency = tuple(x for adj in (rel.item_sim, rel.covis, rel.rules, rel.sim_factors, rel.sim_content)
                               for x in (adj.indptr, adj.indices))
        mr = rel.multi_rules
        self.multi = ((mr.ante_len, mr.cons_ptr, mr.cons, mr.by_item_ptr, mr.by_item) if mr is not None and len(mr)
                      else (_NO_INT, np.zeros(1, np.int64), _NO_INT, np.zeros(self.n_items + 1, np.int64), _NO_INT))
        self.als, self.bpr, self.content = (_factor_parts(scorer, name) for name in ("als", "bpr", "content"))
        nb = []
        for name in ("item_sim", "covis", "rules"):
            S = scorer.neighbours.get(name)
            nb.extend((np.zeros(self.n_items + 1, np.int64), _NO_INT, np.zeros(0, np.float32)) if S is None
                      else (S.indptr, S.indices, S.data))
        self.neighbours = tuple(nb)
        zero = np.zeros(self.n_items, np.float32)
        self.vectors = (scorer.vectors.get("trending", zero), scorer.vectors.get("popularity", zero))
