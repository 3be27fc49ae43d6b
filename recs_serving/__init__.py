"""recs_serving: the release reader, the in-process recommender, and the Litestar app.

Exports are resolved lazily so that ``import recs_serving.release`` (used by the pipeline to
publish) stays light: it does not pull in numba kernels or Litestar.

    from recs_serving import Recommender, RecommendRequest
    rec = Recommender(home)            # loads RECS_HOME/releases/CURRENT, watches for new ones
    rec.recommend(RecommendRequest(user_id="12347", k=10))

This package never imports dagster or recs_assets.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Recommender": "recommender",
    "NotReady": "recommender",
    "UnknownItem": "recommender",
    "create_app": "app",
    "connect": "sql",
    "Interaction": "schemas",
    "RecommendRequest": "schemas",
    "RecommendItem": "schemas",
    "RecommendResponse": "schemas",
    "CartAddonsRequest": "schemas",
    "BatchRecommendRequest": "schemas",
    "BatchRecommendResponse": "schemas",
    "Customer": "schemas",
    "CustomersResponse": "schemas",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'recs_serving' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
