"""Itemset and rule budgets: exact when they fit, raised support / best rules when not,
and bounded memory on dense baskets."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

from recs_kernels import fpgrowth, rules


def dense_baskets(n, k, seed=0, lo=20, hi=100):
    """Skewed dense baskets (one per user-day of a ratings set): an itemset explosion at low support."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, k + 1) ** 0.7
    p /= p.sum()
    rows, cols = [], []
    for b in range(n):
        it = np.unique(rng.choice(k, rng.integers(lo, hi), p=p))
        rows += [b] * len(it)
        cols += it.tolist()
    return sp.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(n, k))


def test_within_budget_is_exactly_the_unbounded_result():
    B = sp.csr_matrix(np.random.default_rng(1).random((400, 60)) < 0.15)
    items, lengths, counts, n = fpgrowth.frequent_itemsets_arrays(B, 0.01, max_len=4)
    b = fpgrowth.frequent_itemsets_bounded(B, 0.01, max_len=4, max_itemsets=len(lengths))
    assert not b.adjusted and b.probes == 1
    assert np.array_equal(b.items, items) and np.array_equal(b.lengths, lengths) and np.array_equal(b.counts, counts)


def test_over_budget_raises_support_to_the_smallest_that_fits():
    B = dense_baskets(300, 120, lo=10, hi=40)
    budget = 5_000
    b = fpgrowth.frequent_itemsets_bounded(B, 2, max_len=4, max_itemsets=budget)
    assert b.adjusted and b.min_count_requested == 2 and b.max_len_used == 4
    assert 0 < len(b.lengths) <= budget
    # exactly what mining at the used support gives, and one basket less would not fit
    items, lengths, counts, _ = fpgrowth.frequent_itemsets_arrays(B, b.min_count_used, max_len=4)
    assert np.array_equal(b.items, items) and np.array_equal(b.counts, counts)
    assert len(fpgrowth.frequent_itemsets_arrays(B, b.min_count_used - 1, max_len=4)[1]) > budget


def test_identical_baskets_lower_max_len_instead():
    # 40 items in every basket: 2^40 itemsets at any support; only a shorter max_len fits
    B = sp.csr_matrix(np.ones((30, 40), bool))
    b = fpgrowth.frequent_itemsets_bounded(B, 0.5, max_len=None, max_itemsets=20_000)
    assert b.max_len_used == 3 and len(b.lengths) == 40 + 780 + 9880
    assert b.min_count_used == 15  # every itemset is in every basket: the support did not matter


def test_bad_budget():
    with pytest.raises(ValueError, match="max_itemsets"):
        fpgrowth.frequent_itemsets_bounded(sp.csr_matrix(np.ones((2, 2), bool)), 0.5, max_itemsets=0)


def test_max_rules_keeps_the_best_by_the_metric():
    B = dense_baskets(200, 50, seed=2, lo=5, hi=20)
    its, sup = fpgrowth.frequent_itemsets(B, 0.05, max_len=3)
    full = rules.association_rules(its, sup, 200, metric="lift", min_threshold=0.0)
    cap = len(full) // 7
    top = rules.association_rules(its, sup, 200, metric="lift", min_threshold=0.0, max_rules=cap)
    assert len(top) == cap and top.n_passing == len(full) > cap
    assert np.allclose(np.sort(top.lift)[::-1], np.sort(full.lift)[::-1][:cap])
    # kept rules keep their full-run order and metrics
    pos = {(a, c): i for i, (a, c) in enumerate(zip(full.antecedents, full.consequents))}
    idx = [pos[(a, c)] for a, c in zip(top.antecedents, top.consequents)]
    assert idx == sorted(idx)
    assert np.array_equal(top.confidence, full.confidence[idx])
    same = rules.association_rules(its, sup, 200, metric="lift", min_threshold=0.0, max_rules=len(full))
    assert same.antecedents == full.antecedents and np.array_equal(same.lift, full.lift)


def test_one_long_itemset_does_not_build_all_its_rules():
    # 14 items in every basket: 16K itemsets with 3^14 - 2^15 + 1 (4.7M) rules; the kernel holds 1,000
    B = sp.csr_matrix(np.ones((4, 14), bool))
    its, sup = fpgrowth.frequent_itemsets(B, 1.0)
    r = rules.association_rules(its, sup, 4, min_threshold=0.0, max_rules=1_000)
    assert len(r) == 1_000 and r.n_passing == 3 ** 14 - 2 ** 15 + 1


def test_dense_baskets_stay_under_one_gib():
    """The issue's explosion (dense user-day baskets, support 0.005, max_len 4) with the default
    budgets, in a fresh process. The bound is on the mining, not on numba compiling the kernels
    (LLVM alone can pass 500 MB, and a kernel cache shared with concurrent test workers may be
    cold): the process first mines tiny baskets past both budgets, which compiles every kernel
    the real run uses, then resets its peak RSS (/proc/self/clear_refs) before the real run."""
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, "tests")
        from test_mining_budget import dense_baskets
        from recs_kernels import fpgrowth, rules

        def mine(B, max_itemsets, max_rules):
            b = fpgrowth.frequent_itemsets_bounded(B, 0.005, max_len=4, max_itemsets=max_itemsets)
            its = fpgrowth.itemsets_to_tuples(b.items, b.lengths, B.shape[1])
            return b, rules.association_rules(its, b.counts / B.shape[0], B.shape[0], min_threshold=0.1,
                                              max_rules=max_rules)

        mine(dense_baskets(60, 40, seed=4, lo=10, hi=30), 50, 20)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        B = dense_baskets(600, 300, seed=4, hi=60)
        b, r = mine(B, 200_000, 500_000)
        hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
        print(len(b.lengths), int(b.adjusted), len(r), r.n_passing, hwm)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    n_sets, adjusted, n_rules, passing, rss_kb = map(int, out.stdout.split()[-5:])
    assert adjusted == 1 and n_sets <= 200_000 and n_rules <= 500_000 < passing
    assert rss_kb < 1024 * 1024, f"peak RSS {rss_kb / 1024:.0f} MiB"
