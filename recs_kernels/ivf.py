"""An inverted-file index over item vectors: k-means clusters of bounded size; a query scores
the clusters' centroids and scans only the ``nprobe`` best clusters.

Why: an exact top-k over the whole catalogue costs queries x items, which is quadratic once
the catalogue grows with the users (batch top-N, similar items). With clusters of a fixed
size, a query costs ``nprobe * cluster_size`` dot products whatever the catalogue size, plus
one dot per centroid (a small GEMM). The scan runs as one BLAS GEMM per probed cluster
(the queries probing it x its items), never a queries x items buffer: memory is bounded by
the block of queries.

The answer is approximate (an item in an unprobed cluster is missed); callers measure its
recall against the exact path (tests, benchmarks/bench_topn.py).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from . import topk
from ._validate import check_factors, check_int

__all__ = ["Index", "kmeans", "similar"]

_CHUNK = 1 << 14  # rows per GEMM when assigning: a 16K x n_clusters score block


def _assign(X: np.ndarray, C: np.ndarray, spherical: bool) -> np.ndarray:
    """Nearest centroid of every row (L2, or cosine when ``spherical``), in chunks."""
    half = None if spherical else 0.5 * np.einsum("ij,ij->i", C, C)
    out = np.empty(X.shape[0], np.int64)
    for a in range(0, X.shape[0], _CHUNK):
        s = X[a:a + _CHUNK] @ C.T
        if half is not None:
            s -= half  # argmin |x - c|^2 = argmax x.c - |c|^2 / 2
        out[a:a + _CHUNK] = np.argmax(s, axis=1)
    return out


def _means(X: np.ndarray, lab: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    onehot = sp.csr_matrix((np.ones(lab.size, np.float32), (lab, np.arange(lab.size))), shape=(k, lab.size))
    sums = np.asarray(onehot @ X, dtype=np.float32)
    counts = np.bincount(lab, minlength=k)
    return sums / np.maximum(counts, 1)[:, None].astype(np.float32), counts


def _normalise(X: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.where(n > 0, n, 1.0)).astype(np.float32)


def kmeans(X: np.ndarray, n_clusters: int, *, iters: int = 8, sample: int | None = None, seed: int = 0,
           spherical: bool = False) -> np.ndarray:
    """Lloyd's k-means on (a sample of) the rows of ``X``: centroids (n_clusters x d).

    Deterministic for a seed. Empty clusters are re-seeded with the row farthest from its
    centroid among a few random ones, so every centroid ends up owning rows."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = X.shape[0]
    k = max(1, min(n_clusters, n))
    rng = np.random.default_rng(seed)
    cap = sample if sample is not None else max(64 * k, 20_000)
    T = X[np.sort(rng.choice(n, cap, replace=False))] if n > cap else X
    C = T[rng.choice(T.shape[0], k, replace=False)].copy()
    if spherical:
        C = _normalise(C)
    for _ in range(iters):
        lab = _assign(T, C, spherical)
        C, counts = _means(T, lab, k)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            C[empty] = T[rng.choice(T.shape[0], empty.size, replace=False)]
        if spherical:
            C = _normalise(C)
    return C


def _balance(X: np.ndarray, C: np.ndarray, lab: np.ndarray, max_size: int, spherical: bool) -> np.ndarray:
    """Rows of clusters above ``max_size`` move, worst-fitting first, to their best centroid
    with room: a probe then never scans a giant cluster (popular regions of factor space
    would otherwise make the scan's cost grow with the catalogue)."""
    k = C.shape[0]
    counts = np.bincount(lab, minlength=k)
    if counts.max() <= max_size:
        return lab
    lab = lab.copy()
    half = None if spherical else 0.5 * np.einsum("ij,ij->i", C, C)
    over = np.flatnonzero(counts > max_size)
    movers = []
    for c in over:
        rows = np.flatnonzero(lab == c)
        fit = X[rows] @ C[c] - (0 if half is None else half[c])
        movers.append(rows[np.argsort(fit, kind="stable")[:rows.size - max_size]])
    movers = np.concatenate(movers)
    counts[over] = max_size
    n_alt = min(k, 16)
    for a in range(0, movers.size, _CHUNK):
        rows = movers[a:a + _CHUNK]
        s = X[rows] @ C.T
        if half is not None:
            s -= half
        alt = np.argsort(-s, axis=1, kind="stable")[:, :n_alt]
        for i, r in enumerate(rows):
            for c in alt[i]:
                if counts[c] < max_size:
                    lab[r] = c
                    counts[c] += 1
                    break
            else:  # every nearby cluster is full: the least full one takes it
                c = int(np.argmin(counts))
                lab[r] = c
                counts[c] += 1
    return lab


