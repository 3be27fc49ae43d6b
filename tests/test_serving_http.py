"""Every use case over HTTP against a real release, hard filters, exclusions, and each 4xx."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from serving_fixtures import client, recommender, release_home  # noqa: F401

T0 = 1_323_000_000_000  # Dec 2011, in ms


def _ids(resp):
    return [it["item_id"] for it in resp.json()["items"]]


@pytest.fixture(scope="module")
def rel(recommender):
    return recommender.release


@pytest.fixture(scope="module")
def known_user(rel):
    # a user with a full top-N row and some purchase history
    for u in range(rel.n_users):
        items, _, bought = rel.history(u)
        if rel.topn_ids[u, -1] >= 0 and bought.sum() >= 5:
            return rel.user_ids[u]
    pytest.skip("no suitable user")


@pytest.fixture(scope="module")
def popular_items(rel):
    return [rel.item_ids[i] for i in rel.popularity_lists[("global", "")][:10]]


def _check_response(r, k=None):
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["artifact_version"]
    ranks = [it["rank"] for it in body["items"]]
    assert ranks == list(range(1, len(ranks) + 1))
    ids = [it["item_id"] for it in body["items"]]
    assert len(ids) == len(set(ids))
    assert all(it["reasons"] for it in body["items"])
    if k is not None:
        assert len(ids) == k
    return body


def test_homepage_known_user_with_recent_views(client, rel, known_user, popular_items):
    recent = [{"item_id": i, "timestamp": T0 + n * 1000, "event": "view"} for n, i in enumerate(popular_items[:5])]
    body = _check_response(client.post("/v1/recommend", json={"user_id": known_user, "k": 10, "recent": recent}), 10)
    assert body["metadata"]["user_known"] is True
    assert body["metadata"]["strategy"] == "blend"
    assert not set(_ids_of(body)) & set(popular_items[:5])  # what was just viewed is not re-offered
    u = rel.user_index[known_user]
    items, _, bought = rel.history(u)
    assert not {rel.item_ids[i] for i in items[bought]} & set(_ids_of(body))


def _ids_of(body):
    return [it["item_id"] for it in body["items"]]


def test_known_user_no_recent_is_precomputed_topn(client, rel, known_user):
    body = _check_response(client.post("/v1/recommend", json={"user_id": known_user, "k": 5}), 5)
    u = rel.user_index[known_user]
    row = {rel.item_ids[i] for i in rel.topn_ids[u] if i >= 0}
    assert set(_ids_of(body)) <= row
    assert all(it["reasons"] == ["for_you"] for it in body["items"])


def test_item_page_similar(client, popular_items):
    body = _check_response(client.get(f"/v1/items/{popular_items[0]}/similar", params={"k": 8}), 8)
    assert popular_items[0] not in _ids_of(body)
    assert any(r.startswith(("similar_to:", "bought_with:")) for it in body["items"] for r in it["reasons"])


def test_cart_addons(client, popular_items):
    cart = popular_items[:2]
    body = _check_response(client.post("/v1/cart/addons", json={"item_ids": cart, "k": 6}), 6)
    assert not set(cart) & set(_ids_of(body))
    assert any(r.startswith("bought_with:") for it in body["items"] for r in it["reasons"])


def test_brand_page(client, rel):
    brand = rel.brand_names[int(np.bincount(rel.brand_codes).argmax())]
    body = _check_response(client.post("/v1/recommend", json={"k": 10, "brand": brand}), 10)
    for it in body["items"]:
        assert rel.brand_names[rel.brand_codes[rel.item_index[it["item_id"]]]] == brand
    assert body["items"][0]["reasons"] == [f"popular_in_brand:{brand}"]


def test_cold_start(client, rel):
    body = _check_response(client.post("/v1/recommend", json={"k": 10}), 10)
    assert body["metadata"]["user_known"] is False
    top = {rel.item_ids[i] for i in rel.popularity_lists[("global", "")][:20]} | {
        rel.item_ids[i] for i in rel.popularity_lists[("trending", "")][:20]}
    assert set(_ids_of(body)) <= top
    assert {r for it in body["items"] for r in it["reasons"]} <= {"trending", "popular"}
    # an unknown user id behaves like no user at all
    assert _ids_of(client.post("/v1/recommend", json={"user_id": "no-such-user", "k": 10}).json()) == _ids_of(body)


def test_post_purchase(client, popular_items):
    recent = [{"item_id": popular_items[0], "timestamp": T0, "event": "purchase", "quantity": 1, "price": 2.5}]
    body = _check_response(client.post("/v1/recommend", json={"user_id": "anon-1", "k": 10, "recent": recent}), 10)
    assert popular_items[0] not in _ids_of(body)
    assert any(r == f"bought_with:{popular_items[0]}" for it in body["items"] for r in it["reasons"])


def test_batch(client, rel, known_user):
    users = [rel.user_ids[u] for u in range(0, 300, 3)]
    r = client.post("/v1/recommend/batch", json={"user_ids": users + ["nobody"], "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body["results"]) == set(users) | {"nobody"}
    assert all(len(v) == 5 for v in body["results"].values())
    # consistent with the single-user endpoint
    single = client.post("/v1/recommend", json={"user_id": users[1], "k": 5}).json()
    assert [it["item_id"] for it in body["results"][users[1]]] == _ids_of(single)


def test_top_customers(client, rel, popular_items):
    r = client.get(f"/v1/items/{popular_items[0]}/customers", params={"k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["customers"]) == 7
    i = rel.item_index[popular_items[0]]
    buyers = {rel.user_ids[u] for u in rel.buyers.indices[rel.buyers.indptr[i]:rel.buyers.indptr[i + 1]]}
    assert not buyers & {c["user_id"] for c in body["customers"]}


@pytest.mark.parametrize(
    "filters",
    [
        {"price_max": 1.0},
        {"price_min": 2.0, "price_max": 5.0},
        {"price": {"gte": 3, "lt": 4}},
        {"category": ["BAG", "HOLDER"]},
        {"item_id_prefix": "22"},
        {"brand": "RED", "price_max": 3},
    ],
)
def test_hard_filters_hold(client, rel, known_user, popular_items, filters):
    recent = [{"item_id": popular_items[1], "timestamp": T0, "event": "add"}]
    for payload in ({"user_id": known_user, "k": 15}, {"user_id": known_user, "k": 15, "recent": recent}, {"k": 15}):
        body = _check_response(client.post("/v1/recommend", json={**payload, "filters": filters}))
        assert body["items"], filters
        for it in body["items"]:
            i = rel.item_index[it["item_id"]]
            p = rel.price[i]
            if "price_max" in filters:
                assert p <= filters["price_max"]
            if "price_min" in filters:
                assert p >= filters["price_min"]
            if "price" in filters:
                assert 3 <= p < 4
            if "category" in filters:
                assert rel.category_names[rel.category_codes[i]] in filters["category"]
            if "item_id_prefix" in filters:
                assert it["item_id"].startswith("22")
            if "brand" in filters:
                assert rel.brand_names[rel.brand_codes[i]] == "RED"


def test_impossible_filter_returns_empty_not_error(client):
    body = _check_response(client.post("/v1/recommend", json={"k": 5, "brand": "NO SUCH BRAND"}))
    assert body["items"] == []


def test_exclusions_hold(client, known_user):
    first = _ids_of(client.post("/v1/recommend", json={"user_id": known_user, "k": 10}).json())
    again = _ids_of(client.post("/v1/recommend", json={"user_id": known_user, "k": 10, "exclusions": first[:5]}).json())
    assert len(again) == 10 and not set(first[:5]) & set(again)
    cold = _ids_of(client.post("/v1/recommend", json={"k": 10}).json())
    cold2 = _ids_of(client.post("/v1/recommend", json={"k": 10, "exclusions": cold}).json())
    assert len(cold2) == 10 and not set(cold) & set(cold2)


def test_unknown_recent_items_are_ignored_and_listed(client, popular_items):
    recent = [
        {"item_id": "NOT-AN-ITEM", "timestamp": T0, "event": "view"},
        {"item_id": popular_items[0], "timestamp": T0, "event": "view"},
    ]
    body = _check_response(client.post("/v1/recommend", json={"k": 5, "recent": recent}), 5)
    assert body["metadata"]["unknown_items"] == ["NOT-AN-ITEM"]


def test_deterministic(client, known_user, popular_items):
    recent = [{"item_id": i, "timestamp": T0 + n, "event": e} for n, (i, e) in enumerate(zip(popular_items[:3], ["view", "add", "view"]))]
    req = {"user_id": known_user, "k": 20, "recent": recent, "filters": {"price_max": 10}}
    assert client.post("/v1/recommend", json=req).json() == client.post("/v1/recommend", json=req).json()


def test_mmr_lambda_changes_diversity(client, popular_items, rel):
    recent = [{"item_id": popular_items[0], "timestamp": T0, "event": "view"}]
    plain = _ids_of(client.post("/v1/recommend", json={"k": 10, "recent": recent, "mmr_lambda": 1.0}).json())
    diverse = _ids_of(client.post("/v1/recommend", json={"k": 10, "recent": recent, "mmr_lambda": 0.3}).json())

    def spread(ids):
        E = rel.emb[[rel.item_index[i] for i in ids]]
        S = E @ E.T
        return float(S[np.triu_indices(len(ids), 1)].mean())

    assert spread(diverse) <= spread(plain)


def _fields(r):
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    return {e.get("key") for e in body.get("extra", [])} | {body.get("detail", "")}


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"k": 0}, "k"),
        ({"k": 101}, "k"),
        ({"k": "many"}, "k"),
        ({"recent": [{"item_id": "A", "timestamp": T0, "event": "click"}]}, "recent.0.event"),
        ({"recent": [{"item_id": "A", "timestamp": "yesterday", "event": "view"}]}, "recent.0.timestamp"),
        ({"recent": [{"item_id": "A", "timestamp": -5, "event": "view"}]}, "recent.0.timestamp"),
        ({"recent": [{"item_id": "A", "timestamp": 10**16, "event": "view"}]}, "recent.0.timestamp"),
        ({"recent": [{"item_id": "A", "timestamp": T0, "event": "view"}] * 201}, "recent"),
        ({"filters": {"colour": "red"}}, "filters"),
        ({"filters": {"price_max": "cheap"}}, "filters"),
        ({"exclusions": ["x"] * 1001}, "exclusions"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_input_names_the_field(client, payload, field):
    r = client.post("/v1/recommend", json=payload)
    assert r.status_code == 400
    assert field in _fields(r), r.json()


def test_bad_query_params(client, popular_items):
    for k in (0, 101, "x"):
        r = client.get(f"/v1/items/{popular_items[0]}/similar", params={"k": k})
        assert r.status_code == 400 and "k" in _fields(r), r.text
    r = client.get("/v1/items/NO-SUCH-ITEM/similar")
    assert r.status_code == 404 and "item_id" in _fields(r)
    assert client.get("/v1/items/NO-SUCH-ITEM/customers").status_code == 404
    r = client.post("/v1/cart/addons", json={"item_ids": []})
    assert r.status_code == 400 and "item_ids" in _fields(r)
    r = client.post("/v1/recommend/batch", json={"user_ids": ["u"] * 1001})
    assert r.status_code == 400 and "user_ids" in _fields(r)


def test_body_too_large(client):
    big = b'{"k": 5, "exclusions": [' + b",".join([b'"' + b"x" * 200 + b'"'] * 6000) + b"]}"
    r = client.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_malformed_json(client):
    r = client.post("/v1/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_ops_endpoints(client, recommender):
    from recs_serving import release as rf_

    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["artifact_version"] == recommender.version
    rel = client.get("/v1/release").json()
    assert rel["artifact_version"] == recommender.version and rel["manifest"]["schema_version"] == rf_.SCHEMA_VERSION
    assert client.post("/v1/recommend", json={"k": 3}).status_code == 200  # counted whatever ran before on this worker
    text = client.get("/metrics").text
    assert 'recs_requests_total{method="POST",route="/v1/recommend",status="200"}' in text
    assert "recs_request_duration_seconds_bucket" in text
    assert f'recs_release_info{{artifact_version="{recommender.version}"}} 1' in text
    spec = client.get("/schema/openapi.json").json()
    for path in ("/v1/recommend", "/v1/items/{item_id}/similar", "/v1/cart/addons", "/v1/items/{item_id}/customers",
                 "/v1/recommend/batch", "/v1/release", "/healthz", "/readyz", "/metrics"):
        assert path in spec["paths"], path
    assert client.get("/schema/swagger").status_code == 200


def test_admin_reload_needs_token(client):
    assert client.post("/v1/admin/reload").status_code == 401
    assert client.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 403
    r = client.post("/v1/admin/reload", headers={"Authorization": "Bearer test-token"})
    assert r.status_code == 200 and r.json()["reloaded"] is False


def test_admin_reload_disabled_without_token(recommender, monkeypatch):
    from litestar.testing import TestClient

    from recs_serving.app import create_app

    monkeypatch.delenv("RECS_ADMIN_TOKEN", raising=False)
    with TestClient(create_app(recommender)) as c:
        assert c.post("/v1/admin/reload", headers={"Authorization": "Bearer x"}).status_code == 404


def test_fast_routes_answer_exactly_as_litestar(recommender, rel, known_user, popular_items):
    """The hot routes answered in front of the router (recs_serving.fast_routes) give Litestar's
    answer byte for byte, and everything unusual is left to Litestar."""
    from litestar.testing import TestClient

    from recs_serving.app import create_app

    app = create_app(recommender, owns_recommender=False)
    fast = app.asgi_handler
    inner = fast.app
    to_litestar = []

    async def litestar(scope, receive, send):
        to_litestar.append(scope["path"])
        await inner(scope, receive, send)

    fast.app = litestar
    item = popular_items[0]
    brand = next((k for s, k in rel.popularity_lists if s == "brand" and re.fullmatch(r"[A-Za-z0-9._-]+", k)), "x")
    recent = [{"item_id": i, "timestamp": T0 + n, "event": "view"} for n, i in enumerate(popular_items[:3])]
    served_here = [
        ("POST", "/v1/recommend", {"user_id": known_user, "k": 7, "recent": recent}),
        ("POST", "/v1/recommend", {"k": 4, "filters": {"price": {"lte": 5}}, "exclusions": [item]}),
        ("POST", "/v1/cart/addons", {"item_ids": popular_items[:2], "k": 5, "user_id": known_user}),
        ("POST", "/v1/recommend/batch", {"user_ids": [known_user, "nobody"], "k": 3}),
        ("GET", f"/v1/items/{item}/similar?k=6", None),
        ("GET", f"/v1/items/{item}/similar?k=6&brand={brand}", None),
        ("GET", f"/v1/items/{item}/customers", None),
    ]
    left_to_litestar = [
        ("POST", "/v1/recommend", b"{not json"),
        ("POST", "/v1/recommend", {"k": True}),
        ("POST", "/v1/recommend", {"recent": [{"item_id": item, "timestamp": "1", "event": "view"}]}),
        ("POST", "/v1/cart/addons", {"item_ids": []}),
        ("GET", f"/v1/items/{item}/similar?k=0", None),
        ("GET", f"/v1/items/{item}/similar?k=6&k=7", None),
        ("GET", f"/v1/items/{item}/similar?k=06", None),
        ("GET", "/v1/items/NO-SUCH-ITEM/similar", None),
        ("GET", "/v1/items/NO-SUCH-ITEM/customers?k=3", None),
        ("GET", f"/v1/items/{item}/customers?brand=x", None),
    ]

    def call(c, method, url, body):
        headers = {"x-request-id": "fixed-id"}
        if method == "GET":
            return c.get(url, headers=headers)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return c.post(url, content=content, headers={**headers, "content-type": "application/json"})

    with TestClient(app) as c:
        fast_answers = []
        for method, url, body in served_here + left_to_litestar:
            before = len(to_litestar)
            fast_answers.append(call(c, method, url, body))
            went = len(to_litestar) > before
            assert went == ((method, url, body) in left_to_litestar), (method, url, went)
    plain = create_app(recommender, owns_recommender=False)
    plain.asgi_handler = plain.asgi_handler.app
    with TestClient(plain) as c:
        for (method, url, body), got in zip(served_here + left_to_litestar, fast_answers):
            want = call(c, method, url, body)
            assert (got.status_code, got.content) == (want.status_code, want.content), (method, url)
            assert list(got.headers.items()) == list(want.headers.items()), (method, url)
    assert all(r.status_code == 200 for r in fast_answers[:len(served_here)])
    assert all(r.headers["x-request-id"] == "fixed-id" for r in fast_answers)
