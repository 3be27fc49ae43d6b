"""Hard filters on catalog attributes, compiled once per request against a release.

Only whitelisted attributes (see ``schemas.FILTER_KEYS``) exist here, each backed by an array
precomputed at load time (integer codes for brand and category, float prices, ranks in sorted
id order for prefixes). There is no query language and no SQL: a filter is a conjunction of
numpy comparisons, evaluated either on a candidate block (O(candidates)) or, when the
candidates run out, on the whole catalogue in one vectorised pass.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from .loader import LoadedRelease

_OPS = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le, "eq": operator.eq}


@dataclass(frozen=True)
class CompiledFilter:
    conditions: tuple  # (kind, payload)
    impossible: bool = False

    @property
    def empty(self) -> bool:
        return not self.conditions and not self.impossible

    def mask(self, rel: LoadedRelease, idx: np.ndarray) -> np.ndarray:
        """Boolean mask over item indices ``idx``."""
        if self.impossible:
            return np.zeros(idx.shape, bool)
        m = np.ones(idx.shape, bool)
        for kind, payload in self.conditions:
            if kind == "brand":
                v = rel.brand_codes[idx]
                m &= (v == payload[0]) if len(payload) == 1 else np.isin(v, payload)
            elif kind == "category":
                v = rel.category_codes[idx]
                m &= (v == payload[0]) if len(payload) == 1 else np.isin(v, payload)
            elif kind == "prefix":
                r = rel.id_rank[idx]
                pm = np.zeros(idx.shape, bool)
                for lo, hi in payload:
                    pm |= (r >= lo) & (r < hi)
                m &= pm
            elif kind == "price":
                op, value = payload
                with np.errstate(invalid="ignore"):
                    m &= op(rel.price[idx], value)  # NaN prices never pass
            elif kind == "mask":
                m &= payload[idx]
        return m

    def full_mask(self, rel: LoadedRelease) -> np.ndarray:
        return self.mask(rel, np.arange(rel.n_items))


def _codes(index: dict, names: list[str]) -> np.ndarray:
    return np.array([index[n] for n in names if n in index], dtype=np.int32)


def compile_filter(rel: LoadedRelease, brand: str | None, filters: dict) -> CompiledFilter:
    """``filters`` must already be validated by ``schemas.validate_filters``."""
    conds: list = []
    brands = ([brand] if brand else []) + []
    fb = filters.get("brand")
    for kind, names, index in (("brand", brands, rel.brand_index), ("brand", fb, rel.brand_index), ("category", filters.get("category"), rel.category_index)):
        if names:
            codes = _codes(index, names)
            if codes.size == 0:
                return CompiledFilter((), impossible=True)
            conds.append((kind, codes))
    prefixes = filters.get("item_id_prefix")
    if prefixes:
        ranges = []
        for p in prefixes:
            lo = int(np.searchsorted(rel.id_sorted, p, side="left"))
            hi = int(np.searchsorted(rel.id_sorted, p + "\U0010ffff", side="left"))
            if hi > lo:
                ranges.append((lo, hi))
        if not ranges:
            return CompiledFilter((), impossible=True)
        conds.append(("prefix", tuple(ranges)))
    if "price_min" in filters:
        conds.append(("price", (operator.ge, filters["price_min"])))
    if "price_max" in filters:
        conds.append(("price", (operator.le, filters["price_max"])))
    for op, value in (filters.get("price") or {}).items():
        conds.append(("price", (_OPS[op], value)))
    if filters.get("attributes"):
        from .business_rules import attribute_mask

        mask = attribute_mask(rel, filters["attributes"])
        if not mask.any():
            return CompiledFilter((), impossible=True)
        conds.append(("mask", mask))
    return CompiledFilter(tuple(conds))
