"""Blend weights and MMR lambda tuned on a validation window, within a time budget.

The blend is linear in its weights: for one request the candidates and every source's
z-scores do not depend on the weights, only their sum does. So the validation requests are
replayed ONCE through the served path (``Recommender``, every weight 1, MMR off) while the
scorer's per-source contributions are recorded; any weight vector is then scored by one
matrix product and a rank count per request (a numba loop), thousands of trials a second.
MMR lambda (which re-ranks after the blend) is chosen by replaying the real served path.
The search is a coordinate search from the configured weights and every single source,
then seeded random perturbations, until the budget is spent.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from recs_kernels.sources import SOURCES

K = 10


@njit(cache=True)
def _recalls(total, cand, seg, tpos, tptr, denom, k):
    """recall@k per request: a truth item (row ``tpos``) is a hit when fewer than k candidates
    of its request outrank it (higher total, ties to the lower item index, as served)."""
    n_q = seg.shape[0] - 1
    out = np.zeros(n_q)
    for q in range(n_q):
        a, b = seg[q], seg[q + 1]
        hits = 0
        for t in range(tptr[q], tptr[q + 1]):
            p = tpos[t]
            s = total[p]
            c = cand[p]
            r = 0
            for j in range(a, b):
                if total[j] > s or (total[j] == s and cand[j] < c):
                    r += 1
                    if r >= k:
                        break
            if r < k:
                hits += 1
        out[q] = hits / denom[q] if denom[q] > 0 else 0.0
    return out


@njit(cache=True)
def _recalls_w(C, w, cand, seg, tpos, tptr, denom, k):
    """``_recalls`` of the totals ``C @ w``, fused: only requests with a truth item among their
    candidates are scored, and each by its k-th best candidate (one pass keeping the k best),
    so a trial costs one pass over the rows instead of one per truth item."""
    n_q = seg.shape[0] - 1
    n_s = C.shape[1]
    out = np.zeros(n_q)
    top_v = np.empty(k, np.float32)
    top_c = np.empty(k, np.int64)
    for q in range(n_q):
        if tptr[q] == tptr[q + 1] or denom[q] <= 0:
            continue
        a, b = seg[q], seg[q + 1]
        if b - a <= k:
            out[q] = (tptr[q + 1] - tptr[q]) / denom[q]
            continue
        n = 0
        for j in range(a, b):
            s = np.float32(0.0)
            for i in range(n_s):
                s += C[j, i] * w[i]
            c = cand[j]
            if n == k and (s < top_v[k - 1] or (s == top_v[k - 1] and c > top_c[k - 1])):
                continue
            # insert into the sorted k best (total desc, item index asc: the served order)
            p = n if n < k else k - 1
            while p > 0 and (s > top_v[p - 1] or (s == top_v[p - 1] and c < top_c[p - 1])):
                if p < k:
                    top_v[p] = top_v[p - 1]
                    top_c[p] = top_c[p - 1]
                p -= 1
            top_v[p] = s
            top_c[p] = c
            if n < k:
                n += 1
        kv, kc = top_v[k - 1], top_c[k - 1]
        hits = 0
        for t in range(tptr[q], tptr[q + 1]):
            p = tpos[t]
            s = np.float32(0.0)
            for i in range(n_s):
                s += C[p, i] * w[i]
            if s > kv or (s == kv and cand[p] <= kc):
                hits += 1
        out[q] = hits / denom[q]
    return out


@dataclass
class Recorded:
    """Per use case: every request's candidates and per-source contributions, concatenated."""

    contrib: dict = field(default_factory=dict)  # use case -> [rows, len(SOURCES)] float32
    cand: dict = field(default_factory=dict)
    seg: dict = field(default_factory=dict)
    tpos: dict = field(default_factory=dict)
    tptr: dict = field(default_factory=dict)
    denom: dict = field(default_factory=dict)

    def recalls(self, weights: dict, use_case: str, k: int = K) -> np.ndarray:
        """recall@k of the served answer (MMR off) of each request."""
        w = np.array([float(weights.get(s, 0.0)) for s in SOURCES], np.float32)
        return _recalls_w(self.contrib[use_case], w, self.cand[use_case], self.seg[use_case], self.tpos[use_case],
                          self.tptr[use_case], self.denom[use_case], k)

    def recall(self, weights: dict, use_case: str, k: int = K, limit: int | None = None) -> float:
        """Mean recall@k of the served answers (MMR off) over the requests (the first ``limit``)."""
        r = self.recalls(weights, use_case, k)[:limit]
        return float(r.mean()) if r.size else 0.0

    def half(self, use_case: str, part: int) -> "Recorded":
        """The first (``part`` 0) or second half of ``use_case``'s requests, as a record of its own."""
        seg, tptr = self.seg[use_case], self.tptr[use_case]
        n = seg.size - 1
        q0, q1 = (0, n // 2) if part == 0 else (n // 2, n)
        a, b = seg[q0], seg[q1]
        out = Recorded()
        out.contrib[use_case] = self.contrib[use_case][a:b]
        out.cand[use_case] = self.cand[use_case][a:b]
        out.seg[use_case] = seg[q0:q1 + 1] - a
        out.tpos[use_case] = self.tpos[use_case][tptr[q0]:tptr[q1]] - a
        out.tptr[use_case] = tptr[q0:q1 + 1] - tptr[q0]
        out.denom[use_case] = self.denom[use_case][q0:q1]
        return out

    def answers(self, weights: dict, use_case: str, item_ids, k: int = K) -> list[list[str]]:
        """The served top-k per request for ``weights`` (MMR off), as item ids."""
        w = np.array([float(weights.get(s, 0.0)) for s in SOURCES], np.float32)
        total = self.contrib[use_case] @ w
        cand, seg = self.cand[use_case], self.seg[use_case]
        out = []
        for a, b in zip(seg[:-1], seg[1:]):
            order = np.lexsort((cand[a:b], -total[a:b]))[:k]
            out.append([item_ids[i] for i in cand[a:b][order]])
        return out


def record(replay, use_cases, k: int = K) -> Recorded:
    """Replay ``use_cases`` once with every weight 1 and MMR off, keeping what the scorer saw:
    the final candidates of each request and their per-source contributions, as the served
    path (the request kernel) hands them to the pick."""
    base = replay.base
    view = base.with_contract(base.contract.replace(weights={s: 1.0 for s in SOURCES}, mmr_lambda=1.0))
    st = view._current()
    calls: list = []
    pick = view._pick

    def recording_pick(st_, q, cand, total, contrib, anchors):
        calls.append((np.asarray(cand, np.int64), np.array(contrib, np.float32)))
        return pick(st_, q, cand, total, contrib, anchors)

    view._pick = recording_pick  # shadows the method on this view only
    index = st.rel.item_index
    out = Recorded()
    saved = replay.rec
    replay.rec = view
    try:
        for uc in use_cases:
            if uc not in replay.cases.queries:
                continue
            C_parts, c_parts, seg, tpos, tptr, denom = [], [], [0], [], [0], []
            qs = replay.cases.queries[uc]
            single = uc == "cold_start"  # one anonymous answer for all
            calls.clear()
            if single:
                replay.answers_one(uc, 0)
            for i, (_, truth) in enumerate(qs):
                if not single:
                    calls.clear()
                    replay.answers_one(uc, i)
                cand, C = calls[-1] if calls else (np.zeros(0, np.int64), np.zeros((0, len(SOURCES)), np.float32))
                pos = {int(c): j for j, c in enumerate(cand)}
                t_idx = [index.get(t) for t in dict.fromkeys(truth)]
                tpos.extend(seg[-1] + pos[t] for t in t_idx if t is not None and t in pos)
                tptr.append(len(tpos))
                denom.append(min(k, len(set(truth))))
                C_parts.append(C)
                c_parts.append(cand)
                seg.append(seg[-1] + len(cand))
            out.contrib[uc] = np.ascontiguousarray(np.concatenate(C_parts)) if C_parts else np.zeros((0, len(SOURCES)), np.float32)
            out.cand[uc] = np.concatenate(c_parts) if c_parts else np.zeros(0, np.int64)
            out.seg[uc] = np.asarray(seg, np.int64)
            out.tpos[uc] = np.asarray(tpos, np.int64)
            out.tptr[uc] = np.asarray(tptr, np.int64)
            out.denom[uc] = np.asarray(denom, np.float64)
    finally:
        replay.rec = saved
    return out


def objective(per_use_case: dict, weights: dict, scale: dict | None = None) -> float:
    """Weighted mean over the use cases present of recall@k relative to ``scale`` (the best
    single source's recall@k on that use case): each use case counts by how close the answer
    comes to the best any one source does there, not by its recall's magnitude."""
    scale = scale or {}
    num = sum(weights.get(u, 1.0) * v / (scale.get(u) or 1.0) for u, v in per_use_case.items())
    den = sum(weights.get(u, 1.0) for u in per_use_case)
    return num / den if den else 0.0


@dataclass
class SearchResult:
    weights: dict
    value: float
    per_use_case: dict
    trials: int
    curve: list  # (trial, value, best so far)
    single: dict  # source -> (objective, per use case)
    scale: dict  # use case -> best single source's recall@k (the objective's unit)
    seconds: float = 0.0  # CPU seconds spent


COORD_STEPS = (0.0, 0.25, 0.5, 2.0, 4.0)  # a source's weight times these, when it has one
COORD_FROM_ZERO = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # else these times the largest weight
PATIENCE = 300  # random perturbations without a gain before the search stops (and returns its budget)


def perturbed(best: dict, rng: np.random.Generator) -> dict:
    """``best`` with one to three sources moved: a weight times a log-normal factor (sigma 1) or,
    one time in five, dropped; a zero weight raised to 1-30% of the largest. Moving a few
    coordinates at once escapes the coordinate search's local optima, where moving all of them
    rarely finds a better point (on the bundled data at 2011-11-01 the homepage search stopped
    at a validation recall@10 of 0.105 from some records and 0.110 from others, the same
    landscape; with these moves every record reached 0.110)."""
    cand = dict(best)
    top = max(best.values())
    for i in rng.choice(len(SOURCES), int(rng.integers(1, 4)), replace=False):
        s = SOURCES[i]
        if best[s] > 0:
            cand[s] = 0.0 if rng.random() < 0.2 else float(best[s] * np.exp(rng.normal(0.0, 1.0)))
        else:
            cand[s] = float(rng.choice([0.01, 0.03, 0.1, 0.3])) * top
    return cand


def search(rec: Recorded, start: dict, use_case_weights: dict, budget_seconds: float, seed: int = 0,
           use_cases=None, patience: int = PATIENCE, full_descents: bool = False) -> SearchResult:
    """Coordinate search from three starts (``start``, the best single source, every weight 1),
    then random perturbations of a few weights (``perturbed``) from the best point found, on
    the recorded validation requests (of ``use_cases``, default all recorded), for at most
    ``budget_seconds`` of this process's CPU time (a loaded machine does not cut the search
    short). Coordinate passes repeat while one helps; the perturbations stop after ``patience``
    trials without a gain, so a search that has converged (few sources with a signal) leaves its
    budget unspent (``SearchResult.seconds``). ``full_descents``: the three descents run to their
    end whatever the budget (a few hundred trials each, and a trial's cost is bounded by the
    sampled requests, not the data), which then bounds the perturbations only: with 1,000
    requests a budget share cut the second descent short in some runs, and the served homepage
    blend fell into the worse basin (test recall@10 0.112 instead of 0.122)."""
    t0 = time.process_time()
    t_end = t0 + budget_seconds
    ucs = list(use_cases or rec.contrib)
    curve: list = []
    cache: dict = {}

    raw = {s: {u: rec.recall({s: 1.0}, u) for u in ucs} for s in SOURCES}
    scale = {u: max(raw[s][u] for s in SOURCES) for u in ucs}

    def f(w: dict) -> tuple[float, dict]:
        key = tuple(round(float(w.get(s, 0.0)), 6) for s in SOURCES)
        if key not in cache:
            per = {u: rec.recall(w, u) for u in ucs}
            cache[key] = (objective(per, use_case_weights, scale), per)
            best_so_far = max(curve[-1][2], cache[key][0]) if curve else cache[key][0]
            curve.append((len(curve), cache[key][0], best_so_far))
        return cache[key]

    single = {s: f({s: 1.0}) for s in SOURCES}

    def spent() -> bool:
        return time.process_time() >= t_end

    def descend(best: dict) -> tuple[dict, float]:
        best_v, _ = f(best)
        improved = True
        while improved and (full_descents or not spent()):
            improved = False
            for s in SOURCES:
                cur, top = best[s], max(best.values())
                # from 0: log-spaced below the largest weight (neighbour sources have large z-scores
                # on few items: their useful weights are small)
                tries = [cur * m for m in COORD_STEPS] if cur > 0 else [top * m for m in COORD_FROM_ZERO]
                for v in tries:
                    if not full_descents and spent():
                        break
                    cand = {**best, s: v}
                    if not any(cand.values()):
                        continue
                    val, _ = f(cand)
                    if val > best_v + 1e-9:
                        best, best_v, improved = cand, val, True
        return best, best_v

    # several starts, each descended: the objective has more than one basin (bundled homepage at
    # 2011-11-01: one leaning on BPR, one on content and ALS, 0.005 recall@10 apart), and which
    # one a single start falls into changed with the run's BPR fit
    top1 = max(SOURCES, key=lambda s: (single[s][0], -SOURCES.index(s)))
    starts = [{s: float(start.get(s, 0.0)) for s in SOURCES}, {s: float(s == top1) for s in SOURCES},
              {s: 1.0 for s in SOURCES}]
    best, best_v = None, -np.inf
    for st in starts:
        if best is not None and not full_descents and spent():
            break
        if not any(st.values()):
            continue
        b, v = descend(st)
        if v > best_v + 1e-9:
            best, best_v = b, v
    rng = np.random.default_rng(seed)
    stale = 0
    while time.process_time() < t_end and len(cache) < 5000 and stale < patience:
        cand = perturbed(best, rng)
        if not any(cand.values()):
            continue
        val, _ = f(cand)
        stale += 1
        if val > best_v + 1e-9:
            best, best_v, stale = cand, val, 0
    top = max(best.values())
    best = {s: round(v / top, 4) for s, v in best.items()}  # scale-free: the largest weight is 1
    val, per = f(best)
    return SearchResult(best, val, per, len(cache), curve, single, scale, time.process_time() - t0)


@dataclass
class UseCaseChoice:
    """What one use case is served with, and the validation figures it was chosen on."""

    weights: dict
    mmr_lambda: float
    chosen: str  # tuned | best_single:<source> | configured
    served: float  # validation recall@k of the chosen blend, MMR off, every request
    single: dict  # source -> validation recall@k alone
    mmr: dict  # lambda -> recall@k on the first ``lambda_requests`` requests
    trials: int
    curve: list
    out_of_fold: dict | None = None  # two-fold validation recall of tuning vs picking one source

    def blend(self) -> dict:
        return {"weights": self.weights, "mmr_lambda": self.mmr_lambda, "chosen": self.chosen}

    @property
    def best_single(self) -> str:
        return max(self.single, key=lambda x: (self.single[x], -SOURCES.index(x)))


def choose_blends(rec: Recorded, configured: dict, configured_lambda: float, *, tune: bool, budget_seconds: float,
                  mmr_lambdas=(1.0,), mmr_recall=None, lambda_requests: int = 100, seed: int = 0) -> dict:
    """Per use case recorded in ``rec``: its own weight search on its own validation recall@k
    (``budget_seconds`` shared evenly, cheapest use case first), bagged with the half searches
    (``bagged``) and stripped of weights without validation evidence (``pruned``), then its MMR
    lambda (``mmr_choice``: below 1 only when a partial replay, ``mmr_recall(weights, lambda,
    use_case, limit)``, shows it clearly better), then the fallback: a blend that does not reach
    the best single source of that use case on validation is replaced by that source alone
    (``best_single:<source>``). Returns ``{use_case: UseCaseChoice}``."""
    # cheapest first (a trial costs one pass over the recorded candidates): what a use case that
    # converges early leaves goes to the costlier ones after it, whose searches need more trials
    ucs = sorted((u for u in rec.contrib if rec.seg[u].size > 1), key=lambda u: rec.contrib[u].shape[0])
    out = {}
    t_end = time.process_time() + budget_seconds
    for n, uc in enumerate(ucs):
        single = {s: rec.recall({s: 1.0}, uc) for s in SOURCES}
        oof = None
        if tune:
            # an even share of what is left: a search that converges early leaves its rest to the next
            share = max(0.0, t_end - time.process_time()) / (len(ucs) - n)
            res = search(rec, configured, {}, share / 2, seed=seed + n, use_cases=[uc], full_descents=True)
            weights, trials, curve = res.weights, res.trials, res.curve
            oof = out_of_fold(rec, uc, configured, share / 2, seed + n)
            weights, oof["bagged"] = bagged(rec, uc, weights, oof.pop("weights", []), floor=max(single.values()))
            weights = pruned(rec, uc, weights)
        else:
            weights, trials, curve = dict(configured), 1, []
        served = rec.recall(weights, uc)
        mmr, lam = mmr_choice(rec, uc, weights, mmr_lambdas if tune else (configured_lambda,), mmr_recall, lambda_requests)
        best = max(single, key=lambda x: (single[x], -SOURCES.index(x)))
        chosen = "tuned" if tune else "configured"
        if served + 1e-12 < single[best] or (oof is not None and oof["blend"] + 1e-12 < oof["single"]):
            # the blend does not reach its best part here (or does only on the requests it was
            # tuned on): serve that part alone, and say so
            weights, lam, served, chosen = {s: float(s == best) for s in SOURCES}, 1.0, single[best], f"best_single:{best}"
        out[uc] = UseCaseChoice({s: float(weights.get(s, 0.0)) for s in SOURCES}, float(lam), chosen, served, single,
                                mmr, trials, curve, oof)
    return {uc: out[uc] for uc in rec.contrib if uc in out}


def clearly_better(gain: np.ndarray) -> bool:
    """A per-request gain (paired differences of recall on the same requests) is taken only
    when its mean exceeds one standard error: a change that wins by less is the noise of a few
    hundred requests, and the simpler or current choice stays (the one-standard-error rule)."""
    if gain.size < 2:
        return False
    return float(gain.mean()) > float(gain.std(ddof=1)) / np.sqrt(gain.size)


def mmr_choice(rec: Recorded, uc: str, weights: dict, lambdas, mmr_recall, limit: int) -> tuple[dict, float]:
    """MMR lambda for ``weights`` on the first ``limit`` requests of ``uc``: 1 (scored from the
    record) unless a lambda below 1 (``mmr_recall(weights, lambda, use_case, limit)``: per-request
    recalls of a partial replay with MMR on) is ``clearly_better`` than it; the best such. With
    one lambda given, that one. Returns ({lambda: mean recall}, chosen lambda)."""
    lambdas = [float(x) for x in lambdas]
    base = rec.recalls(weights, uc)[:limit]
    mmr = {1.0: float(base.mean()) if base.size else 0.0} if 1.0 in lambdas or len(lambdas) > 1 else {}
    chosen = 1.0
    for lam in lambdas:
        if lam >= 1.0 or lam in mmr:
            continue
        r = np.asarray(mmr_recall(weights, lam, uc, limit), np.float64) if mmr_recall is not None else base
        mmr[lam] = float(r.mean()) if r.size else 0.0
        if len(lambdas) == 1:
            chosen = lam
        elif clearly_better(r - base) and mmr[lam] > mmr[chosen]:
            chosen = lam
    return mmr, chosen


def out_of_fold(rec: Recorded, uc: str, start: dict, budget_seconds: float, seed: int = 0) -> dict:
    """Two-fold estimate of what tuning is worth on ``uc``: weights searched on one half of the
    requests and the best single source picked on that half, both scored on the other half
    (mean of the two ways). A search that only fits its own requests shows here."""
    halves = [rec.half(uc, 0), rec.half(uc, 1)]
    blend = single = 0.0
    weights = []
    for a, b in ((0, 1), (1, 0)):
        A, B = halves[a], halves[b]
        if A.seg[uc].size < 2 or B.seg[uc].size < 2:
            return {"blend": 0.0, "single": 0.0}
        w = search(A, start, {}, budget_seconds / 2, seed=seed, use_cases=[uc]).weights
        weights.append(w)
        s_a = max(SOURCES, key=lambda s: (A.recall({s: 1.0}, uc), -SOURCES.index(s)))
        blend += B.recall(w, uc) / 2
        single += B.recall({s_a: 1.0}, uc) / 2
    return {"blend": round(blend, 5), "single": round(single, 5), "weights": weights}


def bagged(rec: Recorded, uc: str, weights: dict, members: list, floor: float = 0.0) -> tuple[dict, bool]:
    """The mean of ``weights`` (searched on every request) and ``members`` (searched on each
    half: ``out_of_fold``), each scaled to a largest weight of 1, unless ``weights`` beats that
    mean on ``uc``'s requests by more than one standard error of the per-request difference
    (the one-standard-error rule: the lower-variance choice unless the data clearly says
    otherwise; a search tuned on all requests also fits their noise) or the mean's recall is
    below ``floor`` (the best single source's: the mean must not turn a blend that beats every
    source into one the fallback replaces by a single source). Returns (weights, bagged)."""
    if not members:
        return weights, False
    scaled = [{s: float(w.get(s, 0.0)) / (max(w.values()) or 1.0) for s in SOURCES} for w in (weights, *members)]
    mean = {s: float(np.mean([w[s] for w in scaled])) for s in SOURCES}
    top = max(mean.values())
    if top <= 0:
        return weights, False
    mean = {s: round(v / top, 4) for s, v in mean.items()}
    d = rec.recalls(weights, uc) - rec.recalls(mean, uc)
    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else 0.0
    if float(d.mean()) > se or rec.recall(mean, uc) < floor:
        return weights, False
    return mean, True


def pruned(rec: Recorded, uc: str, weights: dict) -> dict:
    """``weights`` without the sources whose weight does not change ``uc``'s validation recall
    (smallest weight first; then scaled to a largest weight of 1): a weight the validation
    requests give no evidence for is not served. A flat objective leaves the search's start or
    a perturbation's leftovers on sources that carry no signal there (a cold start's neighbour
    sources, trending beside popularity on a window where both pick the same items), which then
    move the test answers at random."""
    w = {s: float(weights.get(s, 0.0)) for s in SOURCES}
    base = rec.recall(w, uc)
    for s in sorted((s for s in SOURCES if w[s] > 0), key=lambda s: (w[s], SOURCES.index(s))):
        trial = {**w, s: 0.0}
        if max(trial.values()) > 0 and rec.recall(trial, uc) >= base - 1e-12:
            w = trial
    top = max(w.values())
    return {s: round(v / top, 4) for s, v in w.items()} if top > 0 else w


def gate(choices: dict, min_ratio_over_popularity: float = 1.0) -> dict:
    """Per use case: the served blend reaches all-time popularity (times the ratio) on
    validation. The fallback serves the best single source, popularity among them, so a weak
    model costs its weight, not the release."""
    per = {uc: {"served": round(c.served, 5), "popularity": round(c.single["popularity"], 5),
                "best_single": c.best_single, "best_single_value": round(c.single[c.best_single], 5), "chosen": c.chosen,
                "out_of_fold": c.out_of_fold,
                "passed": c.served + 1e-12 >= c.single["popularity"] * min_ratio_over_popularity}
           for uc, c in choices.items()}
    failed = [uc for uc, g in per.items() if not g["passed"]]
    return {"passed": not failed, "required_ratio": min_ratio_over_popularity, "use_cases": per,
            "reason": f"served below popularity on validation for {failed}" if failed
            else "every use case's served blend reaches popularity on validation"}


def apply_tuned(topn_config, artifacts):
    """batch_topn's config with the blend weights and MMR lambda the evaluation chose on its
    validation window (artifact ``tuned_blend``), when it tuned them; else unchanged. The shards
    record the config they ran with, so the release's contract carries the tuned values."""
    try:
        meta = artifacts.meta("tuned_blend")
    except FileNotFoundError:
        return topn_config
    if not meta.get("tuned"):
        return topn_config
    blend = type(topn_config.blend).model_validate({**topn_config.blend.model_dump(), **meta["weights"]})
    h = meta.get("hyperparameters") or {}
    request = type(topn_config.request).model_validate({**topn_config.request.model_dump(), "mmr_lambda": meta["mmr_lambda"],
                                                        **({"recent_weight": h["recent_weight"]} if "recent_weight" in h else {})})
    return topn_config.model_copy(update={"blend": blend, "request": request})


def apply_tuned_fit(config, artifacts):
    """The ALS (``ALSParams``) or interaction-matrix (``MatrixParams``) config with the
    regularization/alpha or history decay the last evaluation chose on its validation window
    (artifact ``tuned_blend``); else unchanged. The models stage fits before the evaluation
    runs, so a run fits with the previous evaluation's choice, and the evaluation searches
    from there: the assets record what they fit with, and the contract carries that."""
    from recs_assets import modeling

    try:
        meta = artifacts.meta("tuned_blend")
    except FileNotFoundError:
        return config
    h = meta.get("hyperparameters") or {}
    if not meta.get("tuned") or not h:
        return config
    if isinstance(config, modeling.ALSParams):
        return config.model_copy(update={"regularization": float(h["als_regularization"]), "alpha": float(h["als_alpha"])})
    if isinstance(config, modeling.MatrixParams):
        return config.model_copy(update={"decay_days": float(h["decay_days"])})
    raise TypeError(f"no tuned values for a {type(config).__name__}")


# ----------------------------------------------------------------------------- hyperparameters
# (name, multiplicative steps tried from the current value), in the order the search visits them:
# request-time first (no re-fit), then the ALS fit, then the history decay (matrix and ALS re-fit).
HYPER_USE_CASES = ("homepage", "session")  # what the trials replay
HYPER_REQUESTS = 150  # the first requests of each: a trial costs a fixed replay whatever max_users is
HYPER_STEPS = (("recent_weight", (0.5, 2.0)), ("als_regularization", (1 / 3, 3.0)), ("als_alpha", (1 / 3, 3.0)),
               ("decay_days", (1 / 3, 3.0)))


def hyperparameters_of(cfg) -> dict:
    """The tuned hyperparameters' values in an evaluation ``Configs``."""
    return {"recent_weight": cfg.topn.request.recent_weight, "als_regularization": cfg.als.regularization,
            "als_alpha": cfg.als.alpha, "decay_days": cfg.matrix.decay_days}


def with_hyperparameters(cfg, h: dict):
    """A copy of ``cfg`` (evaluation ``Configs``) with the hyperparameters ``h``."""
    topn = cfg.topn.model_copy(update={"request": cfg.topn.request.model_copy(update={"recent_weight": float(h["recent_weight"])})})
    return dataclasses.replace(
        cfg, topn=topn,
        als=cfg.als.model_copy(update={"regularization": float(h["als_regularization"]), "alpha": float(h["als_alpha"])}),
        matrix=cfg.matrix.model_copy(update={"decay_days": float(h["decay_days"])}))


def blend_value(rec: Recorded, start: dict, use_case_weights: dict, scale: dict, budget_seconds: float) -> "Trial":
    """How good models are for serving: each use case's blend searched briefly (MMR off, with
    its best-single fallback), the objective over use cases against the fixed ``scale``, and
    its per-request terms (``Trial``: what a difference between two trials is judged by)."""
    choices = choose_blends(rec, start, 1.0, tune=True, budget_seconds=budget_seconds)
    per = {uc: c.served for uc, c in choices.items()}
    den = sum(use_case_weights.get(u, 1.0) for u in per) or 1.0
    terms = {uc: (use_case_weights.get(uc, 1.0) / den / (scale.get(uc) or 1.0), rec.recalls(c.weights, uc))
             for uc, c in choices.items()}
    return Trial(objective(per, use_case_weights, scale), per, terms)


@dataclass
class Trial:
    """A hyperparameter trial's objective, ``sum(coef * mean(recalls))`` over its use cases'
    ``terms`` ({use case: (coef, per-request recalls)}; the same requests in every trial)."""

    value: float
    per_use_case: dict = field(default_factory=dict)
    terms: dict = field(default_factory=dict)


def beats(new: "Trial | float", old: "Trial | float") -> bool:
    """``new`` is better than ``old`` by more than one standard error of the paired per-request
    difference of the objective (both replay the same requests; the use cases' terms are
    independent). Plain numbers (no per-request terms) compare by value. On a few hundred
    requests, the short blend searches and a hogwild BPR fit move the objective by about as
    much as a hyperparameter step does: a step that wins by less is not taken."""
    nv, ov = (x.value if isinstance(x, Trial) else float(x) for x in (new, old))
    if not (isinstance(new, Trial) and isinstance(old, Trial)) or set(new.terms) != set(old.terms):
        return nv > ov + 1e-9
    var = 0.0
    for uc, (coef, r_new) in new.terms.items():
        d = r_new - old.terms[uc][1]
        if d.size > 1:
            var += coef ** 2 * float(d.var(ddof=1)) / d.size
    return nv > ov + max(1e-9, float(np.sqrt(var)))


def search_hyperparameters(evaluate, start: dict, budget_seconds: float) -> dict:
    """Coordinate search over ``HYPER_STEPS`` from ``start``: ``evaluate(h) -> Trial`` (or a
    plain value; a re-fit, a replay and a short blend search each, so few trials fit the
    budget). A step is kept when it ``beats`` the best so far. A trial is begun only while
    budget remains; the budget is this process's CPU seconds, so a loaded machine does not get
    fewer trials. Returns ``{"chosen", "start", "value", "trials": [(h, value, seconds)]}``."""
    t_end = time.process_time() + budget_seconds
    trials: list = []

    def run(h: dict):
        t = time.process_time()
        v = evaluate(h)
        trials.append(({k: round(x, 6) for k, x in h.items()}, round(float(v.value if isinstance(v, Trial) else v), 5),
                       round(time.process_time() - t, 1)))
        return v

    best = dict(start)
    best_t = run(best)
    for name, steps in HYPER_STEPS:
        for f in steps:
            if time.process_time() >= t_end:
                break
            cand = {**best, name: best[name] * f}
            t = run(cand)
            if beats(t, best_t):
                best, best_t = cand, t
                break  # a step that helps is kept; the opposite direction is not tried
    return {"chosen": best, "start": dict(start), "value": float(best_t.value if isinstance(best_t, Trial) else best_t),
            "trials": trials}
