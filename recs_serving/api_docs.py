"""What the OpenAPI document says beyond the types: tags, request examples, CORS.

Examples use the bundled data's ids (customer 12347, item 85123A) so "Try it out" in the
Swagger page sends a request the server accepts, instead of generated placeholders.
"""
from __future__ import annotations

import os
from typing import Annotated

from litestar.config.cors import CORSConfig
from litestar.openapi.spec import Example, Tag
from litestar.params import Body, Parameter

from .schemas import BatchRecommendRequest, CartAddonsRequest, RecommendRequest

CORS_ENV = "RECS_CORS_ORIGINS"

TAGS = [
    Tag(name="recommendations", description="Homepage, post-purchase, brand pages, cart add-ons, e-mail batches"),
    Tag(name="items", description="One item, its neighbours"),
    Tag(name="customers", description="One customer; customers to target for an item"),
    Tag(name="operations", description="Health, readiness, metrics, the release being served"),
    Tag(name="admin", description="State-changing endpoints (admin token)"),
]

_T0 = 1323000000000  # 2011-12-04, inside the bundled data


def _ex(summary: str, value: dict) -> Example:
    return Example(summary=summary, value=value)


RecommendBody = Annotated[RecommendRequest, Body(examples=[
    _ex("known customer, with what they just viewed", {"user_id": "12347", "k": 5, "recent": [
        {"user_id": "12347", "item_id": "85123A", "timestamp": _T0, "event": "view"}]}),
    _ex("anonymous visitor who just bought an item (post-purchase)", {"k": 5, "recent": [
        {"user_id": "anon", "item_id": "85123A", "timestamp": _T0, "event": "purchase"}]}),
    _ex("cold start with filters", {"k": 5, "filters": {"price_max": 5}}),
    _ex("more diverse", {"user_id": "12347", "k": 10, "mmr_lambda": 0.5}),
])]
CartBody = Annotated[CartAddonsRequest, Body(examples=[
    _ex("a two-item cart", {"item_ids": ["85123A", "22423"], "k": 5}),
])]
BatchBody = Annotated[BatchRecommendRequest, Body(examples=[
    _ex("two customers (e-mail)", {"user_ids": ["12347", "12348"], "k": 5}),
])]
ItemPath = Annotated[str, Parameter(description="an item id (stock code)", examples=[Example(summary="a bundled-data item", value="85123A")])]
UserPath = Annotated[str, Parameter(description="a customer id", examples=[Example(summary="a bundled-data customer", value="12347")])]


def cors_config(origins: str | list[str] | None = None) -> CORSConfig | None:
    """CORS for the origins given (or in ``RECS_CORS_ORIGINS``, comma-separated; ``*`` for any);
    none configured: no CORS headers, browsers on other origins are refused."""
    if origins is None:
        origins = os.environ.get(CORS_ENV) or None
    if not origins:
        return None
    if isinstance(origins, str):
        origins = [o.strip() for o in origins.split(",") if o.strip()]
    return CORSConfig(allow_origins=list(origins), allow_methods=["GET", "POST", "OPTIONS"],
                      allow_headers=["content-type", "authorization"], max_age=600)
