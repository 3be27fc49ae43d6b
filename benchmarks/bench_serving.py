"""Serving benchmark: in-process and HTTP latency, throughput and memory on a synthetic release.

    python benchmarks/bench_serving.py                 # 100K items x 1M users (builds once, ~1-2 min)
    python benchmarks/bench_serving.py --quick         # 10K items x 100K users
    python benchmarks/bench_serving.py --skip-http     # in-process only
    python benchmarks/bench_serving.py --rates 500,1000,1200   # open-loop latency at several offered rates

The release is written with ``recs_serving.release.write_release`` (the pipeline's default
contract) from numpy random factors and
tables (same format the pipeline publishes), under ``--home`` (default var/bench-serving-<size>),
and reused on later runs with the same sizes. Seven use cases are mixed: homepage (known user,
5 recent views), item page (similar items), cart add-ons, brand page, cold start,
post-purchase, batch of 100 users. HTTP load comes from a separate process on 127.0.0.1
(an asyncio keep-alive client with pre-built requests); the server is one
``python -m recs_serving`` process (uvicorn, uvloop/httptools when installed).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

# single-threaded BLAS, as the server runs it (python -m recs_serving sets the same)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# Arrow's system pool lets the loader's temporaries go back to the OS (malloc_trim) after a load.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NUMBA_CACHE_DIR", str(REPO / "var" / "numba-cache"))

# the nine-type mix of issue 15
USE_CASES = ("homepage", "known_user", "similar", "cart", "brand", "category_price", "batch10", "customers", "post_purchase")
T_NOW = 1_767_225_600_000  # 2026-01-01 in ms


# ----------------------------------------------------------------------------------- release


def build_synthetic(home: Path, n_items: int, n_users: int, *, topn: int = 50, factors: int = 64, emb_dim: int = 384,
                    hist_mean: int = 8, seed: int = 0) -> Path:
    import pyarrow as pa

    from recs_serving.release import write_release

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    item_ids = pa.array([f"I{i:07d}" for i in range(n_items)])
    user_ids = pa.array([f"U{u:08d}" for u in range(n_users)])
    n_brands, n_cats = max(10, n_items // 200), max(5, n_items // 500)
    brand_of = rng.integers(0, n_brands, n_items)
    cat_of = rng.integers(0, n_cats, n_items)
    brands = pa.array([f"brand{b:04d}" for b in range(n_brands)])
    cats = pa.array([f"cat{c:03d}" for c in range(n_cats)])
    pop = rng.zipf(1.6, n_items).astype(np.float64).clip(max=1e6)
    trend = pop * rng.random(n_items)

    def dict_col(codes, dictionary):
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), dictionary)

    items = pa.table({
        "idx": pa.array(np.arange(n_items, dtype=np.int64)),
        "item_id": item_ids,
        "title": pa.array([f"item {i}" for i in range(n_items)]),
        "description": pa.array([""] * n_items),
        "brand": dict_col(brand_of, brands).cast(pa.string()),
        "category": dict_col(cat_of, cats).cast(pa.string()),
        "price": pa.array(np.round(rng.lognormal(2.5, 1.0, n_items), 2)),
        "popularity": pa.array(pop),
        "trending": pa.array(trend),
    })
    users = pa.table({"idx": pa.array(np.arange(n_users, dtype=np.int64)), "user_id": user_ids})
    # history: popularity-biased items per user
    lens = rng.poisson(hist_mean, n_users).clip(1, 200)
    hu = np.repeat(np.arange(n_users), lens)
    p = pop / pop.sum()
    hi = rng.choice(n_items, size=hu.size, p=p)
    key = np.unique(hu.astype(np.int64) * n_items + hi)
    hu, hi = (key // n_items).astype(np.int32), (key % n_items).astype(np.int32)
    purchases = (rng.random(hu.size) < 0.3).astype(np.int64)
    user_items = pa.table({
        "user_id": dict_col(hu, user_ids), "item_id": dict_col(hi, item_ids),
        "weight": pa.array(rng.random(hu.size).astype(np.float32) * 3 + 0.5),
        "purchases": pa.array(purchases), "last_ts": pa.array(T_NOW - rng.integers(0, 90 * 86_400_000, hu.size)),
    })
    # top-N per user
    tu = np.repeat(np.arange(n_users, dtype=np.int32), topn)
    ti = rng.choice(n_items, size=tu.size, p=p).astype(np.int32)
    tscore = np.sort(rng.random((n_users, topn)).astype(np.float32), axis=1)[:, ::-1].ravel()
    topn_t = pa.table({
        "user_id": dict_col(tu, user_ids), "rank": pa.array(np.tile(np.arange(1, topn + 1, dtype=np.int32), n_users)),
        "item_id": dict_col(ti, item_ids), "score": pa.array(tscore),
        "reason": dict_col(np.zeros(tu.size, np.int32), pa.array(["for_you"])),
    })
    del tu, ti, tscore

    def neighbours(k: int, src_name: str, dst_name: str, extra: dict | None = None):
        a = np.repeat(np.arange(n_items, dtype=np.int32), k)
        b = rng.integers(0, n_items, a.size).astype(np.int32)
        s = np.sort(rng.random((n_items, k)).astype(np.float32), axis=1)[:, ::-1].ravel()
        cols = {src_name: dict_col(a, item_ids), **({"rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n_items))} if extra else {}),
                dst_name: dict_col(b, item_ids), "score": pa.array(s)}
        if extra:
            cols.update(extra)
        return pa.table(cols), a, b, s

    sim_f, *_ = neighbours(20, "item_id", "similar_item_id", {"source": dict_col(np.zeros(n_items * 20, np.int32), pa.array(["factors"]))})
    sim_c, *_ = neighbours(20, "item_id", "similar_item_id", {"source": dict_col(np.zeros(n_items * 20, np.int32), pa.array(["content"]))})
    similar = pa.concat_tables([sim_f, sim_c.cast(sim_f.schema)])
    covis, *_ = neighbours(20, "item_id", "neighbor_id")
    _, ra, rb, rs = neighbours(5, "a", "b")
    offs = pa.array(np.arange(ra.size + 1, dtype=np.int32))
    rules = pa.table({
        "antecedents": pa.ListArray.from_arrays(offs, dict_col(ra, item_ids).cast(pa.string())),
        "consequents": pa.ListArray.from_arrays(offs, dict_col(rb, item_ids).cast(pa.string())),
        "support": pa.array(rs.astype(np.float64) * 0.01), "confidence": pa.array(rs.astype(np.float64)),
        "lift": pa.array(1 + 10 * rs.astype(np.float64)),
    })
    parts = []
    order = np.lexsort((np.arange(n_items), -pop))
    torder = np.lexsort((np.arange(n_items), -trend))
    for scope, idx, keys in (("global", order[:1000], None), ("trending", torder[:1000], None)):
        parts.append((np.full(idx.size, scope), np.full(idx.size, ""), idx, pop[idx], np.arange(1, idx.size + 1)))
    for scope, codes, names in (("brand", brand_of, brands), ("category", cat_of, cats)):
        o = np.lexsort((np.arange(n_items), -pop, codes))
        c = codes[o]
        start = np.searchsorted(c, c, side="left")
        r = np.arange(o.size) - start
        keep = r < 100
        parts.append((np.full(keep.sum(), scope), np.asarray(names.to_pylist(), dtype=object)[c[keep]], o[keep], pop[o[keep]], r[keep] + 1))
    popularity = pa.table({
        "scope": pa.array(np.concatenate([x[0] for x in parts]).astype(str)),
        "key": pa.array(np.concatenate([np.asarray(x[1], dtype=object) for x in parts]).astype(str)),
        "item_id": dict_col(np.concatenate([x[2] for x in parts]), item_ids).cast(pa.string()),
        "score": pa.array(np.concatenate([x[3] for x in parts])),
        "rank": pa.array(np.concatenate([x[4] for x in parts]).astype(np.int32)),
    })
    scale = np.float32(0.1)
    arrays = {
        "als_user_factors": rng.standard_normal((n_users, factors), dtype=np.float32) * scale,
        "als_item_factors": rng.standard_normal((n_items, factors), dtype=np.float32) * scale,
        "bpr_user_factors": rng.standard_normal((n_users, factors + 1), dtype=np.float32) * scale,
        "bpr_item_factors": rng.standard_normal((n_items, factors + 1), dtype=np.float32) * scale,
        "item_embeddings": rng.standard_normal((n_items, emb_dim), dtype=np.float32),
    }
    def plain(t: pa.Table) -> pa.Table:  # string columns, as the pipeline writes them (Parquet dictionary-encodes pages itself)
        return pa.table({n: (c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c) for n, c in zip(t.column_names, t.columns)})

    path = write_release(
        home, contract=default_contract(topn),
        tables={k: plain(v) for k, v in {"items": items, "users": users, "user_items": user_items, "topn": topn_t, "similar_items": similar,
                "covisitation": covis, "rules": rules, "popularity": popularity}.items()},
        arrays=arrays, run_id="bench",
        extra={"synthetic": {"n_items": n_items, "n_users": n_users, "topn": topn, "factors": factors, "emb_dim": emb_dim}},
    )
    print(f"built synthetic release {path.name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return path


def default_contract(topn: int):
    """The pipeline's default contract (its config defaults, through its own builder)."""
    from recs_assets import modeling
    from recs_assets.contract import contract_from_configs

    return contract_from_configs(
        matrix=modeling.MatrixParams(), als=modeling.ALSParams(), bpr=modeling.BPRParams(),
        covisitation=modeling.CovisParams(), item_similarity=modeling.SimilarityParams(),
        popularity=modeling.PopularityParams(),
        topn={"n": topn, "blend": modeling.BlendParams(), "request": modeling.RequestParams()})


