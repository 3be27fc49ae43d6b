"""The release contract (typed, strict, one writer) and the one blend behind both answer paths."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from release_factory import TOPN, build_tables, make_contract
from serving_fixtures import recommender, release_home  # noqa: F401

from recs_serving.loader import load_release
from recs_serving.release import (
    SCHEMA_VERSION,
    MANIFEST,
    ReleaseContract,
    ReleaseError,
    USE_CASES,
    open_release,
    read_contract,
    releases_dir,
    write_release,
)

SOURCES = ("als", "bpr", "item_sim", "covis", "rules", "content", "trending", "popularity")


@pytest.fixture(scope="module")
def contract() -> ReleaseContract:
    return make_contract(16, 6)


def _manifest(contract: ReleaseContract, **changes) -> dict:
    m = {"version": "v1", "schema_version": SCHEMA_VERSION, "contract": contract.model_dump(mode="json")}
    m["contract"].update(changes)
    return m


def test_contract_round_trips_and_is_built_from_the_configs(contract):
    assert read_contract(_manifest(contract)) == contract
    assert contract.sources == SOURCES and set(contract.weights.model_dump()) == set(SOURCES)
    assert set(contract.blends.model_dump()) == set(USE_CASES)
    assert all(contract.blend(uc).chosen == "configured" and contract.blend(uc).weights == contract.weights
               for uc in USE_CASES)  # nothing tuned: the configured blend everywhere
    # the pipeline's own builder took the values from the config objects
    assert (contract.als.regularization, contract.als.alpha, contract.als.factors) == (0.05, 20.0, 16)
    assert contract.event_weights.model_dump() == {"view": 0.2, "add": 0.5, "purchase": 1.0}
    assert contract.candidates.topn == TOPN and contract.configs["als_factors"]["iterations"] == 6


@pytest.mark.parametrize("field", ["blends", "event_weights", "als", "candidates", "decay_days"])
def test_a_missing_field_is_refused_by_name(contract, field):
    m = _manifest(contract)
    del m["contract"][field]
    with pytest.raises(ReleaseError, match=rf"bad contract: {field}: Field required"):
        read_contract(m)


@pytest.mark.parametrize("use_case", USE_CASES)
def test_a_use_case_without_its_blend_is_refused_by_name(contract, use_case):
    m = _manifest(contract)
    del m["contract"]["blends"][use_case]["mmr_lambda"]
    with pytest.raises(ReleaseError, match=rf"bad contract: blends\.{use_case}\.mmr_lambda: Field required"):
        read_contract(m)
    m = _manifest(contract)
    del m["contract"]["blends"][use_case]
    with pytest.raises(ReleaseError, match=rf"blends\.{use_case}: Field required"):
        read_contract(m)


def test_per_use_case_blends_round_trip(contract):
    only = {s: 0.0 for s in SOURCES}
    c2 = contract.replace(blends={"item_page": {"weights": only | {"item_sim": 1.0}, "mmr_lambda": 1.0, "chosen": "best_single:item_sim"},
                                  "cart": {"weights": {"rules": 0.7}}})
    back = read_contract(_manifest(c2))
    assert back == c2 and back.blend("item_page").weights.item_sim == 1.0 and back.blend("item_page").weights.als == 0.0
    assert back.blend("item_page").chosen == "best_single:item_sim" and back.blend("item_page").mmr_lambda == 1.0
    assert back.blend("cart").weights.rules == 0.7 and back.blend("cart").weights.als == contract.weights.als
    assert back.blend("homepage") == contract.blend("homepage") and back.weights == contract.weights
    with pytest.raises(ValueError, match="unknown use case"):
        back.blend("checkout")


def test_a_missing_weight_an_unknown_field_or_a_bad_value_is_refused(contract):
    m = _manifest(contract)
    del m["contract"]["blends"]["session"]["weights"]["trending"]
    with pytest.raises(ReleaseError, match=r"blends\.session\.weights\.trending: Field required"):
        read_contract(m)
    with pytest.raises(ReleaseError, match=r"blend_v2: Extra inputs are not permitted"):
        read_contract(_manifest(contract, blend_v2={}))
    # the schema-2 single blend is not read as some use case's
    with pytest.raises(ReleaseError, match=r"weights: Extra inputs are not permitted"):
        read_contract(_manifest(contract, weights=contract.weights.model_dump()))
    m = _manifest(contract)
    m["contract"]["blends"]["cart"]["mmr_lambda"] = 1.5
    with pytest.raises(ReleaseError, match=r"blends\.cart\.mmr_lambda"):
        read_contract(m)
    with pytest.raises(ReleaseError, match=r"source catalogue"):
        read_contract(_manifest(contract, sources=["als", "covis"]))


def test_an_older_schema_is_refused_with_a_message(contract):
    m = _manifest(contract)
    m["schema_version"] = 1
    with pytest.raises(ReleaseError, match=r"schema_version 1, this reader needs 3; re-run the pipeline"):
        read_contract(m)
    m = _manifest(contract, schema_version=2)
    with pytest.raises(ReleaseError, match=r"contract schema_version 2"):
        read_contract(m)
    # a whole schema-2 contract (one blend for every use case): refused with the version, not guessed
    old = contract.model_dump(mode="json")
    home = old.pop("blends")["homepage"]
    old.update(schema_version=2, weights=home["weights"], mmr_lambda=home["mmr_lambda"])
    with pytest.raises(ReleaseError, match=r"schema_version 2, this reader needs 3"):
        read_contract({"version": "v0", "schema_version": 2, "contract": old})
    with pytest.raises(ReleaseError, match=r"contract schema_version 2"):
        read_contract({"version": "v0", "schema_version": SCHEMA_VERSION, "contract": old})
    with pytest.raises(ReleaseError, match="no 'contract'"):
        read_contract({"version": "v", "schema_version": SCHEMA_VERSION})


def test_replace_merges_nested_fields_and_validates(contract):
    c2 = contract.replace(weights={"trending": 2.5}, mmr_lambda=1.0)
    assert c2.weights.trending == 2.5 and c2.weights.als == contract.weights.als and c2.mmr_lambda == 1.0
    assert all(c2.blend(uc).weights.trending == 2.5 and c2.blend(uc).mmr_lambda == 1.0 for uc in USE_CASES)
    assert contract.mmr_lambda != 1.0 or contract.weights.trending != 2.5  # the original is untouched
    with pytest.raises(ValueError):
        contract.replace(weights={"magic": 1.0})
    with pytest.raises(ValueError):
        contract.replace(mmr_lambda=-0.1)


def test_the_writer_takes_only_a_contract(tmp_path, contract):
    built = build_tables()
    with pytest.raises(TypeError, match="ReleaseContract"):
        write_release(tmp_path, contract=contract.model_dump(), tables=dict(built.tables), arrays={})
    assert not releases_dir(tmp_path).exists() or not list(releases_dir(tmp_path).iterdir())


def test_loader_refuses_a_release_with_a_broken_contract(release_home, tmp_path):
    """A release whose manifest lost a contract field never loads (serving keeps the old one)."""
    import shutil

    src = open_release(release_home)
    home = tmp_path / "home"
    dst = releases_dir(home) / src.version
    shutil.copytree(src.path, dst)
    (releases_dir(home) / "CURRENT").write_text(src.version + "\n")
    assert load_release(home).contract == read_contract(src.manifest)  # loads as shipped
    m = json.loads((dst / MANIFEST).read_text())
    del m["contract"]["event_weights"]
    (dst / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ReleaseError, match="event_weights: Field required"):
        load_release(home)


def _table_row(release_home, user_id: str) -> list[str]:
    rf = open_release(release_home)
    t = pl.from_arrow(rf.table("topn")).filter(pl.col("user_id") == user_id).sort("rank")
    return t["item_id"].to_list()


def _known_users(rel, n: int) -> list[int]:
    return [u for u in range(0, rel.n_users, max(1, rel.n_users // n)) if rel.topn_ids[u, 0] >= 0][:n]


def test_api_answer_equals_the_batch_table(recommender, release_home):
    """A known user with no recent events: the API answer is the batch table (MMR off)."""
    rel = recommender.release
    for u in _known_users(rel, 8):
        uid = rel.user_ids[u]
        res = recommender.recommend(user_id=uid, k=10, mmr_lambda=1.0)
        assert res.metadata["strategy"] == "topn"
        assert [it.item_id for it in res.items] == _table_row(release_home, uid)[:10]


def test_request_scoring_reproduces_the_batch_table(recommender, release_home):
    """The request path (candidates scored by the same blend at request time) ranks a known
    user's items as the batch top-N did: same items, same order."""
    st = recommender._current()
    rel = st.rel
    checked = 0
    for u in _known_users(rel, 12):
        uid = rel.user_ids[u]
        q = recommender._query(st, k=10, user_id=uid, recent=(), brand=None, exclusions=(), filters={}, lam=1.0, meta={})
        picks = recommender._blend(st, q, {})
        table = _table_row(release_home, uid)[:10]
        got = [rel.item_ids[p[0]] for p in picks]
        scores = rel.topn_scores[u, :10].astype(np.float64)
        if len(np.unique(np.round(scores, 3))) < len(scores):
            continue  # near-ties in the float16 copy of the scores: order there is arbitrary
        assert got == table, uid
        np.testing.assert_allclose([p[1] for p in picks], scores, rtol=2e-2, atol=2e-2)
        checked += 1
    assert checked >= 6


