"""The production feature assets' inputs, computed in DuckDB from recs.interactions.

At 20M events a polars frame of every event (strings) and its join/sort copies took GiBs in
each of five assets; here DuckDB aggregates (spilling under its memory limit) and hands over
only integer/float arrays. The evaluation re-fits on training frames with the polars functions
of ``modeling``; tests/test_aggregates.py checks that both give the same result.
"""
from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import scipy.sparse as sp

from recs_assets import modeling
from recs_assets.resources.warehouse import replace_from_frame
from recs_kernels import covis

# Catalog order (the row order of every item-aligned array), as io.load_item_ids.
_ITEMS = ("CREATE OR REPLACE TEMP TABLE _items AS "
          "SELECT item_id, (row_number() OVER (ORDER BY item_id) - 1)::INTEGER AS col FROM recs.catalog")


def _items(con) -> int:
    con.execute(_ITEMS)
    return con.execute("SELECT count(*) FROM _items").fetchall()[0][0]


def resolve_as_of(con, *candidates) -> datetime:
    """modeling.resolve_as_of with the newest event read by DuckDB."""
    latest = con.execute("SELECT max(ts) FROM recs.interactions").fetchall()[0][0]
    ts = pl.DataFrame({"ts": pl.Series([latest] if latest is not None else [], dtype=pl.Datetime("us"))})
    return modeling.resolve_as_of(ts, *candidates)


def _event_weight(weights: dict[str, float], cast: str) -> str:
    cases = " ".join(f"WHEN '{k}' THEN {float(v)!r}" for k, v in weights.items())
    return f"CAST(CASE event {cases} ELSE 0.0 END AS {cast})"


def _numpy(con, sql: str, params=None) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in con.execute(sql, params or []).fetchnumpy().items()}


def matrix(con, params: modeling.MatrixParams, user_items_table: str | None = "user_items") -> modeling.Matrix:
    """modeling.build_matrix on recs.interactions; also (re)writes recs.<user_items_table>
    (user_id, item_id, weight, purchases) in the matrix's order."""
    as_of = resolve_as_of(con, params.as_of)
    n_items = _items(con)
    item_ids = _item_ids(con)
    con.execute("""CREATE OR REPLACE TEMP TABLE _users AS
        SELECT user_id, (row_number() OVER (ORDER BY user_id) - 1)::INTEGER AS row
        FROM (SELECT DISTINCT user_id FROM recs.interactions WHERE user_id IS NOT NULL AND ts <= $1)""", [as_of])
    user_ids = _numpy(con, "SELECT user_id FROM _users ORDER BY row")["user_id"].astype(object)
    w = {"view": params.view_weight, "add": params.add_weight, "purchase": params.purchase_weight}
    g = _numpy(con, f"""
        SELECT u.row, it.col, sum({_event_weight(w, 'DOUBLE')}) AS w,
               -- whole seconds, as polars' total_seconds()
               min((epoch_us($1::TIMESTAMP) - epoch_us(i.ts)) // 1000000) AS age_s,
               count(*) FILTER (WHERE event = 'purchase')::INTEGER AS purchases
        FROM recs.interactions i JOIN _items it USING (item_id) JOIN _users u USING (user_id)
        WHERE i.ts <= $1
        GROUP BY 1, 2""", [as_of])
    age = g["age_s"].astype(np.float64) / 86400.0
    weight = (np.log1p(g["w"]) * np.exp(-age / params.decay_days)).astype(np.float32)
    shape = (len(user_ids), n_items)
    r, c = g["row"], g["col"]
    W = sp.csr_matrix((weight, (r, c)), shape=shape)
    B = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=shape)
    # built from the same coordinates as W, so its data lines up with W's (canonical order)
    P_on_w = sp.csr_matrix((g["purchases"].astype(np.float32), (r, c)), shape=shape)
    P = P_on_w.copy()
    P.eliminate_zeros()
    del g, weight, r, c
    if user_items_table:
        coo = W.tocoo()
        import pyarrow as pa

        # ids taken by position in Arrow, already in the matrix's (row, col) order: no join and
        # no sort of every pair in DuckDB (the table keeps the frame's order: no ORDER BY needed
        # while preserve_insertion_order is on, DuckDB's default)
        incoming = pa.table({"user_id": pa.array(user_ids, pa.string()).take(pa.array(coo.row)),
                             "item_id": pa.array(item_ids, pa.string()).take(pa.array(coo.col)),
                             "weight": coo.data, "purchases": P_on_w.data.astype(np.int32)})
        del coo, P_on_w
        replace_from_frame(con, user_items_table, incoming)
    return modeling.Matrix(user_ids, item_ids, W, B, P, as_of)


