"""Merchandising rules from one file, applied the same way on every request path.

The rules live in ``RECS_HOME/business_rules.yaml`` (or ``.json``). The release asset copies
them into each release as the table ``business_rules`` (so they are reloaded with releases,
versioned with them, and queryable by SQL); a release without that table falls back to the
file as it is when serving first loads the release.

    blocklist: [85123A, 22423]          # never recommended
    availability: in_stock              # catalog attribute; items where it is false/0/"no" are never recommended
    exclude:                            # never recommend items matching any condition
      - {category: CARD}
      - {attribute: discontinued, value: true}
    pin:                                # this item (or the best item of this brand/category) at this rank
      - {item: "22423", position: 1}
      - {brand: RETROSPOT, position: 3}
    boost:                              # score multiplied by factor when re-ranking the answer
      - {category: MUG, factor: 1.5}
    bury:                               # moved to the end of the answer
      - {brand: DOLLY}

Two steps, both used by every path (homepage, item page, cart, batch, cold start):
``blocked(rel)`` is a sorted array of item indices the recommender adds to every request's
exclusions (so answers are topped up with other items), and ``apply(...)`` re-ranks a final
answer: bury, boost (within the answer: it reorders, it does not pull items in), then pins
(which do pull items in, when not excluded by the request). Reason codes ``pinned`` and
``boosted`` say so.
"""
from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RULES_FILE = "business_rules.yaml"
TABLE = "business_rules"
KINDS = ("block", "availability", "exclude", "pin", "boost", "bury")
COLUMNS = ("kind", "item_id", "brand", "category", "attribute", "value", "factor", "position")
FALSE_VALUES = {False, 0, "0", "false", "no", "n", "out", "out_of_stock", "False", "FALSE", "No", "NO"}


class RulesError(ValueError):
    pass


def _rule(kind: str, spec: dict, where: str) -> dict:
    allowed = {"item", "item_id", "brand", "category", "attribute", "value", "factor", "position"}
    unknown = set(spec) - allowed
    if unknown:
        raise RulesError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    r = {c: None for c in COLUMNS}
    r["kind"] = kind
    r["item_id"] = None if spec.get("item", spec.get("item_id")) is None else str(spec.get("item", spec.get("item_id")))
    for k in ("brand", "category", "attribute"):
        r[k] = None if spec.get(k) is None else str(spec[k])
    r["value"] = None if "value" not in spec else json.dumps(spec["value"])
    targets = [k for k in ("item_id", "brand", "category", "attribute") if r[k] is not None]
    if kind in ("exclude", "pin", "boost", "bury") and not targets:
        raise RulesError(f"{where}: needs one of item, brand, category, attribute")
    if kind == "boost":
        try:
            r["factor"] = float(spec.get("factor", 1.5))
        except (TypeError, ValueError):
            raise RulesError(f"{where}: factor must be a number") from None
        if not r["factor"] > 0:
            raise RulesError(f"{where}: factor must be > 0")
    if kind == "pin":
        pos = spec.get("position", 1)
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 1:
            raise RulesError(f"{where}: position must be an integer >= 1")
        r["position"] = pos
    return r


def parse(doc: Any, source: str = "rules") -> list[dict]:
    """Validate a rules document (the YAML's content) into rows of the ``business_rules`` table."""
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise RulesError(f"{source}: expected a mapping with keys blocklist, availability, exclude, pin, boost, bury")
    unknown = set(doc) - {"blocklist", "availability", "exclude", "pin", "boost", "bury"}
    if unknown:
        raise RulesError(f"{source}: unknown section(s) {sorted(unknown)}")
    rows: list[dict] = []
    for item in doc.get("blocklist") or []:
        rows.append({**{c: None for c in COLUMNS}, "kind": "block", "item_id": str(item)})
    av = doc.get("availability")
    if av:
        rows.append({**{c: None for c in COLUMNS}, "kind": "availability", "attribute": str(av if isinstance(av, str) else "in_stock")})
    for kind in ("exclude", "pin", "boost", "bury"):
        specs = doc.get(kind) or []
        if not isinstance(specs, list):
            raise RulesError(f"{source}: {kind} must be a list")
        for n, spec in enumerate(specs):
            if not isinstance(spec, dict):
                raise RulesError(f"{source}: {kind}[{n}] must be a mapping")
            rows.append(_rule(kind, spec, f"{source}: {kind}[{n}]"))
    return rows


def read_file(path: Path | str) -> list[dict]:
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        doc = json.loads(text)
    else:
        import yaml

        doc = yaml.safe_load(text)
    return parse(doc, str(path))


def home_file(home: Path | str) -> Path | None:
    for name in (RULES_FILE, "business_rules.yml", "business_rules.json"):
        p = Path(home) / name
        if p.exists():
            return p
    return None


