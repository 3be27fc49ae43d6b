"""recs_kernels.rules: metric-for-metric equal to mlxtend's association_rules."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st
from mlxtend.frequent_patterns import association_rules as ml_rules

from recs_kernels.fpgrowth import frequent_itemsets
from recs_kernels.rules import METRICS, Rules, association_rules
from test_kernels_fpgrowth import retail_baskets

ML_NAME = {"antecedent_support": "antecedent support", "consequent_support": "consequent support"}


def compare_with_mlxtend(itemsets, support, n, metric, thr):
    ours = association_rules(itemsets, support, n, metric=metric, min_threshold=thr)
    df = pd.DataFrame({"support": support, "itemsets": [frozenset(t) for t in itemsets]})
    ref = ml_rules(df, num_itemsets=n, metric=ML_NAME.get(metric, metric), min_threshold=thr)
    key = lambda a, c: (tuple(sorted(a)), tuple(sorted(c)))  # noqa: E731
    pos = {key(a, c): i for i, (a, c) in enumerate(zip(ref["antecedents"], ref["consequents"]))}
    got = [key(a, c) for a, c in zip(ours.antecedents, ours.consequents)]
    assert len(got) == len(set(got)) == len(pos)
    assert set(got) == set(pos)
    idx = np.array([pos[k] for k in got], dtype=np.int64)
    for m in METRICS:
        a = getattr(ours, m)
        b = ref[ML_NAME.get(m, m)].to_numpy(dtype=np.float64)[idx] if len(idx) else np.zeros(0)
        assert a.dtype == np.float64 and a.shape == (len(got),)
        assert np.array_equal(np.isinf(a), np.isinf(b)), m
        fin = np.isfinite(b)
        assert np.allclose(a[fin], b[fin], rtol=0, atol=1e-9), m
    return ours


@pytest.fixture(scope="module")
def retail_itemsets():
    m = retail_baskets()
    itemsets, support = frequent_itemsets(m, 0.01)
    return itemsets, support, m.shape[0]


@pytest.mark.parametrize("metric,thr", [("confidence", 0.0), ("confidence", 0.5), ("lift", 5.0),
                                        ("leverage", 0.005), ("conviction", 2.0),
                                        ("zhangs_metric", 0.9), ("jaccard", 0.3),
                                        ("certainty", 0.4), ("kulczynski", 0.5),
                                        ("support", 0.015), ("antecedent_support", 0.02)])
def test_equal_to_mlxtend_on_online_retail(retail_itemsets, metric, thr):
    itemsets, support, n = retail_itemsets
    ours = compare_with_mlxtend(itemsets, support, n, metric, thr)
    assert len(ours) > 0
    assert np.all(getattr(ours, metric) >= thr)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), n=st.integers(2, 20), k=st.integers(2, 6), density=st.floats(0.2, 0.95),
       metric=st.sampled_from(METRICS), thr=st.floats(-1.0, 3.0))
def test_equal_to_mlxtend_random(data, n, k, density, metric, thr):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
    dense = rng.random((n, k)) < density
    dense[:, 0] = True  # an item in every basket: s(C) == 1 edge cases (certainty, conviction)
    itemsets, support = frequent_itemsets(sp.csr_matrix(dense), 1)
    compare_with_mlxtend(itemsets, support, n, metric, thr)


def test_conviction_inf_and_table_conversion():
    itemsets = [(0,), (1,), (0, 1)]
    support = np.array([0.5, 0.75, 0.5])
    r = association_rules(itemsets, support, 4, min_threshold=0.0)
    assert isinstance(r, Rules) and len(r) == 2
    i = r.antecedents.index((0,))
    assert r.consequents[i] == (1,) and r.confidence[i] == 1.0 and np.isinf(r.conviction[i])
    d = r.to_dict()
    assert set(d) == {"antecedents", "consequents", *METRICS}
    import polars as pl

    df = pl.DataFrame(d)
    assert df.height == 2 and df["antecedents"].to_list()[i] == [0]


def test_unsorted_itemsets_are_canonicalised():
    r1 = association_rules([(3,), (1,), (3, 1)], [0.5, 0.5, 0.25], 8, min_threshold=0.0)
    assert sorted(zip(r1.antecedents, r1.consequents)) == [((1,), (3,)), ((3,), (1,))]


def test_bad_inputs():
    its, sup = [(0,), (1,), (0, 1)], np.array([0.5, 0.5, 0.25])
    with pytest.raises(ValueError, match="metric"):
        association_rules(its, sup, 4, metric="nope")
    with pytest.raises(ValueError, match="missing"):
        association_rules([(0,), (0, 1)], [0.5, 0.25], 4)
    with pytest.raises(ValueError, match="support"):
        association_rules(its, sup[:2], 4)
    with pytest.raises(ValueError, match="max_rules"):
        association_rules(its, sup, 4, max_rules=0)


    with pytest.raises(ValueError, match="n_baskets"):
        association_rules(its, sup, 0)
    with pytest.raises(ValueError, match="fractions"):
        association_rules(its, [0.5, 0.5, 1.5], 4)
    with pytest.raises(ValueError, match="twice"):
        association_rules([(0,), (0,)], [0.5, 0.5], 4)


def test_no_itemsets_give_no_rules():
    r = association_rules([], [], 4)
    assert len(r) == 0 and r.n_passing == 0 and set(r.to_dict()) == {"antecedents", "consequents", *METRICS}
