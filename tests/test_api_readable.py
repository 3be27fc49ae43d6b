"""Readable answers over HTTP: catalog attributes, reasons in words, details, OpenAPI, CORS, metrics."""
from __future__ import annotations

import re

import pytest

from readable_fixtures import readable_client, readable_home, readable_rec  # noqa: F401

pytestmark = pytest.mark.xdist_group("readable")

T0 = 1_323_000_000_000
CODE = re.compile(r"^(for_you|bought_together|similar|popular|trending|pinned|boosted|likely_buyer|"
                  r"(bought_with|similar_to|related_to|bought_similar|because_you_bought|popular_in_brand|popular_in_category):.+)$")


def _check_items(items, rel):
    assert items
    for it in items:
        i = rel.item_index[it["item_id"]]
        assert it["title"] == rel.titles[i] and it["title"]
        assert it["price"] == pytest.approx(float(rel.price[i]), abs=0.006)
        assert it["brand"] and it["category"]
        assert it["reasons"] and all(CODE.match(c) for c in it["reasons"]), it["reasons"]
        assert it["explanation"] and not CODE.match(it["explanation"])
    return items


def test_homepage_items_are_readable_and_reasons_in_words(readable_client, readable_rec):
    r = readable_client.post("/v1/recommend", json={"user_id": "12347", "k": 10, "recent": [
        {"user_id": "12347", "item_id": "85123A", "timestamp": T0, "event": "view"}]})
    assert r.status_code == 200, r.text
    items = _check_items(r.json()["items"], readable_rec.release)
    for it in items:
        for code in it["reasons"]:
            if code.startswith("bought_with:"):
                anchor = readable_rec.release.titles[readable_rec.release.item_index[code.split(":", 1)[1]]]
                assert f"Often bought with {anchor}" in it["explanation"] or f"because you bought {anchor}" in it["explanation"]
    # a taste-model pick names the purchase it resembles most, which the customer did buy
    r = readable_client.post("/v1/recommend", json={"user_id": "12347", "k": 10}).json()
    assert all(it["reasons"] == ["for_you"] for it in r["items"])  # the codes stay as served
    prefix = "Picked for you because you bought "
    anchored = [it["explanation"][len(prefix):] for it in r["items"] if it["explanation"].startswith(prefix)]
    assert len(anchored) == len(r["items"])
    rel = readable_rec.release
    bought = {rel.titles[i] for i in rel.history(rel.user_index["12347"])[0].tolist()}
    assert set(anchored) <= bought


def test_image_url_only_when_the_catalog_has_one(readable_client):
    items = readable_client.get("/v1/items/85123A/similar?k=30").json()["items"]
    with_img = [it for it in items if "image_url" in it]
    assert with_img and len(with_img) < len(items)
    assert all(it["image_url"].startswith("/ui/static/") for it in with_img)


@pytest.mark.parametrize("call", ["similar", "post_purchase", "cart"])
def test_anonymous_answers_never_say_for_you(readable_client, readable_rec, call):
    if call == "similar":
        r = readable_client.get("/v1/items/85123A/similar?k=20")
    elif call == "post_purchase":
        r = readable_client.post("/v1/recommend", json={"k": 20, "recent": [
            {"user_id": "anon", "item_id": "85123A", "timestamp": T0, "event": "purchase"}]})
    else:
        r = readable_client.post("/v1/cart/addons", json={"item_ids": ["85123A", "22423"], "k": 20})
    assert r.status_code == 200, r.text
    items = _check_items(r.json()["items"], readable_rec.release)
    codes = [c for it in items for c in it["reasons"]]
    assert "for_you" not in codes
    assert not any("for you" in it["explanation"].lower() for it in items)
    assert any(c.split(":", 1)[0] in ("bought_with", "related_to", "similar_to") for c in codes)


def test_batch_items_are_readable(readable_client, readable_rec):
    r = readable_client.post("/v1/recommend/batch", json={"user_ids": ["12347", "12348", "nobody"], "k": 5})
    assert r.status_code == 200, r.text
    for items in r.json()["results"].values():
        _check_items(items, readable_rec.release)


