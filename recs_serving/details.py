"""One item or one customer as people read them: attributes, history, neighbours, rules.

Read from the loaded release (its arrays) plus a few of its Parquet tables on demand (rules,
user history), cached per release version. Used by ``GET /v1/items/{id}``,
``GET /v1/users/{id}`` and the web pages.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from .explain import CatalogView, catalog
from .recommender import UnknownItem

_RULES: "OrderedDict[str, dict]" = OrderedDict()
_LOCK = threading.Lock()


def _rules_by_item(rel) -> dict[str, list[dict]]:
    """Single-item rules (antecedent -> consequent) of a release, by antecedent, best lift first."""
    got = _RULES.get(rel.version)
    if got is not None:
        return got
    with _LOCK:
        got = _RULES.get(rel.version)
        if got is not None:
            return got
        out: dict[str, list[dict]] = {}
        path = rel.path / "rules.parquet"
        if path.exists():
            t = pq.read_table(path)
            cols = t.column_names
            ante = t.column("antecedents").to_pylist()
            cons = t.column("consequents").to_pylist()
            conf = t.column("confidence").to_pylist() if "confidence" in cols else [None] * t.num_rows
            lift = t.column("lift").to_pylist() if "lift" in cols else [None] * t.num_rows
            sup = t.column("support").to_pylist() if "support" in cols else [None] * t.num_rows
            for a, c, cf, lf, sp in zip(ante, cons, conf, lift, sup):
                if a and c and len(a) == 1 and len(c) == 1:
                    out.setdefault(str(a[0]), []).append({"item_id": str(c[0]), "confidence": float(cf or 0.0),
                                                          "lift": float(lf or 0.0), "support": None if sp is None else float(sp)})
            for v in out.values():
                v.sort(key=lambda r: (-r["lift"], -r["confidence"], r["item_id"]))
        _RULES[rel.version] = out
        while len(_RULES) > 3:
            _RULES.popitem(last=False)
        return out


def bought_together(rel, item_id: str, k: int = 20) -> list[dict]:
    view = catalog(rel)
    return [{**r, "title": view.title(r["item_id"])} for r in _rules_by_item(rel).get(item_id, [])[:k]]


def neighbours(rel, item_id: str, kind: str, k: int = 10) -> list[dict]:
    """Precomputed neighbours: ``behaviour`` (factor similarity, else co-visitation) or ``content``."""
    i = rel.item_index.get(item_id)
    if i is None:
        raise UnknownItem(item_id)
    adjs = (rel.sim_factors, rel.covis) if kind == "behaviour" else (rel.sim_content,)
    view = catalog(rel)
    for adj in adjs:
        if adj is None or not hasattr(adj, "row"):
            continue
        idx, sc = adj.row(i)
        if len(idx):
            out = []
            for j, s in zip(idx[:k].tolist(), sc[:k].tolist()):
                iid = rel.item_ids[j]
                out.append({"item_id": iid, "score": round(float(s), 4), **view.info(iid)})
            return out
    return []


def item_detail(rec, item_id: str) -> dict[str, Any]:
    rel = rec.release
    i = rel.item_index.get(item_id)
    if i is None:
        raise UnknownItem(item_id)
    view: CatalogView = catalog(rel)
    j = view.index.get(item_id)
    rank = None
    order = getattr(rel, "pop_order", None)
    if order is not None:
        pos = np.flatnonzero(np.asarray(order) == i)
        rank = int(pos[0]) + 1 if pos.size else None
    buyers = int(rel.buyers.indptr[i + 1] - rel.buyers.indptr[i]) if getattr(rel, "buyers", None) is not None else 0
    return {
        "item_id": item_id, **view.info(item_id),
        "description": view.descriptions[j] if j is not None else None,
        "attributes": view.attributes[j] if j is not None else None,
        "popularity_rank": rank, "buyers": buyers,
        "bought_together": bought_together(rel, item_id, 10),
        "artifact_version": rel.version,
    }


def _date(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, datetime):
        return v.date().isoformat()
    if isinstance(v, (int, float)):  # epoch ms
        return datetime.fromtimestamp(v / 1000, tz=timezone.utc).date().isoformat()
    return str(v)[:10]


def user_history(rel, user_id: str, limit: int = 200) -> list[dict]:
    """What a customer did, newest first: ``user_history`` (dates, quantities) when the release
    carries it, else ``user_items`` (weights and purchase counts)."""
    view = catalog(rel)
    for name in ("user_history", "user_items"):
        path = rel.path / f"{name}.parquet"
        if not path.exists():
            continue
        t = pq.read_table(path, filters=[("user_id", "=", user_id)])
        if "last_ts" in t.column_names:
            t = t.sort_by([("last_ts", "descending"), ("item_id", "ascending")])
        elif "weight" in t.column_names:
            t = t.sort_by([("weight", "descending"), ("item_id", "ascending")])
        rows = t.slice(0, limit).to_pylist()
        out = []
        for r in rows:
            iid = str(r["item_id"])
            out.append({"item_id": iid, **view.info(iid), "last_date": _date(r.get("last_ts")),
                        "quantity": None if r.get("quantity") is None else float(r["quantity"]),
                        "purchases": None if r.get("purchases") is None else int(r["purchases"]),
                        "weight": None if r.get("weight") is None else round(float(r["weight"]), 4)})
        return out
    u = rel.user_index.get(user_id, -1)
    if u < 0:
        return []
    items, w, bought = rel.history(u)
    return [{"item_id": rel.item_ids[int(i)], **view.info(rel.item_ids[int(i)]), "weight": round(float(x), 4),
             "purchases": int(b)} for i, x, b in zip(items.tolist(), w.tolist(), bought.tolist())][:limit]


def user_detail(rec, user_id: str) -> dict[str, Any]:
    rel = rec.release
    known = rel.user_index.get(user_id, -1) >= 0
    return {"user_id": user_id, "known": known, "history": user_history(rel, user_id) if known else [],
            "artifact_version": rel.version}


__all__ = ["item_detail", "user_detail", "user_history", "bought_together", "neighbours"]
