"""Association rules A -> C from frequent itemsets, with mlxtend's metric conventions.

Every frequent itemset I with |I| >= 2 yields one candidate rule per nonempty proper subset
A of I (C = I minus A). Supports of A and C are looked up in a hash table over the itemsets
(frequent itemsets are downward closed, so they are always there). Metrics follow
``mlxtend.frequent_patterns.association_rules`` (no null values) to the bit, including its
edge cases, because downstream comparisons and thresholds are written against it:

* confidence  = (s(AC) * n) / (s(A) * n)   (mlxtend's arithmetic; equal to s(AC)/s(A))
* lift        = confidence / s(C)
* leverage    = s(AC) - s(A) * s(C)
* conviction  = (1 - s(C)) / (1 - confidence), and +inf when confidence >= 1
* zhangs_metric = leverage / max(s(AC)(1 - s(A)), s(A)(s(C) - s(AC))), 0 when that is 0
* jaccard     = s(AC) / (s(A) + s(C) - s(AC))
* certainty   = (confidence - s(C)) / (1 - s(C)), 0 when s(C) == 1
* kulczynski  = (conf(A->C) + conf(C->A)) / 2

Rules are kept when ``metric >= min_threshold``. Order is deterministic: by input itemset
order, then antecedent length descending, then antecedent lexicographic.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from itertools import chain

import numpy as np
from numba import njit

__all__ = ["Rules", "association_rules", "METRICS"]

METRICS = (
    "antecedent_support",
    "consequent_support",
    "support",
    "confidence",
    "lift",
    "leverage",
    "conviction",
    "zhangs_metric",
    "jaccard",
    "certainty",
    "kulczynski",
)
_ALIASES = {"antecedent support": "antecedent_support", "consequent support": "consequent_support"}


@dataclass
class Rules:
    """Columnar rules: ``antecedents[i] -> consequents[i]`` with metric arrays (float64)."""

    antecedents: list
    consequents: list
    antecedent_support: np.ndarray
    consequent_support: np.ndarray
    support: np.ndarray
    confidence: np.ndarray
    lift: np.ndarray
    leverage: np.ndarray
    conviction: np.ndarray
    zhangs_metric: np.ndarray
    jaccard: np.ndarray
    certainty: np.ndarray
    kulczynski: np.ndarray
    n_passing: int = -1  # rules passing the threshold before the max_rules cut (-1: not counted)

    def __len__(self) -> int:
        return len(self.antecedents)

    def to_dict(self) -> dict:
        """Plain ``{column: list | ndarray}``; ``polars.DataFrame(rules.to_dict())`` works
        (tuples become list columns)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "n_passing"}


# --------------------------------------------------------------------------- kernels


@njit(cache=True, inline="always")
def _hash(items, s, L):
    h = np.uint64(1469598103934665603)
    for k in range(L):
        h = (h ^ np.uint64(items[s + k] + 1)) * np.uint64(1099511628211)
    return h


@njit(cache=True)
def _build_table(items, off, lens):
    n = lens.shape[0]
    size = 1
    while size < 2 * n + 2:
        size *= 2
    table = np.full(size, -1, dtype=np.int64)
    dup = -1
    for i in range(n):
        slot = np.int64(_hash(items, off[i], lens[i]) & np.uint64(size - 1))
        while table[slot] >= 0:
            j = table[slot]
            if lens[j] == lens[i]:
                same = True
                for k in range(lens[i]):
                    if items[off[j] + k] != items[off[i] + k]:
                        same = False
                        break
                if same:
                    dup = i
                    break
            slot = (slot + 1) & (size - 1)
        if dup >= 0:
            break
        table[slot] = i
    return table, dup


@njit(cache=True)
def _lookup(table, items, off, lens, buf, L):
    size = table.shape[0]
    slot = np.int64(_hash(buf, 0, L) & np.uint64(size - 1))
    while table[slot] >= 0:
        j = table[slot]
        if lens[j] == L:
            same = True
            for k in range(L):
                if items[off[j] + k] != buf[k]:
                    same = False
                    break
            if same:
                return j
        slot = (slot + 1) & (size - 1)
    return -1


