"""The vector store's ANN index: build time (wall, CPU) and recall@10 against exact cosine.

    python benchmarks/bench_vector_store.py --rows 30000,100000
    python benchmarks/bench_vector_store.py --embeddings RECS_HOME/artifacts/catalog_embeddings/vectors.npy

Vectors: a run's catalog embeddings (repeated with noise up to --rows), else clustered random
unit vectors (384-d). For each size and index setting: LanceDB table + index in a fresh
directory, then --queries item vectors searched with the index (nprobes as served: LanceDB's
default) and exactly (numpy); recall@10 = shared ids / 10. Settings: "fixed" (the index
parameters before: sqrt(n) partitions, 50 k-means iterations, 256 samples per partition, 24
sub-vectors) and "scaled" (recs_assets.outputs.ann_index_params: IVF_FLAT, sample and iterations
bounded); ivf_hnsw_sq, ivf_sq, ivf_pq: that index type with the scaled partitions.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def vectors(n: int, source: str | None, rng) -> np.ndarray:
    if source:
        base = np.load(source).astype(np.float32)
        reps = -(-n // len(base))
        v = np.concatenate([base] * reps)[:n]
        if reps > 1:
            v = v + rng.normal(0, 0.02, v.shape).astype(np.float32)
    else:
        centres = rng.normal(size=(max(8, n // 200), 384)).astype(np.float32)
        v = centres[rng.integers(0, len(centres), n)] + 0.6 * rng.normal(size=(n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def measure(E: np.ndarray, params: dict, queries: np.ndarray, k: int = 10) -> dict:
    import lancedb

    with tempfile.TemporaryDirectory(prefix="bench-vs-") as d:
        db = lancedb.connect(d)
        ids = pa.array(np.arange(len(E), dtype=np.int64))
        tbl = db.create_table("items", data=pa.table({"id": ids, "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(E.ravel()), E.shape[1])}))
        w0, c0 = time.perf_counter(), cpu()
        tbl.create_index(metric="cosine", vector_column_name="vector", **params)
        wall, cpus = time.perf_counter() - w0, cpu() - c0
        exact = np.argsort(-(E[queries] @ E.T), axis=1)[:, :k]
        hits = 0
        t0 = time.perf_counter()
        for q, want in zip(queries, exact):
            got = tbl.search(E[q]).metric("cosine").limit(k).select(["id"]).to_arrow()["id"].to_numpy()
            hits += len(set(got.tolist()) & set(want.tolist()))
        q_ms = (time.perf_counter() - t0) / len(queries) * 1000
    return {"build_wall": wall, "build_cpu": cpus, "recall@10": hits / (k * len(queries)), "query_ms": q_ms}


def main(argv=None) -> int:
    from recs_assets.outputs import ann_index_params

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="30000,100000")
    ap.add_argument("--embeddings", default=None, help="a vectors .npy (a run's catalog_embeddings)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--settings", default="fixed,scaled")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} CPUs")
    print(f"{'rows':>8} {'setting':<8} {'build wall s':>12} {'build CPU s':>11} {'recall@10':>9} {'query ms':>8}  params")
    for n in [int(x) for x in args.rows.split(",")]:
        E = vectors(n, args.embeddings, rng)
        queries = rng.choice(n, size=min(args.queries, n), replace=False)
        for setting in args.settings.split(","):
            if setting == "fixed":
                params = {"num_partitions": max(1, int(np.sqrt(n))), "num_sub_vectors": max(1, E.shape[1] // 16)}
            elif setting == "scaled":
                params = ann_index_params(n)
            else:  # another index type with the scaled partitions: ivf_flat, ivf_hnsw_sq, ivf_sq
                params = {**ann_index_params(n), "index_type": setting.upper()}
            r = measure(E, params, queries)
            print(f"{n:>8} {setting:<8} {r['build_wall']:12.1f} {r['build_cpu']:11.1f} {r['recall@10']:9.3f} "
                  f"{r['query_ms']:8.1f}  {params}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