def test_customers_carry_reasons(readable_client, readable_rec):
    r = readable_client.get("/v1/items/85123A/customers?k=10").json()
    assert r["title"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    rel = readable_rec.release
    for c in r["customers"]:
        assert c["reasons"] and c["explanation"]
        code = c["reasons"][0]
        if code.startswith("bought_similar:"):
            anchor = code.split(":", 1)[1]
            assert rel.item_index[anchor] in rel.history(rel.user_index[c["user_id"]])[0].tolist()
            assert c["explanation"].startswith(f"Bought {rel.titles[rel.item_index[anchor]]}")
    assert any(c["reasons"][0].startswith("bought_similar:") for c in r["customers"])


def test_item_and_user_details(readable_client, readable_rec):
    it = readable_client.get("/v1/items/85123A").json()
    assert it["title"] == "WHITE HANGING HEART T-LIGHT HOLDER" and it["buyers"] > 100 and it["popularity_rank"] >= 1
    assert it["attributes"]["in_stock"] is True
    rules = it["bought_together"]
    assert rules and all(r["confidence"] > 0 and r["lift"] > 1 and r["title"] for r in rules)
    assert readable_client.get("/v1/items/NOPE").status_code == 404
    u = readable_client.get("/v1/users/12347").json()
    assert u["known"] and len(u["history"]) > 10
    h = u["history"][0]
    assert re.match(r"\d{4}-\d\d-\d\d$", h["last_date"]) and h["quantity"] > 0 and h["title"]
    dates = [x["last_date"] for x in u["history"]]
    assert dates == sorted(dates, reverse=True)
    assert readable_client.get("/v1/users/nobody").json() == {"user_id": "nobody", "known": False, "history": [],
                                                              "artifact_version": readable_rec.version}


def test_openapi_tags_examples_and_typed_filters(readable_client):
    spec = readable_client.get("/schema/openapi.json").json()
    ops = [(p, m, o) for p, d in spec["paths"].items() for m, o in d.items() if m in ("get", "post", "head")]
    assert all(o.get("tags") and o["tags"] != ["default"] for _, _, o in ops)
    for p, m, o in ops:
        if m == "post" and "requestBody" in o:
            schema = o["requestBody"]["content"]["application/json"]["schema"]
            assert schema.get("examples"), p
        for prm in o.get("parameters", []):
            if prm["in"] == "path":
                assert prm.get("examples"), (p, prm["name"])
    filters = spec["components"]["schemas"]["Filters"]
    assert {"brand", "category", "item_id_prefix", "price_min", "price_max", "price"} <= set(filters["properties"])
    assert filters.get("additionalProperties") in (None, False)
    req = spec["components"]["schemas"]["RecommendRequest"]["properties"]["filters"]
    assert "Filters" in str(req)
    item = spec["components"]["schemas"]["ExplainedItem"]
    assert {"title", "price", "brand", "category", "explanation"} <= set(item["properties"])
    assert "MMR" in item["properties"]["score"]["description"]
    # every example the spec offers is accepted by the server
    for p, m, o in ops:
        if m == "post" and p != "/v1/admin/reload":
            for ex in o["requestBody"]["content"]["application/json"]["schema"]["examples"]:
                r = readable_client.post(p, json=ex)
                assert r.status_code == 200, (p, ex, r.text)


def test_swagger_page_uses_only_local_assets(readable_client):
    for path in ("/schema/swagger", "/schema/"):
        html = readable_client.get(path).text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assert urls and all(u.startswith("/ui/static/") for u in urls), urls
        for u in urls:
            assert readable_client.get(u).status_code == 200, u


def test_cors_allows_the_configured_origin_only(readable_client):
    ok = readable_client.options("/v1/recommend", headers={"origin": "https://shop.example", "access-control-request-method": "POST"})
    assert ok.headers.get("access-control-allow-origin") == "https://shop.example"
    r = readable_client.get("/healthz", headers={"origin": "https://evil.example"})
    assert r.headers.get("access-control-allow-origin") is None


def test_cors_origins_from_environment(monkeypatch, readable_rec):
    from litestar.testing import TestClient

    from recs_serving.app import create_app

    monkeypatch.setenv("RECS_CORS_ORIGINS", "https://a.example, https://b.example")
    with TestClient(create_app(readable_rec)) as c:
        r = c.get("/healthz", headers={"origin": "https://b.example"})
        assert r.headers.get("access-control-allow-origin") == "https://b.example"
    monkeypatch.delenv("RECS_CORS_ORIGINS")
    with TestClient(create_app(readable_rec)) as c:
        assert c.get("/healthz", headers={"origin": "https://b.example"}).headers.get("access-control-allow-origin") is None


def test_prometheus_metrics_include_process_and_release(readable_client, readable_rec):
    readable_client.get("/v1/items/85123A/similar?k=2")
    text = readable_client.get("/metrics").text
    assert 'recs_requests_total{method="GET",route="/v1/items/{item_id:str}/similar",status="200"}' in text
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    assert f'recs_release_info{{artifact_version="{readable_rec.version}"}} 1.0' in text
    from prometheus_client.parser import text_string_to_metric_families

    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"recs_requests", "recs_request_duration_seconds", "recs_release_ready", "process_start_time_seconds"} <= names