@njit(cache=True)
def _metrics(sAC, sA, sC, n, out):
    conf = (sAC * n) / (sA * n)
    out[0] = sA
    out[1] = sC
    out[2] = sAC
    out[3] = conf
    out[4] = conf / sC
    lev = sAC - sA * sC
    out[5] = lev
    out[6] = (1.0 - sC) / (1.0 - conf) if conf < 1.0 else np.inf
    den = max(sAC * (1.0 - sA), sA * (sC - sAC))
    out[7] = 0.0 if den == 0.0 else lev / den
    out[8] = sAC / (sA + sC - sAC)
    out[9] = 0.0 if (1.0 - sC) == 0.0 else (conf - sC) / (1.0 - sC)
    out[10] = (conf + (sAC * n) / (sC * n)) / 2.0


@njit(cache=True, inline="always")
def _worse(hkey, hseq, a, b):
    # the rule dropped first when the budget is full: lower metric, then later in the output order
    return hkey[a] < hkey[b] or (hkey[a] == hkey[b] and hseq[a] > hseq[b])


@njit(cache=True)
def _sift_down(hkey, hseq, hslot, n, i):
    """Min-heap on (metric, -sequence); keys live in the heap's own arrays so a sift reads
    contiguous memory, not the wide rule slots."""
    while True:
        lo = i
        l = 2 * i + 1
        r = l + 1
        if l < n and _worse(hkey, hseq, l, lo):
            lo = l
        if r < n and _worse(hkey, hseq, r, lo):
            lo = r
        if lo == i:
            return
        hkey[i], hkey[lo] = hkey[lo], hkey[i]
        hseq[i], hseq[lo] = hseq[lo], hseq[i]
        hslot[i], hslot[lo] = hslot[lo], hslot[i]
        i = lo


