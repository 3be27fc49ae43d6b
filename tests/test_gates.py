"""Release gates: degenerate models fail blocking checks, healthy ones pass."""
from datetime import timedelta

import dagster as dg
import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recs_assets import definitions, gates, quality, synthetic
from recs_assets.resources import ArtifactStore

pytestmark = pytest.mark.xdist_group("gates")


def test_factor_gate():
    rng = np.random.default_rng(0)
    U, V = rng.normal(size=(50, 8)), rng.normal(size=(30, 8))
    assert gates.factor_gate(U, V)[0] == []
    Z = U.copy()
    Z[:40] = 0
    failures, meta = gates.factor_gate(Z, V)
    assert meta["zero_user_share"] == 0.8 and any("all-zero factors" in f for f in failures)
    assert any("median item factor norm" in f for f in gates.factor_gate(U, V * 1e-7)[0])
    N = V.copy()
    N[3, 2] = np.nan
    assert any("NaN/inf" in f for f in gates.factor_gate(U, N)[0])


def test_weights_gate():
    W = sp.csr_matrix(np.array([[0.5, 0, 0], [0, 1e-30, 0], [0, 0, 0.0], [0.2, 0.1, 0]]))
    failures, meta = gates.weights_gate(W)
    assert failures == [] and meta["zero_user_share"] == 0.5
    W2 = sp.csr_matrix(np.array([[0.5, 0, 0], [0, 1e-30, 0], [0, 0, 0.0], [0, 0, 0]]))
    assert gates.weights_gate(W2)[0]
    W3 = W.copy()
    W3.data[0] = np.inf
    assert any("NaN/inf" in f for f in gates.weights_gate(W3)[0])


def test_trending_gate():
    glob = np.log1p(np.array([10.0, 5, 3, 0]))
    recent = np.log1p(np.array([0.0, 2, 1, 0]))
    assert gates.trending_gate(glob, recent, timedelta(days=365), 14)[0] == []
    assert gates.trending_gate(glob, np.zeros(4), timedelta(days=365), 14)[0]
    assert gates.trending_gate(glob, glob.copy(), timedelta(days=365), 14)[0]
    # data shorter than the window: trending is all-time popularity, and that is fine
    assert gates.trending_gate(glob, glob.copy(), timedelta(days=7), 14)[0] == []


def test_topn_gate():
    users = [f"u{i}" for i in range(20)]
    same = pl.DataFrame({"user_id": np.repeat(users, 3), "rank": np.tile([1, 2, 3], 20),
                         "item_id": np.tile(["a", "b", "c"], 20)})
    failures, meta = gates.topn_gate(same)
    assert meta["identical_share"] == 1.0 and failures
    rng = np.random.default_rng(1)
    personal = same.with_columns(pl.Series("item_id", [f"i{x}" for x in rng.integers(0, 50, same.height)]))
    assert gates.topn_gate(personal)[0] == []


@pytest.fixture(scope="module")
def events_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gates")
    d = synthetic.generate(200, 300, 6_000, shape="ratings", seed=5)
    d.events.write_parquet(out / "events.parquet")
    d.catalog.write_parquet(out / "catalog.parquet")
    return out, d.events["ts"].max()


def _run(events_dir, home, monkeypatch, as_of):
    monkeypatch.setenv("RECS_HOME", str(home))
    path, _ = events_dir
    cfg = {"ops": {
        "ingest": {"config": {"sources": [{"kind": "events", "path": str(path / "events.parquet")}],
                              "catalog_paths": [str(path / "catalog.parquet")]}},
        "interaction_matrix": {"config": {"as_of": as_of}},
        "popularity": {"config": {"as_of": as_of}},
        "als_factors": {"config": {"factors": 8, "iterations": 3}},
    }}
    sel = dg.AssetSelection.assets("interactions", "interaction_matrix", "popularity", "als_factors")
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([*definitions.all_assets, *quality.CHECKS], selection=sel.required_multi_asset_neighbors(),
                                resources=definitions.resources, instance=instance, run_config=cfg, raise_on_error=False)
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_ages_from_an_as_of_1000_years_later_fail_the_gates(events_dir, tmp_path, monkeypatch):
    """The 2999-01-01 case: ages measured from far in the future collapse the models."""
    newest = synthetic.datetime.fromtimestamp(events_dir[1] / 1000, synthetic.timezone.utc)
    far = newest.replace(year=newest.year + 1000).isoformat()
    checks = _run(events_dir, tmp_path / "bad", monkeypatch, far)
    for name in ("interaction_weights_alive", "trending_is_recent"):
        assert name in checks and not checks[name].passed, name
    assert "all-zero weight row" in checks["interaction_weights_alive"].metadata["failures"].value
    assert "trending window" in checks["trending_is_recent"].metadata["failures"].value
    # the failed gate blocked everything downstream of the matrix in that run
    assert "als_factors_not_degenerate" not in checks
    # fitted anyway (on the stored matrix), ALS collapses: the asset's own blocking check stops
    # it, and the gate finds the factors degenerate on every count
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([*definitions.all_assets, *quality.CHECKS], selection=dg.AssetSelection.assets("als_factors"),
                                resources=definitions.resources, instance=instance, raise_on_error=False,
                                run_config={"ops": {"als_factors": {"config": {"factors": 8, "iterations": 3}}}})
    assert not result.success
    a = ArtifactStore().load("als_factors", "user_factors", "item_factors")
    failures, meta = gates.factor_gate(a["user_factors"], a["item_factors"])
    assert meta["zero_user_share"] == 1.0
    assert any("all-zero factors" in f for f in failures) and any("median user factor norm" in f for f in failures)


def test_healthy_models_pass_the_gates(events_dir, tmp_path, monkeypatch):
    checks = _run(events_dir, tmp_path / "good", monkeypatch, None)
    for name in ("interaction_weights_alive", "trending_is_recent", "als_factors_not_degenerate"):
        assert checks[name].passed, (name, checks[name].metadata)
