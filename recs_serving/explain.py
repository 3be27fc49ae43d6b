"""Answers people can read: item attributes and reasons in words, added after an answer is built.

The recommender answers with ids, scores and reason codes (``bought_with:85123A``). This module
post-processes those answers for the HTTP layer and the web pages: each item gains ``title``,
``price``, ``brand``, ``category`` (and ``image_url`` when the catalog has one), and each answer's
reasons gain an ``explanation`` ("Often bought with WHITE HANGING HEART T-LIGHT HOLDER"). The
codes stay, so machines keep matching on them.

The catalog view is read once per release from its ``items.parquet`` (not from the loader's
arrays), so it follows releases exactly as the recommender does and needs nothing from it but
the release path and version.
"""
from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow.parquet as pq
from litestar.serialization import encode_json as _encode_json
from msgspec import Raw as _Raw

# One line per reason code: kept next to each other so a new code is one edit.
_FIXED = {
    "for_you": "Picked for you from your purchase history",
    "bought_together": "Often bought together with what is in the basket",
    "similar": "Similar to what you looked at",
    "popular": "Popular across the shop",
    "trending": "Selling fast right now",
    "pinned": "Featured by the merchandising team",
    "boosted": "Promoted by the merchandising team",
    "likely_buyer": "Their purchases resemble those of this item's buyers",
}
_WITH_ITEM = {
    "bought_with": "Often bought with {}",
    "similar_to": "Similar to {}",
    "related_to": "Chosen by shoppers who also chose {}",
    "bought_similar": "Bought {}, whose buyers also buy this",
    "because_you_bought": "You bought {}",
}
_WITH_NAME = {
    "popular_in_brand": "Popular in the {} range",
    "popular_in_category": "Popular among {}",
}


