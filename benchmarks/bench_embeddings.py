"""Text embedding backends: throughput on the synthetic catalogue's texts and neighbour
agreement with the exact fp32 transformer on the bundled catalogue.

    python benchmarks/bench_embeddings.py            # 2 threads, bundled catalogue + 20K synthetic texts
    python benchmarks/bench_embeddings.py --quick    # 800 bundled titles, 2K synthetic texts

overlap@10: for each item, the share of its 10 nearest neighbours (cosine, itself excluded)
under a backend that are also among its 10 nearest under the transformer (all-MiniLM-L6-v2,
fp32, sentence-transformers). content recall@10: on bench_factors' Online Retail split, each
user scored by the cosine of the items to the sum of their train items' embeddings, seen items
excluded (the content source alone; popularity scores ~0.05 there). Throughput is texts/s of Embedder.encode on texts the backend
has never seen (the static model's token vectors distilled once beforehand; that one-off
distillation is reported separately).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402


def bundled_titles(limit: int | None) -> list[str]:
    df = pl.read_parquet(REPO / "data" / "online_retail.parquet", columns=["StockCode", "Description"]).drop_nulls()
    titles = sorted(set(df.group_by("StockCode").agg(pl.col("Description").mode().sort().first())["Description"]))
    if limit and limit < len(titles):
        rng = np.random.default_rng(0)
        titles = [titles[i] for i in np.sort(rng.choice(len(titles), limit, replace=False))]
    return titles


def synthetic_texts(n: int) -> list[str]:
    from recs_assets.features import item_text
    from recs_assets.synthetic import SyntheticConfig, _World

    world = _World(SyntheticConfig(n_users=1000, n_items=n, n_events=0))
    return item_text(world.catalog, ["title", "brand", "category", "description"])


def content_recall_setup():
    """Online Retail split of bench_factors (train before 2011-11-01, test after) and each
    train item's title index in ``bundled_titles()``: what a content-only recommender needs."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_factors as bf

    counts, held = bf.load_online_retail(REPO / "data" / "online_retail.parquet")
    df = pl.read_parquet(REPO / "data" / "online_retail.parquet")
    df = df.filter(~pl.col("InvoiceNo").cast(pl.Utf8).str.starts_with("C") & (pl.col("Quantity") > 0)
                   & (pl.col("UnitPrice") > 0) & pl.col("CustomerID").is_not_null()
                   & ~pl.col("StockCode").str.to_uppercase().is_in(list(bf.NON_PRODUCT))
                   & ~pl.col("StockCode").str.to_lowercase().str.starts_with("gift_"))
    train = df.filter(pl.col("InvoiceDate") < pl.lit(bf.CUTOFF).str.to_datetime())
    items = train["StockCode"].unique().sort()
    titles = {t: i for i, t in enumerate(bundled_titles(None))}
    mode = (df.drop_nulls("Description").group_by("StockCode")
            .agg(pl.col("Description").mode().sort().first()))
    title_of = dict(zip(mode["StockCode"].to_list(), mode["Description"].to_list()))
    idx = np.array([titles.get(title_of.get(c), -1) for c in items.to_list()])
    return bf, bf.weight(counts, "log1p"), counts, held, idx


def content_recall(setup, E_titles: np.ndarray) -> float:
    """recall@10 of recommending by the history's summed embedding (cosine), seen items excluded."""
    from recs_kernels import topk

    bf, train, counts, held, idx = setup
    E = np.where((idx >= 0)[:, None], E_titles[np.maximum(idx, 0)], 0.0).astype(np.float32)
    profiles = np.asarray(train @ E, dtype=np.float32)
    ids, _ = topk.batch(profiles, E, 10, counts)
    return bf.evaluate(ids, held)[0]


def knn(E: np.ndarray, k: int = 10) -> np.ndarray:
    out = np.empty((E.shape[0], k), np.int64)
    for b0 in range(0, E.shape[0], 2048):
        S = E[b0:b0 + 2048] @ E.T
        S[np.arange(S.shape[0]), np.arange(b0, b0 + S.shape[0])] = -np.inf
        part = np.argpartition(-S, k, axis=1)[:, :k]
        out[b0:b0 + 2048] = part
    return out


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--synthetic", type=int, default=None, help="synthetic texts for throughput")
    ap.add_argument("--transformer-texts", type=int, default=1000,
                    help="synthetic texts the (slow) transformer is timed on")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from recs_assets.resources import Embedder

    n_syn = args.synthetic or (2000 if args.quick else 20_000)
    titles = bundled_titles(800 if args.quick else None)
    syn = synthetic_texts(n_syn)
    tok_lens = None
    with tempfile.TemporaryDirectory() as cache:
        backends = {
            "transformer fp32": Embedder(backend="transformer"),
            "static (distilled)": Embedder(backend="static", cache_dir=cache),
        }
        from recs_assets.resources.embedder import _tokenizer

        tok_lens = np.mean([len(e.ids) for e in _tokenizer(backends["static (distilled)"].model).encode_batch(syn[:2000])])
        load1 = os.getloadavg()[0]
        print(f"bundled catalogue: {len(titles)} titles; synthetic: {len(syn)} texts, mean {tok_lens:.1f} tokens; "
              f"torch threads {args.threads}; load average {load1:.2f}")
        t = time.perf_counter()
        ref = backends["transformer fp32"].encode(titles)
        t_ref = time.perf_counter() - t
        ref_knn = knn(ref)
        # One-off cost: the static model's token vectors for everything these texts use.
        t = time.perf_counter()
        backends["static (distilled)"].encode(titles + syn)
        t_distil = time.perf_counter() - t
        print(f"static: distilling the tokens of all texts once took {t_distil:.1f}s")
        setup = None if args.quick else content_recall_setup()
        all_titles = titles if setup is None else bundled_titles(None)
        print(f"  {'backend':<20} {'texts/s (synthetic)':>20} {'texts/s (bundled)':>18} {'overlap@10':>11} "
              f"{'content recall@10':>18}")
        rows = {}
        for name, emb in backends.items():
            if name.startswith("transformer"):
                sample = syn[: args.transformer_texts]
                emb.encode(sample[:32])
                t = time.perf_counter()
                emb.encode(sample)
                rate_syn = len(sample) / (time.perf_counter() - t)
                rate_b = len(titles) / t_ref
                ov = 1.0
                E = ref
            else:
                t, c = time.perf_counter(), time.process_time()
                emb.encode(syn)
                rate_syn = len(syn) / (time.perf_counter() - t)
                # the machine may be shared: texts per CPU-second of this process as well
                print(f"  (static: {len(syn) / (time.process_time() - c):,.0f} texts per CPU-second on the synthetic texts)")
                t = time.perf_counter()
                E = emb.encode(titles)
                rate_b = len(titles) / (time.perf_counter() - t)
                ov = overlap(knn(E), ref_knn)
            rec = "-" if setup is None else f"{content_recall(setup, E if all_titles is titles else emb.encode(all_titles)):.4f}"
            rows[name] = (rate_syn, rate_b, ov, rec)
            print(f"  {name:<20} {rate_syn:20,.0f} {rate_b:18,.0f} {ov:11.3f} {rec:>18}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