def ensure_release(home: Path, n_items: int, n_users: int, rebuild: bool, emb_dim: int) -> None:
    from recs_serving.release import open_release

    try:
        rf = open_release(home)
        syn = rf.manifest.get("extra", {}).get("synthetic", {})
        if not rebuild and syn.get("n_items") == n_items and syn.get("n_users") == n_users and syn.get("emb_dim") == emb_dim:
            return
    except Exception:  # noqa: BLE001
        pass
    build_synthetic(home, n_items, n_users, emb_dim=emb_dim)


# ----------------------------------------------------------------------------------- requests


def make_requests(rel, n: int, seed: int = 1) -> list[tuple[str, str, str, dict | None]]:
    """(use_case, method, path, json body) tuples, deterministic: the nine-type mix of issue 15,
    one of each in turn."""
    rnd = random.Random(seed)
    n_items, n_users = rel.n_items, rel.n_users
    pop = rel.popularity_lists[("global", "")]
    brands = [k for (s, k) in rel.popularity_lists if s == "brand"] or [None]
    cats = [k for (s, k) in rel.popularity_lists if s == "category"] or [None]
    prices = np.asarray(rel.price, dtype=np.float64)
    p_med = float(np.nanmedian(prices)) if prices.size and np.isfinite(prices).any() else 10.0

    def item():  # popularity-biased: half from the head, half uniform
        return rel.item_ids[int(pop[rnd.randrange(len(pop))]) if rnd.random() < 0.5 else rnd.randrange(n_items)]

    def user():
        return rel.user_ids[rnd.randrange(n_users)]

    out = []
    for j in range(n):
        case = USE_CASES[j % len(USE_CASES)]
        if case == "homepage":
            body = {"user_id": user(), "k": 20, "recent": [{"item_id": item(), "timestamp": T_NOW - 60_000 * m, "event": "view"} for m in range(5)]}
            out.append((case, "POST", "/v1/recommend", body))
        elif case == "known_user":
            out.append((case, "POST", "/v1/recommend", {"user_id": user(), "k": 20}))
        elif case == "similar":
            out.append((case, "GET", f"/v1/items/{item()}/similar?k=20", None))
        elif case == "cart":
            out.append((case, "POST", "/v1/cart/addons", {"item_ids": [item() for _ in range(3)], "k": 10, "user_id": user()}))
        elif case == "brand":
            out.append((case, "POST", "/v1/recommend", {"user_id": user(), "k": 20, "brand": rnd.choice(brands)}))
        elif case == "category_price":
            out.append((case, "POST", "/v1/recommend", {"user_id": user(), "k": 20,
                                                         "filters": {"category": rnd.choice(cats), "price": {"lte": round(p_med * 2, 2)}}}))
        elif case == "batch10":
            out.append((case, "POST", "/v1/recommend/batch", {"user_ids": [user() for _ in range(10)], "k": 20}))
        elif case == "customers":
            out.append((case, "GET", f"/v1/items/{item()}/customers?k=20", None))
        else:  # post_purchase: anonymous, one purchase
            body = {"user_id": f"anon-{j}", "k": 10, "recent": [{"item_id": item(), "timestamp": T_NOW, "event": "purchase", "quantity": 1}]}
            out.append((case, "POST", "/v1/recommend", body))
    return out