def _clean_price(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return round(f, 2) if math.isfinite(f) else None


@dataclass
class CatalogView:
    """Readable item attributes of one release, by item id."""

    version: str
    index: dict
    item_ids: list
    titles: list
    prices: list
    brands: list
    categories: list
    descriptions: list
    attributes: list  # parsed JSON objects (or None) from the catalog's free-form columns
    popularity: list
    _info: dict = field(default_factory=dict)
    _explained: dict = field(default_factory=dict)  # reason codes -> words
    _enriched: dict = field(default_factory=dict)  # (item, codes, anchor) -> what enrich_items adds (never mutate)
    _wire: dict = field(default_factory=dict)  # (item, codes, anchor) -> JSON around score and rank (enrich_items_wire)

    @staticmethod
    def read(path: Path, version: str) -> "CatalogView":
        f = Path(path) / "items.parquet"
        names = pq.read_schema(f).names
        cols = [c for c in ("idx", "item_id", "title", "price", "brand", "category", "description", "attributes", "popularity")
                if c in names]
        t = pq.read_table(f, columns=cols)
        if "idx" in names:
            t = t.sort_by("idx")
        n = t.num_rows

        def col(name: str) -> list:
            return t.column(name).to_pylist() if name in t.column_names else [None] * n

        ids = [str(x) for x in col("item_id")]
        attrs = []
        for raw in col("attributes"):
            try:
                a = json.loads(raw) if isinstance(raw, str) and raw else None
            except ValueError:
                a = None
            attrs.append(a if isinstance(a, dict) else None)
        return CatalogView(version, {s: i for i, s in enumerate(ids)}, ids, col("title"), col("price"), col("brand"),
                           col("category"), col("description"), attrs, [p or 0.0 for p in col("popularity")])

    def title(self, item_id: str) -> str:
        i = self.index.get(item_id)
        t = self.titles[i] if i is not None else None
        return t or item_id

    def attribute(self, item_id: str, name: str) -> Any:
        i = self.index.get(item_id)
        a = self.attributes[i] if i is not None else None
        return a.get(name) if a else None

    def info(self, item_id: str) -> dict:
        """``title, price, brand, category[, image_url]`` of one item (cached; never mutate)."""
        got = self._info.get(item_id)
        if got is not None:
            return got
        i = self.index.get(item_id)
        if i is None:
            got = {"title": None, "price": None, "brand": None, "category": None}
        else:
            got = {"title": self.titles[i] or item_id, "price": _clean_price(self.prices[i]),
                   "brand": self.brands[i], "category": self.categories[i]}
            a = self.attributes[i]
            if a and a.get("image_url"):
                got["image_url"] = str(a["image_url"])
        self._info[item_id] = got
        return got

    def search(self, text: str, limit: int = 20) -> list[str]:
        """Item ids matching ``text``: the exact id, then ids starting with it, then titles holding
        every word of it, best-selling first."""
        q = text.strip().upper()
        if not q:
            return []
        words = q.split()
        hits = []
        for i, (iid, t) in enumerate(zip(self.item_ids, self.titles)):
            u = iid.upper()
            if u == q:
                hits.append((0, 0.0, i))
            elif u.startswith(q):
                hits.append((1, -self.popularity[i], i))
            elif t and all(w in t.upper() for w in words):
                hits.append((2, -self.popularity[i], i))
        hits.sort()
        return [self.item_ids[i] for _, _, i in hits[:limit]]


_VIEWS: "OrderedDict[str, CatalogView]" = OrderedDict()
_VIEWS_LOCK = threading.Lock()
_KEEP_VIEWS = 3  # the release being served and the ones requests in flight may still hold


def _view_of(rel) -> CatalogView:
    from .prepared import catalog_fields

    fields = catalog_fields(rel) if hasattr(rel, "derived") else None
    if fields is None:
        return CatalogView.read(rel.path, rel.version)
    # the release's own id list, index and titles (same order as items.parquet): nothing read again
    return CatalogView(rel.version, rel.item_index, rel.item_ids, rel.titles, **fields)


def catalog(rel) -> CatalogView:
    """The catalog view of a loaded release (anything with ``version`` and ``path``). The
    recommender builds it before a release goes live (``Recommender._prepare``), so requests
    find it here."""
    v = rel.version
    got = _VIEWS.get(v)
    if got is not None:
        return got
    with _VIEWS_LOCK:
        got = _VIEWS.get(v)
        if got is None:
            got = _VIEWS[v] = _view_of(rel)
            while len(_VIEWS) > _KEEP_VIEWS:
                _VIEWS.popitem(last=False)
    return got


def catalog_of(rec, version: str | None = None) -> CatalogView:
    """The view for the release an answer was computed on (``version``), which is the loaded one
    unless a swap happened in between; then read that release's own (immutable) items."""
    rel = rec.release
    if version is None or version == rel.version:
        return catalog(rel)
    from .release import releases_dir

    path = releases_dir(rec.home) / version
    if (path / "items.parquet").exists():
        return catalog(type("_R", (), {"version": version, "path": path})())
    return catalog(rel)


def explain_code(code: str, view: CatalogView) -> str:
    if code in _FIXED:
        return _FIXED[code]
    kind, _, arg = code.partition(":")
    if kind in _WITH_ITEM and arg:
        return _WITH_ITEM[kind].format(view.title(arg))
    if kind in _WITH_NAME and arg:
        return _WITH_NAME[kind].format(arg)
    return code.replace("_", " ").capitalize()


def explain(codes: Iterable[str], view: CatalogView) -> str:
    codes = list(codes)
    with_items = {c.partition(":")[2] for c in codes if c.startswith("bought_with:")}
    # one sentence per item: "often bought with X" already says the shoppers who chose X chose this
    codes = [c for c in codes if not (c.startswith("related_to:") and c.partition(":")[2] in with_items)]
    anchor = next((c for c in codes if c.startswith("because_you_bought:")), None)
    if anchor and anchor.partition(":")[2] in with_items:
        codes = [c for c in codes if c != f"bought_with:{anchor.partition(':')[2]}"]
    if anchor and "for_you" in codes:  # one sentence: the taste model's pick and the purchase it resembles most
        rest = [c for c in codes if c not in ("for_you", anchor)]
        head = f"Picked for you because you bought {view.title(anchor.partition(':')[2])}"
        return "; ".join([head] + [explain_code(c, view) for c in rest])
    return "; ".join(explain_code(c, view) for c in codes)


HISTORY_FOR_ANCHORS = 64  # the heaviest purchases compared per customer


def _anchor_inputs(rel):
    """(item factors as float32, their norms) of a release, or None without ALS factors."""
    import numpy as np

    Y = getattr(rel, "als_item", None)
    if Y is None:
        return None
    Y = np.asarray(Y, np.float32)
    return Y, _factor_norms(rel.version, Y)


def taste_anchors_many(rel, user_ids: list, item_lists: list[list[str]]) -> list[dict[str, str]]:
    """For known customers: per recommended item, the purchase in their history closest to it
    (cosine of ALS item factors, ``HISTORY_FOR_ANCHORS`` heaviest purchases); it turns "for you"
    into "because you bought X". One numba call for the whole batch (``recs_kernels.anchors``)."""
    import numpy as np

    from recs_kernels.anchors import taste_anchors as kernel

    B = len(user_ids)
    out: list[dict[str, str]] = [{} for _ in range(B)]
    yn = _anchor_inputs(rel)
    if yn is None or B == 0:
        return out
    get_item, get_user = rel.item_index.get, rel.user_index.get
    users = np.fromiter((get_user(u, -1) if u is not None and item_lists[b] else -1 for b, u in enumerate(user_ids)), np.int64, B)
    if not (users >= 0).any():
        return out
    k = max(len(x) for x in item_lists)
    C = np.full((B, k), -1, np.int64)
    for b, items in enumerate(item_lists):
        if users[b] >= 0:
            C[b, :len(items)] = [get_item(i, -1) for i in items]
    best = kernel(yn[0], yn[1], rel.hist_indptr, rel.hist_items, rel.hist_weight, rel.hist_purchased, users, C,
                  HISTORY_FOR_ANCHORS).tolist()
    ids = rel.item_ids
    for b, items in enumerate(item_lists):
        if users[b] >= 0:
            row = best[b]
            out[b] = {items[j]: ids[row[j]] for j in range(len(items)) if row[j] >= 0}
    return out


def taste_anchors(rel, user_id: str | None, item_ids: list[str]) -> dict[str, str]:
    """``taste_anchors_many`` for one customer (the request path: one kernel call, a few small
    arrays)."""
    import numpy as np

    from recs_kernels.anchors import taste_anchors as kernel

    u = rel.user_index.get(user_id, -1) if user_id is not None and item_ids else -1
    yn = _anchor_inputs(rel) if u >= 0 else None
    if yn is None:
        return {}
    get = rel.item_index.get
    row = kernel(yn[0], yn[1], rel.hist_indptr, rel.hist_items, rel.hist_weight, rel.hist_purchased, np.array([u], np.int64),
                 np.array([[get(i, -1) for i in item_ids]], np.int64), HISTORY_FOR_ANCHORS)[0].tolist()
    ids = rel.item_ids
    return {iid: ids[x] for iid, x in zip(item_ids, row) if x >= 0}


def taste_anchors_many_reference(rel, user_ids: list, item_lists: list[list[str]]) -> list[dict[str, str]]:
    """``taste_anchors_many`` in numpy (one padded batched product); the kernel's tests compare
    against it."""
    import numpy as np

    B = len(user_ids)
    out: list[dict[str, str]] = [{} for _ in range(B)]
    Y = getattr(rel, "als_item", None)
    if Y is None or B == 0:
        return out
    get_item, get_user = rel.item_index.get, rel.user_index.get
    hists, rows = [], []
    for b, uid in enumerate(user_ids):
        u = get_user(uid, -1) if uid is not None else -1
        if u < 0 or not item_lists[b]:
            continue
        h, w, bought = rel.history(u)
        h = np.asarray(h, np.int64)
        bought = np.asarray(bought, bool)
        if bought.any():
            h, w = h[bought], np.asarray(w)[bought]
        if h.size > HISTORY_FOR_ANCHORS:
            h = h[np.argsort(-np.asarray(w), kind="stable")[:HISTORY_FOR_ANCHORS]]
        if h.size:
            hists.append(h)
            rows.append(b)
    if not rows:
        return out
    k = max(len(item_lists[b]) for b in rows)
    hm = max(h.size for h in hists)
    C = np.full((len(rows), k), -1, np.int64)
    H = np.full((len(rows), hm), -1, np.int64)
    for r, (b, h) in enumerate(zip(rows, hists)):
        C[r, :len(item_lists[b])] = [get_item(i, -1) for i in item_lists[b]]
        H[r, :h.size] = h
    uniq = np.unique(np.concatenate([C[C >= 0], H[H >= 0]]))
    V = np.asarray(Y[uniq], np.float32)
    V /= np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
    Cv = V[np.searchsorted(uniq, np.maximum(C, 0))]
    Hv = V[np.searchsorted(uniq, np.maximum(H, 0))]
    S = Cv @ Hv.transpose(0, 2, 1)  # stacked BLAS products: einsum's own loop took ~3x longer
    S[np.broadcast_to((H < 0)[:, None, :], S.shape)] = -np.inf
    S[C[:, :, None] == H[:, None, :]] = -np.inf  # never "because you bought" the item itself
    best = np.take_along_axis(H, S.argmax(axis=2), axis=1)
    ok = (C >= 0) & np.isfinite(S.max(axis=2))
    ids = rel.item_ids
    best_rows, ok_rows = best.tolist(), ok.tolist()  # Python ints: numpy scalar indexing cost ~1 us per item
    for r, b in enumerate(rows):
        items, best_r, ok_r = item_lists[b], best_rows[r], ok_rows[r]
        out[b] = {items[j]: ids[best_r[j]] for j in range(len(items)) if ok_r[j]}
    return out


def taste_anchors_reference(rel, user_id: str | None, item_ids: list[str]) -> dict[str, str]:
    """``taste_anchors`` in numpy, as the request path computed it before the kernel."""
    import numpy as np

    Y = getattr(rel, "als_item", None)
    u = rel.user_index.get(user_id, -1) if user_id is not None else -1
    if Y is None or u < 0 or not item_ids:
        return {}
    h, w, bought = rel.history(u)
    bought = np.asarray(bought, bool)
    any_bought = bought.any()
    h = np.asarray(h, np.int64)[bought] if any_bought else np.asarray(h, np.int64)
    if h.size > HISTORY_FOR_ANCHORS:
        w = np.asarray(w)[bought] if any_bought else np.asarray(w)
        h = h[np.argsort(-w, kind="stable")[:HISTORY_FOR_ANCHORS]]
    get = rel.item_index.get
    c = np.fromiter((get(i, -1) for i in item_ids), np.int64, len(item_ids))
    if h.size == 0 or (c < 0).all():
        return {}
    Y = np.asarray(Y, np.float32)
    norms = _factor_norms(rel.version, Y)  # once per release, not two norm passes per request
    cc = np.maximum(c, 0)
    S = (Y[cc] @ Y[h].T) / np.maximum(np.outer(norms[cc], norms[h]), 1e-12)
    S[c[:, None] == h[None, :]] = -np.inf  # never "because you bought" the item itself
    best = h[S.argmax(axis=1)].tolist()
    ok = (c >= 0) & np.isfinite(S.max(axis=1))
    ids = rel.item_ids
    return {item_ids[j]: ids[best[j]] for j in np.flatnonzero(ok).tolist()}


def _fix_anonymous(codes: list[str], seed: str | None) -> list[str]:
    """An answer for nobody in particular cannot be "for you": name the item it follows from."""
    if "for_you" not in codes:
        return codes
    repl = f"related_to:{seed}" if seed else "popular"
    out: list[str] = []
    for c in codes:
        c = repl if c == "for_you" else c
        if c not in out:
            out.append(c)
    return out


def _as_dict(item: Any) -> dict:
    if isinstance(item, dict):
        return dict(item)
    fields = getattr(item, "__struct_fields__", None)  # msgspec struct (the batch path's items)
    if fields is not None:
        return {f: getattr(item, f) for f in fields}
    return item.model_dump()


def enrich_items(items: list, view: CatalogView, *, anonymous: bool = False, seed: str | None = None,
                 anchors: dict | None = None, own: bool = False) -> list[dict]:
    """Items (dicts, pydantic models or msgspec structs) as readable dicts (new ones: the input
    is never changed). ``anchors``: item -> the customer's purchase behind a ``for_you`` pick
    (see ``taste_anchors``). What an item gains (reasons, attributes, explanation) depends only
    on its id, its codes and its anchor, so it is built once per release and then merged in one
    step: a batch of 1,000 users x 20 items was ~70 ms of per-item dict work. ``own`` is kept
    for callers; every answer is a fresh dict either way."""
    out = []
    made = view._enriched
    for it in items:
        d = it if isinstance(it, dict) else _as_dict(it)
        codes = d.get("reasons") or []
        if anonymous:
            codes = _fix_anonymous(codes, seed)
        iid = d["item_id"]
        anchor = anchors.get(iid) if anchors and "for_you" in codes else None
        key = (iid, tuple(codes), anchor)
        tpl = made.get(key)
        if tpl is None:
            tpl = _template(view, iid, codes, anchor)
            if len(made) < 500_000:
                made[key] = tpl
        out.append({**d, **tpl})
    return out


def _template(view: CatalogView, iid: str, codes: list, anchor: str | None) -> dict:
    """What an item gains: its codes (as served), attributes and the explanation in words."""
    words = codes + [f"because_you_bought:{anchor}"] if anchor is not None else codes  # words only: codes stay as served
    wkey = tuple(words)
    words_of = view._explained
    text = words_of.get(wkey)
    if text is None:
        text = explain(words, view)
        if len(words_of) < 200_000:  # bounded: codes name items, so the distinct keys are finite anyway
            words_of[wkey] = text
    return {"reasons": list(codes), **view.info(iid), "explanation": text}


_ITEM_KEYS = ("item_id", "score", "rank", "reasons")
_SCORE, _RANK = b',"score":', b',"rank":'


def enrich_items_wire(items: list, view: CatalogView, *, anonymous: bool = False, seed: str | None = None,
                      anchors: dict | None = None) -> list | None:
    """``enrich_items``'s answer as pre-encoded JSON (``msgspec.Raw`` per item: the same bytes the
    encoder writes for the dict), or None when an item is not the plain ``item_id, score, rank,
    reasons`` dict (then ``enrich_items``). What an item's JSON holds besides its score and rank
    depends only on its id, codes and anchor, so it is encoded once per release: per request an
    item is then one byte join instead of two dict merges and an encoding pass."""
    if not items:
        return []
    for d in items:
        if type(d) is not dict or len(d) != 4 or tuple(d) != _ITEM_KEYS or type(d["rank"]) is not int:
            return None
    scores = _encode_json([d["score"] for d in items])[1:-1].split(b",")  # floats hold no comma
    if len(scores) != len(items):
        return None
    wire = view._wire
    get = wire.get
    out = []
    append = out.append
    for d, sc in zip(items, scores):
        codes = d["reasons"] or []
        if anonymous and "for_you" in codes:
            codes = _fix_anonymous(codes, seed)
        iid = d["item_id"]
        anchor = anchors.get(iid) if anchors and "for_you" in codes else None
        key = (iid, tuple(codes), anchor)
        parts = get(key)
        if parts is None:  # the item's JSON around its score and rank: {"item_id":..,"score":..,"rank":..,<template>}
            tail = _encode_json(_template(view, iid, codes, anchor))
            parts = (b'{"item_id":' + _encode_json(iid) + _SCORE, _RANK, b"," + tail[1:])
            if len(wire) < 500_000:
                wire[key] = parts
        append(_Raw(b"".join((parts[0], sc, parts[1], str(d["rank"]).encode(), parts[2]))))
    return out


def enrich_response(body: Any, rec, *, anonymous: bool = False, seed: str | None = None,
                    user_id: str | None = None, wire: bool = False) -> dict:
    """A ``RecommendResponse`` (dict or model) of ``rec`` (a Recommender) with readable items
    (the business rules' re-ranking is already in it: ``Recommender`` applies it)."""
    d = body if isinstance(body, dict) else body.model_dump()
    view = catalog_of(rec, d.get("artifact_version"))
    meta = d.get("metadata") or {}
    if meta.get("user_known") is True:
        anonymous = False
    items = d["items"]  # already re-ranked by the business rules (Recommender._respond)
    anchors = None
    if not anonymous and user_id is not None:
        anchors = taste_anchors(rec.release, user_id, [it["item_id"] if isinstance(it, dict) else it.item_id for it in items])
    got = enrich_items_wire(items, view, anonymous=anonymous, seed=seed, anchors=anchors) if wire else None
    if got is None:
        got = enrich_items(items, view, anonymous=anonymous, seed=seed, anchors=anchors)
    return {**d, "items": got}


def enrich_batch(body: Any, rec, *, wire: bool = False) -> dict:
    d = body if isinstance(body, dict) else body.model_dump()
    view = catalog_of(rec, d.get("artifact_version"))
    rel = rec.release
    users = list(d["results"])
    lists = [d["results"][u] for u in users]
    anchors = taste_anchors_many(rel, users, [[it["item_id"] if isinstance(it, dict) else it.item_id for it in items]
                                              for items in lists])
    out = {}
    for u, items, a in zip(users, lists, anchors):
        got = enrich_items_wire(items, view, anchors=a) if wire else None
        out[u] = got if got is not None else enrich_items(items, view, anchors=a)
    return {**d, "results": out}


_NORMS: "OrderedDict[str, Any]" = OrderedDict()


def _factor_norms(version: str, Y) -> Any:
    """Row norms of a release's ALS item factors (floored at 1e-12), once per release."""
    import numpy as np

    got = _NORMS.get(version)
    if got is None or got.shape[0] != Y.shape[0]:
        got = np.maximum(np.sqrt(np.einsum("ij,ij->i", Y, Y)), np.float32(1e-12))
        with _VIEWS_LOCK:
            _NORMS[version] = got
            while len(_NORMS) > _KEEP_VIEWS:
                _NORMS.popitem(last=False)
    return got


def customer_reasons(rel, item_id: str, user_ids: list[str]) -> dict[str, list[str]]:
    """Why each customer is a target for ``item_id``: the item in their history closest to it
    (cosine of the ALS item factors), as ``bought_similar:<item>``; ``likely_buyer`` otherwise.
    One numba call over the customers' history rows (``recs_kernels.anchors``)."""
    import numpy as np

    from recs_kernels.anchors import customer_anchors

    i = rel.item_index.get(item_id)
    yn = _anchor_inputs(rel)
    if i is None or yn is None:
        return {u: ["likely_buyer"] for u in user_ids}
    get_user = rel.user_index.get
    users = np.fromiter((get_user(u, -1) for u in user_ids), np.int64, len(user_ids))
    best = customer_anchors(yn[0], yn[1], rel.hist_indptr, rel.hist_items, users, i).tolist()
    ids = rel.item_ids
    return {uid: [f"bought_similar:{ids[x]}"] if x >= 0 else ["likely_buyer"] for uid, x in zip(user_ids, best)}


def customer_reasons_reference(rel, item_id: str, user_ids: list[str]) -> dict[str, list[str]]:
    """Why each customer is a target for ``item_id``: the item in their history closest to it
    (cosine of the ALS item factors), as ``bought_similar:<item>``; ``likely_buyer`` otherwise."""
    import numpy as np

    out: dict[str, list[str]] = {}
    i = rel.item_index.get(item_id)
    Y = getattr(rel, "als_item", None)
    if i is None or Y is None:
        return {u: ["likely_buyer"] for u in user_ids}
    Y = np.asarray(Y, dtype=np.float32)
    norms = _factor_norms(rel.version, Y)
    y = Y[i] / (norms[i] or 1.0)
    # top customers are the heavy buyers: ~7,000 history rows per request on the bundled data.
    # One product for all of them (per customer it cost ~25 us of numpy overhead each), and when
    # they cover much of the catalog, one product over the catalog instead of a gather.
    hists = []
    for uid in user_ids:
        u = rel.user_index.get(uid, -1)
        items = np.asarray(rel.history(u)[0] if u >= 0 else np.zeros(0, np.int64), np.int64)
        hists.append(items[items != i])
    lens = [h.size for h in hists]
    total = sum(lens)
    if total:
        allh = np.concatenate(hists)
        if total * 4 >= Y.shape[0]:
            sims = ((Y @ y) / norms)[allh]
        else:
            sims = (Y[allh] @ y) / norms[allh]
    a = 0
    for uid, items, n in zip(user_ids, hists, lens):
        if n == 0:
            out[uid] = ["likely_buyer"]
            continue
        best = int(items[int(np.argmax(sims[a:a + n]))])  # first maximum, as per customer
        a += n
        out[uid] = [f"bought_similar:{rel.item_ids[best]}"]
    return out


def enrich_customers(body: Any, rec) -> dict:
    d = body if isinstance(body, dict) else body.model_dump()
    rel = rec.release
    view = catalog_of(rec, d.get("artifact_version"))
    custs = [c if isinstance(c, dict) else c.model_dump() for c in d["customers"]]
    reasons = customer_reasons(rel, d["item_id"], [c["user_id"] for c in custs])
    out = []
    for c in custs:
        codes = reasons.get(c["user_id"], ["likely_buyer"])
        out.append({**c, "reasons": codes, "explanation": explain(codes, view)})
    return {**d, **view.info(d["item_id"]), "customers": out}


__all__ = ["CatalogView", "catalog", "explain", "explain_code", "enrich_items", "enrich_response", "enrich_batch",
           "enrich_customers", "customer_reasons"]
