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
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numba import njit

__all__ = ["Bounded", "frequent_itemsets", "frequent_itemsets_arrays", "frequent_itemsets_bounded",
           "itemsets_to_tuples", "min_count_for"]


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
def _emit(prefix, plen, perf, npf, cnt, max_len, comb, out_items, out_len, out_cnt, n_out, n_items_out, limit):
    """Write ``prefix`` united with every subset of the perfect items (sizes within max_len).

    Past ``limit`` itemsets nothing is written and ``n_out`` comes back as ``limit + 1``: the
    budgeted search stops there, before an explosion of perfect-item subsets is allocated."""
    if n_out > limit:
        return out_items, out_len, out_cnt, n_out, n_items_out
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
        if n_out + total > limit:
            return out_items, out_len, out_cnt, limit + 1, n_items_out
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


@njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, inline="always")
def _wsum(m, planes, nplanes):
    # weights split in bit planes: sum of weights = sum_b 2^b * popcount(m & plane_b)
    tot = 0
    for b in range(nplanes):
        tot += _popcount(m & planes[b]) << b
    return tot


@njit(cache=True)
def _mine_bits(ext_items, masks, cnts, planes, nplanes, prefix, depth0, perf, npf0, minsup,
               max_len, comb, out_items, out_len, out_cnt, n_out, n_items_out, limit):
    """Eclat on <= 64 weighted baskets: each candidate's baskets are one uint64 mask, so an
    extension's support is an AND plus a few popcounts. Used once a projected database is
    this small, which is where dense clusters spend nearly all of the search."""
    ne = ext_items.shape[0]
    cap = max(4 * ne, 16)
    ci = np.empty(cap, dtype=np.int32)
    cm = np.empty(cap, dtype=np.uint64)
    cc = np.empty(cap, dtype=np.int64)
    # ascending support first (the classic Eclat order): rare candidates intersect down to
    # nothing quickly, so fewer hopeless pairs are tested deeper in the search
    o = np.argsort(cnts, kind="mergesort")
    for q in range(ne):
        ci[q] = ext_items[o[q]]
        cm[q] = masks[o[q]]
        cc[q] = cnts[o[q]]
    fcap = ne + 2
    f_c1 = np.empty(fcap, dtype=np.int64)
    f_c0 = np.empty(fcap, dtype=np.int64)
    f_next = np.empty(fcap, dtype=np.int64)
    f_npf = np.empty(fcap, dtype=np.int64)
    d = 0
    f_c0[0] = 0
    f_c1[0] = ne
    f_next[0] = 0
    f_npf[0] = npf0
    npf = npf0
    top = ne
    while d >= 0 and n_out <= limit:
        a = f_next[d]
        if a < f_c1[d]:
            f_next[d] = a + 1
            m = cm[a]
            c = cc[a]
            prefix[depth0 + d] = ci[a]
            L = depth0 + d + 1
            new0 = top
            npc = npf
            if max_len <= 0 or L < max_len:
                hi = f_c1[d]
                if top + (hi - a) > ci.shape[0]:
                    ci = _grow(ci, top + hi - a)
                    cm = _grow(cm, top + hi - a)
                    cc = _grow(cc, top + hi - a)
                for b in range(a + 1, hi):
                    mm = m & cm[b]
                    if mm == 0:
                        continue
                    k = _wsum(mm, planes, nplanes)
                    if k == c:
                        perf[npc] = ci[b]
                        npc += 1
                    elif k >= minsup:
                        ci[top] = ci[b]
                        cm[top] = mm
                        cc[top] = k
                        top += 1
            out_items, out_len, out_cnt, n_out, n_items_out = _emit(
                prefix, L, perf, npc, c, max_len, comb,
                out_items, out_len, out_cnt, n_out, n_items_out, limit)
            if top > new0:
                d += 1
                f_c0[d] = new0
                f_c1[d] = top
                f_next[d] = new0
                f_npf[d] = npf
                npf = npc
        else:
            top = f_c0[d]
            npf = f_npf[d]
            d -= 1
    return out_items, out_len, out_cnt, n_out, n_items_out