def _item_ids(con) -> np.ndarray:
    return _numpy(con, "SELECT item_id FROM _items ORDER BY col")["item_id"].astype(object)


def popularity(con, trending_days: float, as_of=None) -> tuple[np.ndarray, np.ndarray]:
    """modeling.popularity_scores on recs.interactions."""
    as_of = resolve_as_of(con, as_of)
    n_items = _items(con)
    since = as_of - timedelta(seconds=int(trending_days * 86400))
    # polars' n_unique counts a missing key (a guest event without a basket) as one more value
    g = _numpy(con, """
        WITH ev AS (SELECT item_id, ts, coalesce(basket_id, user_id) AS key FROM recs.interactions WHERE ts <= $1)
        SELECT it.col,
               count(DISTINCT key) + (count(*) FILTER (WHERE key IS NULL) > 0)::INTEGER AS n_all,
               count(DISTINCT key) FILTER (WHERE ts >= $2)
                 + (count(*) FILTER (WHERE key IS NULL AND ts >= $2) > 0)::INTEGER AS n_trend
        FROM ev JOIN _items it USING (item_id) GROUP BY 1""", [as_of, since])
    out = []
    for k in ("n_all", "n_trend"):
        v = np.zeros(n_items, dtype=np.float32)
        v[g["col"]] = g[k]
        out.append(np.log1p(v))
    return out[0], out[1]


def _sessions(gap_minutes: float, where: str = "TRUE", keep_derived: bool = False) -> str:
    """modeling.with_sessions in SQL: (session, user_id, item_id, ts, event, derived). The session
    number counts starts over peers too (RANGE frame), so tied timestamps get one number.

    DuckDB materializes a CTE read twice by default: `ev` (every event, read for the basket rows
    and for the basket-less ones) was copied whole and spilled at 20M events. Here each read is a
    scan with its own filter; keep_derived keeps the sessions formed from basket-less events (two
    windows over them) for a query that reads `sessions` twice."""
    gap_us = int(gap_minutes * 60e6)
    return f"""
        ev AS NOT MATERIALIZED (SELECT user_id, item_id, ts, event, basket_id FROM recs.interactions WHERE {where}),
        loose AS NOT MATERIALIZED (
            SELECT user_id, item_id, ts, event,
                   coalesce(user_id <> lag(user_id) OVER w OR epoch_us(ts) - epoch_us(lag(ts) OVER w) > {gap_us},
                            true)::BIGINT AS start
            FROM ev WHERE basket_id IS NULL AND user_id IS NOT NULL
            WINDOW w AS (ORDER BY user_id, ts)),
        derived AS {"MATERIALIZED" if keep_derived else "NOT MATERIALIZED"} (
            SELECT 's:' || user_id || ':' || sum(start) OVER (ORDER BY user_id, ts) AS session,
                   user_id, item_id, ts, event, true AS derived
            FROM loose),
        sessions AS NOT MATERIALIZED (
            SELECT basket_id AS session, user_id, item_id, ts, event, false AS derived
            FROM ev WHERE basket_id IS NOT NULL
            UNION ALL
            SELECT * FROM derived)"""


def covisitation(con, p: modeling.CovisParams, event_weights: dict[str, float] | None = None) -> sp.csr_matrix:
    """modeling.covisitation on recs.interactions."""
    return covisitation_counts(*covisitation_events(con, p, event_weights), p)