def call_in_process(rec, method: str, path: str, body: dict | None):
    from recs_serving.schemas import BatchRecommendRequest, CartAddonsRequest, RecommendRequest

    if path == "/v1/recommend":
        return rec.recommend(RecommendRequest.model_validate(body))
    if path == "/v1/cart/addons":
        return rec.cart_addons(CartAddonsRequest.model_validate(body))
    if path == "/v1/recommend/batch":
        return rec.recommend_batch(BatchRecommendRequest.model_validate(body))
    item = path.split("/")[3]
    if path.split("?")[0].endswith("/customers"):
        return rec.top_customers(item, 20)
    return rec.similar_items(item, 20)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals.get("VmRSS", float("nan")), vals.get("VmHWM", float("nan"))


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc; no psutil)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def tree_memory_mb(pid: int) -> tuple[float, float, int]:
    """(sum of RSS, sum of PSS, processes) over the server's process tree. PSS divides shared
    pages (the mapped release, the page cache of the .npy files) among the processes mapping
    them, so its sum is the memory the tree really holds."""
    rss = pss = 0.0
    n = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1]) / 1024
            n += 1
        except OSError:
            continue
    return rss, pss, n


# ----------------------------------------------------------------------------------- HTTP load


def _raw(method: str, path: str, body: dict | None) -> bytes:
    if body is None:
        return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    data = json.dumps(body, separators=(",", ":")).encode()
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data


