"""The in-process recommender: candidate sources -> blend -> hard filters -> MMR -> reasons.

``Recommender(home)`` loads the current release fully into memory and keeps a single
reference to it. A watcher thread polls ``CURRENT`` (a stat-sized read, every
``poll_interval`` seconds); when it changes, the new release is loaded beside the old one and
the reference swapped in one assignment. Each call reads the reference once at its start, so a
request in flight finishes on the release it began with, and every answer names that
release's ``artifact_version``.

Determinism: no wall clock and no randomness enter an answer. Recency is measured from the
newest timestamp in the request; ties are broken by item index everywhere.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from functools import cached_property
from itertools import repeat
from pathlib import Path
from typing import Any, Iterable

import msgspec
import numpy as np
from pydantic import BaseModel

from . import business_rules, explain, prepared
from . import release as release_format
from .filters import CompiledFilter, compile_filter
from .holder import ReleaseHolder
from .loader import LoadedRelease, load_release
from recs_kernels.mmr import mmr_batch
from .schemas import (
    BatchRecommendRequest,
    BatchRecommendResponse,
    CartAddonsRequest,
    Customer,
    CustomersResponse,
    RecommendItem,
    RecommendRequest,
    RecommendResponse,
)
from .release import ReleaseContract
from .scoring import SOURCES, request_history, seed_weights
from recs_kernels import als as _als
from recs_kernels import blend as _blend
from recs_kernels import customers as _customers
from recs_kernels import known as _known
from recs_kernels import request as _request
from recs_kernels import topk as _topk

log = logging.getLogger("recs_serving")


class NotReady(RuntimeError):
    """No release is loaded (none published yet, or the first load failed)."""


class UnknownItem(KeyError):
    def __init__(self, item_id: str):
        super().__init__(item_id)
        self.item_id = item_id

    def __str__(self) -> str:
        return f"unknown item_id {self.item_id!r}"


@dataclass(frozen=True)
class _State:
    rel: LoadedRelease
    scorer: _blend.Blend  # the one blend over the release's sources
    item_id_arr: np.ndarray  # rel.item_ids as a numpy string array: ids of many picks in one take
    contract: ReleaseContract  # what answers follow: the release's, or an override (with_contract)

    @property
    def topn_current(self) -> bool:
        """The batch top-N table answers for this contract: it was computed with these weights
        and history cap (an override of either makes known users go through the blend)."""
        c, r = self.contract, self.rel.contract
        return c.weights == r.weights and c.candidates.history_cap == r.candidates.history_cap

    @cached_property
    def blends(self) -> dict[str, tuple[dict, float]]:
        """Use case -> (weights dict, MMR lambda) of this contract: dumped once per state, not
        per request (a pydantic dump was ~0.1 ms of every request)."""
        out = {}
        for uc in release_format.USE_CASES:
            b = self.contract.blend(uc)
            out[uc] = (b.weights.model_dump(), b.mmr_lambda)
        return out

    @cached_property
    def event_weights(self) -> dict[str, float]:
        return self.contract.event_weights.model_dump()

    @cached_property
    def arrays(self) -> "prepared.RequestArrays | None":
        """The request kernel's arrays (``recs_kernels.request``); None when the scorer is not
        the release's ``Blend`` (a wrapper, e.g. tuning's recorder, sees each scoring call)."""
        if type(self.scorer) is not _blend.Blend:
            return None
        return prepared.RequestArrays(self.rel, self.scorer, self.contract)

    @staticmethod
    def of(rel: LoadedRelease) -> "_State":
        """From the release's derived state when the mapped cache carries it (no pass over the
        data: the swap stays a pointer flip), else derived here (``recs_serving.prepared``)."""
        return _State(rel, prepared.blend_of(rel), prepared.item_id_array(rel), rel.contract)


@dataclass
class _Query:
    k: int
    user: int  # -1 when unknown
    seeds: np.ndarray  # int64 item idx, heaviest first
    seed_w: np.ndarray
    exclude: np.ndarray  # sorted unique int64 item idx never to return (besides ``seen``)
    seen: np.ndarray  # the known user's history row, sorted (loader.read_history): never returned either
    filt: CompiledFilter
    lam: float
    brand: str | None
    category: str | None
    weights: dict


class WireItem(msgspec.Struct, gc=False):
    """One recommended item as the HTTP layer encodes it: the same JSON object as the
    ``RecommendItem`` dict (same keys, same order), cheaper to build than a dict and never
    tracked by the cyclic GC. Only ``recommend_batch(..., wire=True)`` returns these."""

    item_id: str
    score: float
    rank: int
    reasons: list


def _slot_setter(name: str):
    d = getattr(BaseModel, "__dict__", {}).get(name)
    setter = getattr(d, "__set__", None)
    return setter if setter is not None else (lambda m, v: object.__setattr__(m, name, v))


_set_fields = _slot_setter("__pydantic_fields_set__")
_set_extra = _slot_setter("__pydantic_extra__")
_set_private = _slot_setter("__pydantic_private__")


def _trusted(cls, data: dict, _new=object.__new__, _set=object.__setattr__):
    """A pydantic model instance from already-valid data, without validation (what
    ``model_construct`` does, minus its per-field default handling: every field is given).
    The slots are written through their descriptors (cheaper than ``object.__setattr__``)."""
    m = _new(cls)
    _set(m, "__dict__", data)
    _set_fields(m, set(data))
    _set_extra(m, None)
    _set_private(m, None)
    return m


def _rec_items(picks: list[tuple[int, float, list[str]]], rel: LoadedRelease, as_dict: bool = False) -> list:
    if not picks:
        return []
    ids = rel.item_ids
    scores = np.round(np.fromiter((p[1] for p in picks), np.float64, len(picks)), 6).tolist()
    items = [{"item_id": ids[p[0]], "score": sc, "rank": r, "reasons": p[2]} for r, (p, sc) in enumerate(zip(picks, scores), 1)]
    if as_dict:
        return items
    return [_trusted(RecommendItem, d) for d in items]


class Recommender:
    def __init__(
        self,
        home: Path | str | None = None,
        *,
        watch: bool = True,
        poll_interval: float = 1.0,
        mmap: bool = False,
        scan_items: int = 50_000,
        require_release: bool = False,
        cache: bool = False,
    ):
        """``cache=True``: arrays come from the per-release memory-mapped cache that all
        worker processes share (``recs_serving.mapped``); the Parquet loader then runs in a
        child process, never in this one. The lifecycle (verify, refuse, fall back, watch,
        swap) lives in ``holder.ReleaseHolder``."""
        self.home = release_format.default_home(home)
        self.poll_interval = float(poll_interval)
        self.mmap = mmap
        self.scan_items = scan_items
        loader = None
        if mmap and not cache:
            from .holder import serving_needs

            def loader(home_: Path, name: str) -> LoadedRelease:
                release_format.open_release(home_, name).verify()
                rel = load_release(home_, name, mmap=True)
                serving_needs(rel)
                return rel
        self._holder: ReleaseHolder[_State] = ReleaseHolder(self.home, self._prepare, poll_interval=poll_interval,
                                                            cache=cache, loader=loader)
        self._holder.start(require=require_release)
        if watch:
            self.start_watching()

    # ------------------------------------------------------------------ release lifecycle (holder.py)
    def _prepare(self, rel: LoadedRelease) -> "_State":
        st = _State.of(rel)
        explain.catalog(rel)  # the readable catalog, before requests need it (not on the event loop)
        self._warm(st)
        return st

    @property
    def _state(self) -> "_State | None":
        return self._holder.state

    @property
    def ready(self) -> bool:
        return self._holder.state is not None

    @property
    def release(self) -> LoadedRelease:
        return self._current().rel

    @property
    def version(self) -> str | None:
        st = self._holder.state
        return st.rel.version if st else None

    @property
    def reloads(self) -> int:
        return self._holder.reloads

    @property
    def reload_errors(self) -> int:
        return self._holder.reload_errors

    def lifecycle_status(self) -> dict:
        """Served release, CURRENT, and the last refused release with the reason (``/readyz``)."""
        return self._holder.status()

    def _current(self) -> _State:
        st = self._holder.state
        if st is None:
            raise NotReady(f"no release loaded from {self.home}")
        return st

    def reload(self, force: bool = False) -> bool:
        """Load ``CURRENT`` if it is not the release being served; True when swapped.
        ``ReleaseError`` with the reason when it is refused (the served release stays)."""
        return self._holder.reload(force=force)

    def signal_reload(self) -> None:
        """Make every process serving this RECS_HOME reload CURRENT (``--workers N``: an admin
        reload reaches one worker, this reaches the others through their watchers)."""
        self._holder.signal_reload()

    def _warm(self, st: _State) -> None:
        """Run each request path once on a new release before it goes live, so JIT compilation
        (numba) and first-touch page faults are not paid by the first real requests."""
        rel = st.rel
        if rel.n_items == 0:
            return
        try:
            from .schemas import Interaction

            recent = [Interaction(item_id=rel.item_ids[0], timestamp=0, event="view")]
            users = [rel.user_ids[0]] if rel.n_users else []
            for uid, rec in ((None, recent), (users[0] if users else None, recent), (users[0] if users else None, [])):
                meta: dict = {}
                q = self._query(st, k=5, user_id=uid, recent=rec, brand=None, exclusions=(), filters={}, lam=None, meta=meta)
                picks = self._topn_picks(st, q) if q.user >= 0 and not rec and rel_has_topn(rel, q.user) else self._blend(st, q, meta)
                self._fill(st, q, picks, meta)
            _topk.topk_scores(np.zeros(8, np.float32), 2)
            if rel.mmr_vecs is not None:  # MMR's greedy loops (one row, a batch): the paths run with a lambda < 1
                v = np.asarray(rel.mmr_vecs[:2])
                for b in (1, 2):
                    mmr_batch(np.ones((b, v.shape[0]), np.float32), np.broadcast_to(v, (b,) + v.shape).copy(), 2, 0.5)
            if rel.n_users >= 2 and rel.topn_ids.shape[1]:  # the batch path's kernel
                base = self._query(st, k=5, user_id=None, recent=(), brand=None, exclusions=(), filters={}, lam=None, meta={},
                                   use_case="homepage")
                self._topn_many(st, np.arange(2), base)
            if rel.als_item is not None and rel.n_users:  # explanations' kernels, and the factor norms they divide by
                explain.taste_anchors(rel, rel.user_ids[0], [rel.item_ids[0]])
                explain.customer_reasons(rel, rel.item_ids[0], [rel.user_ids[0]])
            if rel.als_user is not None and rel.als_item is not None and rel.n_users:
                _customers_by_candidates(rel, 0, 5)  # /customers' kernels (used above SCAN_USERS users)
                if rel.n_users <= SCAN_USERS:
                    _scan_customers(rel, 0)  # (and up to it)
        except Exception:  # noqa: BLE001 - warming must never block a release
            log.exception("warm-up of release %s failed (serving it anyway)", rel.version)

    def start_watching(self) -> None:
        self._holder.start_watching()

    def close(self) -> None:
        self._holder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ request parsing
    def _query(self, st: _State, *, k: int, user_id: str | None, recent: Iterable, brand: str | None,
               exclusions: Iterable[str], filters: dict, lam: float | None, meta: dict,
               extra_seeds: Iterable[str] = (), seed_event: str = "add", use_case: str | None = None) -> _Query:
        """``use_case``: whose blend answers (``ReleaseContract.blends``); None: homepage for a
        known user, session for an anonymous visitor with events, cold_start without any."""
        rel = st.rel
        contract = st.contract
        index = rel.item_index
        user = rel.user_index.get(user_id, -1) if user_id is not None else -1
        ew = st.event_weights
        recent = list(recent)
        events: dict[int, tuple[float, float]] = {}  # item -> (sum of event weights, youngest age in ms)
        excl: list[int] = []
        unknown: list[str] = []

        def add(i: int, event: str, age: float) -> None:
            w, a = events.get(i, (0.0, age))
            events[i] = (w + ew.get(event, 0.0), min(a, age))

        if recent:
            t_ref = max(r.timestamp for r in recent)
            for r in recent:
                i = index.get(r.item_id)
                if i is None:
                    if r.item_id not in unknown:
                        unknown.append(r.item_id)
                    continue
                add(i, r.event, float(t_ref - r.timestamp))
                excl.append(i)  # what the request shows was just seen/added/bought is not re-offered
        for item_id in extra_seeds:
            i = index.get(item_id)
            if i is None:
                if item_id not in unknown:
                    unknown.append(item_id)
                continue
            add(i, seed_event, 0.0)
            excl.append(i)
        for item_id in exclusions:
            i = index.get(item_id)
            if i is not None:
                excl.append(i)
        # seen items are never offered again (the batch top-N excludes them too); kept apart
        # from ``exclude`` as the sorted row it is, so exclusion costs grow with the
        # candidates, not with the history (merging a long history was ~0.8 ms a request)
        seen = rel.hist_items[rel.hist_indptr[user]:rel.hist_indptr[user + 1]] if user >= 0 else _NONE
        if unknown:
            meta["unknown_items"] = unknown
        seed_acc = {i: w for i, w in seed_weights(contract, events).items() if w > 0}
        if seed_acc:
            pairs = sorted(seed_acc.items(), key=lambda kv: (-kv[1], kv[0]))[:contract.candidates.max_seeds]
            seeds = np.array([p[0] for p in pairs], np.int64)
            seed_w = np.array([p[1] for p in pairs], np.float64)
        else:
            seeds = np.zeros(0, np.int64)
            seed_w = np.zeros(0, np.float64)
        cats = filters.get("category")
        if use_case is None:
            use_case = "homepage" if user >= 0 else "session" if seeds.size else "cold_start"
        if use_case not in st.blends:
            contract.blend(use_case)  # refuses an unknown use case with its message
        weights, chosen_lam = st.blends[use_case]
        meta["use_case"] = use_case
        return _Query(
            k=k, user=user, seeds=seeds, seed_w=seed_w, seen=seen,
            exclude=business_rules.with_blocked(rel, np.unique(np.array(excl, np.int64))), filt=compile_filter(rel, brand, filters),
            lam=chosen_lam if lam is None else float(lam), brand=brand,
            category=cats[0] if cats and len(cats) == 1 else None, weights=weights,
        )

    # ------------------------------------------------------------------ answering
    @staticmethod
    def _fold_in(st: _State, ids: np.ndarray, w: np.ndarray) -> np.ndarray | None:
        """The ALS factor of ``h`` (the training's regularization and alpha, from the contract)."""
        rel = st.rel
        if rel.als_item is None or ids.size == 0:
            return None
        keep = w > 0
        ids, w = ids[keep], w[keep].astype(np.float64)
        if ids.size == 0:
            return None
        a = st.contract.als
        return _als.fold_in(rel.als_item, ids, w, regularization=a.regularization, alpha=a.alpha, yty=rel.als_yty)

    def _reason(self, rel: LoadedRelease, q: _Query, item: int, contrib: list, order: list, anchors: dict, i: int) -> list[str]:
        """Up to two reasons for one pick: its sources in descending contribution (``order``:
        the stable argsort of ``-contrib``), cut at the first non-positive one or one under half
        the top. ``anchors``: source -> list of anchor item idx per pick (``i`` indexes it)."""
        reasons: list[str] = []
        top = contrib[order[0]]
        for j in order:
            c = contrib[j]
            if reasons and (c <= 0 or c < 0.5 * top):
                break
            src = SOURCES[j]
            if src in ("als", "bpr"):
                r = "for_you"
            elif src in ("item_sim", "covis", "rules"):
                a = anchors.get(src)
                r = f"bought_with:{rel.item_ids[a[i]]}" if a is not None and a[i] >= 0 else "bought_together"
            elif src == "content":
                a = anchors.get("content")
                r = f"similar_to:{rel.item_ids[a[i]]}" if a is not None and a[i] >= 0 else "similar"
            else:
                r = self._pop_reason(rel, q, item)
            if r not in reasons:
                reasons.append(r)
            if len(reasons) == 2:
                break
        return reasons

    @staticmethod
    def _pop_reason(rel: LoadedRelease, q: _Query, item: int) -> str:
        if q.brand:
            return f"popular_in_brand:{q.brand}"
        if q.category:
            return f"popular_in_category:{q.category}"
        return "trending" if rel.trend_norm[item] >= rel.pop_norm[item] and rel.trend_norm[item] > 0 else "popular"

    def _candidates(self, st: _State, q: _Query, u_als: np.ndarray | None, refreshed: bool) -> np.ndarray:
        rel = st.rel
        sizes = st.contract.candidates
        per_seed = sizes.neighbours_per_seed
        n_pop = sizes.popular_per_k * q.k
        parts = []
        if q.user >= 0:
            row = rel.topn_ids[q.user]
            parts.append(row[row >= 0])
        if refreshed and u_als is not None and rel.n_items <= self.scan_items:
            scores = rel.als_item @ u_als
            ids, _ = _topk.topk_scores(scores, min(rel.n_items, sizes.als_scan_per_k * q.k + sizes.als_scan_extra))
            parts.append(ids[ids >= 0])
        seeds = q.seeds.tolist()  # Python ints: 5 x seeds scalar reads of indptr, cheaper than numpy scalars
        for adj in (rel.item_sim, rel.covis, rel.rules, rel.sim_factors, rel.sim_content):
            indptr, indices = adj.indptr, adj.indices
            for s in seeds:
                a = int(indptr[s])
                parts.append(indices[a:min(int(indptr[s + 1]), a + per_seed)])
        if q.seeds.size >= 2 and rel.multi_rules:  # the seeds' rules only (a scan of all was ~20 ms)
            parts.append(rel.multi_rules.consequents(q.seeds))
        lists = rel.popularity_lists
        if q.brand and ("brand", q.brand) in lists:
            parts.append(lists[("brand", q.brand)][:n_pop])
        if q.category and ("category", q.category) in lists:
            parts.append(lists[("category", q.category)][:n_pop])
        parts.append(lists[("trending", "")][: q.k])
        if q.user < 0 and q.seeds.size == 0:
            parts.append(lists[("global", "")][:n_pop])
        cand = np.unique(np.concatenate(parts).astype(np.int64)) if parts else np.zeros(0, np.int64)
        return cand

    def _blend(self, st: _State, q: _Query, meta: dict) -> list[tuple[int, float, list[str]]]:
        """The blended picks: candidates, scores and the MMR pool in two numba calls
        (``recs_kernels.request``), the same answers as ``_blend_reference`` to the bit."""
        a = st.arrays
        if a is None:
            return self._blend_reference(st, q, meta)
        rel = st.rel
        sizes = st.contract.candidates
        user = q.user
        fold = q.seeds.size > 0 and rel.als_item is not None
        u_given = _NO_F32
        u_bpr = _NO_F32
        if user >= 0:
            a0, a1 = rel.hist_indptr[user], rel.hist_indptr[user + 1]
            hist_items, hist_w = rel.hist_items[a0:a1], rel.hist_weight[a0:a1]
            if not fold and rel.als_user is not None:
                u_given = np.asarray(rel.als_user[user], dtype=np.float32)
            if rel.bpr_user is not None:
                u_bpr = np.asarray(rel.bpr_user[user], dtype=np.float32)
            topn_row = rel.topn_ids[user]
        else:
            hist_items, hist_w, topn_row = _NONE32, _NO_F32, _NONE32
        k = q.k
        scan_m = min(rel.n_items, sizes.als_scan_per_k * k + sizes.als_scan_extra) if fold and rel.n_items <= self.scan_items else 0
        n_pop = sizes.popular_per_k * k
        lists = rel.popularity_lists
        pops = (lists[("brand", q.brand)][:n_pop] if q.brand and ("brand", q.brand) in lists else _NONE32,
                lists[("category", q.category)][:n_pop] if q.category and ("category", q.category) in lists else _NONE32,
                lists[("trending", "")][:k],
                lists[("global", "")][:n_pop] if user < 0 and q.seeds.size == 0 else _NONE32)
        h_ids, h_w, u_als, cand, n_gen = _request.gather(
            a, hist_items=hist_items, hist_w=hist_w, cap=sizes.history_cap, seeds=q.seeds, seed_w=q.seed_w, fold=fold,
            u_given=u_given, scan_m=scan_m, topn_row=topn_row, per_seed=sizes.neighbours_per_seed,
            multi=q.seeds.size >= 2, pops=pops, exclude=q.exclude, seen=q.seen if q.seen.size else _NONE32)
        if not q.filt.empty and cand.size:
            cand = cand[q.filt.mask(rel, cand)]
        meta["candidates"] = int(n_gen)
        meta["eligible"] = int(cand.size)
        if cand.size == 0:
            return []
        _, w_row = st.scorer._checked_weights(q.weights)
        total, contrib, anchors = _request.score(a, w_row, cand, u_als=_NO_F32 if u_als is None else u_als, u_bpr=u_bpr,
                                                 h_ids=h_ids, h_w=h_w)
        return self._pick(st, q, cand, total, contrib, {src: anchors[j] for j, src in enumerate(_ANCHORED)})

    def _blend_reference(self, st: _State, q: _Query, meta: dict) -> list[tuple[int, float, list[str]]]:
        """``_blend`` step by step in numpy, through ``st.scorer.score_candidates`` (what a
        scorer wrapper intercepts; the request kernel's tests compare against it)."""
        rel = st.rel
        u_als = None
        bpr_u = None
        refreshed = False
        # h: the capped history plus the recent items (bounded work whatever the history length)
        h_ids, h_w = request_history(rel, st.contract, q.user, q.seeds, q.seed_w)
        if q.user >= 0:
            if q.seeds.size and rel.als_item is not None:
                u_als = self._fold_in(st, h_ids, h_w)
                refreshed = True
            elif rel.als_user is not None:
                u_als = np.asarray(rel.als_user[q.user], dtype=np.float32)
            if rel.bpr_user is not None:
                bpr_u = np.asarray(rel.bpr_user[q.user], dtype=np.float32)
        elif q.seeds.size:
            u_als = self._fold_in(st, h_ids, h_w)
            refreshed = u_als is not None
        cand = self._candidates(st, q, u_als, refreshed)
        n_gen = cand.size
        if q.exclude.size and cand.size:
            cand = cand[~_member(cand, q.exclude)]
        if q.seen.size and cand.size:
            cand = cand[~_member(cand, q.seen)]
        if not q.filt.empty and cand.size:
            cand = cand[q.filt.mask(rel, cand)]
        meta["candidates"] = int(n_gen)
        meta["eligible"] = int(cand.size)
        if cand.size == 0:
            return []
        total, contrib, anchors = st.scorer.score_candidates(
            q.weights, cand, als_user=u_als, bpr_user=bpr_u, hist_ids=h_ids, hist_w=h_w)
        return self._pick(st, q, cand, total, contrib, anchors)

    def _pick(self, st: _State, q: _Query, cand: np.ndarray, total: np.ndarray, contrib: np.ndarray,
              anchors: dict) -> list[tuple[int, float, list[str]]]:
        """MMR over the best-scored candidates, each pick with its reasons."""
        rel = st.rel
        order = np.lexsort((cand, -total))
        sizes = st.contract.candidates
        m = min(cand.size, max(sizes.mmr_pool_per_k * q.k, q.k + sizes.mmr_pool_extra))
        top = order[:m]
        if rel.mmr_vecs is None or q.lam >= 1.0:
            rows = top[_by_relevance(total[top], q.k)]  # what mmr_batch picks without diversity, in 2 calls, not ~10
            n = rows.size
            if n == 0:
                return []
        else:
            picks = mmr_batch(total[top][None], rel.mmr_vecs[cand[top]][None], q.k, q.lam)[0]
            neg = picks < 0
            n = int(neg.argmax()) if neg.any() else picks.size  # picks are left-aligned
            if n == 0:
                return []
            rows = top[picks[:n]]
        items = cand[rows].tolist()
        totals = total[rows].tolist()
        C = contrib[rows]
        orders = np.argsort(-C, axis=1, kind="stable").tolist()  # row by row, as a 1-D stable argsort would
        C = C.tolist()
        anch = {src: a[rows].tolist() for src, a in anchors.items()}
        return [(items[i], totals[i], self._reason(rel, q, items[i], C[i], orders[i], anch, i)) for i in range(n)]

    def _topn_picks(self, st: _State, q: _Query) -> list[tuple[int, float, list[str]]]:
        """A known user's precomputed top-N as picks: ``_topn`` for one user, in one kernel call
        (``recs_kernels.known``; the same picks, tested)."""
        rel = st.rel
        u = q.user
        ids = rel.topn_ids[u]
        safe = np.maximum(ids, 0)
        fmask = _NO_BOOL if q.filt.empty else q.filt.mask(rel, safe)
        sims = _NO_SIMS
        if rel.mmr_vecs is not None and q.lam < 1.0:
            v = rel.mmr_vecs[safe]
            sims = v @ v.T  # as mmr_batch computes them (see recs_kernels.known)
        sel_ids, sel_sc = _known.topn_one(ids, rel.topn_scores[u].astype(np.float32), q.exclude, rel.hist_items[rel.hist_indptr[u]:rel.hist_indptr[u + 1]],
                                          fmask, sims, q.k, float(q.lam))
        reason = ["for_you"]
        return list(zip(sel_ids.tolist(), sel_sc.tolist(), repeat(reason)))

    def _topn_picks_reference(self, st: _State, q: _Query) -> list[tuple[int, float, list[str]]]:
        """``_topn_picks`` through the batch path (``_topn``): the kernel's tests compare to it."""
        sel_ids, sel_sc, counts = self._topn(st, np.array([q.user]), q)
        n = counts[0]
        reason = ["for_you"]
        return list(zip(sel_ids[0, :n].tolist(), sel_sc[0, :n].tolist(), [reason] * n))

    def _fill(self, st: _State, q: _Query, picks: list, meta: dict) -> list:
        """Top up to k from popularity lists (brand, category, trending, global), then a full scan."""
        need = q.k - len(picks)
        if need <= 0:
            return picks
        rel = st.rel
        taken = np.array([p[0] for p in picks] + q.exclude.tolist(), np.int64)
        lists = rel.popularity_lists
        sources = []
        if q.brand:
            sources.append((lists.get(("brand", q.brand)), f"popular_in_brand:{q.brand}"))
        if q.category:
            sources.append((lists.get(("category", q.category)), f"popular_in_category:{q.category}"))
        if not q.brand and not q.category:
            sources.append((lists.get(("trending", "")), "trending"))
            sources.append((lists.get(("global", "")), "popular"))
        added: list = []
        for arr, reason in sources:
            if arr is None or need <= 0:
                continue
            arr = arr.astype(np.int64)
            ok = ~_member(arr, np.sort(taken))
            if q.seen.size:
                ok &= ~_member(arr, q.seen)
            if not q.filt.empty:
                ok &= q.filt.mask(rel, arr)
            got = arr[ok][:need]
            for i in got.tolist():
                added.append((i, reason))
            taken = np.concatenate([taken, got])
            need -= got.size
        if need > 0:
            mask = q.filt.full_mask(rel) if not q.filt.empty else np.ones(rel.n_items, bool)
            if taken.size:
                mask[taken] = False
            mask[q.seen] = False
            got = rel.pop_order[mask[rel.pop_order]][:need]
            reason = f"popular_in_brand:{q.brand}" if q.brand else "popular"
            added.extend((int(i), reason) for i in got)
        if not added:
            return picks
        # fill scores: the blend's vector part (trending, popularity), kept under the last pick
        w_t, w_p = float(q.weights.get("trending", 0.0)), float(q.weights.get("popularity", 0.0))
        if w_t == 0.0 and w_p == 0.0:
            w_t = 1.0
        idx = np.fromiter((i for i, _ in added), np.int64, len(added))  # the added items only, not the whole catalogue
        fill_score = (w_t * st.scorer.vector("trending")[idx] + w_p * st.scorer.vector("popularity")[idx]).tolist()
        last = picks[-1][1] if picks else np.inf
        out = list(picks)
        for (i, reason), f in zip(added, fill_score):
            s = min(last, f)
            out.append((i, s, [reason]))
            last = s
        meta["filled_from_popularity"] = len(added)
        return out

    def _respond(self, st: _State, picks: list, meta: dict, as_dict: bool = False, q: _Query | None = None):
        rel = st.rel
        if q is not None and business_rules.for_release(rel).reranks:
            # pins, boosts and burials: here, so the Python API and every HTTP path answer alike
            excluded = {rel.item_ids[i] for i in q.exclude.tolist()} | {rel.item_ids[i] for i in q.seen.tolist()}
            items = business_rules.apply(rel, _rec_items(picks, rel, True), q.k, excluded)
            if not as_dict:
                items = [_trusted(RecommendItem, d) for d in items]
        else:
            items = _rec_items(picks, rel, as_dict)
        if as_dict:
            return {"items": items, "artifact_version": rel.version, "metadata": meta}
        return RecommendResponse.model_construct(items=items, artifact_version=rel.version, metadata=meta)

    # ------------------------------------------------------------------ public API
    @property
    def contract(self) -> ReleaseContract:
        """The contract answers follow (the loaded release's, unless overridden)."""
        return self._current().contract

    def with_contract(self, contract: ReleaseContract) -> "Recommender":
        """A view answering from the currently loaded release with ``contract`` instead of the
        release's (evaluation, tuning): same arrays, nothing re-read or re-written. The view is
        pinned to that release (it does not follow reloads); close the original, not the view.
        ``content_dim`` shapes the loaded arrays, so it cannot change here."""
        if not isinstance(contract, ReleaseContract):
            raise TypeError(f"contract must be a ReleaseContract, got {type(contract).__name__}")
        st = self._current()
        if contract.content_dim != st.rel.contract.content_dim:
            raise ValueError(f"content_dim is applied at load ({st.rel.contract.content_dim}); it cannot be overridden")
        pinned = _State(st.rel, st.scorer, st.item_id_arr, contract)
        view = copy.copy(self)
        view._current = lambda: pinned  # shadows the method: this view always answers from `pinned`
        return view

    def recommend(self, request: RecommendRequest | dict | None = None, *, as_dict: bool = False, **kw: Any) -> RecommendResponse:
        """Recommendations for one user. ``as_dict=True`` returns the JSON-ready dict instead of the
        pydantic model (the HTTP layer uses it to skip model construction)."""
        req = _coerce(RecommendRequest, request, kw)
        st = self._current()
        meta: dict = {}
        q = self._query(st, k=req.k, user_id=req.user_id, recent=req.recent, brand=req.brand,
                        exclusions=req.exclusions, filters=req.filters, lam=req.mmr_lambda, meta=meta)
        meta["user_known"] = q.user >= 0
        if q.user >= 0 and q.seeds.size == 0 and st.topn_current and rel_has_topn(st.rel, q.user):
            meta["strategy"] = "topn"
            picks = self._topn_picks(st, q)
        elif q.user >= 0 or q.seeds.size:
            meta["strategy"] = "blend"
            picks = self._blend(st, q, meta)
        else:
            meta["strategy"] = "popular"
            picks = self._blend(st, q, meta)
        picks = self._fill(st, q, picks, meta)
        return self._respond(st, picks, meta, as_dict, q)

    def similar_items(self, item_id: str, k: int = 20, *, brand: str | None = None, filters: dict | None = None,
                      exclusions: Iterable[str] = (), mmr_lambda: float | None = None, as_dict: bool = False) -> RecommendResponse:
        st = self._current()
        if item_id not in st.rel.item_index:
            raise UnknownItem(item_id)
        meta: dict = {"strategy": "similar"}
        q = self._query(st, k=_check_k(k), user_id=None, recent=(), brand=brand, exclusions=exclusions,
                        filters=_check_filters(filters), lam=mmr_lambda, meta=meta, extra_seeds=[item_id], seed_event="view",
                        use_case="item_page")
        picks = self._fill(st, q, self._blend(st, q, meta), meta)
        return self._respond(st, picks, meta, as_dict, q)

    def cart_addons(self, item_ids: Iterable[str] | CartAddonsRequest | dict, k: int = 10, *, as_dict: bool = False, **kw: Any) -> RecommendResponse:
        if isinstance(item_ids, (CartAddonsRequest, dict)):
            req = _coerce(CartAddonsRequest, item_ids, kw)
        else:
            req = CartAddonsRequest(item_ids=list(item_ids), k=k, **kw)
        st = self._current()
        meta: dict = {"strategy": "cart"}
        q = self._query(st, k=req.k, user_id=req.user_id, recent=(), brand=req.brand, exclusions=req.exclusions,
                        filters=req.filters, lam=None, meta=meta, extra_seeds=req.item_ids, seed_event="add",
                        use_case="cart")
        picks = self._fill(st, q, self._blend(st, q, meta), meta)
        return self._respond(st, picks, meta, as_dict, q)

    def top_customers(self, item_id: str, k: int = 20) -> CustomersResponse:
        st = self._current()
        rel = st.rel
        i = rel.item_index.get(item_id)
        if i is None:
            raise UnknownItem(item_id)
        k = _check_k(k)
        meta: dict = {"strategy": "als"}
        customers: list[Customer] = []
        if rel.als_user is not None and rel.n_users > SCAN_USERS:
            # Bounded work per request (a full scan of 1M users is ~0.5 s): exact ALS scores on
            # candidates = buyers of the item's neighbours plus a fixed stride sample of users.
            a, b = rel.buyers.indptr[i], rel.buyers.indptr[i + 1]
            cand, ids, scores = _customers_by_candidates(rel, i, k)
            meta["strategy"] = "als_candidates"
            meta["candidates"] = int(cand.size)
        elif rel.als_user is not None and rel.n_users:
            s = _scan_customers(rel, i)
            a, b = rel.buyers.indptr[i], rel.buyers.indptr[i + 1]
            s[rel.buyers.indices[a:b]] = -np.inf  # already bought it: not a target
            ids, scores = _topk.topk_scores(s, min(k, rel.n_users))
        if rel.als_user is not None and rel.n_users:
            user_ids = rel.user_ids
            customers = [  # validated data: built as model_construct would, without its per-field pass
                _trusted(Customer, {"user_id": user_ids[u], "score": round(v, 6), "rank": r + 1})
                for r, (u, v) in enumerate(zip(ids.tolist(), scores.tolist())) if u >= 0
            ]
            meta["excluded_buyers"] = int(b - a)
        return CustomersResponse.model_construct(item_id=item_id, customers=customers, artifact_version=rel.version, metadata=meta)

    def recommend_batch(self, user_ids: Iterable[str] | BatchRecommendRequest | dict, k: int = 20, *, as_dict: bool = False,
                        wire: bool = False, **kw: Any) -> BatchRecommendResponse:
        """Recommendations for many users (no recent events): known users get their
        precomputed top-N (filtered, exclusions and purchases removed, MMR re-ranked) in one
        vectorised pass; unknown users get the cold-start answer, computed once.

        ``wire=True`` (implies ``as_dict``): items may be ``WireItem`` structs instead of dicts;
        msgspec (Litestar's encoder) writes exactly the JSON of the dict form."""
        as_dict = as_dict or wire
        if isinstance(user_ids, (BatchRecommendRequest, dict)):
            req = _coerce(BatchRecommendRequest, user_ids, kw)
        else:
            req = BatchRecommendRequest(user_ids=list(user_ids), k=k, **kw)
        st = self._current()
        rel = st.rel
        uniq = list(dict.fromkeys(req.user_ids))
        # the batch table is the homepage blend's; unknown users get the cold-start answer
        base = self._query(st, k=req.k, user_id=None, recent=(), brand=req.brand, exclusions=req.exclusions,
                           filters=req.filters, lam=None, meta={}, use_case="homepage")
        uidx = _lookup_many(rel.user_index, uniq)
        has = uidx >= 0
        if rel.topn_ids.shape[1] and st.topn_current:
            has &= rel.topn_ids[np.maximum(uidx, 0), 0] >= 0
        else:  # no table for this contract: known users take the full path below
            has &= False
        known = np.flatnonzero(has)
        results: dict[str, list] = {}
        if known.size:
            sel_ids, sel_sc, counts = self._topn_many(st, uidx[known], base)
            names = st.item_id_arr[sel_ids].tolist()
            scores = np.round(sel_sc, 6).tolist()
            reason = ["for_you"]
            ranks = range(1, req.k + 1)
            for b, j in enumerate(known.tolist()):
                n = counts[b]
                if n < req.k:
                    picks = list(zip(sel_ids[b, :n].tolist(), sel_sc[b, :n].tolist(), [reason] * n))
                    q = self._query(st, k=req.k, user_id=uniq[j], recent=(), brand=req.brand, exclusions=req.exclusions,
                                    filters=req.filters, lam=None, meta={})
                    results[uniq[j]] = _rec_items(self._fill(st, q, picks, {}), rel, as_dict)
                    continue
                if wire:
                    results[uniq[j]] = list(map(WireItem, names[b], scores[b], ranks, repeat(reason)))
                    continue
                row = [{"item_id": a, "score": sc, "rank": r, "reasons": reason} for r, a, sc in zip(ranks, names[b], scores[b])]
                results[uniq[j]] = row if as_dict else [_trusted(RecommendItem, d) for d in row]
        cold = None
        n_unknown = 0
        for j in np.flatnonzero(~has).tolist():
            if uidx[j] < 0:
                n_unknown += 1
                if cold is None:
                    cq = self._query(st, k=req.k, user_id=None, recent=(), brand=req.brand, exclusions=req.exclusions,
                                     filters=req.filters, lam=None, meta={}, use_case="cold_start")
                    cold = _rec_items(self._fill(st, cq, self._blend(st, cq, {}), {}), rel, as_dict)
                results[uniq[j]] = cold if as_dict else list(cold)
            else:  # known user without a top-N row: the full path
                q = self._query(st, k=req.k, user_id=uniq[j], recent=(), brand=req.brand, exclusions=req.exclusions,
                                filters=req.filters, lam=None, meta={})
                results[uniq[j]] = _rec_items(self._fill(st, q, self._blend(st, q, {}), {}), rel, as_dict)
        results = {u: results[u] for u in uniq}
        if business_rules.for_release(rel).reranks:
            results = {u: self._reranked(rel, u, items, req, as_dict) for u, items in results.items()}
        meta = {"users": len(uniq), "unknown_users": n_unknown}
        if as_dict:
            return {"results": results, "artifact_version": rel.version, "metadata": meta}
        return BatchRecommendResponse.model_construct(results=results, artifact_version=rel.version, metadata=meta)

    @staticmethod
    def _reranked(rel: LoadedRelease, user_id: str, items: list, req: BatchRecommendRequest, as_dict: bool) -> list:
        """One batch answer through the business rules' re-ranking (as ``_respond`` does)."""
        rows = [d if isinstance(d, dict) else {f: getattr(d, f) for f in ("item_id", "score", "rank", "reasons")}
                for d in items]
        out = business_rules.apply(rel, rows, req.k, business_rules.request_exclusions(rel, user_id, exclusions=req.exclusions))
        return out if as_dict else [_trusted(RecommendItem, d) for d in out]

    def _topn_many(self, st: _State, users: np.ndarray, base: _Query) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """``_topn`` in one kernel call (``recs_kernels.known.topn_many``; the same picks, tested)."""
        rel = st.rel
        if users.size == 1:  # mmr_batch's single-row arithmetic
            q = dataclasses.replace(base, user=int(users[0]))
            picks = self._topn_picks(st, q)
            k = min(base.k, rel.topn_ids.shape[1])
            sel_ids, sel_sc = np.zeros((1, k), np.int64), np.zeros((1, k), np.float64)
            sel_ids[0, :len(picks)] = [p[0] for p in picks]
            sel_sc[0, :len(picks)] = [p[1] for p in picks]
            return sel_ids, sel_sc, [len(picks)]
        ids = rel.topn_ids[users]
        safe = np.maximum(ids, 0)
        fmask = _NO_BOOL2 if base.filt.empty else base.filt.mask(rel, safe)
        sims = _NO_SIMS3
        if rel.mmr_vecs is not None and base.lam < 1.0:
            v = rel.mmr_vecs[safe]
            sims = np.matmul(v, v.transpose(0, 2, 1))  # as mmr_batch computes them (see recs_kernels.known)
        sel_ids, sel_sc, counts = _known.topn_many(ids, rel.topn_scores[users].astype(np.float32), rel.hist_indptr, rel.hist_items,
                                                   users.astype(np.int64), base.exclude, fmask, sims, base.k, float(base.lam))
        return sel_ids, sel_sc, counts.tolist()

    def _topn(self, st: _State, users: np.ndarray, base: _Query) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The one top-N path: known users without recent events get their precomputed top-N
        (the batch blend's table), minus ``base``'s exclusions and filters and each user's
        history (one vectorised membership test), MMR re-ranked with ``base.lam``. Returns the
        picked item indices [B, k] and their scores [B, k] (float64 of the float32 top-N
        scores), left-aligned, and the number of picks per row."""
        rel = st.rel
        B = users.size
        ids = rel.topn_ids[users]
        sc = rel.topn_scores[users].astype(np.float32)
        valid = ids >= 0
        safe = np.where(valid, ids, 0)
        if base.exclude.size:
            valid &= ~_member(ids, base.exclude)
        if not base.filt.empty:
            valid &= base.filt.mask(rel, safe)
        lo, hi = rel.hist_indptr[users], rel.hist_indptr[users + 1]
        lens = hi - lo
        if B == 1:  # one user: the history row is sorted, so a binary search per top-N item, whatever its length
            valid &= ~_member(ids, rel.hist_items[lo[0]:hi[0]])
        elif lens.sum():
            row = np.repeat(np.arange(B), lens)
            offs = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(lo, lens)
            keys_h = row.astype(np.int64) * rel.n_items + rel.hist_items[offs]
            if keys_h.size:
                keys_t = np.arange(B, dtype=np.int64)[:, None] * rel.n_items + safe
                valid &= ~_member(keys_t, np.sort(keys_h))
        rel_sc = np.where(valid, sc, -np.inf)
        vecs = rel.mmr_vecs[safe] if rel.mmr_vecs is not None else None
        picks = mmr_batch(rel_sc, vecs, base.k, base.lam)
        safe_p = np.maximum(picks, 0)
        sel_ids = np.take_along_axis(ids, safe_p, 1)
        sel_sc = np.take_along_axis(sc, safe_p, 1).astype(np.float64)
        counts = (picks >= 0).sum(axis=1).tolist()  # picks are left-aligned: -1 only after the last pick
        return sel_ids, sel_sc, counts


def _by_relevance(relevance: np.ndarray, k: int) -> np.ndarray:
    """``mmr_batch(relevance[None], None, k, 1.0)[0]`` without its -1 padding, for a row already
    in pick order (descending relevance, ties in position order, as ``_pick``'s lexsort leaves
    it): the positions of its first ``k`` finite entries."""
    return np.flatnonzero(np.isfinite(relevance))[:k]


SCAN_USERS = 200_000  # above this many users, /customers scores candidates instead of every user
SCAN_CHUNK = 1 << 17  # users per block of the full scan (bounds the float32 copy of their factors)
CUSTOMER_SAMPLE = 4096
BUYERS_PER_NEIGHBOUR = 64
NEIGHBOURS_FOR_CUSTOMERS = 10


def _scan_customers(rel: LoadedRelease, i: int) -> np.ndarray:
    """Every user's ALS score for item ``i`` (float32 [n_users])."""
    U = rel.als_user
    if U.dtype == np.float16 and U.ndim == 2 and U.flags.c_contiguous and rel.als_item.dtype == np.float32:
        return _customers.scan_scores_half(U.view(np.uint16), _customers.HALF_TO_FLOAT, rel.als_item[i], SCAN_CHUNK)
    return _scan_customers_reference(rel, i)


def _scan_customers_reference(rel: LoadedRelease, i: int) -> np.ndarray:
    y = rel.als_item[i]
    s = np.empty(rel.n_users, np.float32)
    for a0 in range(0, rel.n_users, SCAN_CHUNK):  # chunks: float16 rows are cast block by block
        a1 = min(rel.n_users, a0 + SCAN_CHUNK)
        s[a0:a1] = np.asarray(rel.als_user[a0:a1], dtype=np.float32) @ y
    return s


def _customers_by_candidates(rel: LoadedRelease, i: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(candidates, top user idx [k] (-1 past the eligible), their scores)`` for item ``i``:
    ``_customers_by_candidates_reference`` in a few numba calls (``recs_kernels.customers``)."""
    U = rel.als_user
    if U.dtype not in (np.float16, np.float32) or U.ndim != 2 or not U.flags.c_contiguous:
        return _customers_by_candidates_reference(rel, i, k)
    start = (i * 2654435761) % max(1, rel.n_users - CUSTOMER_SAMPLE + 1)
    adj = [rel.sim_factors, rel.covis, getattr(rel, "item_sim", None)]
    parts = [x for a in adj for x in ((a.indptr, a.indices) if a is not None else (np.zeros(rel.n_items + 1, np.int64), _NONE32))]
    bp, bi = rel.buyers.indptr, rel.buyers.indices
    cand = _customers.candidates(rel.n_users, start, CUSTOMER_SAMPLE, i, NEIGHBOURS_FOR_CUSTOMERS, BUYERS_PER_NEIGHBOUR,
                                 *parts, bp, bi)
    if U.dtype == np.float16:
        G = _customers.rows_half(U.view(np.uint16), cand, _customers.HALF_TO_FLOAT)
    else:
        G = _request.take_rows(U, cand, np.float32)
    ids, scores, ok = _customers.top_customers(G, np.asarray(rel.als_item[i], np.float32), cand, bi[bp[i]:bp[i + 1]],
                                               min(k, cand.size))
    if not ok:
        raise ValueError("scores contains non-finite values")  # what topk.topk_scores refuses
    return cand, ids, scores


def _customers_by_candidates_reference(rel: LoadedRelease, i: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numpy version of ``_customers_by_candidates`` (its tests compare against it)."""
    a, b = rel.buyers.indptr[i], rel.buyers.indptr[i + 1]
    cand = _customer_candidates(rel, i)
    s = np.asarray(rel.als_user[cand], dtype=np.float32) @ rel.als_item[i]
    s[_member(cand, np.asarray(rel.buyers.indices[a:b], np.int64))] = -np.inf  # already bought it
    top, scores = _topk.topk_scores(s, min(k, cand.size))
    ids = np.where(top >= 0, cand[np.maximum(top, 0)], -1)
    return cand, ids, scores


def _customer_candidates(rel: LoadedRelease, i: int) -> np.ndarray:
    """Sorted unique user idx to score for item ``i``: buyers of its nearest neighbours
    (similar items, co-visitation, item similarity) and one contiguous block of
    CUSTOMER_SAMPLE users chosen by the item (contiguous: the mapped factor rows are read as a
    few pages, not one page per user). At most ~4K + 30 x 64 users whatever the release; every
    user when there are no more than CUSTOMER_SAMPLE."""
    n = rel.n_users
    start = (i * 2654435761) % max(1, n - CUSTOMER_SAMPLE + 1)
    parts = [np.arange(start, min(n, start + CUSTOMER_SAMPLE), dtype=np.int64)]
    for adj in (rel.sim_factors, rel.covis, getattr(rel, "item_sim", None)):
        if adj is None:
            continue
        nb = adj.indices[adj.indptr[i]:min(adj.indptr[i + 1], adj.indptr[i] + NEIGHBOURS_FOR_CUSTOMERS)]
        for j in np.asarray(nb).tolist():
            a, b = rel.buyers.indptr[j], rel.buyers.indptr[j + 1]
            step = max(1, (b - a) // BUYERS_PER_NEIGHBOUR)
            parts.append(np.asarray(rel.buyers.indices[a:b:step], np.int64))
    return np.unique(np.concatenate(parts))


_NONE = np.zeros(0, np.int64)
_NONE32 = np.zeros(0, np.int32)
_NO_F32 = np.zeros(0, np.float32)
_NO_BOOL = np.zeros(0, np.bool_)
_NO_BOOL2 = np.zeros((0, 0), np.bool_)
_NO_SIMS = np.zeros((0, 0), np.float32)
_NO_SIMS3 = np.zeros((0, 0, 0), np.float32)
_ANCHORED = ("item_sim", "covis", "rules", "content")  # recs_kernels.request.score's anchor rows


def _member(x: np.ndarray, sorted_: np.ndarray) -> np.ndarray:
    """``np.isin(x, sorted_)`` for a sorted ``sorted_``: one binary search instead of isin's
    general machinery (a dozen numpy calls on these small arrays)."""
    if sorted_.size == 0:
        return np.zeros(np.shape(x), bool)
    pos = np.searchsorted(sorted_, x)
    np.minimum(pos, sorted_.size - 1, out=pos)
    return sorted_[pos] == x


def _lookup_many(index, keys: list) -> np.ndarray:
    """Positions of ``keys`` in an id index (dict or ``CompactIndex``), -1 when absent."""
    many = getattr(index, "get_many", None)
    if many is not None:
        return many(keys)
    get = index.get
    return np.fromiter((get(u, -1) for u in keys), dtype=np.int64, count=len(keys))


def rel_has_topn(rel: LoadedRelease, u: int) -> bool:
    return bool(rel.topn_ids.shape[1]) and rel.topn_ids[u, 0] >= 0


def _coerce(model, obj, kw):
    if obj is None:
        return model(**kw)
    if isinstance(obj, model):
        return obj.model_copy(update=kw) if kw else obj
    if isinstance(obj, dict):
        return model.model_validate({**obj, **kw})
    raise TypeError(f"expected {model.__name__} or dict, got {type(obj).__name__}")


def _check_k(k: int) -> int:
    from .schemas import MAX_K

    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= MAX_K:
        raise ValueError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
    return int(k)


def _check_filters(filters: dict | None) -> dict:
    from .schemas import validate_filters

    return validate_filters(filters or {})
