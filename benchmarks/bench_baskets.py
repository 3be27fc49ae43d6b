"""Basket-mining benchmark on the bundled Online Retail data: recs_kernels vs rusket vs mlxtend.

    python benchmarks/bench_baskets.py [--supports 0.02 0.01 0.005 0.002] [--repeat 3]
                                       [--mlxtend-timeout 120] [--cold]

Reports, for each min_support: seconds (median of --repeat for ours and rusket, one run for
mlxtend, which is time-boxed) and itemset counts, whether the three miners return identical
itemsets, the peak extra memory of ours (peak RSS of a fresh subprocess minus its RSS after
loading data and compiling), association-rule generation time, and co-visitation over all
541,909 events. Compile time (first call; ``--cold`` uses an empty numba cache) is reported
separately. rusket / mlxtend / pandas are imported only here (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NON_PRODUCT = ["POST", "DOT", "M", "m", "BANK CHARGES", "AMAZONFEE", "C2", "D", "S", "B", "CRUK", "PADS"]


def load_events():
    import polars as pl

    return pl.read_parquet(REPO / "data" / "online_retail.parquet")


def load_baskets():
    import numpy as np
    import polars as pl
    import scipy.sparse as sp

    df = load_events().filter(
        ~pl.col("InvoiceNo").str.starts_with("C"),
        pl.col("Quantity") > 0,
        pl.col("UnitPrice") > 0,
        ~pl.col("StockCode").is_in(NON_PRODUCT),
    )
    _, b = np.unique(df["InvoiceNo"].to_numpy(), return_inverse=True)
    _, i = np.unique(df["StockCode"].to_numpy(), return_inverse=True)
    m = sp.csr_matrix((np.ones(b.size, dtype=bool), (b, i)), shape=(b.max() + 1, i.max() + 1))
    m.sum_duplicates()
    return m


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


class Timeout(Exception):
    pass


def run_mlxtend(m, s, timeout):
    import pandas as pd
    from mlxtend.frequent_patterns import fpgrowth

    df = pd.DataFrame(m.toarray())

    def alarm(*_):
        raise Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(int(timeout))
    try:
        t = time.perf_counter()
        res = fpgrowth(df, min_support=s)
        el = time.perf_counter() - t
    except Timeout:
        return None, None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return el, {frozenset(int(x) for x in t) for t in res["itemsets"]}


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def mem_child(s):
    """Runs in a subprocess: peak RSS growth during one frequent_itemsets call (the mining
    arenas plus the returned Python tuples), sampled every 2 ms by a thread (the numba
    kernels release the GIL)."""
    import gc
    import threading

    from recs_kernels.fpgrowth import frequent_itemsets

    m = load_baskets()
    frequent_itemsets(m, 0.05)  # compile / load cache outside the measurement
    gc.collect()
    base = current_rss_mb()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], current_rss_mb())
            time.sleep(0.002)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    its, sup = frequent_itemsets(m, s)
    done.set()
    th.join()
    peak[0] = max(peak[0], current_rss_mb())
    print(f"{peak[0] - base:.1f} {len(its)}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--supports", type=float, nargs="+", default=[0.02, 0.01, 0.005, 0.002])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mlxtend-timeout", type=float, default=120.0)
    ap.add_argument("--cold", action="store_true", help="compile with an empty numba cache")
    ap.add_argument("--_mem", type=float, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._mem is not None:
        mem_child(a._mem)
        return
    if a.cold:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-")
    else:
        os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / "var" / "numba-cache"))

    import numpy as np
    import scipy.sparse as sp

    t = time.perf_counter()
    from recs_kernels import covis, fpgrowth, rules

    tiny = sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=bool))
    its, sup = fpgrowth.frequent_itemsets(tiny, 1)
    rules.association_rules(its, sup, 3)
    covis.counts(np.array([0, 0, 1]), np.array([0, 1, 2]), np.array([0, 1, 2]), np.ones(3),
                 time_decay_seconds=1.0, top_k=2)
    compile_s = time.perf_counter() - t

    import rusket

    m = load_baskets()
    n = m.shape[0]
    import numba

    print(f"Online Retail baskets: {m.shape[0]} invoices x {m.shape[1]} items, {m.nnz} nonzeros; "
          f"numba threads: {numba.get_num_threads()}, cpus: {os.cpu_count()}")
    print(f"compile/first call of all three kernels ({'cold cache' if a.cold else 'numba cache as found'}): "
          f"{compile_s:.2f} s\n")
    rows = []
    for s in a.supports:
        t_ours, (its, sup) = timed(lambda: fpgrowth.frequent_itemsets(m, s), a.repeat)
        ours = {frozenset(t) for t in its}
        t_rk, rk = timed(lambda: rusket.fpgrowth(m, min_support=s, use_colnames=False), a.repeat)
        rks = {frozenset(int(x) for x in t) for t in rk["itemsets"]}
        t_ml, mls = run_mlxtend(m, s, a.mlxtend_timeout)
        mem = subprocess.run([sys.executable, __file__, "--_mem", str(s)], capture_output=True,
                             text=True, env={**os.environ}).stdout.split()
        same = ours == rks and (mls is None or ours == mls)
        rows.append((s, len(its), len(rks), None if mls is None else len(mls), t_ours, t_rk, t_ml,
                     same, float(mem[0]) if mem else float("nan")))
        print(f"  done min_support={s}: ours {t_ours:.3f}s rusket {t_rk:.3f}s "
              f"mlxtend {'>%ds (skipped)' % a.mlxtend_timeout if t_ml is None else '%.2fs' % t_ml}",
              flush=True)

    print("\nfrequent itemsets (seconds: ours/rusket median of %d, mlxtend single run)" % a.repeat)
    hdr = (f"{'min_sup':>8} {'itemsets':>9} {'ours s':>8} {'rusket s':>9} {'mlxtend s':>10} "
           f"{'vs rusket':>10} {'vs mlxtend':>11} {'identical':>10} {'peak MB':>8}")
    print(hdr)
    print("-" * len(hdr))
    for s, k, krk, kml, to, trk, tml, same, mem in rows:
        ml = "timeout" if tml is None else f"{tml:.2f}"
        rml = "n/a" if tml is None else f"{tml / to:.0f}x"
        print(f"{s:>8} {k:>9} {to:>8.3f} {trk:>9.3f} {ml:>10} {trk / to:>9.1f}x {rml:>11} "
              f"{str(same):>10} {mem:>8.1f}")
    print("  (identical = same itemset set as rusket, and as mlxtend where it finished; "
          "ratios = their time / ours)")

    # association rules
    import pandas as pd
    from mlxtend.frequent_patterns import association_rules as ml_rules

    print("\nassociation rules (confidence >= 0.5; ours median of 3, mlxtend single run)")
    for s in (0.01, 0.005):
        its, sup = fpgrowth.frequent_itemsets(m, s)
        t_r, R = timed(lambda: rules.association_rules(its, sup, n, metric="confidence",
                                                       min_threshold=0.5), 3)
        df = pd.DataFrame({"support": sup, "itemsets": [frozenset(x) for x in its]})
        t = time.perf_counter()
        mr = ml_rules(df, num_itemsets=n, metric="confidence", min_threshold=0.5)
        t_ml = time.perf_counter() - t
        n_pairs = int(sum(1 for x, y in zip(R.antecedents, R.consequents) if len(x) + len(y) == 2))
        print(f"  min_support={s}: {len(its)} itemsets -> {len(R)} rules ({n_pairs} pair rules); "
              f"ours {t_r * 1e3:.1f} ms, mlxtend {t_ml * 1e3:.1f} ms ({t_ml / t_r:.0f}x), "
              f"same count: {len(mr) == len(R)}")

    # co-visitation on every event
    import polars as pl

    ev = load_events()
    sess = ev["InvoiceNo"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    _, item = np.unique(ev["StockCode"].to_numpy(), return_inverse=True)
    ts = ev["InvoiceDate"].dt.epoch("s").to_numpy()
    w = np.where(ev["Quantity"].to_numpy() > 0, 1.0, 0.0)  # returns carry no co-visitation
    print(f"\nco-visitation on all {len(sess)} events ({int(sess.max()) + 1} invoices):")
    for window, top_k in ((100, 50), (20, 20)):
        t_c, C = timed(lambda: covis.counts(sess, item, ts, w, time_decay_seconds=86400.0,
                                            top_k=top_k, window=window), a.repeat)
        print(f"  window={window} top_k={top_k}: {t_c:.3f} s (median of {a.repeat}), "
              f"{C.shape[0]} items, {C.nnz} neighbour entries  [target < 2 s: "
              f"{'met' if t_c < 2 else 'MISSED'}]")


if __name__ == "__main__":
    main()