class _Conn(asyncio.Protocol):
    """One keep-alive connection of the load generator: a request at a time, the response parsed
    from the bytes as they arrive (status line, content-length, body) with no stream objects or
    futures per request: the generator shares the server's cores, so its CPU per request counts."""

    def __init__(self, gen: "_Gen", w: int):
        self.gen, self.w = gen, w
        self.transport = None
        self.buf = b""
        self.need = -1  # bytes of the whole response once its head is parsed
        self.status = 0
        self.busy = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if self.need < 0:
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                self.buf = buf
                return
            head = buf[:i]
            self.status = int(head[9:12])
            n = 0
            j = head.lower().find(b"\r\ncontent-length:")
            if j >= 0:
                e = head.find(b"\r\n", j + 2)
                n = int(head[j + 17:e if e >= 0 else len(head)])
            self.need = i + 4 + n
        if len(buf) < self.need:
            self.buf = buf
            return
        self.buf, self.need = b"", -1  # one request in flight: nothing follows the response
        self.busy = False
        self.gen.done(self, self.status)

    def connection_lost(self, exc) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.gen.done(self, 0)


class _Gen:
    """Open loop (``rate``: connection w sends at t_start + w/rate + j*concurrency/rate, or as soon
    as its previous answer is in when that is later; latency counts from the scheduled time) or
    closed loop (``rate`` None). Samples: (start offset s, latency s, use case index, ok).
    Requests scheduled before the end are still sent after it, for at most ``GRACE_S`` more: an
    overloaded server's backlog is measured, not dropped, without making the run endless."""

    GRACE_S = 10.0

    def __init__(self, loop, port: int, payloads: list, duration: float, concurrency: int, rate: float | None):
        self.loop, self.port, self.payloads = loop, port, payloads
        self.rate, self.concurrency = rate, concurrency
        self.samples: list[tuple[float, float, int, int]] = []
        self.counter = 0
        self.t_start = time.perf_counter()
        self.t_end = self.t_start + duration
        self.interval = concurrency / rate if rate else 0.0
        self.nxt = [self.t_start + w * (1.0 / rate if rate else 0.0) for w in range(concurrency)]
        self.t0 = [0.0] * concurrency
        self.case = [0] * concurrency
        self.open = concurrency
        self.finished = loop.create_future()

    async def start(self) -> None:
        for w in range(self.concurrency):
            _, conn = await self.loop.create_connection(lambda w=w: _Conn(self, w), "127.0.0.1", self.port)
            self.schedule(conn)
        self.loop.create_task(self._watch_lag())

    async def _watch_lag(self) -> None:
        """The generator's own stalls (its loop late by > 5 ms): a request scheduled inside one is
        sent late and its latency includes the stall, which is then not the server's."""
        self.lags: list[tuple[float, float]] = []
        while not self.finished.done():
            t = time.perf_counter()
            await asyncio.sleep(0.002)
            late = time.perf_counter() - t - 0.002
            if late > 0.005:
                self.lags.append((t - self.t_start, late))

    def schedule(self, conn: _Conn) -> None:
        w = conn.w
        now = time.perf_counter()
        if (self.nxt[w] if self.rate else now) >= self.t_end or now >= self.t_end + self.GRACE_S:
            if conn.transport is not None:
                conn.transport.close()
            self.open -= 1
            if self.open == 0 and not self.finished.done():
                self.finished.set_result(None)
        elif self.rate and self.nxt[w] > now:
            self.loop.call_later(self.nxt[w] - now, self.send, conn)
        else:
            self.send(conn)

    def send(self, conn: _Conn) -> None:
        w = conn.w
        if self.rate:
            self.t0[w] = self.nxt[w]
            self.nxt[w] += self.interval
        else:
            self.t0[w] = time.perf_counter()
        case, payload = self.payloads[self.counter % len(self.payloads)]
        self.counter += 1
        self.case[w] = case
        if conn.transport is None or conn.transport.is_closing():
            self.loop.create_task(self._reconnect(conn, payload))
            return
        conn.busy = True
        conn.transport.write(payload)

    async def _reconnect(self, conn: _Conn, payload: bytes) -> None:
        try:
            _, fresh = await self.loop.create_connection(lambda: _Conn(self, conn.w), "127.0.0.1", self.port)
        except OSError:
            self.done(conn, 0)
            return
        fresh.busy = True
        fresh.transport.write(payload)

    def done(self, conn: _Conn, status: int) -> None:
        w = conn.w
        t0 = self.t0[w]
        self.samples.append((t0 - self.t_start, time.perf_counter() - t0, self.case[w], int(status == 200)))
        if status == 0 and conn.transport is not None:
            conn.transport.close()
            conn.transport = None
        self.schedule(conn)


