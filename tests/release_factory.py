"""Build a REAL release from the bundled Online Retail data, without Dagster.

Serving tests need a release that looks like what the pipeline publishes: real ids, real
co-purchase structure, factors from the real kernels. This module builds one with polars and
``recs_kernels`` (ALS, BPR, the one blend) and writes it with ``recs_serving.release.write_release``
and a contract from ``recs_assets.contract.contract_from_configs``, so the on-disk format and
the parameters are the ones the pipeline writes. Its top-N table is the batch blend
(``recs_kernels.blend.Blend.top_k``) over the very tables it ships. It is deliberately small
and fast (few factors and iterations).

Online Retail has no brand or category, so they are derived from the description: ``brand``
is its first word (``WHITE``, ``JUMBO``, ...) and ``category`` its last (``BAG``, ``HOLDER``).
``item_embeddings`` are hashed bag-of-words vectors of the description (deterministic, no
model download), which makes content similarity meaningful for tests.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import scipy.sparse as sp

from recs_kernels import als, blend, bpr, topk
from recs_serving.release import ReleaseContract, write_release

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "data" / "online_retail.parquet"

EMBED_DIM = 32
TOPN = 30
NEIGHBORS = 20


@dataclass(frozen=True)
class Built:
    tables: dict
    arrays: dict
    contract: ReleaseContract


# every source weighs something, so every source is exercised by the serving tests
WEIGHTS = {"als": 1.0, "bpr": 0.5, "item_sim": 0.3, "covis": 0.5, "rules": 0.3, "content": 0.2,
           "trending": 0.3, "popularity": 0.2}


def make_contract(factors: int, iterations: int, **request) -> ReleaseContract:
    """The factory's contract, built by the pipeline's own builder from config objects."""
    from recs_assets import modeling
    from recs_assets.contract import contract_from_configs

    return contract_from_configs(
        matrix=modeling.MatrixParams(),
        als=modeling.ALSParams(factors=factors, iterations=iterations, regularization=0.05, alpha=20.0),
        bpr=modeling.BPRParams(factors=factors, iterations=iterations * 3), covisitation=modeling.CovisParams(top_k=NEIGHBORS),
        item_similarity=modeling.SimilarityParams(top_k=NEIGHBORS), popularity=modeling.PopularityParams(),
        topn={"n": TOPN, "blend": modeling.BlendParams(**WEIGHTS), "request": modeling.RequestParams(**request)},
    )


def _csr(table: pl.DataFrame, item_index: dict, n: int) -> sp.csr_matrix:
    """An (item_id, neighbor_id, score) table as the item x item matrix the loader builds."""
    a = np.array([item_index[x] for x in table["item_id"].to_list()], np.int64)
    b = np.array([item_index[x] for x in table["neighbor_id"].to_list()], np.int64)
    return sp.csr_matrix((table["score"].to_numpy().astype(np.float32), (a, b)), shape=(n, n))


def _hash_embed(texts: list[str], dim: int = EMBED_DIM) -> np.ndarray:
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for r, text in enumerate(texts):
        for word in (text or "").split():
            h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
            out[r, h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.where(norms > 0, norms, 1.0)
    return out


def _neighbors_table(ids: np.ndarray, scores: np.ndarray, item_ids: np.ndarray, src_col: str, names: tuple) -> pl.DataFrame:
    n, k = ids.shape
    rows = np.repeat(np.arange(n), k)
    flat = ids.ravel()
    ok = flat >= 0
    return pl.DataFrame(
        {
            names[0]: item_ids[rows[ok]],
            "rank": (np.tile(np.arange(1, k + 1), n)[ok]).astype(np.int32),
            names[1]: item_ids[flat[ok]],
            "score": scores.ravel()[ok].astype(np.float32),
        }
    ).with_columns(pl.lit(src_col).alias("source")) if src_col else pl.DataFrame(
        {names[0]: item_ids[rows[ok]], names[1]: item_ids[flat[ok]], "score": scores.ravel()[ok].astype(np.float32)}
    )


@lru_cache(maxsize=4)
def build_tables(factors: int = 16, iterations: int = 6, seed: int = 0, max_rows: int | None = None) -> Built:
    raw = pl.read_parquet(BUNDLED)
    if max_rows:
        raw = raw.head(max_rows)
    df = (
        raw.filter(
            pl.col("CustomerID").is_not_null()
            & (pl.col("Quantity") > 0)
            & (pl.col("UnitPrice") > 0)
            & ~pl.col("InvoiceNo").str.starts_with("C")
            & pl.col("StockCode").str.contains(r"^\d")
        )
        .with_columns(
            pl.col("CustomerID").cast(pl.Int64).cast(pl.Utf8).alias("user_id"),
            pl.col("StockCode").str.to_uppercase().alias("item_id"),
            (pl.col("InvoiceDate").dt.epoch("ms")).alias("ts"),
        )
    )
    t_max = int(df["ts"].max())
    items = (
        df.group_by("item_id")
        .agg(
            pl.col("Description").drop_nulls().mode().sort().first().alias("title"),
            pl.col("UnitPrice").median().cast(pl.Float64).alias("price"),
            pl.col("InvoiceNo").n_unique().alias("popularity"),
            (pl.col("ts") > t_max - 30 * 86_400_000).sum().cast(pl.Float64).alias("trending"),
        )
        .sort("item_id")
        .with_columns(pl.col("title").fill_null("").str.strip_chars())
        .with_columns(
            pl.col("title").alias("description"),
            pl.col("title").str.split(" ").list.first().fill_null("NONE").alias("brand"),
            pl.col("title").str.split(" ").list.last().fill_null("NONE").alias("category"),
            pl.col("popularity").cast(pl.Float64),
        )
        .with_row_index("idx")
        .with_columns(pl.col("idx").cast(pl.Int64))
        .select("idx", "item_id", "title", "description", "brand", "category", "price", "popularity", "trending")
    )
    users = df.select("user_id").unique().sort("user_id").with_row_index("idx").with_columns(pl.col("idx").cast(pl.Int64))
    ui = (
        df.group_by("user_id", "item_id")
        .agg(
            pl.col("InvoiceNo").n_unique().alias("purchases"),
            pl.col("ts").max().alias("last_ts"),
        )
        .with_columns(pl.col("purchases").cast(pl.Int64), (pl.col("purchases").cast(pl.Float64).log1p()).alias("weight"))
        .join(users.rename({"idx": "u"}), on="user_id")
        .join(items.select(pl.col("idx").alias("i"), "item_id"), on="item_id")
        .sort("u", "i")
    )
    n_users, n_items = users.height, items.height
    R = sp.csr_matrix(
        (ui["weight"].to_numpy().astype(np.float32), (ui["u"].to_numpy(), ui["i"].to_numpy())),
        shape=(n_users, n_items),
    )
    X, Y = als.fit(R, factors=factors, iterations=iterations, regularization=0.05, alpha=20.0, seed=seed)
    BX, BY = bpr.fit(R, factors=factors, iterations=iterations * 3, seed=seed)
    item_ids = items["item_id"].to_numpy().astype(object)
    user_ids = users["user_id"].to_numpy().astype(object)

    emb = _hash_embed(items["title"].to_list())
    sid, ssc = topk.similar(Y, NEIGHBORS)
    cid, csc = topk.similar(emb, NEIGHBORS)
    similar = pl.concat(
        [
            _neighbors_table(sid, ssc, item_ids, "factors", ("item_id", "similar_item_id")),
            _neighbors_table(cid, csc, item_ids, "content", ("item_id", "similar_item_id")),
        ]
    )

    # Co-visitation within invoices (baskets), cosine-normalised counts, top neighbours.
    baskets = df.select("InvoiceNo", "item_id").unique().join(items.select(pl.col("idx").alias("i"), "item_id"), on="item_id")
    binv = baskets["InvoiceNo"].cast(pl.Categorical).to_physical().to_numpy()
    B = sp.csr_matrix((np.ones(baskets.height, dtype=np.float32), (binv, baskets["i"].to_numpy())))
    C = (B.T @ B).tocsr().astype(np.float32)
    C.setdiag(0)
    C.eliminate_zeros()
    n_b = B.shape[0]
    cnt = np.asarray(B.sum(axis=0)).ravel()
    Cn = C.tocoo()
    cos = Cn.data / np.sqrt(cnt[Cn.row] * cnt[Cn.col])
    covis = (
        pl.DataFrame({"a": Cn.row, "b": Cn.col, "score": cos.astype(np.float32), "n": Cn.data})
        .filter(pl.col("n") >= 3)
        .sort(["a", "score", "b"], descending=[False, True, False])
        .group_by("a", maintain_order=True)
        .head(NEIGHBORS)
    )
    covisitation = pl.DataFrame(
        {"item_id": item_ids[covis["a"].to_numpy()], "neighbor_id": item_ids[covis["b"].to_numpy()], "score": covis["score"]}
    )
    conf = covis["n"].to_numpy() / cnt[covis["a"].to_numpy()]
    lift = conf / (cnt[covis["b"].to_numpy()] / n_b)
    rules = (
        pl.DataFrame(
            {
                "antecedents": [[x] for x in item_ids[covis["a"].to_numpy()]],
                "consequents": [[x] for x in item_ids[covis["b"].to_numpy()]],
                "support": (covis["n"].to_numpy() / n_b).astype(np.float64),
                "confidence": conf.astype(np.float64),
                "lift": lift.astype(np.float64),
            }
        )
        .filter((pl.col("confidence") >= 0.1) & (pl.col("lift") > 1.0))
    )

    pop_parts = []
    for scope, col, key in (("global", "popularity", None), ("trending", "trending", None), ("brand", "popularity", "brand"), ("category", "popularity", "category")):
        part = items.select("item_id", "brand", "category", pl.col(col).alias("score"))
        part = part.with_columns(pl.lit("" if key is None else None, dtype=pl.Utf8).alias("key") if key is None else pl.col(key).alias("key"))
        part = part.filter(pl.col("score") > 0).sort(["key", "score", "item_id"], descending=[False, True, False])
        part = part.group_by("key", maintain_order=True).head(100)
        part = part.with_columns((pl.col("item_id").cum_count().over("key")).cast(pl.Int32).alias("rank"), pl.lit(scope).alias("scope"))
        pop_parts.append(part.select("scope", "key", "item_id", pl.col("score").cast(pl.Float64), "rank"))
    popularity = pl.concat(pop_parts)

    user_items = ui.select("user_id", "item_id", pl.col("weight").cast(pl.Float32), "purchases", "last_ts")

    # Item-item similarity from users' histories (cosine of co-occurrence), top neighbours.
    Bu = (R > 0).astype(np.float32)
    S = (Bu.T @ Bu).tocoo()
    keep = S.row != S.col
    ucnt = np.asarray(Bu.sum(axis=0)).ravel()
    sim_t = (
        pl.DataFrame({"a": S.row[keep], "b": S.col[keep],
                      "score": (S.data[keep] / np.sqrt(ucnt[S.row[keep]] * ucnt[S.col[keep]])).astype(np.float32)})
        .sort(["a", "score", "b"], descending=[False, True, False]).group_by("a", maintain_order=True).head(NEIGHBORS)
    )
    item_similarity = pl.DataFrame({"item_id": item_ids[sim_t["a"].to_numpy()], "neighbor_id": item_ids[sim_t["b"].to_numpy()],
                                    "score": sim_t["score"]})

    # Top-N per user: the batch blend over the very tables shipped, seen items excluded.
    contract = make_contract(factors, iterations)
    index = {x: i for i, x in enumerate(item_ids.tolist())}
    rl = rules.to_dict(as_series=False)
    R_rules = blend.rules_matrix(
        n_items, np.array([len(a) for a in rl["antecedents"]]), np.array([index[x] for a in rl["antecedents"] for x in a]),
        np.array([len(c) for c in rl["consequents"]]), np.array([index[x] for c in rl["consequents"] for x in c]),
        np.asarray(rl["confidence"], np.float32))
    bl = blend.Blend(als_items=Y, bpr_items=BY, item_sim=_csr(item_similarity, index, n_items),
                     covis=_csr(covisitation, index, n_items), rules=R_rules,
                     content=blend.content_vectors(emb, contract.content_dim),
                     trending=items["trending"].to_numpy(), popularity=items["popularity"].to_numpy())
    H = blend.cap_history(R, contract.candidates.history_cap)
    ids, scores = bl.top_k(contract.weights.model_dump(), TOPN, als_users=X, bpr_users=BX, history=H, exclude=R)
    rows = np.repeat(np.arange(n_users), TOPN)
    ok = ids.ravel() >= 0
    topn = pl.DataFrame(
        {
            "user_id": user_ids[rows[ok]],
            "rank": np.tile(np.arange(1, TOPN + 1), n_users)[ok].astype(np.int32),
            "item_id": item_ids[ids.ravel()[ok]],
            "score": scores.ravel()[ok].astype(np.float32),
            "reason": ["for_you"] * int(ok.sum()),
        }
    )
    return Built(
        tables={
            "items": items,
            "users": users,
            "user_items": user_items,
            "topn": topn,
            "similar_items": similar,
            "covisitation": covisitation,
            "item_similarity": item_similarity,
            "rules": rules,
            "popularity": popularity,
        },
        arrays={
            "als_user_factors": X,
            "als_item_factors": Y,
            "bpr_user_factors": BX,
            "bpr_item_factors": BY,
            "item_embeddings": emb,
        },
        contract=contract,
    )


def build_release(home: Path | str, *, run_id: str = "test", factors: int = 16, iterations: int = 6, **kw) -> Path:
    """Publish a release built from the bundled data under ``home``; returns its directory."""
    built = build_tables(factors=factors, iterations=iterations, **kw)
    return write_release(home, contract=built.contract, tables=dict(built.tables), arrays=dict(built.arrays), run_id=run_id)


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/release_factory.py HOME
    import sys
    import time

    t0 = time.perf_counter()
    print(build_release(sys.argv[1] if len(sys.argv) > 1 else "var/test-home"), f"{time.perf_counter() - t0:.1f}s")
