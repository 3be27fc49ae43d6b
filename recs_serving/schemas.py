"""Request and response models: the pocket-recs contract plus the extra endpoints.

Every bound that protects the server lives here (k, list lengths, string lengths, timestamp
range, filter whitelist), so the in-process API and HTTP reject the same inputs with the same
field names.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_K = 100
MAX_RECENT = 200
MAX_EXCLUSIONS = 1000
MAX_CART = 200
MAX_BATCH = 1000
MAX_ID_LEN = 256
# Milliseconds since the epoch: 1970-01-01 .. 2100-01-01. Seconds or microseconds are
# rejected by magnitude only when they fall outside this window.
MIN_TS_MS = 0
MAX_TS_MS = 4_102_444_800_000

Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)]
K = Annotated[int, Field(ge=1, le=MAX_K)]
Event = Literal["view", "add", "purchase"]

# Filter whitelist: name -> kind. Typed comparisons on price use price_min / price_max
# (inclusive) or "price": {"gte": .., "lt": ..}; string attributes accept one value or a list.
STRING_FILTERS = ("brand", "category", "item_id_prefix")
NUMBER_FILTERS = ("price_min", "price_max")
RANGE_FILTERS = ("price",)
RANGE_OPS = ("gt", "gte", "lt", "lte", "eq")
FILTER_KEYS = STRING_FILTERS + NUMBER_FILTERS + RANGE_FILTERS
MAX_FILTER_VALUES = 100


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Interaction(_Model):
    user_id: Annotated[str, Field(max_length=MAX_ID_LEN)] | None = None
    item_id: Id
    timestamp: Annotated[int, Field(ge=MIN_TS_MS, le=MAX_TS_MS, strict=True, description="milliseconds since the epoch")]
    event: Event
    brand: Annotated[str, Field(max_length=MAX_ID_LEN)] | None = None
    quantity: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    price: Annotated[float, Field(ge=0, le=1e12, allow_inf_nan=False)] | None = None


def validate_filters(value: dict[str, Any]) -> dict[str, Any]:
    """Check filter names against the whitelist and values against their type."""
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key not in FILTER_KEYS:
            raise ValueError(f"unknown filter {key!r}; allowed: {', '.join(FILTER_KEYS)}")
        if key in STRING_FILTERS:
            vals = v if isinstance(v, list) else [v]
            if not vals or len(vals) > MAX_FILTER_VALUES or not all(isinstance(s, str) and 0 < len(s) <= MAX_ID_LEN for s in vals):
                raise ValueError(f"filter {key!r} takes a non-empty string or a list of 1..{MAX_FILTER_VALUES} of them")
            out[key] = vals
        elif key in NUMBER_FILTERS:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or abs(v) == float("inf"):
                raise ValueError(f"filter {key!r} takes a finite number")
            out[key] = float(v)
        else:
            if not isinstance(v, dict) or not v:
                raise ValueError(f"filter {key!r} takes an object of comparisons {RANGE_OPS}")
            ops = {}
            for op, x in v.items():
                if op not in RANGE_OPS:
                    raise ValueError(f"filter {key!r}: unknown comparison {op!r}; allowed: {', '.join(RANGE_OPS)}")
                if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x or abs(x) == float("inf"):
                    raise ValueError(f"filter {key!r}.{op} takes a finite number")
                ops[op] = float(x)
            out[key] = ops
    return out


class _Filtered(_Model):
    brand: Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)] | None = None
    exclusions: Annotated[list[Id], Field(max_length=MAX_EXCLUSIONS)] = Field(default_factory=list)
    filters: dict[str, Any] = Field(
        default_factory=dict,
        description="Hard filters on catalog attributes: brand, category, item_id_prefix (string or list), "
        "price_min, price_max (inclusive), price: {gt|gte|lt|lte|eq: number}.",
        json_schema_extra={"maxProperties": len(FILTER_KEYS)},
    )

    @field_validator("filters")
    @classmethod
    def _check_filters(cls, v: dict[str, Any]) -> dict[str, Any]:
        return validate_filters(v)


class RecommendRequest(_Filtered):
    user_id: Annotated[str, Field(max_length=MAX_ID_LEN)] | None = None
    k: K = 20
    recent: Annotated[list[Interaction], Field(max_length=MAX_RECENT)] = Field(default_factory=list)
    mmr_lambda: Annotated[float, Field(ge=0.0, le=1.0)] | None = Field(
        default=None, description="1.0 = pure relevance, lower = more diverse; default from the release"
    )


class RecommendItem(_Model):
    item_id: str
    score: float
    rank: int
    reasons: list[str]


class RecommendResponse(_Model):
    items: list[RecommendItem]
    artifact_version: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class CartAddonsRequest(_Filtered):
    item_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_CART)]
    user_id: Annotated[str, Field(max_length=MAX_ID_LEN)] | None = None
    k: K = 10


class BatchRecommendRequest(_Model):
    user_ids: Annotated[list[Annotated[str, Field(max_length=MAX_ID_LEN)]], Field(min_length=1, max_length=MAX_BATCH)]
    k: K = 20
    brand: Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)] | None = None
    exclusions: Annotated[list[Id], Field(max_length=MAX_EXCLUSIONS)] = Field(default_factory=list)
    filters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("filters")
    @classmethod
    def _check_filters(cls, v: dict[str, Any]) -> dict[str, Any]:
        return validate_filters(v)


class BatchRecommendResponse(_Model):
    results: dict[str, list[RecommendItem]]
    artifact_version: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class Customer(_Model):
    user_id: str
    score: float
    rank: int


class CustomersResponse(_Model):
    item_id: str
    customers: list[Customer]
    artifact_version: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ReloadResponse(_Model):
    reloaded: bool
    artifact_version: str | None
    previous_version: str | None


__all__ = [
    "Interaction",
    "RecommendRequest",
    "RecommendItem",
    "RecommendResponse",
    "CartAddonsRequest",
    "BatchRecommendRequest",
    "BatchRecommendResponse",
    "Customer",
    "CustomersResponse",
    "ReloadResponse",
    "FILTER_KEYS",
    "MAX_K",
    "MAX_RECENT",
]
