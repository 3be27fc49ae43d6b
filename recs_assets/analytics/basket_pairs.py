"""Substitute pairs: items that both sell well but share a basket less often than chance says.

Counts come straight from the baskets x items matrix (the association rules hold only frequent
pairs, and a substitute pair is by definition an infrequent one). The expected count of a pair
is stratified by period: E[a, b] = sum over periods p of n_a,p * n_b,p / n_p, so two items that
were simply never on sale at the same time (a discontinued product and its replacement, summer
and Christmas ranges) are not mistaken for substitutes.
"""
from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy import stats


def period_codes(basket_ts: np.ndarray | None, n_baskets: int, period: str) -> np.ndarray:
    """One integer per basket naming its period ("none": all baskets in period 0)."""
    if period == "none" or basket_ts is None:
        return np.zeros(n_baskets, dtype=np.int64)
    ts = np.asarray(basket_ts, dtype="datetime64[ms]")
    unit = {"week": "W", "month": "M", "quarter": "M", "year": "Y"}[period]
    codes = ts.astype(f"datetime64[{unit}]").astype(np.int64)
    if period == "quarter":
        codes = codes // 3
    codes = np.where(np.isnat(ts), codes[~np.isnat(ts)].min() if (~np.isnat(ts)).any() else 0, codes)
    return np.unique(codes, return_inverse=True)[1].astype(np.int64)


def substitute_pairs(B: sp.csr_matrix, *, min_item_support: float = 0.005, min_expected: float = 5.0, max_lift: float = 0.8, max_p_value: float = 0.05,
                     periods: np.ndarray | None = None, content: np.ndarray | None = None,
                     content_weight: float = 3.0, max_pairs: int = 5000, block: int = 512) -> pl.DataFrame:
    """Rank pairs (a < b, column indices of B) that co-occur less often than expected.

    B: baskets x items (any nonzero = in the basket). periods: one code per basket (0..P-1).
    content: items x d L2-normalised vectors (or None). Returns columns a, b, support_a,
    support_b, together, expected, lift, p_value, deficit_z, content_similarity, score, rank.
    score = (expected - together) / sqrt(expected), times (1 + content_weight * max(cos, 0)).
    """
    B = sp.csr_matrix(B, dtype=np.float32)
    B.data[:] = 1.0
    n = B.shape[0]
    empty = pl.DataFrame(schema={"a": pl.Int64, "b": pl.Int64, "support_a": pl.Float64, "support_b": pl.Float64,
                                 "together": pl.Int64, "expected": pl.Float64, "lift": pl.Float64,
                                 "p_value": pl.Float64, "deficit_z": pl.Float64, "content_similarity": pl.Float32,
                                 "score": pl.Float64, "rank": pl.Int32})
    if n == 0:
        return empty
    counts = np.asarray(B.sum(axis=0)).ravel()
    frequent = np.flatnonzero((counts >= min_item_support * n) & (counts > 0))
    if len(frequent) < 2:
        return empty
    Bf = B[:, frequent].tocsc()
    codes = np.zeros(n, np.int64) if periods is None else np.asarray(periods, np.int64)
    n_per = np.bincount(codes).astype(np.float64)
    # Per-period item counts (periods x F): small, dense.
    P = sp.csr_matrix((np.ones(n, np.float32), (codes, np.arange(n))), shape=(len(n_per), n))
    Cp = np.asarray((P @ Bf).todense(), dtype=np.float64)
    Cp_scaled = Cp / np.maximum(n_per, 1.0)[:, None]
    BfT = Bf.T.tocsr()
    parts = []
    F = len(frequent)
    for start in range(0, F, block):
        stop = min(F, start + block)
        rows = np.arange(start, stop)
        together = np.asarray((BfT[start:stop] @ Bf).todense(), dtype=np.float64)
        expected = Cp_scaled[:, start:stop].T @ Cp
        upper = np.arange(F)[None, :] > rows[:, None]
        ii, jj = np.nonzero((expected >= min_expected) & upper)
        t = together[ii, jj]
        e = expected[ii, jj]
        lift = t / e
        keep = lift < max_lift
        if keep.any():
            parts.append((rows[ii[keep]], jj[keep], t[keep], e[keep]))
    if not parts:
        return empty
    a, b, t, e = (np.concatenate(x) for x in zip(*parts))
    # One-sided Poisson test: how surprising is so few co-occurrences under independence?
    p = stats.poisson.cdf(t, e)
    ok = p <= max_p_value
    a, b, t, e, p = a[ok], b[ok], t[ok], e[ok], p[ok]
    z = (e - t) / np.sqrt(e)
    if content is not None and len(a):
        V = np.asarray(content, np.float32)
        cos = np.einsum("ij,ij->i", V[frequent[a]], V[frequent[b]])
    else:
        cos = np.full(len(a), np.nan, np.float32)
    boost = 1.0 + content_weight * np.clip(np.nan_to_num(cos, nan=0.0), 0.0, None)
    score = z * boost
    order = np.lexsort((frequent[b], frequent[a], -score))[:max_pairs]
    out = pl.DataFrame({
        "a": frequent[a][order].astype(np.int64), "b": frequent[b][order].astype(np.int64),
        "support_a": counts[frequent[a][order]] / n, "support_b": counts[frequent[b][order]] / n,
        "together": t[order].astype(np.int64), "expected": e[order], "lift": t[order] / e[order],
        "p_value": p[order], "deficit_z": z[order], "content_similarity": cos[order].astype(np.float32),
        "score": score[order], "rank": np.arange(1, len(order) + 1, dtype=np.int32),
    })
    return out