async def _load(port: int, reqs: list, duration: float, concurrency: int, rate: float | None):
    """Closed loop (rate None: each connection sends its next request when the last returns) or
    open loop at ``rate`` req/s (latency measured from the scheduled send time). Every request
    is recorded as (start offset s, latency s, use case index, ok)."""
    payloads = [(USE_CASES.index(c), _raw(m, p, b)) for c, m, p, b in reqs]
    gen = _Gen(asyncio.get_running_loop(), port, payloads, duration, concurrency, rate)
    gc.collect()
    gc.freeze()
    gc.disable()  # the generator's collections would be pauses counted as the server's latency
    try:
        await gen.start()
        await gen.finished
    finally:
        gc.enable()
    return gen.samples, time.perf_counter() - gen.t_start, getattr(gen, "lags", [])


def load_main(args) -> None:  # runs in the load-generator subprocess
    reqs = json.loads(Path(args.requests_file).read_text())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    samples, elapsed, lags = asyncio.run(_load(args.port, reqs, args.duration, args.concurrency, args.rate or None))
    # to a file, not stdout: uvloop can leave stdout non-blocking and a big write to a pipe was cut at 128 KiB
    Path(args.requests_file + ".out").write_text(json.dumps({"samples": samples, "elapsed": elapsed, "loadgen_lags": lags}))


