"""The one blend: a score per (user, item) from the release's sources, for batch and request.

Sources (``SOURCES``; each name means one matrix or vector everywhere):
  als, bpr          factor models: user row . item factors
  item_sim          h @ S_item_sim: item-item similarity from users' whole histories
  covis             h @ S_covis: co-visitation within baskets/sessions
  rules             h @ R, R[a, c] = confidence of the single-antecedent rule a -> c
  content           (h @ E) . E: the history's mean direction in the content embedding space
  trending          one vector (recent popularity)
  popularity        one vector (all-time popularity)
``h`` is the user's weighted history (plus, at request time, the recent events). Each source's
scores are standardised per user over the whole catalogue (z-score), weighted and summed, so a
weight means the same thing whatever the scale of the model behind it.

``Blend.score`` / ``Blend.top_k`` compute it densely for a block of users (batch top-N);
``Blend.score_candidates`` computes the same numbers for a few candidate items without touching
the catalogue: a factor source's per-user mean and variance over all items come from the item
matrix's mean and covariance (mean_u = u.m, var_u = u'Cu), a sparse source's from its
non-zeros, a vector's once per release.
"""
from __future__ import annotations

import threading

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from . import topk
from ._validate import check_csr, check_factors, check_int
from .sources import FACTOR_SOURCES, NEIGHBOUR_SOURCES, SOURCES, VECTOR_SOURCES

_COL = {s: j for j, s in enumerate(SOURCES)}
_BLOCK_BYTES = 64 * 1024 * 1024


@njit(cache=True, parallel=True)
def _add_row_col(out, row_const, col_const):
    """out[r, j] += row_const[r] + col_const[j]: the z-score offsets, in one pass."""
    n, m = out.shape
    for r in prange(n):
        c = row_const[r]
        for j in range(m):
            out[r, j] += c + col_const[j]


@njit(cache=True, parallel=True)
def _scatter_rows(out, indptr, indices, data, scale):
    """out[r, j] += data * scale[r] at the non-zeros of a CSR block."""
    n = out.shape[0]
    for r in prange(n):
        s = scale[r]
        if s == 0.0:
            continue
        for p in range(indptr[r], indptr[r + 1]):
            out[r, indices[p]] += data[p] * s


def _scale_for(var: np.ndarray, weight: float) -> np.ndarray:
    """weight / std per row; rows with no spread get 0 (they add nothing)."""
    sd = np.sqrt(np.maximum(var, 0.0))
    return np.where(var > 1e-20, weight / np.where(sd > 0, sd, 1.0), 0.0)


def zscore(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    sd = v.std() if v.size else 0.0
    return ((v - v.mean()) / sd).astype(np.float32) if sd > 0 else np.zeros(v.shape, np.float32)


def weight_vector(weights: dict) -> np.ndarray:
    """Weights in ``SOURCES`` order (absent sources weigh 0); unknown names are refused."""
    unknown = set(weights) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown blend sources {sorted(unknown)}; known: {SOURCES}")
    w = np.array([float(weights.get(s, 0.0)) for s in SOURCES], np.float64)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"blend weights must be finite and >= 0, got {dict(zip(SOURCES, w.tolist()))}")
    return w


def content_vectors(emb: np.ndarray, dim: int) -> np.ndarray:
    """The content source's item matrix: rows L2-normalised, then a deterministic PCA
    projection to ``dim`` columns (from a strided sample), rows renormalised. Batch and
    serving both score content on this matrix (and MMR uses it for its cosines)."""
    emb = np.array(emb, dtype=np.float32)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    emb /= np.where(norms > 0, norms, 1.0)
    n, d = emb.shape
    if d <= dim:
        return emb
    step = max(1, n // 20_000)
    sample = emb[::step].astype(np.float64)
    sample -= sample.mean(axis=0)
    _, vecs = np.linalg.eigh(sample.T @ sample)
    V = vecs[:, ::-1][:, :dim].astype(np.float32)
    V *= np.where(V[np.abs(V).argmax(axis=0), np.arange(dim)] < 0, -1.0, 1.0).astype(np.float32)  # sign-stable
    out = emb @ V
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.where(norms > 0, norms, 1.0), dtype=np.float32)