def to_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([("kind", pa.string()), ("item_id", pa.string()), ("brand", pa.string()), ("category", pa.string()),
                        ("attribute", pa.string()), ("value", pa.string()), ("factor", pa.float64()), ("position", pa.int32())])
    return pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=schema)


# ----------------------------------------------------------------------------- compiled per release


@dataclass(frozen=True)
class Compiled:
    version: str
    rows: tuple
    blocked: np.ndarray  # sorted int64 item idx never to recommend
    boost: np.ndarray | None  # float64 factor per item (1 = none)
    bury: np.ndarray | None  # bool per item
    pins: tuple  # (position, candidate idx array in preference order, reason)

    @property
    def reranks(self) -> bool:
        return self.boost is not None or self.bury is not None or bool(self.pins)


def _attributes(rel) -> list:
    path = Path(rel.path) / "items.parquet"
    names = pq.read_schema(path).names
    if "attributes" not in names:
        return [None] * rel.n_items
    t = pq.read_table(path, columns=[c for c in ("idx", "attributes") if c in names])
    if "idx" in names:
        t = t.sort_by("idx")
    out = []
    for raw in t.column("attributes").to_pylist():
        try:
            a = json.loads(raw) if isinstance(raw, str) and raw else None
        except ValueError:
            a = None
        out.append(a if isinstance(a, dict) else None)
    return out


_ATTRS: "OrderedDict[str, list]" = OrderedDict()


def item_attributes(rel) -> list:
    """The catalog ``attributes`` of a release's items (parsed JSON or None), cached per release."""
    key = str(rel.path)
    got = _ATTRS.get(key)
    if got is None:
        got = _ATTRS[key] = _attributes(rel)
        while len(_ATTRS) > 3:
            _ATTRS.popitem(last=False)
    return got


def _norm(x) -> str:
    return str(x).strip().lower()  # true/"true"/"True", 1/"1", "Red"/"red" compare equal


def attribute_mask(rel, conditions: dict[str, list]) -> np.ndarray:
    """Items whose attributes match every ``name: [values]`` (any of the values)."""
    attrs = item_attributes(rel)
    m = np.ones(rel.n_items, bool)
    for name, vals in conditions.items():
        want = {_norm(v) for v in vals}
        m &= np.fromiter((bool(a) and name in a and _norm(a[name]) in want for a in attrs), bool, len(attrs))
    return m


def _match(rel, r: dict, attrs_fn) -> np.ndarray:
    """Boolean mask of the items a rule names."""
    m = np.ones(rel.n_items, bool)
    if r.get("item_id") is not None:
        mm = np.zeros(rel.n_items, bool)
        i = rel.item_index.get(r["item_id"])
        if i is not None:
            mm[i] = True
        m &= mm
    for col, codes, index in (("brand", rel.brand_codes, rel.brand_index), ("category", rel.category_codes, rel.category_index)):
        if r.get(col) is not None:
            code = index.get(r[col], -2)
            m &= np.asarray(codes) == code
    if r.get("attribute") is not None:
        attrs = attrs_fn()
        want = json.loads(r["value"]) if r.get("value") is not None else None
        name = r["attribute"]
        if want is None:
            mm = np.array([bool(a) and name in a for a in attrs], bool)
        else:
            mm = np.array([bool(a) and a.get(name) == want for a in attrs], bool)
        m &= mm
    return m


def compile_rules(rel, rows: Iterable[dict]) -> Compiled:
    rows = tuple(rows)
    n = rel.n_items
    cache: dict = {}

    def attrs():
        if "a" not in cache:
            cache["a"] = item_attributes(rel)
        return cache["a"]

    blocked = np.zeros(n, bool)
    boost = np.ones(n, np.float64)
    bury = np.zeros(n, bool)
    pins = []
    pop = np.asarray(getattr(rel, "pop_order", np.arange(n)), np.int64)
    for r in rows:
        kind = r["kind"]
        if kind == "block":
            i = rel.item_index.get(r["item_id"])
            if i is not None:
                blocked[i] = True
        elif kind == "availability":
            name = r["attribute"] or "in_stock"
            blocked |= np.array([bool(a) and name in a and a[name] in FALSE_VALUES for a in attrs()], bool)
        elif kind == "exclude":
            blocked |= _match(rel, r, attrs)
        elif kind == "boost":
            boost[_match(rel, r, attrs)] *= float(r["factor"])
        elif kind == "bury":
            bury |= _match(rel, r, attrs)
        elif kind == "pin":
            m = _match(rel, r, attrs)
            cands = pop[m[pop]]  # best-selling first
            if r.get("item_id") is not None and cands.size == 0:
                i = rel.item_index.get(r["item_id"])
                cands = np.array([i] if i is not None else [], np.int64)
            pins.append((int(r["position"]), cands, "pinned"))
    pins.sort(key=lambda p: p[0])
    return Compiled(rel.version, rows, np.flatnonzero(blocked).astype(np.int64),
                    boost if (boost != 1).any() else None, bury if bury.any() else None, tuple(pins))