def test_with_contract_overrides_answers_without_rewriting_the_release(recommender):
    rel = recommender.release
    uid = rel.user_ids[_known_users(rel, 3)[1]]
    recent = [{"item_id": rel.item_ids[7], "timestamp": 1_323_000_000_000, "event": "add"}]
    base = recommender.recommend(user_id=uid, k=10, recent=recent)
    only_trending = {s: 0.0 for s in SOURCES} | {"trending": 1.0}
    view = recommender.with_contract(recommender.contract.replace(weights=only_trending, mmr_lambda=1.0))
    alt = view.recommend(user_id=uid, k=10, recent=recent)
    assert view.contract.weights.trending == 1.0 and view.contract.weights.als == 0.0
    assert recommender.contract == rel.contract  # the original answers as before
    assert [i.item_id for i in recommender.recommend(user_id=uid, k=10, recent=recent).items] == [i.item_id for i in base.items]
    # trending only: the answer is the trending order of the eligible candidates
    tz = rel.trending[[rel.item_index[i.item_id] for i in alt.items]]
    assert list(tz) == sorted(tz, reverse=True)
    assert [i.item_id for i in alt.items] != [i.item_id for i in base.items]
    with pytest.raises(ValueError, match="content_dim"):
        recommender.with_contract(recommender.contract.replace(content_dim=8))


