"""No schema-valid request may get a 500: generated requests through the Litestar TestClient."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving_fixtures import client, recommender, release_home  # noqa: F401

from recs_serving.schemas import MAX_TS_MS

pytestmark = pytest.mark.filterwarnings("ignore")

# a mix of real ids (filled in from the release at run time) and arbitrary strings
_real_items: list[str] = []
_real_users: list[str] = []
_brands: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _ids(recommender):
    rel = recommender.release
    _real_items[:] = rel.item_ids[:200]
    _real_users[:] = rel.user_ids[:200]
    _brands[:] = rel.brand_names[:50]


text = st.text(min_size=1, max_size=12)
item_id = st.one_of(st.sampled_from(["85123A", "22423", "85099B", "47566", "84879"]), st.deferred(lambda: st.sampled_from(_real_items)), text)
user_id = st.one_of(st.none(), st.deferred(lambda: st.sampled_from(_real_users)), text)
brand = st.one_of(st.none(), st.deferred(lambda: st.sampled_from(_brands)), text)
interaction = st.fixed_dictionaries(
    {"item_id": item_id, "timestamp": st.integers(0, MAX_TS_MS), "event": st.sampled_from(["view", "add", "purchase"])},
    optional={"quantity": st.integers(0, 100), "price": st.floats(0, 1e6), "brand": text, "user_id": text},
)
number = st.one_of(st.integers(-10, 1000), st.floats(-10, 1000))
filters = st.fixed_dictionaries(
    {},
    optional={
        "brand": st.one_of(brand.filter(bool), st.lists(st.deferred(lambda: st.sampled_from(_brands)), min_size=1, max_size=3)),
        "category": st.one_of(text, st.lists(text, min_size=1, max_size=3)),
        "item_id_prefix": st.one_of(st.sampled_from(["2", "22", "85", "Z"]), text),
        "price_min": number,
        "price_max": number,
        "price": st.dictionaries(st.sampled_from(["gt", "gte", "lt", "lte", "eq"]), number, min_size=1),
    },
)
recommend_body = st.fixed_dictionaries(
    {},
    optional={
        "user_id": user_id,
        "k": st.integers(1, 100),
        "recent": st.lists(interaction, max_size=30),
        "brand": brand,
        "exclusions": st.lists(item_id, max_size=30),
        "filters": filters,
        "mmr_lambda": st.one_of(st.none(), st.floats(0, 1)),
    },
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@SETTINGS
@given(body=recommend_body)
def test_recommend_never_500(client, body):
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 200, (body, r.text)
    out = r.json()
    assert len(out["items"]) <= body.get("k", 20)
    assert len({i["item_id"] for i in out["items"]}) == len(out["items"])
    assert not set(body.get("exclusions", [])) & {i["item_id"] for i in out["items"]}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(items=st.lists(item_id, min_size=1, max_size=20), k=st.integers(1, 100), f=filters, uid=user_id)
def test_cart_never_500(client, items, k, f, uid):
    r = client.post("/v1/cart/addons", json={"item_ids": items, "k": k, "filters": f, "user_id": uid})
    assert r.status_code == 200, r.text


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(item=item_id, k=st.integers(1, 100))
def test_item_endpoints_never_500(client, item, k):
    from urllib.parse import quote

    for path in (f"/v1/items/{quote(item, safe='')}/similar", f"/v1/items/{quote(item, safe='')}/customers"):
        r = client.get(path, params={"k": k})
        assert r.status_code in (200, 404), r.text


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(users=st.lists(user_id.filter(lambda u: u is not None), min_size=1, max_size=50), k=st.integers(1, 100), f=filters, b=brand)
def test_batch_never_500(client, users, k, f, b):
    r = client.post("/v1/recommend/batch", json={"user_ids": users, "k": k, "filters": f, "brand": b})
    assert r.status_code == 200, r.text


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=st.dictionaries(st.sampled_from(["user_id", "k", "recent", "brand", "exclusions", "filters", "mmr_lambda", "x"]),
                            st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                                      st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))))
def test_arbitrary_json_is_4xx_or_ok(client, body):
    r = client.post("/v1/recommend", json=body)
    assert r.status_code in (200, 400), (body, r.text)