def covisitation_events(con, p: modeling.CovisParams,
                        event_weights: dict[str, float] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The inputs of covisitation_counts: (session, col, t, w) arrays and the catalog size. Read
    them, close the connection (DuckDB's buffers go), then count: the two peaks do not add up."""
    n_items = _items(con)
    ew = event_weights or modeling.EVENT_WEIGHTS
    # Sessions numbered in session order (as a dense rank over every event would) from the
    # distinct sessions, and the rows left unordered: no window or sort over every event, which
    # ran one-threaded and held the most memory of the graph. covis.counts sorts the rows
    # itself and its result does not depend on their order; the groups keep the session order,
    # so every sum adds up in the same order as before. Sessions formed from basket-less events
    # (windows over them) are computed once and kept for the two reads; basket ids are re-read.
    a = _numpy(con, f"""WITH {_sessions(p.session_gap_minutes, keep_derived=True)},
        keys AS (SELECT session, (row_number() OVER (ORDER BY session))::INTEGER AS s
                 FROM (SELECT DISTINCT session FROM sessions JOIN _items USING (item_id)))
        SELECT k.s, it.col, epoch_ms(ts) // 1000 AS t, {_event_weight(ew, 'REAL')} AS w
        FROM sessions JOIN _items it USING (item_id) JOIN keys k USING (session)""")
    return a, n_items


def covisitation_counts(a: dict[str, np.ndarray], n_items: int, p: modeling.CovisParams) -> sp.csr_matrix:
    """Counts covisitation_events' arrays (taken out of `a`, so the caller holds no second copy)."""
    if len(a["s"]) == 0:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    return covis.counts(a.pop("s"), a.pop("col"), a.pop("t").astype(np.int64, copy=False),
                        a.pop("w").astype(np.float32, copy=False),
                        time_decay_seconds=p.time_decay_hours * 3600.0, top_k=p.top_k, n_items=n_items)


def user_similarity(con, p: modeling.SimilarityParams, event_weights: dict[str, float] | None = None) -> sp.csr_matrix:
    """modeling.user_similarity on recs.interactions."""
    return user_similarity_counts(*user_similarity_events(con, p, event_weights), p)


def user_similarity_events(con, p: modeling.SimilarityParams,
                           event_weights: dict[str, float] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """The inputs of user_similarity_counts: (u, col, t, w) arrays and the catalog size."""
    n_items = _items(con)
    ew = event_weights or modeling.EVENT_WEIGHTS
    # Users numbered in user_id order (as a dense rank would), from the distinct users only:
    # no window or ORDER BY over every event (one-threaded, and spilling at 20M). The rows come
    # back unordered: covis.counts sorts them itself and its result does not depend on input
    # order, and the groups keep the user_id order, so sums add up in the same order as before.
    con.execute("""CREATE OR REPLACE TEMP TABLE _user_keys AS
        SELECT user_id, (row_number() OVER (ORDER BY user_id))::INTEGER AS u
        FROM (SELECT DISTINCT user_id FROM recs.interactions WHERE user_id IS NOT NULL)""")
    a = _numpy(con, f"""
        SELECT k.u, it.col, epoch_ms(ts) // 1000 AS t, {_event_weight(ew, 'REAL')} AS w
        FROM recs.interactions JOIN _items it USING (item_id) JOIN _user_keys k USING (user_id)""")
    con.execute("DROP TABLE _user_keys")
    return a, n_items


def user_similarity_counts(a: dict[str, np.ndarray], n_items: int, p: modeling.SimilarityParams) -> sp.csr_matrix:
    """Counts user_similarity_events' arrays (taken out of `a`) and normalises."""
    if len(a["u"]) == 0:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    C = covis.counts(a.pop("u"), a.pop("col"), a.pop("t").astype(np.int64, copy=False),
                     a.pop("w").astype(np.float32, copy=False),
                     time_decay_seconds=p.decay_days * 86400.0, top_k=p.top_k, n_items=n_items, window=p.window)
    return modeling.normalized_similarity(C)


def baskets(con, session_gap_minutes: float) -> tuple[sp.csr_matrix, np.ndarray, dict]:
    """features.basket_matrix and features.basket_origin on recs.interactions: baskets x items
    (bool), the basket ids (sorted) and how they were formed."""
    n_items = _items(con)
    any_purchase = con.execute("SELECT count(*) > 0 FROM recs.interactions WHERE event = 'purchase'").fetchall()[0][0]
    where = "event = 'purchase'" if any_purchase else "TRUE"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _basket_rows AS WITH {_sessions(session_gap_minutes, where)}
        SELECT session, item_id, bool_or(derived) AS derived FROM sessions GROUP BY session, item_id""")
    origin = dict(con.execute(
        "SELECT derived, count(DISTINCT session) FROM _basket_rows GROUP BY derived").fetchall())
    con.execute("""CREATE OR REPLACE TEMP TABLE _basket_ids AS
        SELECT session, (row_number() OVER (ORDER BY session) - 1)::INTEGER AS row
        FROM (SELECT DISTINCT session FROM _basket_rows JOIN _items USING (item_id))""")
    names = _numpy(con, "SELECT session FROM _basket_ids ORDER BY row")["session"].astype(object)
    a = _numpy(con, "SELECT b.row, it.col FROM _basket_rows r JOIN _basket_ids b USING (session) "
                    "JOIN _items it USING (item_id)")
    con.execute("DROP TABLE _basket_rows")
    con.execute("DROP TABLE _basket_ids")
    B = sp.csr_matrix((np.ones(len(a["row"]), dtype=bool), (a["row"], a["col"])), shape=(len(names), n_items))
    B.sort_indices()
    given, derived = int(origin.get(False, 0)), int(origin.get(True, 0))
    formed = {"given_baskets": given, "session_baskets": derived,
              "formed_from": "basket ids" if not derived else "sessions" if not given else "basket ids + sessions",
              "basket_events": "purchase" if any_purchase else "any"}
    return B, names, formed
