"""Request and response models: the pocket-recs contract plus the extra endpoints.

Every bound that protects the server lives here (k, list lengths, string lengths, timestamp
range, filter whitelist), so the in-process API and HTTP reject the same inputs with the same
field names.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from typing_extensions import TypedDict

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
K = Annotated[int, Field(ge=1, le=MAX_K, strict=True)]  # strict: `true` is not 1
Event = Literal["view", "add", "purchase"]

# Filter whitelist: name -> kind. Typed comparisons on price use price_min / price_max
# (inclusive) or "price": {"gte": .., "lt": ..}; string attributes accept one value or a list.
STRING_FILTERS = ("brand", "category", "item_id_prefix")
NUMBER_FILTERS = ("price_min", "price_max")
RANGE_FILTERS = ("price",)
RANGE_OPS = ("gt", "gte", "lt", "lte", "eq")
ATTRIBUTE_FILTERS = ("attributes",)  # {"colour": "red", "in_stock": true}: the catalog's free-form columns
MAX_ATTRIBUTE_FILTERS = 20
FILTER_KEYS = STRING_FILTERS + NUMBER_FILTERS + RANGE_FILTERS + ATTRIBUTE_FILTERS
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


def _finite(v: Any) -> float | None:
    """``v`` as a finite float, or None (bools, strings, NaN, infinities, and integers too big
    for a float: a 309-digit integer raises OverflowError in ``float()``)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if f == f and abs(f) != float("inf") else None


def _attribute_filter(v: Any) -> dict[str, list]:
    """``{name: value or [values]}``; values are strings, finite numbers or booleans."""
    if not isinstance(v, dict) or not v or len(v) > MAX_ATTRIBUTE_FILTERS:
        raise ValueError(f"filter 'attributes' takes an object of 1..{MAX_ATTRIBUTE_FILTERS} attribute: value(s)")
    out = {}
    for name, vals in v.items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_ID_LEN:
            raise ValueError("filter 'attributes': names are non-empty strings")
        vals = vals if isinstance(vals, list) else [vals]
        ok = vals and len(vals) <= MAX_FILTER_VALUES and all(
            isinstance(x, bool) or (isinstance(x, str) and len(x) <= MAX_ID_LEN) or (isinstance(x, (int, float)) and _finite(x) is not None)
            for x in vals)
        if not ok:
            raise ValueError(f"filter 'attributes'.{name} takes a string, number or boolean, or a list of 1..{MAX_FILTER_VALUES}")
        out[name] = vals
    return out


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
        elif key in ATTRIBUTE_FILTERS:
            out[key] = _attribute_filter(v)
        elif key in NUMBER_FILTERS:
            x = _finite(v)
            if x is None:
                raise ValueError(f"filter {key!r} takes a finite number")
            out[key] = x
        else:
            if not isinstance(v, dict) or not v:
                raise ValueError(f"filter {key!r} takes an object of comparisons {RANGE_OPS}")
            ops = {}
            for op, x in v.items():
                if op not in RANGE_OPS:
                    raise ValueError(f"filter {key!r}: unknown comparison {op!r}; allowed: {', '.join(RANGE_OPS)}")
                f = _finite(x)
                if f is None:
                    raise ValueError(f"filter {key!r}.{op} takes a finite number")
                ops[op] = f
            out[key] = ops
    return out


class PriceRange(TypedDict, total=False):
    """Comparisons on the catalog price (inclusive bounds: gte/lte)."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    gt: float
    gte: float
    lt: float
    lte: float
    eq: float


class Filters(TypedDict, total=False):
    """Hard filters on catalog attributes; every key is optional and they combine with AND."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    brand: str | list[str]
    category: str | list[str]
    item_id_prefix: str | list[str]
    price_min: float
    price_max: float
    price: PriceRange
    attributes: dict[str, str | float | bool | list[str | float | bool]]


def _filters_before(v: Any) -> Any:
    return validate_filters(v) if isinstance(v, dict) else v


class _Filtered(_Model):
    brand: Annotated[str, Field(min_length=1, max_length=MAX_ID_LEN)] | None = None
    exclusions: Annotated[list[Id], Field(max_length=MAX_EXCLUSIONS)] = Field(default_factory=list)
    filters: Filters = Field(
        default_factory=dict,  # type: ignore[arg-type]
        examples=[{"category": "MUG", "price_max": 5}],
        description="Hard filters on catalog attributes: brand, category, item_id_prefix (string or list), "
        "price_min, price_max (inclusive), price: {gt|gte|lt|lte|eq: number}.",
        json_schema_extra={"maxProperties": len(FILTER_KEYS)},
    )

    @field_validator("filters", mode="before")
    @classmethod
    def _check_filters(cls, v: Any) -> Any:
        return _filters_before(v)


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
    filters: Filters = Field(default_factory=dict)  # type: ignore[arg-type]

    @field_validator("filters", mode="before")
    @classmethod
    def _check_filters(cls, v: Any) -> Any:
        return _filters_before(v)


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


# ----------------------------------------------------------------------------- readable answers
# What HTTP returns: the in-process models plus what ``explain`` adds (catalog attributes and
# reasons in words). Kept apart so the in-process answers stay as cheap as they are.


class _Readable(_Model):
    title: str | None = Field(None, examples=["WHITE HANGING HEART T-LIGHT HOLDER"])
    price: float | None = Field(None, examples=[2.55])
    brand: str | None = None
    category: str | None = Field(None, examples=["HOLDER"])
    image_url: str | None = Field(None, description="present when the catalog has an image_url column")


class ExplainedItem(_Readable):
    item_id: str = Field(examples=["85123A"])
    score: float = Field(description="the blended relevance the item was picked with; after the diversity re-ranking "
                                     "(MMR) ranks follow the pick order, so scores need not decrease with rank")
    rank: int
    reasons: list[str] = Field(description="reason codes, e.g. for_you, bought_with:<item_id>, similar_to:<item_id>, "
                                           "related_to:<item_id>, trending, popular, popular_in_brand:<brand>, pinned",
                               examples=[["bought_with:85123A"]])
    explanation: str = Field(description="the reasons in words", examples=["Often bought with WHITE HANGING HEART T-LIGHT HOLDER"])


class ExplainedResponse(_Model):
    items: list[ExplainedItem]
    artifact_version: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ExplainedBatchResponse(_Model):
    results: dict[str, list[ExplainedItem]]
    artifact_version: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class ExplainedCustomer(_Model):
    user_id: str
    score: float
    rank: int
    reasons: list[str] = Field(examples=[["bought_similar:21733"]])
    explanation: str


class ExplainedCustomersResponse(_Readable):
    item_id: str
    customers: list[ExplainedCustomer]
    artifact_version: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class RuleOut(_Model):
    item_id: str
    title: str | None = None
    confidence: float
    lift: float
    support: float | None = None


class ItemDetail(_Readable):
    item_id: str
    description: str | None = None
    attributes: dict[str, Any] | None = None
    popularity_rank: int | None = Field(None, description="1 = best-selling item of the release")
    buyers: int = Field(0, description="customers who bought it")
    bought_together: list[RuleOut] = Field(default_factory=list, description="single-item rules item -> other")
    artifact_version: str


class HistoryLine(_Readable):
    item_id: str
    last_date: str | None = Field(None, description="ISO date of the last event, when the release has user_history")
    quantity: float | None = None
    purchases: int | None = None
    weight: float | None = None


class UserDetail(_Model):
    user_id: str
    known: bool
    history: list[HistoryLine]
    artifact_version: str