def test_an_override_of_the_weights_bypasses_the_batch_table(recommender, release_home):
    """The table was computed with the release's weights: under other weights a known user is
    scored by the blend (so evaluating a weight set evaluates it on every path)."""
    rel = recommender.release
    assert rel.item_sim.indices.size > 0  # item_similarity.parquet is read (the item_sim source)
    uid = rel.user_ids[_known_users(rel, 4)[2]]
    same = recommender.with_contract(recommender.contract.replace(mmr_lambda=1.0))
    assert same.recommend(user_id=uid, k=10).metadata["strategy"] == "topn"
    only_trending = {s: 0.0 for s in SOURCES} | {"trending": 1.0}
    view = recommender.with_contract(recommender.contract.replace(weights=only_trending, mmr_lambda=1.0))
    res = view.recommend(user_id=uid, k=10)
    assert res.metadata["strategy"] == "blend"
    tz = rel.trending[[rel.item_index[i.item_id] for i in res.items]]
    assert list(tz) == sorted(tz, reverse=True) and [i.item_id for i in res.items] != _table_row(release_home, uid)[:10]
    batch = view.recommend_batch([uid], 10, as_dict=True)["results"][uid]
    assert [i["item_id"] for i in batch] == [i.item_id for i in res.items]


def test_each_endpoint_answers_with_its_use_case_blend(recommender):
    """Item page and cart use their own blends, the homepage (and the batch table) its own."""
    rel = recommender.release
    uid = rel.user_ids[_known_users(rel, 3)[0]]
    item = rel.item_ids[5]
    only = {s: 0.0 for s in SOURCES}
    base_home = [i.item_id for i in recommender.recommend(user_id=uid, k=10).items]
    base_similar = [i.item_id for i in recommender.similar_items(item, k=10).items]
    view = recommender.with_contract(recommender.contract.replace(blends={
        "item_page": {"weights": only | {"trending": 1.0}, "mmr_lambda": 1.0},
        "cart": {"weights": only | {"popularity": 1.0}, "mmr_lambda": 1.0}}))
    home = view.recommend(user_id=uid, k=10)
    assert home.metadata["use_case"] == "homepage" and home.metadata["strategy"] == "topn"  # homepage blend untouched
    assert [i.item_id for i in home.items] == base_home
    sim = view.similar_items(item, k=10)
    assert sim.metadata["use_case"] == "item_page"
    tz = rel.trending[[rel.item_index[i.item_id] for i in sim.items]]
    assert list(tz) == sorted(tz, reverse=True) and [i.item_id for i in sim.items] != base_similar
    cart = view.cart_addons([item], k=10)
    pz = rel.popularity[[rel.item_index[i.item_id] for i in cart.items]]
    assert cart.metadata["use_case"] == "cart" and list(pz) == sorted(pz, reverse=True)
    # anonymous visitors: session with events, cold start without
    recent = [{"item_id": item, "timestamp": 1_323_000_000_000, "event": "view"}]
    assert view.recommend(k=5, recent=recent).metadata["use_case"] == "session"
    assert view.recommend(k=5).metadata["use_case"] == "cold_start"