@njit(cache=True)
def _rules(items, off, lens, sup, n, metric_idx, thr, table, max_rules):
    """Rules passing the threshold; past ``max_rules`` only the best by the metric are kept
    (a min-heap over fixed-width slots), so memory is bounded by the budget, not by the
    2^|I| - 2 candidates of every itemset. Returns them in output order (their sequence)."""
    n_sets = lens.shape[0]
    maxL = 1
    for i in range(n_sets):
        if lens[i] > maxL:
            maxL = lens[i]
    cap = min(1024, max_rules)
    ant = np.empty((cap, maxL), dtype=np.int32)
    con = np.empty((cap, maxL), dtype=np.int32)
    ant_len = np.empty(cap, dtype=np.int32)
    con_len = np.empty(cap, dtype=np.int32)
    vals = np.empty((cap, 11), dtype=np.float64)
    seq = np.empty(cap, dtype=np.int64)
    hslot = np.empty(0, dtype=np.int64)
    hkey = np.empty(0, dtype=np.float64)
    hseq = np.empty(0, dtype=np.int64)
    n_rules = 0
    n_pass = 0
    comb = np.empty(maxL + 1, dtype=np.int64)
    inA = np.zeros(maxL + 1, dtype=np.bool_)
    abuf = np.empty(maxL + 1, dtype=np.int64)
    cbuf = np.empty(maxL + 1, dtype=np.int64)
    m = np.empty(11, dtype=np.float64)
    missing = -1
    for i in range(n_sets):
        L = lens[i]
        if L < 2:
            continue
        s = off[i]
        sAC = sup[i]
        for r in range(L - 1, 0, -1):
            for j in range(r):
                comb[j] = j
            while True:
                for j in range(L):
                    inA[j] = False
                for j in range(r):
                    inA[comb[j]] = True
                na = 0
                nc = 0
                for j in range(L):
                    if inA[j]:
                        abuf[na] = items[s + j]
                        na += 1
                    else:
                        cbuf[nc] = items[s + j]
                        nc += 1
                ia = _lookup(table, items, off, lens, abuf, na)
                ic = _lookup(table, items, off, lens, cbuf, nc)
                if ia < 0 or ic < 0:
                    missing = i
                    return (ant[:0], ant_len[:0], con[:0], con_len[:0], vals[:0], missing, n_pass)
                _metrics(sAC, sup[ia], sup[ic], n, m)
                if m[metric_idx] >= thr:
                    slot = -1
                    if n_rules < max_rules:
                        if n_rules == ant_len.shape[0]:
                            new = min(2 * n_rules, max_rules)
                            t_a = np.empty((new, maxL), dtype=np.int32)
                            t_a[:n_rules] = ant[:n_rules]
                            ant = t_a
                            t_c = np.empty((new, maxL), dtype=np.int32)
                            t_c[:n_rules] = con[:n_rules]
                            con = t_c
                            t_al = np.empty(new, dtype=np.int32)
                            t_al[:n_rules] = ant_len[:n_rules]
                            ant_len = t_al
                            t_cl = np.empty(new, dtype=np.int32)
                            t_cl[:n_rules] = con_len[:n_rules]
                            con_len = t_cl
                            t_v = np.empty((new, 11), dtype=np.float64)
                            t_v[:n_rules] = vals[:n_rules]
                            vals = t_v
                            t_s = np.empty(new, dtype=np.int64)
                            t_s[:n_rules] = seq[:n_rules]
                            seq = t_s
                        slot = n_rules
                        n_rules += 1
                    else:
                        if hslot.shape[0] == 0:
                            hslot = np.arange(n_rules).astype(np.int64)
                            hkey = vals[:n_rules, metric_idx].copy()
                            hseq = seq[:n_rules].copy()
                            for q in range(n_rules // 2 - 1, -1, -1):
                                _sift_down(hkey, hseq, hslot, n_rules, q)
                        if m[metric_idx] > hkey[0]:
                            slot = hslot[0]
                    if slot >= 0:
                        for j in range(na):
                            ant[slot, j] = abuf[j]
                        for j in range(nc):
                            con[slot, j] = cbuf[j]
                        ant_len[slot] = na
                        con_len[slot] = nc
                        for q in range(11):
                            vals[slot, q] = m[q]
                        seq[slot] = n_pass
                        if hslot.shape[0] > 0:
                            hkey[0] = m[metric_idx]
                            hseq[0] = n_pass
                            _sift_down(hkey, hseq, hslot, n_rules, 0)
                    n_pass += 1
                j = r - 1
                while j >= 0 and comb[j] == L - r + j:
                    j -= 1
                if j < 0:
                    break
                comb[j] += 1
                for q in range(j + 1, r):
                    comb[q] = comb[q - 1] + 1
    order = np.argsort(seq[:n_rules], kind="mergesort")
    return (ant[order], ant_len[order], con[order], con_len[order], vals[order], missing, n_pass)


# --------------------------------------------------------------------------- public API


def _split(rows, lens):
    """Fixed-width rows + lengths -> list of tuples (Python ints), built column-wise per
    length (shared int objects, zip): per-row slicing of 500K rules costs seconds."""
    out = [None] * lens.size
    if lens.size == 0:
        return out
    # slots past a row's length hold garbage (fixed-width, np.empty): only valid cells count
    valid = np.arange(rows.shape[1]) < lens[:, None]
    hi = int(rows[valid].max()) + 1
    pyints = np.empty(hi, dtype=object)
    pyints[:] = list(range(hi))
    for L in np.unique(lens).tolist():
        at = np.flatnonzero(lens == L)
        block = rows[at, :L]
        for i, t in zip(at.tolist(), zip(*[pyints[block[:, j]].tolist() for j in range(L)])):
            out[i] = t
    return out


def association_rules(itemsets, support, n_baskets, *, metric="confidence", min_threshold=0.5, max_rules=None):
    """All rules A -> C (A, C nonempty, disjoint, A | C a frequent itemset) passing
    ``metric >= min_threshold``; with ``max_rules``, only that many of the best by ``metric``
    (ties: earlier in the output order), found with bounded memory.

    Parameters
    ----------
    itemsets : sequence of tuples of item indices (as returned by
        ``recs_kernels.fpgrowth.frequent_itemsets``); every subset of an itemset must be present
        (true of any frequent-itemset output).
    support : float array, fraction of baskets holding each itemset.
    n_baskets : int >= 1, the basket count the supports are fractions of.
    metric : one of ``METRICS`` (mlxtend's "antecedent support"/"consequent support" spellings
        are accepted too).
    min_threshold : float.
    max_rules : optional int >= 1.

    Returns
    -------
    Rules (columnar); ``Rules.to_dict()`` gives a plain dict for a DataFrame;
    ``Rules.n_passing`` counts every rule that passed the threshold (kept or not). No
    itemsets give no rules.
    """
    metric = _ALIASES.get(metric, metric)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    if isinstance(n_baskets, bool) or not isinstance(n_baskets, (int, np.integer)) or n_baskets < 1:
        raise ValueError(f"n_baskets must be an int >= 1, got {n_baskets!r}")
    try:
        thr = float(min_threshold)
    except (TypeError, ValueError):
        raise ValueError(f"min_threshold must be a number, got {min_threshold!r}") from None
    if np.isnan(thr):
        raise ValueError("min_threshold must not be NaN")
    if max_rules is None:
        cap = 1 << 62
    elif isinstance(max_rules, bool) or not isinstance(max_rules, (int, np.integer)) or max_rules < 1:
        raise ValueError(f"max_rules must be None or an int >= 1, got {max_rules!r}")
    else:
        cap = int(max_rules)
    itemsets = list(itemsets)
    if len(itemsets) == 0:
        if len(support):
            raise ValueError(f"support must be 1-D with one value per itemset (0), got {len(support)} values")
        return Rules([], [], *[np.zeros(0) for _ in METRICS], n_passing=0)
    sup = np.asarray(support)
    if sup.ndim != 1 or sup.shape[0] != len(itemsets):
        raise ValueError(
            f"support must be 1-D with one value per itemset ({len(itemsets)}), got shape {sup.shape}")
    if not np.issubdtype(sup.dtype, np.floating) and not np.issubdtype(sup.dtype, np.integer):
        raise ValueError(f"support must be numeric, got dtype {sup.dtype}")
    sup = sup.astype(np.float64)
    if not np.all(np.isfinite(sup)) or np.any(sup <= 0) or np.any(sup > 1):
        raise ValueError("support values must be fractions in (0, 1]")
    lens = np.fromiter((len(t) for t in itemsets), dtype=np.int64, count=len(itemsets))
    if np.any(lens == 0):
        raise ValueError("itemsets must not contain an empty itemset")
    flat = np.fromiter(chain.from_iterable(itemsets), dtype=np.int64, count=int(lens.sum()))
    off = np.zeros(lens.size, dtype=np.int64)
    np.cumsum(lens[:-1], out=off[1:])
    # canonical (sorted) item order inside each itemset so lookups are order-free
    grp = np.repeat(np.arange(lens.size), lens)
    same = grp[1:] == grp[:-1]
    if np.any(np.diff(flat)[same] <= 0):
        flat = np.concatenate([np.sort(flat[o:o + L]) for o, L in zip(off, lens)])
        if np.any(np.diff(flat)[same] == 0):
            raise ValueError("an itemset holds the same item twice")
    table, dup = _build_table(flat, off, lens)
    if dup >= 0:
        raise ValueError(f"itemset {itemsets[dup]!r} is listed twice")
    ai, al, ci, cl, vals, missing, n_pass = _rules(flat, off, lens, sup, float(n_baskets),
                                                   METRICS.index(metric), thr, table, np.int64(cap))
    if missing >= 0:
        raise ValueError(
            f"a subset of itemset {itemsets[missing]!r} is missing from itemsets; rules need "
            "the supports of every antecedent and consequent")
    cols = {name: np.ascontiguousarray(vals[:, k]) for k, name in enumerate(METRICS)}
    return Rules(antecedents=_split(ai, al), consequents=_split(ci, cl), **cols, n_passing=int(n_pass))