def cap_history(history: sp.csr_matrix, cap: int) -> sp.csr_matrix:
    """Each row's ``cap`` heaviest items (ties: lower item index), the rest dropped: the
    history both paths blend from."""
    H = sp.csr_matrix(history, dtype=np.float32)
    lens = np.diff(H.indptr)
    if lens.size == 0 or lens.max() <= cap:
        return H
    rows = np.repeat(np.arange(H.shape[0]), lens)
    order = np.lexsort((H.indices, -H.data, rows))
    pos = np.arange(order.size) - np.repeat(H.indptr[:-1], lens)
    keep = order[pos < cap]
    keep.sort()
    return sp.csr_matrix((H.data[keep], (rows[keep], H.indices[keep])), shape=H.shape, dtype=np.float32)


def cap_row(ids: np.ndarray, w: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """``cap_history`` for one row given as (item ids, weights)."""
    if ids.size <= cap:
        return ids, w
    top = np.lexsort((ids, -w))[:cap]
    top.sort()
    return ids[top], w[top]


def rules_matrix(n_items: int, ante_len: np.ndarray, ante: np.ndarray, cons_len: np.ndarray, cons: np.ndarray,
                 confidence: np.ndarray) -> sp.csr_matrix:
    """R[a, c] = the highest confidence of a single-antecedent rule a -> {.., c, ..}.

    Rules come flattened: rule r has antecedent items ``ante[sum(ante_len[:r]):][:ante_len[r]]``
    (item indices, -1 for unknown items) and likewise consequents."""
    ante_len = np.asarray(ante_len, np.int64)
    cons_len = np.asarray(cons_len, np.int64)
    a_ptr = np.r_[0, np.cumsum(ante_len)]
    c_ptr = np.r_[0, np.cumsum(cons_len)]
    r_ids = np.flatnonzero(ante_len == 1)
    src = np.repeat(np.asarray(ante, np.int64)[a_ptr[r_ids]], cons_len[r_ids])
    pos = np.repeat(c_ptr[r_ids], cons_len[r_ids]) + (np.arange(int(cons_len[r_ids].sum()))
                                                      - np.repeat(np.cumsum(cons_len[r_ids]) - cons_len[r_ids], cons_len[r_ids]))
    dst = np.asarray(cons, np.int64)[pos]
    conf = np.asarray(confidence, np.float32)[np.repeat(r_ids, cons_len[r_ids])]
    ok = (src >= 0) & (dst >= 0) & (src != dst) & np.isfinite(conf)
    src, dst, conf = src[ok], dst[ok], conf[ok]
    order = np.lexsort((-conf, dst, src))
    src, dst, conf = src[order], dst[order], conf[order]
    first = np.ones(src.size, bool)
    first[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    return sp.csr_matrix((conf[first], (src[first], dst[first])), shape=(n_items, n_items), dtype=np.float32)


class _Moments:
    """Mean and covariance of an item matrix's rows (chunked: bounded temporaries)."""

    __slots__ = ("mean", "cov")

    def __init__(self, M: np.ndarray):
        n, d = M.shape
        s = np.zeros(d, np.float64)
        g = np.zeros((d, d), np.float64)
        for a in range(0, n, 1 << 15):
            blk = np.asarray(M[a:a + (1 << 15)], dtype=np.float64)
            s += blk.sum(axis=0)
            g += blk.T @ blk
        self.mean = s / max(n, 1)
        self.cov = g / max(n, 1) - np.outer(self.mean, self.mean)


def _neighbours(name: str, S, n_items: int | None) -> sp.csr_matrix:
    """An item x item CSR kept as given (row order may be by score, as serving stores it)."""
    if not sp.issparse(S):
        raise ValueError(f"{name} must be a scipy.sparse matrix, got {type(S).__name__}")
    S = S if (S.format == "csr" and S.dtype == np.float32) else sp.csr_matrix(S, dtype=np.float32)
    if S.shape[0] != S.shape[1] or (n_items is not None and S.shape[0] != n_items):
        raise ValueError(f"{name} must be {n_items} x {n_items}, got {S.shape}")
    if not np.isfinite(S.data).all():
        raise ValueError(f"{name} contains non-finite values")
    return S


class Blend:
    """The release's sources; ``score``/``top_k`` (dense, blocks of users) and
    ``score_candidates`` (a few items, one user) blend them with the weights they are given."""

    def __init__(self, *, als_items=None, bpr_items=None, item_sim=None, covis=None, rules=None, content=None,
                 trending=None, popularity=None):
        n_items = None
        self.items: dict[str, np.ndarray] = {}
        for name, arr in (("als", als_items), ("bpr", bpr_items), ("content", content)):
            if arr is None:
                continue
            arr = check_factors(arr, f"{name} items")
            if n_items is not None and arr.shape[0] != n_items:
                raise ValueError(f"{name} items has {arr.shape[0]} items, expected {n_items}")
            n_items = arr.shape[0]
            self.items[name] = arr
        self.moments = {name: _Moments(arr) for name, arr in self.items.items()}
        self.neighbours: dict[str, sp.csr_matrix] = {}
        for name, S in (("item_sim", item_sim), ("covis", covis), ("rules", rules)):
            if S is not None:
                self.neighbours[name] = S = _neighbours(name, S, n_items)
                n_items = S.shape[0]
        self.vectors: dict[str, np.ndarray] = {}
        for name, v in (("trending", trending), ("popularity", popularity)):
            if v is None:
                continue
            v = np.asarray(v, dtype=np.float64).ravel()
            if n_items is not None and v.shape[0] != n_items:
                raise ValueError(f"{name} has {v.shape[0]} items, expected {n_items}")
            if not np.isfinite(v).all():
                raise ValueError(f"{name} contains non-finite values")
            n_items = v.shape[0]
            self.vectors[name] = zscore(v)
        if n_items is None:
            raise ValueError("a blend needs at least one source")
        self.n_items = n_items
        self._stacked: dict = {}
        self._checked: dict = {}

    def state(self) -> dict[str, np.ndarray]:
        """What construction derives from the sources, as arrays: per factor source its items'
        mean and covariance, and the z-scored vectors. ``from_state`` rebuilds this blend from
        them and the same source matrices without deriving (or validating) anything again."""
        out: dict[str, np.ndarray] = {"n_items": np.array([self.n_items], np.int64)}
        for name, mom in self.moments.items():
            out[f"{name}.mean"], out[f"{name}.cov"] = mom.mean, mom.cov
        for name, v in self.vectors.items():
            out[f"{name}.z"] = v
        return out

    @classmethod
    def from_state(cls, state: dict, *, items: dict, neighbours: dict) -> "Blend":
        """The blend ``state()`` was taken from, over ``items`` (factor source -> item matrix)
        and ``neighbours`` (neighbour source -> CSR) that construction validated. Costs no pass
        over the data: a serving process builds it from memory-mapped arrays at swap time."""
        self = cls.__new__(cls)
        self.items = {n: a for n, a in items.items() if a is not None and f"{n}.mean" in state}
        self.moments = {}
        for name in self.items:
            mom = _Moments.__new__(_Moments)
            mom.mean, mom.cov = state[f"{name}.mean"], state[f"{name}.cov"]
            self.moments[name] = mom
        self.neighbours = {n: S for n, S in neighbours.items() if S is not None}
        self.vectors = {k[:-2]: v for k, v in state.items() if k.endswith(".z")}
        self.n_items = int(state["n_items"][0])
        self._stacked = {}
        self._checked = {}
        return self

    def has(self, name: str) -> bool:
        return name in self.items or name in self.neighbours or name in self.vectors

    def _weights(self, weights: dict) -> dict[str, float]:
        w = weight_vector(weights)
        out = {s: float(x) for s, x in zip(SOURCES, w) if x != 0.0}
        missing = [s for s in out if not self.has(s)]
        if missing:
            raise ValueError(f"blend weight given for {missing} but no data for them")
        return out

    def _checked_weights(self, weights: dict) -> tuple[dict[str, float], np.ndarray]:
        """``_weights`` and its float32 row in ``SOURCES`` order, memoized by value: a request
        path sees the same few contracts' weights over and over, and validating them was ~20
        numpy/Python calls per request."""
        key = tuple(weights.items())
        hit = self._checked.get(key)
        if hit is None:
            w = self._weights(weights)
            hit = (w, np.array([w.get(s, 0.0) for s in SOURCES], np.float32))
            if len(self._checked) >= 64:  # tuning trials bring many distinct weights: stay bounded
                self._checked.clear()
            self._checked[key] = hit
        return hit

    def _stacked_items(self, names: tuple[str, ...]) -> np.ndarray:
        if names not in self._stacked:
            self._stacked[names] = np.ascontiguousarray(np.vstack([self.items[n].T for n in names]))
        return self._stacked[names]

    # ------------------------------------------------------------------ dense (batch)
    def score(self, weights: dict, *, als_users=None, bpr_users=None, history=None, n_users: int | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
        """Dense float32 [n_users, n_items] blended scores.

        als_users/bpr_users: factor rows of these users; history: CSR (n_users x n_items) of
        the weighted history ``h`` (already capped, see ``cap_history``)."""
        Q, names, row_const, col_const, sparse_parts = self.parts(weights, als_users=als_users, bpr_users=bpr_users,
                                                                  history=history, n_users=n_users)
        n = row_const.shape[0]
        out = np.empty((n, self.n_items), dtype=np.float32) if out is None else out[:n]
        if names:
            np.matmul(Q, self._stacked_items(names), out=out)
        else:
            out[:] = 0.0
        _add_row_col(out, row_const.astype(np.float32), col_const)
        for P, scale in sparse_parts:
            _scatter_rows(out, P.indptr, P.indices, P.data, scale.astype(np.float32))
        return out

    def parts(self, weights: dict, *, als_users=None, bpr_users=None, history=None, n_users: int | None = None):
        """The dense blend of a block of users, unassembled: score = Q @ stacked_items(names)
        + row_const[:, None] + col_const[None, :] + sum(scale[:, None] * P) over sparse_parts
        (P: CSR users x items, non-negative). ``score`` assembles it densely; the candidate
        top-N (recs_kernels.candidates) scores only a few items per user from the same parts."""
        w = self._weights(weights)
        n = n_users
        for arr in (als_users, bpr_users, history):
            if arr is not None:
                n = arr.shape[0]
                break
        if n is None:
            raise ValueError("score needs the users' factors or history (or n_users for vectors only)")
        H = sp.csr_matrix(history, dtype=np.float32) if history is not None else None
        row_const = np.zeros(n, dtype=np.float64)
        users = {"als": als_users, "bpr": bpr_users,
                 "content": (H @ self.items["content"]) if (H is not None and "content" in w) else None}
        names, scaled = [], []
        for name in FACTOR_SOURCES:
            U = users[name]
            if name not in w or U is None:
                continue
            mom = self.moments[name]
            U = np.asarray(U, dtype=np.float64)
            # u'Cu per row through one GEMM (a three-operand einsum loops in C: 20 us per user)
            scale = _scale_for(((U @ mom.cov) * U).sum(axis=1), w[name])
            row_const -= (U @ mom.mean) * scale
            names.append(name)
            scaled.append(U * scale[:, None])
        Q = np.ascontiguousarray(np.hstack(scaled), dtype=np.float32) if names else None
        sparse_parts = []
        if H is not None:
            m = float(self.n_items)
            for name in NEIGHBOUR_SOURCES:
                if name not in w:
                    continue
                P = sp.csr_matrix(H @ self.neighbours[name], dtype=np.float32)
                s1 = np.asarray(P.sum(axis=1), dtype=np.float64).ravel()
                s2 = np.asarray(P.multiply(P).sum(axis=1), dtype=np.float64).ravel()
                mean = s1 / m
                scale = _scale_for(s2 / m - mean * mean, w[name])
                row_const -= mean * scale
                sparse_parts.append((P, scale))
        col_const = np.zeros(self.n_items, np.float32)
        for name in VECTOR_SOURCES:
            if name in w:
                col_const += np.float32(w[name]) * self.vectors[name]
        return Q, tuple(names), row_const, col_const, sparse_parts

    def top_k(self, weights: dict, k: int, *, als_users=None, bpr_users=None, history=None, exclude=None,
              block_users: int | None = None):
        """Top k per user of the blended scores, skipping `exclude` (CSR users x items);
        ties go to the lower item index."""
        k = check_int(k, "k", minimum=1)
        n = next(a.shape[0] for a in (als_users, bpr_users, history, exclude) if a is not None)
        if exclude is not None:
            exclude = check_csr(exclude, "exclude", shape=(n, self.n_items), nonnegative=False)
            ex_indptr, ex_indices = exclude.indptr, exclude.indices
        else:
            ex_indptr, ex_indices = np.zeros(n + 1, np.int64), np.zeros(1, np.int32)
        if history is not None:
            history = sp.csr_matrix(history, dtype=np.float32)
        block = block_users or max(1, _BLOCK_BYTES // (4 * max(self.n_items, 1)))
        ids = np.full((n, k), -1, dtype=np.int32)
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        buf = np.empty((min(block, n), self.n_items), dtype=np.float32)
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            S = self.score(
                weights,
                als_users=None if als_users is None else als_users[b0:b1],
                bpr_users=None if bpr_users is None else bpr_users[b0:b1],
                history=None if history is None else history[b0:b1],
                n_users=b1 - b0, out=buf,
            )
            topk.select_block(S, ex_indptr, ex_indices, b0, k, ids[b0:b1], scores[b0:b1])
        return ids, scores

    # ------------------------------------------------------------------ candidates (request)
    def score_candidates(self, weights: dict, cand: np.ndarray, *, als_user=None, bpr_user=None,
                         hist_ids: np.ndarray | None = None, hist_w: np.ndarray | None = None):
        """The dense blend's numbers for one user on the sorted item indices ``cand``.

        ``hist_ids``/``hist_w``: the weighted history ``h`` (distinct items). Returns
        ``(total [n], contributions [n, len(SOURCES)], anchors {source: [n] item idx, -1 none})``
        where a neighbour/content source's anchor is the history item contributing most."""
        w, w_row = self._checked_weights(weights)
        cand = np.asarray(cand, np.int64)
        n = cand.shape[0]
        C = np.zeros((n, len(SOURCES)), np.float32)
        anchors: dict = {}
        has_h = hist_ids is not None and hist_ids.size > 0
        if has_h:
            hist_ids = np.asarray(hist_ids, np.int64)
            hist_w = np.asarray(hist_w, np.float64)
        users = {"als": als_user, "bpr": bpr_user}
        if "content" in w and has_h:
            E_h = np.asarray(self.items["content"][hist_ids], dtype=np.float64)
            users["content"] = hist_w @ E_h
            sims = np.asarray(self.items["content"][cand], np.float32) @ E_h.T.astype(np.float32)
            anchors["content"] = hist_ids[np.argmax(sims, axis=1)] if n else np.zeros(0, np.int64)
        for name in FACTOR_SOURCES:
            u = users.get(name)
            if name in w and u is not None:
                C[:, _COL[name]] = self._factor_z(name, u, cand)
        for name in NEIGHBOUR_SOURCES:
            if name in w and has_h:
                C[:, _COL[name]], anchors[name] = _neighbour_z(self.neighbours[name], hist_ids, hist_w, cand, self.n_items)
        for name in VECTOR_SOURCES:
            if name in w:
                C[:, _COL[name]] = self.vectors[name][cand]
        C *= w_row
        return C.sum(axis=1), C, anchors

    def _factor_z(self, name: str, u, cand: np.ndarray) -> np.ndarray:
        u = np.asarray(u, dtype=np.float64)
        mom = self.moments[name]
        var = float(u @ mom.cov @ u)
        if var <= 1e-20:  # an all-zero u lands here too (var == 0.0 exactly)
            return np.zeros(cand.shape[0], np.float32)
        s = np.asarray(self.items[name][cand], dtype=np.float32) @ u.astype(np.float32)
        return ((s - float(mom.mean @ u)) / np.sqrt(var)).astype(np.float32)

    def vector(self, name: str) -> np.ndarray:
        """A vector source, z-scored (zeros when the release has none)."""
        return self.vectors.get(name, np.zeros(self.n_items, np.float32))


@njit(cache=True, nogil=True)
def _neighbour_kernel(indptr, indices, data, seeds, weights, cand, n_items, acc, best, best_seed, touched, z, anchor):
    """``acc = weights @ S[seeds]`` on scratch arrays (only touched entries are written, and
    reset before returning), its mean and variance over all ``n_items``, z-scores and the
    best-contributing seed (first on ties) on the sorted ``cand``."""
    nt = 0
    for r in range(seeds.shape[0]):
        s = seeds[r]
        w = weights[r]
        for p in range(indptr[s], indptr[s + 1]):
            j = indices[p]
            c = data[p] * w
            if best_seed[j] < 0:
                touched[nt] = j
                nt += 1
                best[j] = c
                best_seed[j] = s
            elif c > best[j]:
                best[j] = c
                best_seed[j] = s
            acc[j] += c
    s1 = 0.0
    s2 = 0.0
    for t in range(nt):
        v = acc[touched[t]]
        s1 += v
        s2 += v * v
    mean = s1 / n_items
    var = s2 / n_items - mean * mean
    sd = np.sqrt(var) if var > 1e-20 else 0.0
    for i in range(cand.shape[0]):
        j = cand[i]
        if sd > 0.0:
            z[i] = (acc[j] - mean) / sd
        anchor[i] = best_seed[j]
    for t in range(nt):
        j = touched[t]
        acc[j] = 0.0
        best_seed[j] = -1


_scratch = threading.local()


def _neighbour_z(S: sp.csr_matrix, seeds: np.ndarray, weights: np.ndarray, cand: np.ndarray, n_items: int):
    """z-scored ``(weights @ S)`` on ``cand`` (sorted), and the seed contributing most per
    candidate (-1 where none does). Scratch arrays are per thread and reset after each call."""
    z = np.zeros(cand.shape[0], np.float32)
    anchor = np.full(cand.shape[0], -1, np.int64)
    total = int((S.indptr[seeds + 1] - S.indptr[seeds]).sum())
    if total == 0:
        return z, anchor
    sc = getattr(_scratch, "arrays", None)
    if sc is None or sc[0].shape[0] < n_items:
        sc = (np.zeros(n_items, np.float64), np.zeros(n_items, np.float64), np.full(n_items, -1, np.int64))
        _scratch.arrays = sc
    acc, best, best_seed = sc
    _neighbour_kernel(S.indptr, S.indices, S.data, seeds, weights, cand, n_items, acc, best, best_seed,
                      np.empty(total, np.int64), z, anchor)
    return z, anchor