_CACHE: "OrderedDict[str, Compiled]" = OrderedDict()
_LOCK = threading.Lock()
_EMPTY_ROWS: tuple = ()


def rows_for(rel, home: Path | str | None = None) -> list[dict]:
    """The rules a release carries (its ``business_rules`` table), else those of the home file."""
    path = Path(rel.path) / f"{TABLE}.parquet"
    if path.exists():
        return pq.read_table(path).to_pylist()
    f = home_file(Path(home) if home is not None else Path(rel.path).parent.parent)  # RECS_HOME/releases/<version>
    return read_file(f) if f else []


def for_release(rel, home: Path | str | None = None) -> Compiled:
    """Compiled rules of a loaded release (cached per version: reloaded with releases)."""
    key = str(rel.path)  # the release directory: one version may exist under two homes
    got = _CACHE.get(key)
    if got is not None:
        return got
    with _LOCK:
        got = _CACHE.get(key)
        if got is None:
            got = _CACHE[key] = compile_rules(rel, rows_for(rel, home))
            while len(_CACHE) > 3:
                _CACHE.popitem(last=False)
    return got


def with_blocked(rel, exclude: np.ndarray) -> np.ndarray:
    """``exclude`` (sorted unique int64) plus the items the rules never allow."""
    b = for_release(rel).blocked
    return np.union1d(exclude, b) if b.size else exclude


def request_exclusions(rel, user_id: str | None = None, recent: Iterable = (), exclusions: Iterable[str] = (),
                       seeds: Iterable[str] = ()) -> set[str]:
    """Item ids a request rules out (its exclusions, recent events, cart, and the customer's
    purchases): pins never bring those back. Empty when the release has no pins (nothing to check)."""
    if not for_release(rel).pins:
        return set()
    out = set(exclusions) | {getattr(r, "item_id", r) for r in recent} | set(seeds)
    u = rel.user_index.get(user_id, -1) if user_id is not None else -1
    if u >= 0:
        items, _, bought = rel.history(u)
        out |= {rel.item_ids[int(i)] for i in items[bought].tolist()}
    return out


def _reason_add(reasons: list, code: str) -> list:
    return [code] + [r for r in reasons if r != code]


def apply(rel, items: list[dict], k: int, exclude_ids: Iterable[str] = ()) -> list[dict]:
    """Re-rank one answer (dicts with item_id, score, rank, reasons): bury, boost, then pins.
    ``exclude_ids``: what the request excluded (pins never bring those in). Ranks renumbered."""
    c = for_release(rel)
    if not c.reranks or not items and not c.pins:
        return items
    index = rel.item_index
    idx = [index.get(it["item_id"], -1) for it in items]
    order = list(range(len(items)))
    keyed = []
    for pos, (it, i) in enumerate(zip(items, idx)):
        f = float(c.boost[i]) if c.boost is not None and i >= 0 else 1.0
        b = bool(c.bury[i]) if c.bury is not None and i >= 0 else False
        s = float(it["score"])
        adj = s * f if s >= 0 else s / f
        keyed.append((b, -adj if f != 1.0 else None, pos, f))
    if c.boost is not None:
        # boosted items move up past unboosted ones whose score they now beat; others keep their order
        order = sorted(order, key=lambda p: (keyed[p][0], -(float(items[p]["score"]) * keyed[p][3])))
    elif c.bury is not None:
        order = sorted(order, key=lambda p: (keyed[p][0], p))
    out = []
    for p in order:
        it = dict(items[p])
        if keyed[p][3] > 1.0:
            it["reasons"] = _reason_add(list(it.get("reasons") or []), "boosted")
        out.append(it)
    if c.pins:
        excluded = set(exclude_ids) | {rel.item_ids[i] for i in c.blocked.tolist()} if c.blocked.size < 100_000 else set(exclude_ids)
        for position, cands, reason in c.pins:
            pick = None
            for j in cands[:200].tolist():
                iid = rel.item_ids[j]
                if iid in excluded:
                    continue
                pick = iid
                break
            if pick is None:
                continue
            existing = next((it for it in out if it["item_id"] == pick), None)
            if existing is not None:
                out.remove(existing)
                it = existing
            else:
                it = {"item_id": pick, "score": out[min(position, len(out)) - 1]["score"] if out else 0.0, "reasons": []}
            it["reasons"] = _reason_add(list(it.get("reasons") or []), reason)
            out.insert(min(position - 1, len(out)), it)
        out = out[:k]
    for r, it in enumerate(out, 1):
        it["rank"] = r
    return out


__all__ = ["parse", "read_file", "home_file", "to_table", "compile_rules", "for_release", "with_blocked", "apply",
           "RulesError", "RULES_FILE", "TABLE"]