@njit(cache=True, nogil=True)
def _mine(tx_ptr, tx_items, n_rank, minsup, max_len, part, n_parts, limit):
    """Depth-first pattern growth over rank-coded baskets (items sorted ascending by rank).

    Each frame is one itemset P with its projected database: weighted baskets holding P,
    restricted to items ranked above P's last item. Returns flat output: items (rank space,
    growth order), lengths, counts, and whether the search stopped because more than ``limit``
    itemsets are frequent (then the output is empty: the caller raises the support).
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
    bmask = np.zeros(n_rank, dtype=np.uint64)
    planes = np.zeros(64, dtype=np.uint64)
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

    while depth >= 0 and n_out <= limit:
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
                    out_items, out_len, out_cnt, n_out, n_items_out, limit)
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
                if 1 < tx1 - tx0 <= 64 and depth > 0:
                    # small database: finish this subtree with the bitset miner
                    bm = np.zeros(ne, dtype=np.uint64)
                    fplanes = np.zeros(40, dtype=np.uint64)
                    nplanes = 0
                    for t in range(tx0, tx1):
                        bit = np.uint64(1) << np.uint64(t - tx0)
                        s = tstart[t]
                        for k in range(tlen[t]):
                            bm[live[items[s + k]] - 1 - ext_top] |= bit
                        wt = tw[t]
                        b = 0
                        while wt > 0:
                            if wt & 1:
                                fplanes[b] |= bit
                            wt >>= 1
                            b += 1
                        if b > nplanes:
                            nplanes = b
                    for a in range(ext_top, ext_top + ne):
                        live[ext_item[a]] = 0
                    out_items, out_len, out_cnt, n_out, n_items_out = _mine_bits(
                        ext_item[ext_top:ext_top + ne].copy(), bm, ext_cnt[ext_top:ext_top + ne].copy(),
                        fplanes, nplanes, prefix, depth, perf, npf, minsup, max_len, comb,
                        out_items, out_len, out_cnt, n_out, n_items_out, limit)
                    ne = 0
                    f_ext1[depth] = ext_top
                elif tx1 - tx0 == 1 and depth > 0:
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
                                out_items, out_len, out_cnt, n_out, n_items_out, limit)
                            if n_out > limit:
                                break
                            j = r - 1
                            while j >= 0 and comb2[j] == L - r + j:
                                j -= 1
                            if j < 0:
                                break
                            comb2[j] += 1
                            for q in range(j + 1, r):
                                comb2[q] = comb2[q - 1] + 1
                        if n_out > limit:
                            break
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
        if depth == 0:
            # the root's subtrees are independent: this call mines only its share of them
            while a < f_ext1[0] and ext_item[a] % n_parts != part:
                a += 1
            f_next[0] = a
        if a < f_ext1[depth] and ext_n[a] <= 64:
            # A child held by <= 64 baskets goes straight to the bitset miner: its masks are
            # built from the parent's suffixes in one read-only pass, with no projected
            # copy, reduction or merge. Most of the search at low support ends up here.
            f_next[depth] = a + 1
            o0 = ext_occ[a]
            o1 = o0 + ext_n[a]
            c = ext_cnt[a]
            prefix[depth] = ext_item[a]
            nt = 0
            nplanes = 0
            for o in range(o0, o1):
                t = occ_t[o]
                bit = np.uint64(1) << np.uint64(o - o0)
                wt = tw[t]
                b = 0
                while wt > 0:
                    if wt & 1:
                        planes[b] |= bit
                    wt >>= 1
                    b += 1
                if b > nplanes:
                    nplanes = b
                wt = tw[t]
                s = tstart[t]
                for k in range(occ_p[o] + 1, tlen[t]):
                    v = items[s + k]
                    if cnt_n[v] == 0:
                        cnt_n[v] = 1
                        touched[nt] = v
                        nt += 1
                    cnt[v] += wt
                    bmask[v] |= bit
            allow_children = max_len <= 0 or depth + 1 < max_len
            npc = npf
            nc = 0
            c_items = np.empty(nt, dtype=np.int32)
            c_masks = np.empty(nt, dtype=np.uint64)
            c_cnts = np.empty(nt, dtype=np.int64)
            for q in range(nt):
                v = touched[q]
                k = cnt[v]
                if k == c:
                    perf[npc] = v
                    npc += 1
                elif k >= minsup and allow_children:
                    c_items[nc] = v
                    c_masks[nc] = bmask[v]
                    c_cnts[nc] = k
                    nc += 1
                cnt[v] = 0
                cnt_n[v] = 0
                bmask[v] = 0
            out_items, out_len, out_cnt, n_out, n_items_out = _emit(
                prefix, depth + 1, perf, npc, c, max_len, comb,
                out_items, out_len, out_cnt, n_out, n_items_out, limit)
            if nc > 0 and n_out <= limit:
                out_items, out_len, out_cnt, n_out, n_items_out = _mine_bits(
                    c_items[:nc], c_masks[:nc], c_cnts[:nc], planes, nplanes, prefix, depth + 1,
                    perf, npc, minsup, max_len, comb, out_items, out_len, out_cnt, n_out,
                    n_items_out, limit)
            for b in range(nplanes):
                planes[b] = 0
        elif a < f_ext1[depth]:
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
    if n_out > limit:
        return out_items[:0], out_len[:0], out_cnt[:0], True
    return out_items[:n_items_out], out_len[:n_out], out_cnt[:n_out], False


@njit(cache=True, nogil=True)
def _finalize(out_items, out_len, out_cnt, rank_to_item, n_items):
    """Map ranks to item ids, sort inside each itemset, order itemsets by (length, lex).

    Each length group is packed into uint64 words (several item ids per word, first item in
    the high bits, so word order is lexicographic order) and LSD-radix-sorted on 16-bit
    digits, moving rows physically: linear time and sequential reads, where a comparison sort
    or an index-chasing radix sort of millions of itemsets is dominated by cache misses.
    """
    n = out_len.shape[0]
    bits = 1
    while (1 << bits) < n_items:
        bits += 1
    per = 63 // bits
    maxlen = 0
    for i in range(n):
        if out_len[i] > maxlen:
            maxlen = out_len[i]
    len_cnt = np.zeros(maxlen + 2, dtype=np.int64)
    for i in range(n):
        len_cnt[out_len[i] + 1] += 1
    for k in range(1, maxlen + 2):
        len_cnt[k] += len_cnt[k - 1]
    sorted_items = np.empty(out_items.shape[0], dtype=np.int32)
    sorted_len = np.empty(n, dtype=np.int32)
    sorted_cnt = np.empty(n, dtype=np.int64)
    # rows of each length, in output order, with a cursor into sorted_items
    row_of = np.empty(n, dtype=np.int64)
    cur = len_cnt[:-1].copy()
    for i in range(n):
        L = out_len[i]
        row_of[i] = cur[L]
        cur[L] += 1
    buf = np.empty(maxlen + 1, dtype=np.int64)
    hist = np.empty(65537, dtype=np.int64)
    # pack every row once into its length group's key block (flat, group-major)
    kbase = np.zeros(maxlen + 2, dtype=np.int64)
    for L in range(1, maxlen + 1):
        kbase[L + 1] = kbase[L] + (len_cnt[L + 1] - len_cnt[L]) * ((L + per - 1) // per)
    allkeys = np.zeros(kbase[maxlen + 1], dtype=np.uint64)
    allidx = np.empty(n, dtype=np.int64)
    off = 0
    for i in range(n):
        L = out_len[i]
        W = (L + per - 1) // per
        r = row_of[i] - len_cnt[L]
        for j in range(L):
            v = rank_to_item[out_items[off + j]]
            q = j - 1
            while q >= 0 and buf[q] > v:
                buf[q + 1] = buf[q]
                q -= 1
            buf[q + 1] = v
        kb = kbase[L] + r * W
        for w in range(W):
            x = np.uint64(0)
            for j in range(w * per, min(L, (w + 1) * per)):
                x = (x << np.uint64(bits)) | np.uint64(buf[j])
            allkeys[kb + w] = x
        allidx[row_of[i]] = out_cnt[i]
        off += L
    item_base = 0
    for L in range(1, maxlen + 1):
        g0 = len_cnt[L]
        g1 = len_cnt[L + 1]
        m = g1 - g0
        if m == 0:
            continue
        W = (L + per - 1) // per
        keys = allkeys[kbase[L]:kbase[L + 1]].reshape((m, W)).copy()
        idx = allidx[g0:g1].copy()
        keys2 = np.empty_like(keys)
        idx2 = np.empty_like(idx)
        for w in range(W - 1, -1, -1):
            nbits = bits * (min(L, (w + 1) * per) - w * per)
            for shift in range(0, nbits, 16):
                hist[:] = 0
                sh = np.uint64(shift)
                for r in range(m):
                    hist[np.int64((keys[r, w] >> sh) & np.uint64(0xFFFF)) + 1] += 1
                for d in range(1, 65537):
                    hist[d] += hist[d - 1]
                for r in range(m):
                    d = np.int64((keys[r, w] >> sh) & np.uint64(0xFFFF))
                    t = hist[d]
                    hist[d] = t + 1
                    for q in range(W):
                        keys2[t, q] = keys[r, q]
                    idx2[t] = idx[r]
                keys, keys2 = keys2, keys
                idx, idx2 = idx2, idx
        mask = np.uint64((1 << bits) - 1)
        for r in range(m):
            for w in range(W):
                cnt_in = min(L, (w + 1) * per) - w * per
                x = keys[r, w]
                for j in range(cnt_in - 1, -1, -1):
                    sorted_items[item_base + r * L + w * per + j] = np.int32(x & mask)
                    x = x >> np.uint64(bits)
            sorted_len[g0 + r] = L
            sorted_cnt[g0 + r] = idx[r]
        item_base += m * L
    return sorted_items, sorted_len, sorted_cnt


@njit(cache=True, nogil=True)
def _encode(indptr, indices, item_to_rank):
    """Baskets -> rank-coded baskets (frequent items only, ascending rank)."""
    n = indptr.shape[0] - 1
    ptr = np.zeros(n + 1, dtype=np.int64)
    out = np.empty(indices.shape[0], dtype=np.int32)
    w = 0
    for r in range(n):
        w0 = w
        for p in range(indptr[r], indptr[r + 1]):
            v = item_to_rank[indices[p]]
            if v >= 0:
                q = w - 1
                while q >= w0 and out[q] > v:
                    out[q + 1] = out[q]
                    q -= 1
                out[q + 1] = v
                w += 1
        ptr[r + 1] = w
    return ptr, out[:w].copy()


# --------------------------------------------------------------------------- public API


UNBOUNDED = np.int64(1 << 62)


@dataclass
class Bounded:
    """Frequent itemsets mined within a budget, and the parameters that made them fit."""

    items: np.ndarray       # flat item indices (see frequent_itemsets_arrays)
    lengths: np.ndarray
    counts: np.ndarray
    n_baskets: int
    min_count_requested: int
    min_count_used: int
    max_len_requested: int | None
    max_len_used: int | None
    probes: int             # budgeted searches run (1 when the request fits)

    @property
    def adjusted(self) -> bool:
        return self.min_count_used != self.min_count_requested or self.max_len_used != self.max_len_requested


def _prepare(baskets, max_len):
    csr = _check_baskets(baskets)
    if max_len is None:
        ml = 0
    else:
        if isinstance(max_len, bool) or not isinstance(max_len, numbers.Integral) or max_len < 1:
            raise ValueError(f"max_len must be None or an int >= 1, got {max_len!r}")
        ml = int(max_len)
    return csr, ml, np.bincount(csr.indices, minlength=csr.shape[1]).astype(np.int64)


def _run(csr, item_cnt, minsup, ml, limit):
    """One search; None when more than ``limit`` itemsets are frequent (stopped early)."""
    n_baskets, n_items = csr.shape
    empty = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int64))
    freq = np.flatnonzero(item_cnt >= minsup)
    if freq.size == 0:
        return empty
    if ml == 1 and freq.size > limit:
        return None
    # rank 0 = least frequent; ties by item id so the search (and its output) is deterministic
    rank_to_item = freq[np.lexsort((freq, item_cnt[freq]))].astype(np.int32)
    item_to_rank = np.full(n_items, -1, dtype=np.int32)
    item_to_rank[rank_to_item] = np.arange(rank_to_item.size, dtype=np.int32)
    tx_ptr, tx_items = _encode(csr.indptr.astype(np.int64), csr.indices.astype(np.int32), item_to_rank)
    # Single-threaded on purpose: the pipeline already runs assets in parallel processes,
    # and splitting root subtrees over threads (supported by _mine's part/n_parts) did not
    # pay on the 2-core reference machine. Each part recomputes the root level.
    out_items, out_len, out_cnt, over = _mine(tx_ptr, tx_items, np.int64(rank_to_item.size),
                                              np.int64(minsup), np.int64(ml), np.int64(0), np.int64(1),
                                              np.int64(limit))
    if over:
        return None
    if out_len.size == 0:
        return empty
    return _finalize(out_items, out_len, out_cnt, rank_to_item, np.int64(n_items))


def frequent_itemsets_arrays(baskets, min_support, *, max_len=None):
    """Mine frequent itemsets; return them flat, without building Python tuples.

    Returns ``(items, lengths, counts, n_baskets)``: itemset ``i`` is
    ``items[offset_i : offset_i + lengths[i]]`` (``offset`` = exclusive cumsum of lengths),
    item indices ascending; itemsets ordered by length, then lexicographically; ``counts`` the
    number of baskets containing each itemset.
    """
    csr, ml, item_cnt = _prepare(baskets, max_len)
    n_baskets = csr.shape[0]
    items, lengths, counts = _run(csr, item_cnt, min_count_for(min_support, n_baskets), ml, UNBOUNDED)
    return items, lengths, counts, n_baskets


def _smallest_fitting_count(csr, item_cnt, lo, ml, limit):
    """The smallest support count >= lo whose itemsets fit ``limit``, with its result.

    Counts are monotone in the support, so: doubling from ``lo`` until a search fits, then
    bisection. A search that does not fit stops after ``limit`` itemsets, so no probe costs
    more than the budget; memory stays bounded by it too."""
    n = csr.shape[0]
    probes = 0
    res = _run(csr, item_cnt, lo, ml, limit)
    probes += 1
    if res is not None:
        return lo, res, probes
    bad, good, best = lo, None, None
    c = lo
    while good is None and c < n:
        c = min(n, max(c + 1, 2 * c))
        r = _run(csr, item_cnt, c, ml, limit)
        probes += 1
        if r is None:
            bad = c
        else:
            good, best = c, r
    if good is None:
        return None, None, probes
    while good - bad > 1:
        mid = (good + bad) // 2
        r = _run(csr, item_cnt, mid, ml, limit)
        probes += 1
        if r is None:
            bad = mid
        else:
            good, best = mid, r
    return good, best, probes


def frequent_itemsets_bounded(baskets, min_support, *, max_len=None, max_itemsets=200_000) -> Bounded:
    """Frequent itemsets, at most ``max_itemsets`` of them.

    When the request fits, the result is exactly ``frequent_itemsets_arrays``'. Otherwise the
    support is raised to the smallest basket count whose itemsets fit (and, only if even
    "in every basket" does not fit, ``max_len`` is lowered): the explosion is never
    materialised, each search stops as soon as it passes the budget."""
    if isinstance(max_itemsets, bool) or not isinstance(max_itemsets, numbers.Integral) or max_itemsets < 1:
        raise ValueError(f"max_itemsets must be an int >= 1, got {max_itemsets!r}")
    csr, ml, item_cnt = _prepare(baskets, max_len)
    n = csr.shape[0]
    c0 = min_count_for(min_support, n)
    # unlimited length falls back to 8, then shorter, when raising the support alone cannot fit
    lens = [ml] + list(range((ml or 9) - 1, 0, -1))
    probes = 0
    for L in lens:
        count, res, p = _smallest_fitting_count(csr, item_cnt, c0, L, int(max_itemsets))
        probes += p
        if res is not None:
            return Bounded(res[0], res[1], res[2], n, c0, count, max_len, L or None, probes)
    raise ValueError(f"more than {max_itemsets} items are in every basket; raise max_itemsets")


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
