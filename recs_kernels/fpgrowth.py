"""Exact frequent-itemset mining (all frequent itemsets, mlxtend-identical) in numba.

The miner is the pattern-growth family FP-growth belongs to, in its array form (H-mine /
LCM style "occurrence deliver"): instead of a pointer-linked FP-tree, each search node owns a
*projected database* -- the baskets that contain its itemset, cut down to the items that can
still extend it. Everything lives in stack-allocated arenas, so memory is bounded by the
projected databases on the current search path (at most depth x the input size, in practice a
small multiple of it), never by the number of candidate itemsets.

Why this shape and not a literal FP-tree:

* Items are ranked by ascending support and a node only extends with higher-ranked (more
  frequent) items, the ordering that keeps projected databases smallest (FP-growth gets the
  same effect by mining its header table bottom-up).
* One pass over a node's database both counts every extension and records, per extension,
  where it sits in each basket ("occurrence deliver"), so the child database is a copy of
  basket suffixes -- no tree walks, no pointer chasing, contiguous memory.
* Perfect extensions (items present in *every* basket of the node) are not searched: every
  itemset below the node is emitted with all subsets of them, with the same support. Dense
  clusters of near-identical baskets (Online Retail has many at low support) would otherwise
  cost 2^k search nodes; this turns them into plain output writes.

Output order is deterministic: by length, then lexicographic on the (sorted) item indices.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from numba import njit

__all__ = ["frequent_itemsets", "frequent_itemsets_arrays", "itemsets_to_tuples", "min_count_for"]


# --------------------------------------------------------------------------- validation


def min_count_for(min_support, n_baskets: int) -> int:
    """Smallest basket count whose support passes ``min_support``.

    A float is a fraction; the comparison is the float one mlxtend makes
    (``count / n >= min_support``), so borderline values round the same way. An int is an
    absolute count.
    """
    if isinstance(min_support, bool):
        raise ValueError(f"min_support must be a float fraction or an int count, got {min_support!r}")
    if isinstance(min_support, numbers.Integral):
        c = int(min_support)
        if c < 1:
            raise ValueError(f"min_support as an absolute count must be >= 1, got {c}")
        return c
    if not isinstance(min_support, numbers.Real):
        raise ValueError(f"min_support must be a float fraction or an int count, got {min_support!r}")
    f = float(min_support)
    if not np.isfinite(f) or f <= 0.0 or f > 1.0:
        raise ValueError(f"min_support as a fraction must be in (0, 1], got {min_support!r}")
    n = float(n_baskets)
    c = int(np.ceil(f * n))
    # ceil(f*n) can be off by one either way after rounding; settle it with mlxtend's test.
    while c > 1 and (c - 1) / n >= f:
        c -= 1
    while c / n < f:
        c += 1
    return max(c, 1)


def _check_baskets(baskets) -> sp.csr_matrix:
    if not sp.issparse(baskets):
        raise ValueError(f"baskets must be a scipy.sparse CSR matrix, got {type(baskets).__name__}")
    if baskets.ndim != 2:
        raise ValueError(f"baskets must be 2-D, got {baskets.ndim}-D")
    if baskets.shape[0] == 0 or baskets.shape[1] == 0:
        raise ValueError(f"baskets is empty (shape {baskets.shape})")
    dt = baskets.dtype
    if not (dt == np.bool_ or np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise ValueError(f"baskets must be boolean or 0/1 numeric, got dtype {dt}")
    csr = sp.csr_matrix(baskets, copy=True)
    if dt != np.bool_ and csr.nnz:
        d = csr.data
        if not np.all((d == 0) | (d == 1)):
            raise ValueError("baskets must hold only 0/1 (or boolean) values")
    csr.eliminate_zeros()
    # Presence is what counts: a stock code listed twice in one invoice is one occurrence.
    csr.data = np.ones(csr.nnz, dtype=np.int8)
    csr.sum_duplicates()
    csr.sort_indices()
    return csr


# --------------------------------------------------------------------------- kernels


@njit(cache=True)
def _grow(a, need):
    if need <= a.shape[0]:
        return a
    n = max(need, 2 * a.shape[0])
    b = np.empty(n, dtype=a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _emit(prefix, plen, perf, npf, cnt, max_len, comb, out_items, out_len, out_cnt, n_out, n_items_out):
    """Write ``prefix`` united with every subset of the perfect items (sizes within max_len)."""
    rmax = npf
    if max_len > 0 and max_len - plen < rmax:
        rmax = max_len - plen
    # Total number of itemsets written = sum_r C(npf, r); grow once up front.
    total = 0
    total_items = 0
    c = 1
    for r in range(rmax + 1):
        total += c
        total_items += c * (plen + r)
        c = c * (npf - r) // (r + 1)
    out_len = _grow(out_len, n_out + total)
    out_cnt = _grow(out_cnt, n_out + total)
    out_items = _grow(out_items, n_items_out + total_items)
    for r in range(rmax + 1):
        if plen + r == 0:
            continue
        for j in range(r):
            comb[j] = j
        while True:
            for j in range(plen):
                out_items[n_items_out + j] = prefix[j]
            for j in range(r):
                out_items[n_items_out + plen + j] = perf[comb[j]]
            n_items_out += plen + r
            out_len[n_out] = plen + r
            out_cnt[n_out] = cnt
            n_out += 1
            # next r-combination of range(npf) in lexicographic order
            j = r - 1
            while j >= 0 and comb[j] == npf - r + j:
                j -= 1
            if j < 0:
                break
            comb[j] += 1
            for q in range(j + 1, r):
                comb[q] = comb[q - 1] + 1
    return out_items, out_len, out_cnt, n_out, n_items_out


@njit(cache=True)
def _mine(tx_ptr, tx_items, n_rank, minsup, max_len):
    """Depth-first pattern growth over rank-coded baskets (items sorted ascending by rank).

    Each frame is one itemset P with its projected database: weighted baskets holding P,
    restricted to items ranked above P's last item. Returns flat output: items (rank space,
    growth order), lengths, counts.
    """
    n_tx = tx_ptr.shape[0] - 1
    nnz = tx_items.shape[0]
    # ---- arenas, stack discipline: a child's regions sit above its parent's ----
    items = np.empty(max(nnz * 2, 16), dtype=np.int32)      # projected baskets' items
    items[:nnz] = tx_items
    tstart = np.empty(max(n_tx * 2, 16), dtype=np.int64)    # projected basket start/length/weight
    tlen = np.empty(max(n_tx * 2, 16), dtype=np.int32)
    tw = np.empty(max(n_tx * 2, 16), dtype=np.int64)
    for t in range(n_tx):
        tstart[t] = tx_ptr[t]
        tlen[t] = tx_ptr[t + 1] - tx_ptr[t]
        tw[t] = 1
    occ_t = np.empty(max(nnz, 16), dtype=np.int64)          # per-extension (basket, position)
    occ_p = np.empty(max(nnz, 16), dtype=np.int32)
    ext_item = np.empty(max(n_rank * 4, 16), dtype=np.int32)
    ext_cnt = np.empty(max(n_rank * 4, 16), dtype=np.int64)  # weighted support of P+e
    ext_n = np.empty(max(n_rank * 4, 16), dtype=np.int64)    # baskets holding e (bucket size)
    ext_occ = np.empty(max(n_rank * 4, 16), dtype=np.int64)  # bucket start in occ arena

    # ---- frame stack (depth never exceeds the number of ranked items) ----
    cap = n_rank + 2
    f_items_top = np.empty(cap, dtype=np.int64)  # items arena top above this frame's baskets
    f_tx0 = np.empty(cap, dtype=np.int64)        # this frame's baskets: [tx0, tx1)
    f_tx1 = np.empty(cap, dtype=np.int64)
    f_ext0 = np.empty(cap, dtype=np.int64)       # this frame's live extensions: [ext0, ext1)
    f_ext1 = np.empty(cap, dtype=np.int64)
    f_next = np.empty(cap, dtype=np.int64)       # next extension to descend into
    f_occ0 = np.empty(cap, dtype=np.int64)
    f_nperf = np.empty(cap, dtype=np.int64)      # perfect-item stack height before this frame

    prefix = np.empty(cap, dtype=np.int32)
    perf = np.empty(cap, dtype=np.int32)
    comb = np.empty(cap, dtype=np.int64)
    comb2 = np.empty(cap, dtype=np.int64)
    x_buf = np.empty(cap, dtype=np.int32)
    live = np.zeros(n_rank, dtype=np.int64)      # slot+1 of a live extension, 0 = not live
    cnt = np.zeros(n_rank, dtype=np.int64)
    cnt_n = np.zeros(n_rank, dtype=np.int64)
    touched = np.empty(n_rank, dtype=np.int32)
    # open-addressing table for merging identical projected baskets; stamps avoid clearing
    hsize = 1
    while hsize < 2 * n_tx + 2:
        hsize *= 2
    h_slot = np.empty(hsize, dtype=np.int64)
    h_stamp = np.zeros(hsize, dtype=np.int64)
    stamp = 0

    out_items = np.empty(1024, dtype=np.int32)
    out_len = np.empty(256, dtype=np.int32)
    out_cnt = np.empty(256, dtype=np.int64)
    n_out = 0
    n_items_out = 0

    depth = 0
    ext_top = 0
    occ_top = 0
    npf = 0
    node_sup = n_tx
    f_tx0[0] = 0
    f_tx1[0] = n_tx
    f_items_top[0] = nnz
    new_frame = True

    while depth >= 0:
        if new_frame:
            new_frame = False
            tx0 = f_tx0[depth]
            tx1 = f_tx1[depth]
            if depth == 0:
                # children are counted while their baskets are copied (saves a pass)
                nt = 0
                for t in range(tx0, tx1):
                    s = tstart[t]
                    wt = tw[t]
                    for k in range(tlen[t]):
                        e = items[s + k]
                        if cnt_n[e] == 0:
                            touched[nt] = e
                            nt += 1
                        cnt[e] += wt
                        cnt_n[e] += 1
            f_nperf[depth] = npf
            ext_item = _grow(ext_item, ext_top + nt)
            ext_cnt = _grow(ext_cnt, ext_top + nt)
            ext_n = _grow(ext_n, ext_top + nt)
            ext_occ = _grow(ext_occ, ext_top + nt)
            allow_children = max_len <= 0 or depth < max_len
            ne = 0
            for q in range(nt):
                e = touched[q]
                c = cnt[e]
                if depth > 0 and c == node_sup:
                    perf[npf] = e
                    npf += 1
                elif c >= minsup and allow_children:
                    ext_item[ext_top + ne] = e
                    ext_cnt[ext_top + ne] = c
                    ext_n[ext_top + ne] = cnt_n[e]
                    ne += 1
                cnt[e] = 0
                cnt_n[e] = 0
            if depth > 0:
                out_items, out_len, out_cnt, n_out, n_items_out = _emit(
                    prefix, depth, perf, npf, node_sup, max_len, comb,
                    out_items, out_len, out_cnt, n_out, n_items_out)
            f_ext0[depth] = ext_top
            f_ext1[depth] = ext_top + ne
            f_next[depth] = ext_top
            f_occ0[depth] = occ_top
            if ne > 0:
                for a in range(ext_top, ext_top + ne):
                    live[ext_item[a]] = a + 1
                # Reduce in place: drop items that cannot extend P (infrequent here, or
                # perfect and so handled by _emit), then merge baskets that became identical.
                # Near-duplicate baskets are common at low support; merging them is what
                # keeps each frame's work proportional to distinct baskets, not all baskets.
                stamp += 1
                kept = tx0
                for t in range(tx0, tx1):
                    s = tstart[t]
                    w = s
                    h = np.uint64(1469598103934665603)
                    for k in range(tlen[t]):
                        v = items[s + k]
                        if live[v] > 0:
                            items[w] = v
                            w += 1
                            h = (h ^ np.uint64(v)) * np.uint64(1099511628211)
                    L = w - s
                    if L == 0:
                        continue
                    slot = np.int64(h & np.uint64(hsize - 1))
                    merged = False
                    while h_stamp[slot] == stamp:
                        u = h_slot[slot]
                        if tlen[u] == L:
                            su = tstart[u]
                            same = True
                            for k in range(L):
                                if items[su + k] != items[s + k]:
                                    same = False
                                    break
                            if same:
                                tw[u] += tw[t]
                                merged = True
                                break
                        slot = (slot + 1) & (hsize - 1)
                    if merged:
                        continue
                    tstart[kept] = s
                    tlen[kept] = L
                    tw[kept] = tw[t]
                    h_stamp[slot] = stamp
                    h_slot[slot] = kept
                    kept += 1
                tx1 = kept
                f_tx1[depth] = kept
                if tx1 - tx0 == 1 and depth > 0:
                    # One distinct basket left: every nonempty subset of it extends P with
                    # the same support. Emitting them directly replaces a whole subtree of
                    # frames (the "single path" shortcut of FP-growth).
                    s = tstart[tx0]
                    L = tlen[tx0]
                    for k in range(L):
                        x_buf[k] = items[s + k]
                        live[items[s + k]] = 0
                    rmax = L
                    if max_len > 0 and max_len - depth < rmax:
                        rmax = max_len - depth
                    for r in range(1, rmax + 1):
                        for j in range(r):
                            comb2[j] = j
                        while True:
                            for j in range(r):
                                prefix[depth + j] = x_buf[comb2[j]]
                            out_items, out_len, out_cnt, n_out, n_items_out = _emit(
                                prefix, depth + r, perf, npf, tw[tx0], max_len, comb,
                                out_items, out_len, out_cnt, n_out, n_items_out)
                            j = r - 1
                            while j >= 0 and comb2[j] == L - r + j:
                                j -= 1
                            if j < 0:
                                break
                            comb2[j] += 1
                            for q in range(j + 1, r):
                                comb2[q] = comb2[q - 1] + 1
                    ne = 0
                    f_ext1[depth] = ext_top
            if ne > 0:
                # occurrence deliver: one pass files every (basket, position) under its item;
                # bucket sizes are recounted because merging shrank them
                for a in range(ext_top, ext_top + ne):
                    ext_n[a] = 0
                for t in range(tx0, tx1):
                    s = tstart[t]
                    for k in range(tlen[t]):
                        ext_n[live[items[s + k]] - 1] += 1
                tot = 0
                for a in range(ext_top, ext_top + ne):
                    ext_occ[a] = occ_top + tot
                    tot += ext_n[a]
                occ_t = _grow(occ_t, occ_top + tot)
                occ_p = _grow(occ_p, occ_top + tot)
                for t in range(tx0, tx1):
                    s = tstart[t]
                    for k in range(tlen[t]):
                        a = live[items[s + k]] - 1
                        w = ext_occ[a]
                        occ_t[w] = t
                        occ_p[w] = k
                        ext_occ[a] = w + 1
                for a in range(ext_top, ext_top + ne):
                    ext_occ[a] -= ext_n[a]
                    live[ext_item[a]] = 0
                occ_top += tot
            ext_top += ne
        a = f_next[depth]
        if a < f_ext1[depth]:
            f_next[depth] = a + 1
            # child's baskets: the suffix after e of each basket holding e (already reduced)
            o0 = ext_occ[a]
            o1 = o0 + ext_n[a]
            itop = f_items_top[depth]
            tx_new0 = f_tx1[depth]
            need = 0
            for o in range(o0, o1):
                need += tlen[occ_t[o]] - occ_p[o] - 1
            items = _grow(items, itop + need)
            tstart = _grow(tstart, tx_new0 + o1 - o0)
            tlen = _grow(tlen, tx_new0 + o1 - o0)
            tw = _grow(tw, tx_new0 + o1 - o0)
            ntx = 0
            nt = 0
            w = itop
            for o in range(o0, o1):
                t = occ_t[o]
                s = tstart[t]
                L = tlen[t] - occ_p[o] - 1
                if L > 0:
                    s0 = s + occ_p[o] + 1
                    wt = tw[t]
                    for k in range(L):
                        v = items[s0 + k]
                        items[w + k] = v
                        if cnt_n[v] == 0:
                            touched[nt] = v
                            nt += 1
                        cnt[v] += wt
                        cnt_n[v] += 1
                    tstart[tx_new0 + ntx] = w
                    tlen[tx_new0 + ntx] = L
                    tw[tx_new0 + ntx] = tw[t]
                    w += L
                    ntx += 1
            prefix[depth] = ext_item[a]
            node_sup = ext_cnt[a]
            depth += 1
            f_tx0[depth] = tx_new0
            f_tx1[depth] = tx_new0 + ntx
            f_items_top[depth] = w
            new_frame = True
        else:
            ext_top = f_ext0[depth]
            occ_top = f_occ0[depth]
            npf = f_nperf[depth]
            depth -= 1
    return out_items[:n_items_out], out_len[:n_out], out_cnt[:n_out]


@njit(cache=True)
def _finalize(out_items, out_len, out_cnt, rank_to_item, n_items):
    """Map ranks to item ids, sort inside each itemset, order itemsets by (length, lex).

    LSD radix sort per length (one counting-sort pass per column over the item alphabet):
    linear in the output size, where a comparison sort of millions of tuples is not.
    """
    n = out_len.shape[0]
    off = np.empty(n + 1, dtype=np.int64)
    off[0] = 0
    maxlen = 0
    for i in range(n):
        off[i + 1] = off[i] + out_len[i]
        if out_len[i] > maxlen:
            maxlen = out_len[i]
    items = np.empty(out_items.shape[0], dtype=np.int32)
    for i in range(n):
        s = off[i]
        L = out_len[i]
        for j in range(L):
            v = rank_to_item[out_items[s + j]]
            q = j - 1
            while q >= 0 and items[s + q] > v:
                items[s + q + 1] = items[s + q]
                q -= 1
            items[s + q + 1] = v
    # stable grouping by length
    len_cnt = np.zeros(maxlen + 2, dtype=np.int64)
    for i in range(n):
        len_cnt[out_len[i] + 1] += 1
    for k in range(1, maxlen + 2):
        len_cnt[k] += len_cnt[k - 1]
    order = np.empty(n, dtype=np.int64)
    cur = len_cnt[:-1].copy()
    for i in range(n):
        L = out_len[i]
        order[cur[L]] = i
        cur[L] += 1
    tmp = np.empty(n, dtype=np.int64)
    bucket = np.empty(n_items + 1, dtype=np.int64)
    for L in range(1, maxlen + 1):
        g0 = len_cnt[L]
        g1 = len_cnt[L + 1]
        if g1 - g0 < 2:
            continue
        for col in range(L - 1, -1, -1):
            bucket[:] = 0
            for p in range(g0, g1):
                bucket[items[off[order[p]] + col] + 1] += 1
            for v in range(1, n_items + 1):
                bucket[v] += bucket[v - 1]
            for p in range(g0, g1):
                i = order[p]
                v = items[off[i] + col]
                tmp[g0 + bucket[v]] = i
                bucket[v] += 1
            for p in range(g0, g1):
                order[p] = tmp[p]
    sorted_items = np.empty(items.shape[0], dtype=np.int32)
    sorted_len = np.empty(n, dtype=np.int32)
    sorted_cnt = np.empty(n, dtype=np.int64)
    w = 0
    for p in range(n):
        i = order[p]
        L = out_len[i]
        s = off[i]
        for j in range(L):
            sorted_items[w + j] = items[s + j]
        w += L
        sorted_len[p] = L
        sorted_cnt[p] = out_cnt[i]
    return sorted_items, sorted_len, sorted_cnt


# --------------------------------------------------------------------------- public API


def frequent_itemsets_arrays(baskets, min_support, *, max_len=None):
    """Mine frequent itemsets; return them flat, without building Python tuples.

    Returns ``(items, lengths, counts, n_baskets)``: itemset ``i`` is
    ``items[offset_i : offset_i + lengths[i]]`` (``offset`` = exclusive cumsum of lengths),
    item indices ascending; itemsets ordered by length, then lexicographically; ``counts`` the
    number of baskets containing each itemset.
    """
    csr = _check_baskets(baskets)
    n_baskets, n_items = csr.shape
    minsup = min_count_for(min_support, n_baskets)
    if max_len is None:
        ml = 0
    else:
        if isinstance(max_len, bool) or not isinstance(max_len, numbers.Integral) or max_len < 1:
            raise ValueError(f"max_len must be None or an int >= 1, got {max_len!r}")
        ml = int(max_len)
    empty = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64), n_baskets)
    item_cnt = np.bincount(csr.indices, minlength=n_items).astype(np.int64)
    freq = np.flatnonzero(item_cnt >= minsup)
    if freq.size == 0:
        return empty
    # rank 0 = least frequent; ties by item id so the search (and its output) is deterministic
    rank_to_item = freq[np.lexsort((freq, item_cnt[freq]))].astype(np.int32)
    item_to_rank = np.full(n_items, -1, dtype=np.int64)
    item_to_rank[rank_to_item] = np.arange(rank_to_item.size)
    r = item_to_rank[csr.indices]
    keep = r >= 0
    rows = np.repeat(np.arange(n_baskets), np.diff(csr.indptr))[keep]
    r = r[keep]
    o = np.lexsort((r, rows))
    tx_items = r[o].astype(np.int32)
    tx_ptr = np.zeros(n_baskets + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_baskets), out=tx_ptr[1:])
    out_items, out_len, out_cnt = _mine(tx_ptr, tx_items, np.int64(rank_to_item.size),
                                        np.int64(minsup), np.int64(ml))
    if out_len.size == 0:
        return empty
    items, lengths, counts = _finalize(out_items, out_len, out_cnt, rank_to_item, np.int64(n_items))
    return items, lengths, counts, n_baskets


def itemsets_to_tuples(items, lengths, n_items=None):
    """Flat ``(items, lengths)`` -> list of tuples of Python ints, grouped by length.

    Builds each length group column-wise with ``zip`` over object arrays that share one Python
    int per item id: ~10x faster than per-row ``tuple(...)`` and no per-element int objects.
    """
    if lengths.size == 0:
        return []
    if n_items is None:
        n_items = int(items.max()) + 1 if items.size else 0
    pyints = np.empty(n_items, dtype=object)
    pyints[:] = list(range(n_items))
    out = []
    bounds = np.flatnonzero(np.diff(lengths)) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [lengths.size]))
    pos = 0
    for s, e in zip(starts, ends):
        L = int(lengths[s])
        block = items[pos: pos + (e - s) * L].reshape(e - s, L)
        pos += (e - s) * L
        cols = [pyints[block[:, j]].tolist() for j in range(L)]
        out.extend(zip(*cols))
    return out


def frequent_itemsets(baskets, min_support, *, max_len=None):
    """All itemsets contained in at least ``min_support`` of the baskets.

    Parameters
    ----------
    baskets : scipy.sparse matrix, baskets x items, boolean or 0/1.
    min_support : float in (0, 1] (a fraction of baskets, compared exactly as mlxtend does:
        ``count / n_baskets >= min_support``) or int >= 1 (an absolute basket count).
    max_len : optional int >= 1, longest itemset to return.

    Returns
    -------
    itemsets : list of tuples of item indices, each ascending; ordered by length, then
        lexicographically.
    support : float64 array, fraction of baskets containing each itemset.
    """
    items, lengths, counts, n_baskets = frequent_itemsets_arrays(baskets, min_support, max_len=max_len)
    itemsets = itemsets_to_tuples(items, lengths, baskets.shape[1])
    return itemsets, counts / float(n_baskets)
