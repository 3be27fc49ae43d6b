"""recs_kernels.fpgrowth: identical to mlxtend on Online Retail, and to brute force."""

from itertools import combinations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from conftest import BUNDLED
from recs_kernels.fpgrowth import frequent_itemsets, frequent_itemsets_arrays, min_count_for

NON_PRODUCT = ["POST", "DOT", "M", "m", "BANK CHARGES", "AMAZONFEE", "C2", "D", "S", "B", "CRUK", "PADS"]


def retail_baskets():
    import polars as pl

    df = pl.read_parquet(BUNDLED).filter(
        ~pl.col("InvoiceNo").str.starts_with("C"),
        pl.col("Quantity") > 0,
        pl.col("UnitPrice") > 0,
        ~pl.col("StockCode").is_in(NON_PRODUCT),
    )  # rows with a null CustomerID are kept: they are real baskets
    _, b = np.unique(df["InvoiceNo"].to_numpy(), return_inverse=True)
    _, i = np.unique(df["StockCode"].to_numpy(), return_inverse=True)
    m = sp.csr_matrix((np.ones(b.size, dtype=bool), (b, i)), shape=(b.max() + 1, i.max() + 1))
    m.sum_duplicates()
    return m


@pytest.fixture(scope="module")
def baskets():
    return retail_baskets()


def mlxtend_itemsets(m, min_support):
    import pandas as pd
    from mlxtend.frequent_patterns import fpgrowth

    df = pd.DataFrame(m.toarray().astype(bool))
    res = fpgrowth(df, min_support=min_support)
    return {tuple(sorted(int(x) for x in s)): float(v) for s, v in zip(res["itemsets"], res["support"])}


@pytest.mark.parametrize("min_support", [0.02, 0.01, 0.005])
def test_identical_to_mlxtend_on_online_retail(baskets, min_support):
    assert baskets.shape[0] > 19_000 and baskets.shape[1] > 3_800
    itemsets, support = frequent_itemsets(baskets, min_support)
    ref = mlxtend_itemsets(baskets, min_support)
    assert len(itemsets) == len(ref) > 300
    assert len(set(itemsets)) == len(itemsets)
    assert set(itemsets) == set(ref)
    assert support.dtype == np.float64
    # same count / n in float64: bit-identical, not merely close
    assert all(s == ref[t] for t, s in zip(itemsets, support.tolist()))
    assert itemsets == sorted(itemsets, key=lambda t: (len(t), t))
    assert all(isinstance(x, int) for t in itemsets[-5:] for x in t)


def brute_force(dense, min_count, max_len):
    n, k = dense.shape
    out = []
    for L in range(1, (max_len or k) + 1):
        for combo in combinations(range(k), L):
            c = int(np.all(dense[:, list(combo)], axis=1).sum())
            if c >= min_count:
                out.append((combo, c / n))
    return out


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 25),
    k=st.integers(1, 9),
    density=st.floats(0.05, 0.95),
    max_len=st.one_of(st.none(), st.integers(1, 4)),
)
def test_matches_brute_force(data, n, k, density, max_len):
    seed = data.draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    dense = rng.random((n, k)) < density
    # repeated rows exercise the merging of identical projected baskets
    if n > 3 and data.draw(st.booleans()):
        dense[: n // 2] = dense[0]
    if data.draw(st.booleans()):
        min_support = data.draw(st.integers(1, n + 1))
    else:
        min_support = data.draw(st.floats(0.01, 1.0))
    min_count = min_count_for(min_support, n)
    itemsets, support = frequent_itemsets(sp.csr_matrix(dense), min_support, max_len=max_len)
    ref = brute_force(dense, min_count, max_len)
    assert itemsets == [t for t, _ in ref]
    assert support.tolist() == [s for _, s in ref]


def test_min_count_matches_float_comparison():
    for n in (7, 100, 19773):
        for f in (0.002, 0.005, 0.01, 0.02, 0.1, 0.3, 1.0):
            c = min_count_for(f, n)
            assert c / n >= f and (c == 1 or (c - 1) / n < f)
    assert min_count_for(5, 10) == 5


def test_zero_one_numeric_and_duplicates_accepted():
    m = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [1, 1, 0]], dtype=np.float64))
    itemsets, support = frequent_itemsets(m, 2)
    assert itemsets == [(0,), (1,), (0, 1)]
    assert support.tolist() == [1.0, 2 / 3, 2 / 3]
    coo = sp.coo_matrix((np.ones(3, dtype=bool), ([0, 0, 1], [1, 1, 1])), shape=(2, 2))
    assert frequent_itemsets(coo.tocsr(), 1.0)[0] == [(1,)]


def test_arrays_form_agrees(baskets):
    items, lengths, counts, n = frequent_itemsets_arrays(baskets, 0.02)
    itemsets, support = frequent_itemsets(baskets, 0.02)
    assert n == baskets.shape[0]
    assert lengths.tolist() == [len(t) for t in itemsets]
    assert items.tolist() == [x for t in itemsets for x in t]
    assert np.array_equal(counts / n, support)


def test_nothing_frequent_returns_empty():
    m = sp.csr_matrix(np.eye(4, dtype=bool))
    itemsets, support = frequent_itemsets(m, 2)
    assert itemsets == [] and support.shape == (0,)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5, True, np.nan, "0.1", -3])
def test_bad_min_support(bad):
    with pytest.raises(ValueError, match="min_support"):
        frequent_itemsets(sp.csr_matrix(np.eye(3, dtype=bool)), bad)


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        frequent_itemsets(sp.csr_matrix((0, 5), dtype=bool), 0.5)
    with pytest.raises(ValueError, match="scipy.sparse"):
        frequent_itemsets(np.eye(3, dtype=bool), 0.5)
    with pytest.raises(ValueError, match="0/1"):
        frequent_itemsets(sp.csr_matrix(np.array([[2, 1]])), 0.5)
    with pytest.raises(ValueError, match="max_len"):
        frequent_itemsets(sp.csr_matrix(np.eye(3, dtype=bool)), 0.5, max_len=0)
