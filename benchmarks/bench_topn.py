"""Batch top-N: candidates (recs_kernels.candidates) against the dense blend (Blend.top_k).

    python benchmarks/bench_topn.py --users 1000000 --items 100000   # the full size, standalone kernels
    python benchmarks/bench_topn.py --users 300000 --items 30000
    python benchmarks/bench_topn.py --users 20000 --items 20000 --nprobe 8,16,32
    python benchmarks/bench_topn.py --artifacts /tmp/base-home/artifacts --nprobe 6,12   # real models

Sources as in the pipeline: ALS (64) and BPR (65) factors with a clustered structure, content
(64-d), item_sim/covis/rules neighbours (50/50/10 per item: ~2K neighbour-support items per
user), trending; history of ~20 items per user, excluded. Dense costs users x items, so it
runs on ``--sample`` users and its time is scaled to all users (linear in users at a fixed
catalogue); candidates run on every user. CPU seconds (all threads) are the measure on a
shared machine; the load average is printed. Agreement: share of the dense top-10 / top-N
that the candidates return, on the sampled users.
"""
from __future__ import annotations

import argparse
import json
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


def real_models(args) -> int:
    """Agreement of the candidate top-N with the dense one on a pipeline run's models: the
    share of the catalogue scanned (nprobe * cluster_size / items) as at full size."""
    from recs_assets import modeling, outputs
    from recs_assets.features import load_matrix
    from recs_assets.resources import ArtifactStore

    art = ArtifactStore(root=args.artifacts)
    m = load_matrix(art)
    req = modeling.RequestParams()
    bl, ua, ub = outputs.load_blend(art, req)
    w = modeling.BlendParams().weights()
    H = blend.cap_history(m.weights, req.history_cap)
    d_ids, _ = bl.top_k(w, args.n, als_users=ua, bpr_users=ub, history=H, exclude=m.binary)
    print(f"{args.artifacts}: {ua.shape[0]:,} users x {bl.n_items:,} items, pipeline weights {w}")
    print(f"  {'cluster size':>12} {'nprobe':>7} {'scanned':>8} {'max_support':>12} {'top-10 agree':>13} {'top-N agree':>12}")
    for cs in (int(x) for x in (args.cluster_sizes or "32").split(",")):
        for p in (int(x) for x in args.nprobe.split(",")):
            for ms in (int(x) for x in (args.supports or "0,50,150,300").split(",")):
                c_ids, _ = candidates.top_k(bl, w, args.n, als_users=ua, bpr_users=ub, history=H, exclude=m.binary,
                                            nprobe=p, cluster_size=cs, max_support=ms)
                print(f"  {cs:12d} {p:7d} {min(1.0, p * cs / bl.n_items):8.1%} {ms:12d} "
                      f"{agreement(c_ids, d_ids, 10):13.4f} {agreement(c_ids, d_ids, args.n):12.4f}", flush=True)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--sample", type=int, default=4000, help="users the dense path runs on")
    ap.add_argument("--nprobe", default="16")
    ap.add_argument("--cluster-size", type=int, default=256)
    ap.add_argument("--max-support", type=int, default=100)
    ap.add_argument("--weights", choices=("bench", "pipeline"), default="bench",
                    help="bench: neighbour-heavy weights (the support matters most); pipeline: BlendParams' defaults")
    ap.add_argument("--artifacts", help="a RECS_HOME's artifacts directory: the real models (read only) instead of "
                                        "the synthetic world, pipeline weights; agreement of every user")
    ap.add_argument("--cluster-sizes", default=None, help="with --artifacts: cluster sizes to try (default 32)")
    ap.add_argument("--supports", default=None, help="with --artifacts: max_support values to try (default 0,50,150,300)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    import numba

    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    if args.artifacts:
        return real_models(args)
    t = time.perf_counter()
    bl, w, Ua, Ub, H = world(args.users, args.items)
    if args.weights == "pipeline":
        from recs_assets.modeling import BlendParams

        w = BlendParams().weights()
    print(f"{args.users:,} users x {args.items:,} items, top-{args.n}, {args.weights} weights {w}, "
          f"{numba.get_num_threads()} threads "
          f"(world built in {time.perf_counter() - t:.0f} s); load average {os.getloadavg()[0]:.2f}", flush=True)
    # compile / load the kernels on a few users first
    bl.top_k(w, args.n, als_users=Ua[:64], bpr_users=Ub[:64], history=H[:64], exclude=H[:64])
    candidates.top_k(bl, w, args.n, als_users=Ua[:64], bpr_users=Ub[:64], history=H[:64], exclude=H[:64])
    ns = min(args.sample, args.users)
    c, t = time.process_time(), time.perf_counter()
    d_ids, _ = bl.top_k(w, args.n, als_users=Ua[:ns], bpr_users=Ub[:ns], history=H[:ns], exclude=H[:ns])
    cpu_d, wall_d = (time.process_time() - c) * args.users / ns, (time.perf_counter() - t) * args.users / ns
    rows = [{"path": "dense (exact)", "cpu_s": cpu_d, "wall_s": wall_d, "speedup_cpu": 1.0, "top10": 1.0, "topN": 1.0}]
    print(f"  {'path':<24} {'CPU s':>9} {'wall s':>9} {'CPU us/user':>12} {'CPU speed-up':>13} {'top-10 agree':>13} "
          f"{'top-N agree':>12}", flush=True)

    def show(r):
        print(f"  {r['path']:<24} {r['cpu_s']:9.1f} {r['wall_s']:9.1f} {r['cpu_s'] / args.users * 1e6:12.1f} "
              f"{r['speedup_cpu']:13.2f} {r['top10']:13.4f} {r['topN']:12.4f}", flush=True)

    show(rows[0])
    for p in args.nprobe.split(","):
        c, t = time.process_time(), time.perf_counter()
        c_ids, _ = candidates.top_k(bl, w, args.n, als_users=Ua, bpr_users=Ub, history=H, exclude=H, nprobe=int(p),
                                    cluster_size=args.cluster_size, max_support=args.max_support)
        cpu_c, wall_c = time.process_time() - c, time.perf_counter() - t
        rows.append({"path": f"candidates nprobe {p}", "cpu_s": cpu_c, "wall_s": wall_c, "speedup_cpu": cpu_d / cpu_c,
                     "top10": agreement(c_ids[:ns], d_ids, 10), "topN": agreement(c_ids[:ns], d_ids, args.n)})
        show(rows[-1])
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"users": args.users, "items": args.items, "n": args.n, "rows": rows,
                                               "weights": w,
                                               "cluster_size": args.cluster_size, "max_support": args.max_support,
                                               "load_after": os.getloadavg()[0]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
