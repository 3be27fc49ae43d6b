"""recs_kernels.covis: equal to a plain-Python reference of the documented definition."""

import math
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from recs_kernels.covis import counts


def reference(sess, item, ts, wt, tau, top_k, n_items, window):
    """The module docstring, step by step, in plain Python."""
    groups = defaultdict(list)
    for pos, (s, i, t, w) in enumerate(zip(sess, item, ts, wt)):
        groups[int(s)].append((float(t), int(i), pos, float(w)))
    C = defaultdict(float)
    pairs_seen = set()
    for s in sorted(groups):
        evs = sorted(groups[s])  # (time, item, input position)
        best = {}
        for t, i, pos, w in evs:
            if i not in best or w > best[i][3]:
                best[i] = (t, i, pos, w)
        evs = sorted(best.values())
        for a in range(len(evs)):
            for b in range(len(evs)):
                if a != b and abs(a - b) <= window:
                    ta, ia, _, wa = evs[a]
                    tb, ib, _, wb = evs[b]
                    C[ia, ib] += wa * wb * math.exp(-abs(ta - tb) / tau)
                    pairs_seen.add((s, ia, ib))
    rows = defaultdict(list)
    for (i, j), v in C.items():
        if v > 0:
            rows[i].append((-v, j))
    dense = np.zeros((n_items, n_items))
    for i, lst in rows.items():
        for negv, j in sorted(lst)[:top_k]:
            dense[i, j] = -negv
    return dense, C


events = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 4), min_size=n, max_size=n),      # session
    st.lists(st.integers(0, 7), min_size=n, max_size=n),      # item
    st.lists(st.integers(0, 5), min_size=n, max_size=n),      # timestamp
    st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]), min_size=n, max_size=n),  # weight
))


@settings(max_examples=150, deadline=None)
@given(ev=events, top_k=st.integers(1, 8), window=st.integers(1, 6))
def test_exact_without_decay(ev, top_k, window):
    # no decay + dyadic weights: every sum is exact, so ties and top-k cuts must match exactly
    sess, item, ts, wt = map(np.array, ev)
    got = counts(sess, item, ts, wt, time_decay_seconds=np.inf, top_k=top_k, n_items=8, window=window)
    want, _ = reference(sess, item, ts, wt, np.inf, top_k, 8, window)
    assert got.shape == (8, 8) and got.dtype == np.float32
    assert np.array_equal(got.toarray(), want.astype(np.float32))
    assert np.all(np.diff(got.indptr) <= top_k)
    assert np.all(got.diagonal() == 0)


@settings(max_examples=200, deadline=None)
@given(ev=events, top_k=st.integers(1, 8), window=st.integers(1, 6), tau=st.floats(0.5, 10.0))
def test_matches_reference_with_decay(ev, top_k, window, tau):
    sess, item, ts, wt = map(np.array, ev)
    got = counts(sess, item, ts, wt, time_decay_seconds=tau, top_k=top_k, n_items=8, window=window).toarray()
    want, C = reference(sess, item, ts, wt, tau, top_k, 8, window)
    # values agree for every kept neighbour; the kept set is a valid top-k (ties only up to
    # rounding may resolve differently, so compare against the full reference row)
    assert np.allclose(got[got > 0], np.array([C[i, j] for i, j in zip(*np.nonzero(got))]), rtol=1e-6)
    for i in range(8):
        full = np.array([C.get((i, j), 0.0) for j in range(8)])
        n_pos = int((full > 0).sum())
        assert int((got[i] > 0).sum()) == min(top_k, n_pos)
        if 0 < top_k < n_pos:
            kept_min = got[i][got[i] > 0].min()
            dropped = full[(got[i] == 0) & (full > 0)]
            assert dropped.max() <= kept_min * (1 + 1e-6)


def test_pairs_never_cross_sessions_and_symmetry():
    sess = np.array([7, 7, 7, 9, 9, 9])
    item = np.array([0, 1, 2, 3, 4, 0])
    ts = np.array([0, 10, 20, 0, 0, 5])
    w = np.ones(6)
    m = counts(sess, item, ts, w, time_decay_seconds=10.0, top_k=10).toarray()
    assert m[1, 3] == m[2, 4] == m[1, 4] == m[2, 3] == 0
    assert m[0, 1] == pytest.approx(math.exp(-1)) and m[0, 2] == pytest.approx(math.exp(-2))
    assert m[0, 3] == pytest.approx(math.exp(-0.5)) and m[3, 4] == pytest.approx(1.0)
    assert np.array_equal(m, m.T)


def test_repeats_keep_strongest_event_and_window_caps_pairs():
    # item 0 viewed twice (weight 1) then bought (weight 3): one event of weight 3 remains
    m = counts([0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [1.0, 1.0, 1.0, 3.0],
               time_decay_seconds=np.inf, top_k=5).toarray()
    assert m[0, 1] == m[1, 0] == 3.0
    # a session of 10 events one second apart, window 2: only neighbours <= 2 apart pair up
    n = 10
    m = counts(np.zeros(n, int), np.arange(n), np.arange(n), np.ones(n), time_decay_seconds=np.inf,
               top_k=n, window=2).toarray()
    want = ((np.abs(np.subtract.outer(np.arange(n), np.arange(n))) <= 2) & ~np.eye(n, dtype=bool))
    assert np.array_equal(m > 0, want)


def test_top_k_ties_broken_by_lower_item_id():
    m = counts(np.zeros(5, int), np.array([4, 3, 2, 1, 0]), np.zeros(5), np.ones(5),
               time_decay_seconds=1.0, top_k=2)
    assert m.indices[m.indptr[0]:m.indptr[1]].tolist() == [1, 2]
    assert m.indices[m.indptr[4]:m.indptr[5]].tolist() == [0, 1]


def test_bad_inputs():
    ok = dict(time_decay_seconds=1.0, top_k=3)
    s, i, t, w = np.array([0, 0]), np.array([0, 1]), np.array([0, 1]), np.array([1.0, 1.0])
    with pytest.raises(ValueError, match="negative"):
        counts(s, i, t, np.array([1.0, -1.0]), **ok)
    with pytest.raises(ValueError, match="shape"):
        counts(s, i[:1], t, w, **ok)
    with pytest.raises(ValueError, match="integer"):
        counts(s.astype(float), i, t, w, **ok)
    with pytest.raises(ValueError, match="empty"):
        counts(s[:0], i[:0], t[:0], w[:0], **ok)
    with pytest.raises(ValueError, match="time_decay_seconds"):
        counts(s, i, t, w, time_decay_seconds=0, top_k=3)
    with pytest.raises(ValueError, match="top_k"):
        counts(s, i, t, w, time_decay_seconds=1.0, top_k=0)
    with pytest.raises(ValueError, match="n_items"):
        counts(s, i, t, w, n_items=1, **ok)
    with pytest.raises(ValueError, match="NaN"):
        counts(s, i, np.array([0.0, np.nan]), w, **ok)
