"""Batch top-N: candidates (recs_kernels.candidates) against the dense blend (Blend.top_k).

    python benchmarks/bench_topn.py                       # 100K items, 20K users (seconds per 1M users extrapolated)
    python benchmarks/bench_topn.py --items 20000 --users 20000 --quick

Sources as in the pipeline: ALS (64) and BPR (65) factors with a low-rank cluster structure,
content (64-d), item_sim/covis/rules neighbours (top 50 per item), trending; history of ~20
items per user, excluded. Reports seconds, seconds per 1M users, the speed-up, and the
agreement of the candidate top-10 and top-N with the dense ones (share of the dense list
recovered) at several ranks of the candidate projection.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from recs_kernels import blend, candidates  # noqa: E402


def neighbours(rng, n_items, k, cluster):
    rows = np.repeat(np.arange(n_items), k)
    # neighbours mostly from the same cluster, as co-purchase data gives
    same = rng.random(rows.size) < 0.8
    order = np.argsort(cluster, kind="stable")
    starts = np.searchsorted(cluster[order], np.arange(cluster.max() + 1))
    sizes = np.bincount(cluster, minlength=cluster.max() + 1)
    c = cluster[rows]
    pick_same = order[starts[c] + (rng.random(rows.size) * sizes[c]).astype(np.int64)]
    cols = np.where(same, pick_same, rng.integers(0, n_items, rows.size))
    S = sp.csr_matrix((rng.random(rows.size).astype(np.float32), (rows, cols)), shape=(n_items, n_items))
    S.sum_duplicates()
    return S


def world(n_users, n_items, seed=0, history=20):
    rng = np.random.default_rng(seed)
    nc = 64
    ic = rng.integers(0, nc, n_items)
    uc = rng.integers(0, nc, n_users)

    def factors(d):
        centres = rng.normal(size=(nc, d)).astype(np.float32)
        V = centres[ic] + 0.5 * rng.normal(size=(n_items, d)).astype(np.float32)
        U = centres[uc] + 0.5 * rng.normal(size=(n_users, d)).astype(np.float32)
        return U.astype(np.float32), V.astype(np.float32)

    Ua, Va = factors(64)
    Ub, Vb = factors(65)
    _, E = factors(64)
    pop = 1.0 / (rng.permutation(n_items) + 1.0) ** 0.8
    rows = np.repeat(np.arange(n_users), history)
    same = rng.random(rows.size) < 0.75
    cols = np.where(same, rng.integers(0, n_items, rows.size), rng.choice(n_items, rows.size, p=pop / pop.sum()))
    H = sp.csr_matrix((rng.random(rows.size).astype(np.float32) + 0.1, (rows, cols)), shape=(n_users, n_items))
    H.sum_duplicates()
    bl = blend.Blend(als_items=Va, bpr_items=Vb, item_sim=neighbours(rng, n_items, 50, ic),
                     covis=neighbours(rng, n_items, 50, ic), rules=neighbours(rng, n_items, 10, ic),
                     content=blend.content_vectors(E, 64), trending=pop * rng.random(n_items), popularity=pop)
    w = {"als": 1.0, "bpr": 0.5, "item_sim": 0.5, "covis": 0.5, "rules": 0.3, "content": 0.3,
         "trending": 0.3, "popularity": 0.2}
    return bl, w, Ua, Ub, H


def agreement(a, b, k):
    return float(np.mean([len(set(x[:k]) & set(y[:k])) / k for x, y in zip(a, b)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--ranks", default="16,32,full")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    import numba

    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    bl, w, Ua, Ub, H = world(args.users, args.items)
    print(f"{args.users:,} users x {args.items:,} items, top-{args.n}, {numba.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.2f}")
    # compile on a few users first
    bl.top_k(w, args.n, als_users=Ua[:64], bpr_users=Ub[:64], history=H[:64], exclude=H[:64])
    candidates.top_k(bl, w, args.n, als_users=Ua[:64], bpr_users=Ub[:64], history=H[:64], exclude=H[:64])
    t = time.perf_counter()
    d_ids, _ = bl.top_k(w, args.n, als_users=Ua, bpr_users=Ub, history=H, exclude=H)
    t_dense = time.perf_counter() - t
    per_m = 1e6 / args.users
    print(f"  {'path':<22} {'s':>8} {'s per 1M users':>15} {'speed-up':>9} {'top-10 agree':>13} {'top-N agree':>12}")
    print(f"  {'dense (exact)':<22} {t_dense:8.1f} {t_dense * per_m:15.0f} {1.0:9.2f} {1.0:13.4f} {1.0:12.4f}")
    for r in args.ranks.split(","):
        rank = None if r == "full" else int(r)
        t = time.perf_counter()
        c_ids, _ = candidates.top_k(bl, w, args.n, als_users=Ua, bpr_users=Ub, history=H, exclude=H, rank=rank)
        tc = time.perf_counter() - t
        print(f"  {'candidates rank ' + r:<22} {tc:8.1f} {tc * per_m:15.0f} {t_dense / tc:9.2f} "
              f"{agreement(c_ids, d_ids, 10):13.4f} {agreement(c_ids, d_ids, args.n):12.4f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