def steal_s() -> float:
    """CPU time the hypervisor gave to others while this VM wanted it (/proc/stat), in seconds."""
    try:
        f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(f[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_s(pids: list[int]) -> float:
    """utime + stime of processes, in seconds (from /proc; no psutil needed)."""
    return sum((int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") for f in map(_stat, pids) if f)


def major_faults(pids: list[int]) -> int:
    """Page faults that read from disk: a mapped release page the kernel had dropped costs one."""
    return sum(int(f[9]) for f in map(_stat, pids) if f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_http(home: Path, reqs: list, duration: float, concurrency: int, rate: float | None, port: int, server_pid: int,
             during=None, mem_interval: float = 1.0) -> dict:
    """One load run; ``during(t_start)`` runs in a thread alongside (the hot swap). Memory of the
    server tree is sampled every ``mem_interval`` s: reading smaps_rollup walks a worker's page
    tables under its mmap lock, and every 0.25 s it doubled the 1M release's baseline p99 (4.3 to
    8.2 ms)."""
    import resource
    import threading

    tmp = home / "bench-requests.json"
    tmp.write_text(json.dumps([list(r) for r in reqs]))
    cmd = [sys.executable, __file__, "--load-only", "--port", str(port), "--requests-file", str(tmp),
           "--duration", str(duration), "--concurrency", str(concurrency), "--rate", str(rate or 0)]
    mem = {"rss": 0.0, "pss": 0.0}
    stop = threading.Event()

    def sample_memory():
        while not stop.wait(mem_interval):
            r, p, _ = tree_memory_mb(server_pid)
            mem["rss"], mem["pss"] = max(mem["rss"], r), max(mem["pss"], p)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    la0 = os.getloadavg()[0]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    pids = process_tree(server_pid)
    c0, mf0, st0 = cpu_s(pids), major_faults(pids), steal_s()
    per0 = {pid: cpu_s([pid]) for pid in pids}
    t_start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    side = None
    if during is not None:
        side = threading.Thread(target=during, args=(t_start,), daemon=True)
        side.start()
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"load generator failed: {err[-2000:]}")
    if side is not None:
        side.join(600)
    stop.set()
    sampler.join()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(Path(str(tmp) + ".out").read_text())
    res["loadgen_cpu_s"] = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    res["server_cpu_s"] = cpu_s(process_tree(server_pid)) - c0
    res["server_major_faults"] = major_faults(process_tree(server_pid)) - mf0
    res["steal_s"] = steal_s() - st0
    # per process: a worker that took more of the keep-alive connections saturates first
    res["server_cpu_s_per_process"] = sorted((round(cpu_s([pid]) - c, 2) for pid, c in per0.items()), reverse=True)
    res["loadavg"] = (la0, os.getloadavg()[0])
    res["mem_peak_rss_mb"], res["mem_peak_pss_mb"] = mem["rss"], mem["pss"]
    return res


def _p99_by_window(samples: list, width: float) -> list:
    buckets: dict[int, list] = {}
    for x in samples:
        buckets.setdefault(int(x[0] // width), []).append(x[1])
    return [round(pct(buckets[b], 0.99) * 1e3, 1) for b in sorted(buckets)]


def summarise(res: dict) -> dict:
    s = res["samples"]
    allv = [x[1] for x in s]
    per_case = {c: [x[1] for x in s if x[2] == i] for i, c in enumerate(USE_CASES)}
    return {
        "requests": len(s), "errors": sum(1 for x in s if not x[3]), "rps": len(s) / res["elapsed"],
        "p50_ms": pct(allv, 0.5) * 1e3, "p99_ms": pct(allv, 0.99) * 1e3, "p999_ms": pct(allv, 0.999) * 1e3,
        "max_ms": max(allv) * 1e3 if allv else float("nan"),
        # where in the run the tail is: a stall shows as one bad window, saturation as a rising line
        "p99_ms_by_5s": _p99_by_window(s, 5.0),
        "loadgen_cpu_ms_per_request": res["loadgen_cpu_s"] / max(len(s), 1) * 1e3,
        "server_busy_cores": res["server_cpu_s"] / res["elapsed"],
        "server_busy_cores_per_process": [round(c / res["elapsed"], 2) for c in res.get("server_cpu_s_per_process", [])], "loadavg": res["loadavg"],
        # what the load average does not inflate much: capacity on N idle cores ~ N * 1000 / (this + load generator's)
        "server_cpu_ms_per_request": res["server_cpu_s"] / max(len(s), 1) * 1e3,
        "server_major_faults": res.get("server_major_faults"), "steal_s": res.get("steal_s"),
        # the load generator's own stalls > 5 ms (count, worst ms, total ms)
        "loadgen_stalls": [len(res.get("loadgen_lags", [])), round(max((x[1] for x in res.get("loadgen_lags", [])), default=0) * 1e3, 1),
                           round(sum(x[1] for x in res.get("loadgen_lags", [])) * 1e3, 1)],
        "mem_peak_rss_mb": res["mem_peak_rss_mb"], "mem_peak_pss_mb": res["mem_peak_pss_mb"],
        "per_case": {c: {"n": len(v), "p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3} for c, v in per_case.items()},
    }


def publish_copy(home: Path, make_current: bool = True) -> str:
    """A new release that is the current one under a new name (files hard-linked, manifest
    rewritten with the new version): what the pipeline's next run looks like to the server."""
    from recs_serving import release as rf

    src = rf.releases_dir(home) / rf.current_version(home)
    name = rf.new_version("benchswap")
    tmp = rf.releases_dir(home) / f".staging-{name}"
    tmp.mkdir()
    for f in src.iterdir():
        if f.name != rf.MANIFEST:
            os.link(f, tmp / f.name)
    m = json.loads((src / rf.MANIFEST).read_text())
    m["version"] = name
    (tmp / rf.MANIFEST).write_text(json.dumps(m, indent=2))
    os.replace(tmp, rf.releases_dir(home) / name)
    if make_current:
        rf.set_current(home, name)
    return name


def served_versions(port: int, probes: int = 40) -> set:
    import urllib.request

    seen = set()
    for _ in range(probes):
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/readyz", headers={"Connection": "close"})
            with urllib.request.urlopen(req, timeout=2) as resp:
                seen.add(json.loads(resp.read())["release"])
        except OSError:
            seen.add(None)
    return seen


def swap_analysis(samples: list, t_swap: float, t_done: float) -> dict:
    """Baseline = requests started before the swap; swap window = from publishing the new
    release until every worker served it, plus one second. Also the worst one-second bin."""
    base = [x[1] for x in samples if x[0] < t_swap]
    window = [x[1] for x in samples if t_swap <= x[0] <= t_done + 1.0]
    bins: dict[int, float] = {}
    for x in samples:
        b = int(x[0])
        bins[b] = max(bins.get(b, 0.0), x[1])
    swap_bins = [bins[b] for b in bins if int(t_swap) <= b <= int(t_done) + 1]
    base_p99 = pct(base, 0.99) * 1e3
    return {"t_swap_s": t_swap, "t_all_workers_swapped_s": t_done, "baseline_p99_ms": base_p99,
            "window_p99_ms": pct(window, 0.99) * 1e3, "window_max_ms": max(window) * 1e3 if window else float("nan"),
            "swap_second_max_ms": max(swap_bins) * 1e3 if swap_bins else float("nan"),
            "errors_in_window": sum(1 for x in samples if t_swap <= x[0] <= t_done + 1.0 and not x[3]),
            "ratio_swap_max_to_base_p99": (max(swap_bins) * 1e3 / base_p99) if swap_bins and base_p99 else float("nan")}


# ----------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--emb-dim", type=int, default=384, help="item embedding width (MiniLM: 384)")
    ap.add_argument("--quick", action="store_true", help="10K items x 100K users")
    ap.add_argument("--home", default=None)
    ap.add_argument("--release-home", default=None, help="benchmark the release under this RECS_HOME as it is (e.g. one built "
                                                            "from the bundled data); no synthetic release is built")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--n", type=int, default=9000, help="in-process requests (spread over the 9 use cases)")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per HTTP run")
    ap.add_argument("--concurrency", type=int, default=32, help="connections of the load generator")
    ap.add_argument("--rate", type=float, default=1000.0, help="open-loop HTTP rate for the latency run")
    ap.add_argument("--rates", default=None, help="comma-separated open-loop rates (default: --rate); the table shows the last")
    ap.add_argument("--mem-interval", type=float, default=1.0, help="seconds between samples of the server's RSS/PSS "
                    "(each sample walks the workers' page tables)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server worker processes (default: one per core)")
    ap.add_argument("--swap", action="store_true", help="publish a new release half-way through the last open-loop run "
                                                         "and report the latency around the swap")
    ap.add_argument("--swap-at", type=float, default=None, help="seconds into the run to publish (default: half-way); the "
                                                                    "new release must be verified, loaded and mapped before the run ends")
    ap.add_argument("--swap-prebuilt", action="store_true", help="verify and build the new release's mapped cache before the run "
                                                                      "(as a pre-warm would); the swap then measures map + warm + flip only")
    ap.add_argument("--swap-to", default=None, help="swap to this existing release (e.g. a rollback to one already verified "
                                                         "and mapped) instead of publishing a copy")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--skip-closed", action="store_true", help="no closed-loop run")
    ap.add_argument("--json", default=None, help="also write the results here")
    # load-generator subprocess mode
    ap.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--requests-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_only:
        load_main(args)
        return 0
    args.rates = [float(x) for x in args.rates.split(",")] if args.rates else [args.rate]
    args.rate = args.rates[-1]
    if args.quick:
        args.items, args.users = 10_000, 100_000
    if args.release_home:
        home = Path(args.release_home)
    else:
        home = Path(args.home or REPO / "var" / f"bench-serving-{args.items}x{args.users}")
        home.mkdir(parents=True, exist_ok=True)
        ensure_release(home, args.items, args.users, args.rebuild, args.emb_dim)

    from recs_serving import Recommender

    rss0 = rss_mb()[0]
    t0 = time.perf_counter()
    rec = Recommender(home, watch=False, require_release=True, cache=True)  # mapped, as the server's workers run it
    results: dict = {"release": rec.version, "items": rec.release.n_items, "users": rec.release.n_users, "cores": os.cpu_count(),
                     "workers": args.workers}
    results["load_s"] = time.perf_counter() - t0
    results["in_process_rss_mb"], results["in_process_peak_mb"] = rss_mb()
    results["in_process_rss_delta_mb"] = results["in_process_rss_mb"] - rss0
    reqs = make_requests(rec.release, args.n)
    for r in reqs[:300]:  # warm up (numba, caches)
        call_in_process(rec, *r[1:])
    lat: dict[str, list[float]] = {c: [] for c in USE_CASES}
    cpu: dict[str, list[float]] = {c: [] for c in USE_CASES}  # CPU time of this thread: what a busy shared machine does not inflate
    results["in_process_loadavg"] = os.getloadavg()[0]
    for case, m, p, b in reqs:
        c0 = time.thread_time()
        t = time.perf_counter()
        call_in_process(rec, m, p, b)
        lat[case].append(time.perf_counter() - t)
        cpu[case].append(time.thread_time() - c0)
    results["in_process"] = {c: {"n": len(v), "p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3, "mean_ms": statistics.fmean(v) * 1e3,
                                 "cpu_p50_ms": pct(cpu[c], 0.5) * 1e3, "cpu_p99_ms": pct(cpu[c], 0.99) * 1e3} for c, v in lat.items()}
    rec.close()
    del rec

    if not args.skip_http:
        port = free_port()
        env = {**os.environ, "RECS_HOME": str(home)}
        srv = subprocess.Popen([sys.executable, "-m", "recs_serving", "--port", str(port), "--home", str(home), "--log-level", "warning",
                                "--workers", str(args.workers), "--poll-interval", "0.5"],
                               cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            t_up = time.time()
            deadline = t_up + 900
            while time.time() < deadline:
                if len(served_versions(port, 8) - {None}) == 1 and None not in served_versions(port, 8):
                    break
                time.sleep(0.5)
            results["server_start_s"] = time.time() - t_up
            results["server_idle_rss_mb"], results["server_idle_pss_mb"], results["server_processes"] = tree_memory_mb(srv.pid)
            run_http(home, reqs, 3.0, args.concurrency, None, port, srv.pid)  # warm-up
            runs = []
            if not args.skip_closed:
                runs.append(("http_closed", run_http(home, reqs, args.duration, args.concurrency, None, port, srv.pid)))
            for n_run, rate in enumerate(args.rates):
                swap_info: dict = {}
                during = None
                if args.swap and n_run == len(args.rates) - 1:
                    prebuilt = args.swap_to
                    if args.swap_prebuilt and not prebuilt:
                        prebuilt = publish_copy(home, make_current=False)
                    if prebuilt:  # verified and mapped before the run: the swap is map + warm + flip
                        from recs_serving.mapped import ensure_built

                        os.environ["RECS_BUILD_NICE"] = "0"  # the bench waits for it; not during the measured run
                        ensure_built(home, prebuilt)

                    def during(t_start, info=swap_info, prebuilt=prebuilt):
                        from recs_serving import release as rf

                        time.sleep(args.swap_at if args.swap_at is not None else args.duration / 2)
                        info["t_swap"] = time.time() - t_start
                        if prebuilt:
                            rf.set_current(home, prebuilt)
                            name = prebuilt
                        else:
                            name = publish_copy(home)
                        # a few probes (new connections: each lands on some worker) 4 times a second: 20 probes
                        # every 50 ms were ~400 extra req/s through Litestar, with as many TCP handshakes, on
                        # the measured server exactly in the swap window
                        while time.time() - t_start < args.duration + 600:
                            if served_versions(port, 4 * args.workers) == {name}:
                                break
                            time.sleep(0.25)
                        info["t_done"] = time.time() - t_start
                res = run_http(home, reqs, args.duration, args.concurrency, rate, port, srv.pid, during, args.mem_interval)
                if swap_info:
                    res["swap"] = swap_analysis(res["samples"], swap_info["t_swap"], swap_info["t_done"])
                runs.append((f"http_open_{rate:g}", res))
            results["server_rss_mb"], results["server_pss_mb"], _ = tree_memory_mb(srv.pid)
            for name, res in runs:
                results[name] = summarise(res)
                if "swap" in res:
                    results[name]["swap"] = res["swap"]
            results["http_open"] = results[f"http_open_{args.rates[-1]:g}"]
        finally:
            srv.send_signal(signal.SIGINT)
            try:
                srv.wait(20)
            except subprocess.TimeoutExpired:
                srv.kill()
    report(results, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict, args) -> None:
    print(f"\nrecs_serving benchmark: release {r['release']}: {r['items']:,} items x {r['users']:,} users, {r['cores']} cores, "
          f"{r['workers']} worker(s); in-process release load {r['load_s']:.1f}s")
    print(f"in-process RSS after load: {r['in_process_rss_mb']:.0f} MiB (peak {r['in_process_peak_mb']:.0f} MiB); "
          f"load average during the in-process run: {r['in_process_loadavg']:.1f}\n")
    http = "http_open" in r
    print("| use case | in-process p50 ms | in-process p99 ms | CPU p50 ms | CPU p99 ms |" + (" HTTP p50 ms @rate | HTTP p99 ms @rate |" if http else ""))
    print("|---|---:|---:|---:|---:|" + ("---:|---:|" if http else ""))
    for c in USE_CASES:
        ip = r["in_process"][c]
        row = f"| {c} | {ip['p50_ms']:.2f} | {ip['p99_ms']:.2f} | {ip['cpu_p50_ms']:.2f} | {ip['cpu_p99_ms']:.2f} |"
        if http:
            ho = r["http_open"]["per_case"][c]
            row += f" {ho['p50_ms']:.2f} | {ho['p99_ms']:.2f} |"
        print(row)
    if not http:
        return
    print(f"\nserver: {r['server_processes']} processes, ready in {r['server_start_s']:.1f}s; idle RSS sum {r['server_idle_rss_mb']:.0f} MiB, "
          f"PSS sum {r['server_idle_pss_mb']:.0f} MiB\n")
    print("| run | achieved req/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | server CPU (cores) | server CPU ms/request | peak RSS sum MiB | peak PSS sum MiB | load avg |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in [k for k in r if k.startswith("http_") and k != "http_open"]:
        h = r[name]
        print(f"| {name} | {h['rps']:.0f} | {h['p50_ms']:.2f} | {h['p99_ms']:.2f} | {h['p999_ms']:.2f} | {h['max_ms']:.1f} | {h['errors']} | "
              f"{h['server_busy_cores']:.2f} | {h['server_cpu_ms_per_request']:.2f} | {h['mem_peak_rss_mb']:.0f} | {h['mem_peak_pss_mb']:.0f} | {h['loadavg'][0]:.1f}->{h['loadavg'][1]:.1f} |")
        print(f"|   workers' cores {h['server_busy_cores_per_process']}; major page faults {h.get('server_major_faults')}; VM steal {h.get('steal_s', float('nan')):.2f} s; "
              f"load generator stalls > 5 ms (count, worst ms, total ms) {h.get('loadgen_stalls')}; "
              f"p99 ms per 5 s window {h['p99_ms_by_5s']} | | | | | | | | | | | |")
        if "swap" in h:
            s = h["swap"]
            print(f"|   hot swap at {s['t_swap_s']:.1f}s, all workers on it at {s['t_all_workers_swapped_s']:.1f}s | baseline p99 {s['baseline_p99_ms']:.2f} ms | "
                  f"window p99 {s['window_p99_ms']:.2f} ms | swap-second max {s['swap_second_max_ms']:.1f} ms "
                  f"({s['ratio_swap_max_to_base_p99']:.2f}x baseline p99) | errors {s['errors_in_window']} | | | | | | | |")
    print(f"\nload generator CPU per request: {r['http_open']['loadgen_cpu_ms_per_request']:.3f} ms (same machine: it competes with the server)")
    try:
        print(f"machine load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
