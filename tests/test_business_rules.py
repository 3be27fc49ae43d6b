"""Business rules from one file: each rule on the request paths and the batch path, and
reloaded with releases (the release's ``business_rules`` table)."""
from __future__ import annotations

import os
import shutil

import pytest
import yaml

from readable_fixtures import readable_home, readable_rec  # noqa: F401

pytestmark = pytest.mark.xdist_group("readable")

T0 = 1_323_000_000_000
USERS = ["12347", "12348", "12352", "13047", "nobody"]


@pytest.fixture(scope="module")
def picks(readable_rec):
    """Targets chosen from the answers without rules, so every rule has something to act on."""
    rel = readable_rec.release
    seen: list[str] = []
    for u in USERS[:4]:
        seen += [it.item_id for it in readable_rec.recommend(user_id=u, k=20).items]
    seen += [it.item_id for it in readable_rec.similar_items("85123A", 20).items]
    cats = [rel.category_names[rel.category_codes[rel.item_index[i]]] for i in seen]
    brands = [rel.brand_names[rel.brand_codes[rel.item_index[i]]] for i in seen]
    from collections import Counter

    common_cats = [c for c, _ in Counter(cats).most_common()]
    common_brands = [b for b, _ in Counter(brands).most_common() if b not in common_cats[:2]]
    bought = set()
    for u in USERS[:4]:
        ui = rel.user_index[u]
        bought |= {rel.item_ids[i] for i in rel.history(ui)[0].tolist()}
    pin = next(rel.item_ids[i] for i in reversed(rel.pop_order.tolist()[:2000]) if rel.item_ids[i] not in bought | set(seen))
    return {"block": seen[0], "exclude_category": common_cats[0], "boost_category": common_cats[1],
            "bury_brand": common_brands[0], "pin": pin}


@pytest.fixture(scope="module")
def ruled(readable_home, picks, tmp_path_factory):
    """A copy of the readable home with business_rules.yaml, and a client over it."""
    from litestar.testing import TestClient

    from recs_serving import Recommender
    from recs_serving.app import create_app

    home = tmp_path_factory.mktemp("rules") / "home"
    shutil.copytree(readable_home, home, copy_function=os.link)
    (home / "business_rules.yaml").write_text(yaml.safe_dump({
        "blocklist": [picks["block"]],
        "availability": "in_stock",
        "exclude": [{"category": picks["exclude_category"]}, {"attribute": "colour", "value": "red"}],
        "pin": [{"item": picks["pin"], "position": 1}],
        "boost": [{"category": picks["boost_category"], "factor": 1000}],
        "bury": [{"brand": picks["bury_brand"]}],
    }))
    rec = Recommender(home, watch=False)
    with TestClient(create_app(rec)) as c:
        yield home, rec, c
    rec.close()


def _answers(client) -> dict[str, list[dict]]:
    """Every request path and the batch path, k=10."""
    out = {}
    for u in USERS:
        out[f"recommend:{u}"] = client.post("/v1/recommend", json={"user_id": u, "k": 10}).json()["items"]
    out["recent"] = client.post("/v1/recommend", json={"user_id": "12347", "k": 10, "recent": [
        {"item_id": "85123A", "timestamp": T0, "event": "view"}]}).json()["items"]
    out["post_purchase"] = client.post("/v1/recommend", json={"k": 10, "recent": [
        {"item_id": "85123A", "timestamp": T0, "event": "purchase"}]}).json()["items"]
    out["similar"] = client.get("/v1/items/85123A/similar?k=10").json()["items"]
    out["cart"] = client.post("/v1/cart/addons", json={"item_ids": ["85123A"], "k": 10}).json()["items"]
    batch = client.post("/v1/recommend/batch", json={"user_ids": USERS, "k": 10}).json()["results"]
    for u, items in batch.items():
        out[f"batch:{u}"] = items
    return out


@pytest.fixture(scope="module")
def answers(ruled):
    return _answers(ruled[2])


def _attr(rec, item_id):
    import json as _json

    import pyarrow.parquet as pq

    t = pq.read_table(rec.release.path / "items.parquet", columns=["item_id", "attributes"]).to_pylist()
    return {r["item_id"]: _json.loads(r["attributes"]) for r in t}.get(item_id, {})