def test_filters_on_catalog_attributes(readable_client, readable_rec):
    import json as _json

    import pyarrow.parquet as pq

    t = pq.read_table(readable_rec.release.path / "items.parquet", columns=["item_id", "attributes"]).to_pylist()
    attrs = {r["item_id"]: _json.loads(r["attributes"]) for r in t}
    for path, body in (("/v1/recommend", {"user_id": "12347", "k": 10}), ("/v1/recommend", {"k": 10}),
                       ("/v1/cart/addons", {"item_ids": ["85123A"], "k": 10}),
                       ("/v1/recommend/batch", {"user_ids": ["12347", "nobody"], "k": 10})):
        r = readable_client.post(path, json={**body, "filters": {"attributes": {"colour": "red", "in_stock": True}}})
        assert r.status_code == 200, r.text
        j = r.json()
        lists = j["results"].values() if "results" in j else [j["items"]]
        for items in lists:
            assert items and all(attrs[it["item_id"]]["colour"] == "red" and attrs[it["item_id"]]["in_stock"] for it in items), path
    none = readable_client.post("/v1/recommend", json={"k": 5, "filters": {"attributes": {"colour": "ultraviolet"}}})
    assert none.status_code == 200 and none.json()["items"] == []
    bad = readable_client.post("/v1/recommend", json={"k": 5, "filters": {"attributes": {"colour": {"nested": 1}}}})
    assert bad.status_code == 400 and "attributes" in bad.text


def test_pre_encoded_items_are_the_bytes_of_the_dicts(readable_rec):
    """The hot routes' items as pre-encoded JSON (explain.enrich_items_wire) encode to exactly the
    bytes of the readable dicts, for every kind of answer and reason (anchors, anonymous visitors,
    fills, filters), again when served from the per-release cache."""
    import random

    from litestar.serialization import encode_json

    from recs_serving import explain
    from recs_serving.schemas import BatchRecommendRequest, CartAddonsRequest, Interaction, RecommendRequest

    rec = readable_rec
    rel = rec.release
    rnd = random.Random(3)
    items = [rel.item_ids[rnd.randrange(rel.n_items)] for _ in range(40)]
    users = [rel.user_ids[rnd.randrange(rel.n_users)] for _ in range(40)] + ["nobody"]
    seen = set()
    for rep in range(2):
        for n in range(40):
            u, it = users[n], items[n]
            recent = [Interaction(item_id=items[(n + j) % 40], timestamp=T0 - j, event="view") for j in range(n % 4)]
            answers = [
                (rec.recommend(RecommendRequest(user_id=u, k=1 + n % 25, recent=recent), as_dict=True),
                 dict(anonymous=True, seed=recent[0].item_id if recent else None, user_id=u)),
                (rec.recommend(RecommendRequest(k=5, filters={"price": {"lte": 5.0}}), as_dict=True), dict(anonymous=True)),
                (rec.similar_items(it, 1 + n % 30, as_dict=True), dict(anonymous=True, seed=it)),
                (rec.cart_addons(CartAddonsRequest(item_ids=[it, items[n - 1]], k=8, user_id=u), as_dict=True),
                 dict(anonymous=u not in rel.user_index, seed=it, user_id=u)),
            ]
            for body, kw in answers:
                want = encode_json(explain.enrich_response(dict(body), rec, **kw))
                got = encode_json(explain.enrich_response(dict(body), rec, wire=True, **kw))
                assert got == want
                seen.update(c.partition(":")[0] for i in body["items"] for c in i["reasons"])
            batch = rec.recommend_batch(BatchRecommendRequest(user_ids=users[n:n + 5], k=10), as_dict=True)
            assert encode_json(explain.enrich_batch(batch, rec, wire=True)) == encode_json(explain.enrich_batch(batch, rec))
    assert {"for_you", "bought_with", "trending"} <= seen