class Index:
    """Items (rows of ``X``) grouped by k-means cluster.

    ``cluster_size``: mean items per cluster (n_clusters = n_items / cluster_size); clusters are
    capped at ``max_ratio`` times that. ``spherical``: cluster directions (cosine search) instead
    of points (inner-product search, where an item's norm matters). ``pos[j]``: item j's row
    in ``X_sorted``."""

    def __init__(self, X: np.ndarray, *, cluster_size: int = 256, iters: int = 8, seed: int = 0,
                 spherical: bool = False, max_ratio: float = 3.0):
        X = check_factors(X, "X")
        cluster_size = check_int(cluster_size, "cluster_size", minimum=1)
        n, self.d = X.shape
        self.n_items = n
        k = max(1, -(-n // cluster_size))
        C = kmeans(X, k, iters=iters, seed=seed, spherical=spherical)
        lab = _assign(X, C, spherical)
        lab = _balance(X, C, lab, max(cluster_size, int(max_ratio * cluster_size)), spherical)
        # centroids of the final (balanced) clusters: what a probe scores
        C, counts = _means(X, lab, C.shape[0])
        if spherical:
            C = _normalise(C)
        keep = np.flatnonzero(counts > 0)
        remap = np.full(C.shape[0], -1, np.int64)
        remap[keep] = np.arange(keep.size)
        lab = remap[lab]
        self.centroids = np.ascontiguousarray(C[keep], dtype=np.float32)
        self.n_clusters = keep.size
        self.order = np.argsort(lab, kind="stable").astype(np.int64)  # item ids in cluster order
        self.offsets = np.r_[0, np.cumsum(np.bincount(lab, minlength=self.n_clusters))].astype(np.int64)
        self.pos = np.empty(n, np.int64)
        self.cluster_of = lab.astype(np.int32)
        self.pos[self.order] = np.arange(n)
        self.X_sorted = np.ascontiguousarray(X[self.order])  # rows in cluster order: what the scan reads

    def probe(self, Q: np.ndarray, nprobe: int, with_scores: bool = False):
        """The ``nprobe`` clusters whose centroids score highest for each query (n x nprobe);
        with ``with_scores``, also every centroid's score (n x n_clusters)."""
        nprobe = min(check_int(nprobe, "nprobe", minimum=1), self.n_clusters)
        S = np.ascontiguousarray(Q @ self.centroids.T, dtype=np.float32)
        ids = np.empty((Q.shape[0], nprobe), np.int32)
        sc = np.empty((Q.shape[0], nprobe), np.float32)
        topk.select_block(S, np.zeros(Q.shape[0] + 1, np.int64), np.zeros(1, np.int32), 0, nprobe, ids, sc)
        return (ids, S) if with_scores else ids

    def scan(self, Q: np.ndarray, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scores of each query against every item of its probed clusters, cluster by cluster
        (the cluster's items stay in cache while every query probing it is scored). Returns
        ``(buf, start)``: query ``r``'s scores on cluster ``probes[r, p]`` are
        ``buf[start[r, p]:][:size]`` in the cluster's item order (``order[offsets[c]:]``)."""
        n, P = probes.shape
        flat = probes.ravel().astype(np.int64)
        pairs = np.argsort(flat, kind="stable")
        counts = np.bincount(flat, minlength=self.n_clusters)
        sizes = np.diff(self.offsets)
        base = np.r_[0, np.cumsum(counts * sizes)].astype(np.int64)
        ptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
        buf = np.empty(int(base[-1]), np.float32)
        start = np.empty(n * P, np.int64)
        _scan(np.ascontiguousarray(Q, dtype=np.float32), self.X_sorted, self.offsets, ptr, pairs, P, base, buf, start)
        return buf, start.reshape(n, P)


# Not BLAS: OpenBLAS threads each of these small GEMMs, and on a loaded 2-core machine its
# spinning threads cost 20-70x the CPU of one thread (measured). Four queries share each item
# row read (item-major, a cluster's rows contiguous and cache-resident): 4x the FMA rate of a
# plain dot loop here.
@njit(cache=True, parallel=True, fastmath={"reassoc", "contract"})
def _scan(Q, X, offsets, ptr, pairs, P, base, buf, start):
    d = X.shape[1]
    for c in prange(offsets.shape[0] - 1):
        o = offsets[c]
        s = offsets[c + 1] - o
        m = ptr[c + 1] - ptr[c]
        for i in range(m):
            start[pairs[ptr[c] + i]] = base[c] + i * s
        i = 0
        while i + 4 <= m:
            u0 = pairs[ptr[c] + i] // P
            u1 = pairs[ptr[c] + i + 1] // P
            u2 = pairs[ptr[c] + i + 2] // P
            u3 = pairs[ptr[c] + i + 3] // P
            b = base[c] + i * s
            for t in range(s):
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                for q in range(d):
                    x = X[o + t, q]
                    a0 += Q[u0, q] * x
                    a1 += Q[u1, q] * x
                    a2 += Q[u2, q] * x
                    a3 += Q[u3, q] * x
                buf[b + t] = a0
                buf[b + s + t] = a1
                buf[b + 2 * s + t] = a2
                buf[b + 3 * s + t] = a3
            i += 4
        while i < m:
            u0 = pairs[ptr[c] + i] // P
            b = base[c] + i * s
            for t in range(s):
                a0 = np.float32(0.0)
                for q in range(d):
                    a0 += Q[u0, q] * X[o + t, q]
                buf[b + t] = a0
            i += 1


@njit(cache=True, parallel=True)
def _select_scanned(buf, start, probes, offsets, order, row0, k, exclude_self, out_ids, out_scores):
    """Top k per query over its scanned clusters (query ``row0 + r`` skipped when
    ``exclude_self``), best first, ties to the lower item id."""
    n, P = probes.shape
    for r in prange(n):
        hs = np.empty(k, np.float32)
        hi = np.empty(k, np.int32)
        for a in range(k):
            hs[a] = -np.inf
            hi[a] = -1
        me = row0 + r if exclude_self else -1
        for p in range(P):
            c = probes[r, p]
            b = start[r, p]
            o = offsets[c]
            for t in range(offsets[c + 1] - o):
                j = order[o + t]
                if j == me:
                    continue
                s = buf[b + t]
                if s > hs[0] or (s == hs[0] and j < hi[0]):
                    hs[0] = s
                    hi[0] = j
                    topk._sift_down(hs, hi, 0, k)
        for end in range(k - 1, 0, -1):
            hs[0], hs[end] = hs[end], hs[0]
            hi[0], hi[end] = hi[end], hi[0]
            topk._sift_down(hs, hi, 0, end)
        for a in range(k):
            out_ids[r, a] = hi[a]
            out_scores[r, a] = hs[a]


_SCAN_BYTES = 64 * 1024 * 1024


def similar(item_vectors, k: int, *, nprobe: int = 12, cluster_size: int = 256, seed: int = 0,
            block_items: int | None = None, index: Index | None = None):
    """Approximate item-item cosine top ``k`` (self excluded): like ``topk.similar``, but each
    item scans only the ``nprobe`` clusters nearest to it. Cost per item is bounded by
    ``nprobe * cluster_size * 3`` dot products, so the whole table is near-linear in items.

    Returns ``(ids int32 [n, k], scores float32 [n, k])``, best first, padded with -1/-inf."""
    V = check_factors(item_vectors, "item_vectors")
    k = check_int(k, "k", minimum=1)
    W = _normalise(V.astype(np.float64))
    n = W.shape[0]
    ids = np.full((n, k), -1, np.int32)
    scores = np.full((n, k), -np.inf, np.float32)
    if n == 0:
        return ids, scores
    idx = index or Index(W, cluster_size=cluster_size, seed=seed, spherical=True)
    P = min(check_int(nprobe, "nprobe", minimum=1), idx.n_clusters)
    block = block_items or max(1, _SCAN_BYTES // (4 * P * 3 * cluster_size))
    for b0 in range(0, n, block):
        b1 = min(n, b0 + block)
        probes = idx.probe(W[b0:b1], P)
        buf, start = idx.scan(W[b0:b1], probes)
        _select_scanned(buf, start, probes, idx.offsets, idx.order, b0, k, True, ids[b0:b1], scores[b0:b1])
    return ids, scores