def test_every_path_answers_k_items(answers):
    assert all(len(items) == 10 for items in answers.values()), {k: len(v) for k, v in answers.items()}
    assert all([it["rank"] for it in items] == list(range(1, 11)) for items in answers.values())


def test_blocklist_and_availability(answers, picks):
    for path, items in answers.items():
        ids = {it["item_id"] for it in items}
        assert picks["block"] not in ids, path
        assert "22423" not in ids, path  # in_stock: false in the catalog attributes


def test_exclude_by_category_and_by_attribute(answers, picks, ruled):
    rec = ruled[1]
    for path, items in answers.items():
        assert all(it["category"] != picks["exclude_category"] for it in items), path
        assert all(_attr(rec, it["item_id"]).get("colour") != "red" for it in items), path


def test_pin_takes_rank_one_everywhere(answers, picks):
    for path, items in answers.items():
        assert items[0]["item_id"] == picks["pin"] and items[0]["reasons"][0] == "pinned", path
        assert "merchandising" in items[0]["explanation"]


def test_in_process_answers_equal_the_http_ones(ruled, answers):
    """The Python API applies the same rules (pins, boosts, burials) as every HTTP path."""
    _, rec, _ = ruled
    ids = lambda items: [it["item_id"] if isinstance(it, dict) else it.item_id for it in items]  # noqa: E731
    for u in USERS:
        assert ids(rec.recommend(user_id=u, k=10).items) == ids(answers[f"recommend:{u}"]), u
    assert ids(rec.similar_items("85123A", 10).items) == ids(answers["similar"])
    assert ids(rec.cart_addons(["85123A"], 10).items) == ids(answers["cart"])
    batch = rec.recommend_batch(USERS, 10).results
    assert all(ids(batch[u]) == ids(answers[f"batch:{u}"]) for u in USERS)


def test_boost_and_bury_order(answers, picks):
    hits = 0
    for path, items in answers.items():
        rest = items[1:]  # after the pin
        boosted = [it["category"] == picks["boost_category"] for it in rest]
        buried = [it["brand"] == picks["bury_brand"] for it in rest]
        if any(buried):
            first_buried = buried.index(True)
            assert all(buried[first_buried:]), path  # buried items only at the end
        unburied = [b for b, d in zip(boosted, buried) if not d]
        if any(unburied):
            hits += 1
            n = sum(unburied)
            assert unburied[:n] == [True] * n, path  # boosted items first among the rest
            assert all("boosted" in it["reasons"] for it, b, d in zip(rest, boosted, buried) if b and not d)
    assert hits >= 3


def test_rules_reload_with_releases(ruled, picks):
    """A new release carrying a business_rules table replaces the file's rules when it loads."""
    import readable_release

    from recs_serving import business_rules
    from recs_serving import release as release_format

    home, rec, client = ruled
    new_block = client.post("/v1/recommend", json={"user_id": "12348", "k": 10}).json()["items"][3]["item_id"]
    table = business_rules.to_table(business_rules.parse({"blocklist": [new_block]}))
    cur = release_format.current_version(home)
    readable_release.derive(home, cur, tables={"business_rules": table}, tag="rules")
    try:
        assert rec.reload()
        after = _answers(client)
        assert all(new_block not in {it["item_id"] for it in items} for items in after.values())
        assert any(picks["block"] in {it["item_id"] for it in items} for items in after.values())  # the old rule is gone
        assert all(items[0]["item_id"] != picks["pin"] for items in after.values())
    finally:
        release_format.set_current(home, cur)
        rec.reload()


def test_bad_rules_file_is_refused_with_a_message(tmp_path):
    from recs_serving import business_rules

    f = tmp_path / "business_rules.yaml"
    f.write_text("pin: [{item: X, position: 0}]\n")
    with pytest.raises(business_rules.RulesError, match=r"pin\[0\]: position"):
        business_rules.read_file(f)
    f.write_text("boosts: []\n")
    with pytest.raises(business_rules.RulesError, match="unknown section"):
        business_rules.read_file(f)
