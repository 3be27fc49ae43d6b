"""Issue 15 over real HTTP: malformed bodies, broken releases, refusals, slow clients, workers.

The server is ``python -m recs_serving`` in a subprocess on 127.0.0.1 (a free port), exactly
as it is documented; releases are real ones (``release_factory``) broken on disk the way the
fault-injection round broke them.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from release_factory import build_release

REPO = Path(__file__).resolve().parents[1]
T0 = 1_323_000_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw(port: int, payload: bytes, timeout: float = 30.0, head_only: bool = False) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            if b"\r\n\r\n" in data:
                headers = {k.strip().lower(): v.strip() for k, _, v in (l.decode().partition(":") for l in head.split(b"\r\n")[1:])}
                n = 0 if head_only else int(headers.get("content-length", "0"))
                if len(body) >= n:
                    return int(head[9:12]), headers, body[:n]
    raise AssertionError(f"no complete response: {data[:200]!r}")


def _request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    h = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    if body is not None:
        h.setdefault("Content-Type", "application/json")
        h["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return _raw(port, head.encode() + (body or b""), head_only=method == "HEAD")


def _json(port, method, path, body=None, headers=None):
    status, hdrs, raw = _request(port, method, path, body, headers)
    return status, hdrs, (json.loads(raw) if raw else None)


class Server:
    def __init__(self, home: Path, *, workers: int = 1, read_timeout: float = 10.0, poll: float = 0.2, token: str | None = "t0k"):
        self.port = _free_port()
        env = {**os.environ, "RECS_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        if token:
            env["RECS_ADMIN_TOKEN"] = token
        self.log = home / f"server-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recs_serving", "--port", str(self.port), "--home", str(home), "--workers", str(workers),
             "--poll-interval", str(poll), "--read-timeout", str(read_timeout), "--log-level", "info"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"))
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server did not start: " + self.log.read_text()[-2000:])

    def readyz(self) -> tuple[int, dict]:
        s, _, b = _json(self.port, "GET", "/readyz")
        return s, b

    def wait(self, cond, timeout: float = 60.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            s, b = self.readyz()
            if cond(s, b):
                return b
            time.sleep(0.1)
        raise AssertionError(f"timed out; last /readyz: {self.readyz()}")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.log.read_text()


@pytest.fixture(scope="module")
def base_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("faults-base")
    build_release(home, run_id="good")
    return home


def _copy_home(base: Path, dst: Path) -> Path:
    shutil.copytree(base / "releases", dst / "releases")
    return dst


def _current(home: Path) -> Path:
    from recs_serving import release as rf

    return rf.releases_dir(home) / rf.current_version(home)


def _second(home: Path, name: str) -> Path:
    """A copy of the current release under a new name (valid: manifest version renamed too)."""
    from recs_serving import release as rf

    src = _current(home)
    dst = rf.releases_dir(home) / name
    shutil.copytree(src, dst)
    m = json.loads((dst / rf.MANIFEST).read_text())
    m["version"], m["created_at"] = name, "2999-01-01T00:00:00+00:00"
    (dst / rf.MANIFEST).write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def server(base_home, tmp_path_factory):
    home = _copy_home(base_home, tmp_path_factory.mktemp("faults-server"))
    srv = Server(home)
    yield srv, home
    srv.stop()


BAD_BODIES = [
    ("nested 976", b'{"recent":' + b"[" * 976 + b"]" * 976 + b"}", "JSON"),
    ("invalid utf-8", b'{"user_id":"\xff\xfe"}', "JSON"),
    ("309-digit price_max", b'{"filters":{"price_max":' + b"9" * 309 + b"}}", "price_max"),
    ("309-digit price.lt", b'{"filters":{"price":{"lt":-' + b"9" * 400 + b"}}}", "price"),
    ("k true", b'{"k":true}', "k"),
    ("timestamp string", json.dumps({"recent": [{"item_id": "A", "timestamp": str(T0), "event": "view"}]}).encode(), "recent.0.timestamp"),
    ("NaN", b'{"mmr_lambda":NaN}', "JSON"),
    ("trailing garbage", b'{"k":5}xx', "JSON"),
    ("not an object", b"[1,2,3]", ""),
    ("empty", b"", ""),
]


@pytest.mark.parametrize("name, body, needle", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_malformed_bodies_get_4xx_naming_the_problem(server, name, body, needle):
    srv, _ = server
    status, headers, out = _json(srv.port, "POST", "/v1/recommend", body)
    assert 400 <= status < 500, (name, status, out)
    assert headers.get("x-request-id")
    text = json.dumps(out)
    assert needle in text, (name, out)


def test_same_bodies_on_the_other_post_endpoints(server):
    srv, _ = server
    for path in ("/v1/cart/addons", "/v1/recommend/batch"):
        for _, body, _ in BAD_BODIES:
            status, _, out = _json(srv.port, "POST", path, body)
            assert 400 <= status < 500, (path, body[:40], status, out)


def test_request_id_echoed_and_head_on_health(server):
    srv, _ = server
    status, headers, _ = _request(srv.port, "GET", "/healthz", headers={"X-Request-ID": "abc-123"})
    assert status == 200 and headers["x-request-id"] == "abc-123"
    status, headers, _ = _request(srv.port, "GET", "/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert headers["x-request-id"] not in ("bad id <script>", "")
    for path in ("/healthz", "/readyz"):
        status, headers, body = _request(srv.port, "HEAD", path)
        assert status == 200 and body == b"" and headers.get("x-request-id")


def test_slow_client_gets_408(base_home, tmp_path):
    home = _copy_home(base_home, tmp_path)
    srv = Server(home, read_timeout=1.0)
    try:
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"POST /v1/recommend HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"k\":")  # body never completes
            data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 408"), data
        assert time.perf_counter() - t < 5
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(b"GET /heal")  # headers never complete
            assert s.recv(4096).startswith(b"HTTP/1.1 408")
        assert _json(srv.port, "GET", "/healthz")[0] == 200  # the server is fine
    finally:
        srv.stop()


def test_openapi_documents_limits_and_404(server):
    srv, _ = server
    _, _, spec = _json(srv.port, "GET", "/schema/openapi.json")
    schemas = spec["components"]["schemas"]
    req = next(v for k, v in schemas.items() if k.startswith("RecommendRequest"))
    assert req.get("additionalProperties") is False
    recent = req["properties"]["recent"]
    assert recent.get("maxItems") == 200, recent
    for path in ("/v1/items/{item_id}/similar", "/v1/items/{item_id}/customers"):
        assert "404" in spec["paths"][path]["get"]["responses"], path
    assert "head" in spec["paths"]["/healthz"]


def _wait_refused(srv: Server, name: str, needle: str) -> dict:
    body = srv.wait(lambda s, b: (b.get("refused") or {}).get("name") == name)
    assert needle in body["refused"]["reason"], body
    return body


@pytest.mark.parametrize("fault, needle", [
    ("flip als_item_factors.npy", "checksum"),
    ("flip rules.parquet", "checksum"),
    ("flip topn.parquet", "checksum"),
    ("nan factors", "NaN"),
    ("missing als_item_factors.npy", "als_item_factors"),
    ("truncated topn.parquet", "topn.parquet"),
    ("no manifest", "manifest"),
])
def test_broken_release_is_refused_and_old_one_served(server, fault, needle):
    from recs_serving import release as rf

    srv, home = server
    good = srv.readyz()[1]["release"]
    name = "29990101T000000000000Z-" + fault.split()[0] + fault.split()[-1].replace(".", "")
    new = _second(home, name)
    if fault.startswith("flip"):
        path = new / fault.split()[1]
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif fault == "nan factors":  # NaN written AND the checksum updated: only the finiteness check catches it
        arr = np.load(new / "als_item_factors.npy")
        arr[3, 1] = np.nan
        np.save(new / "als_item_factors.npy", arr)
        m = json.loads((new / rf.MANIFEST).read_text())
        m["checksums"]["als_item_factors.npy"] = rf._sha256(new / "als_item_factors.npy")
        (new / rf.MANIFEST).write_text(json.dumps(m))
    elif fault.startswith("missing"):
        (new / "als_item_factors.npy").unlink()
    elif fault.startswith("truncated"):
        p = new / "topn.parquet"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    else:
        (new / rf.MANIFEST).unlink()
        (new / rf.MANIFEST).parent.joinpath("x").write_text("")
    if fault == "no manifest":  # set_current refuses a directory without a manifest: write the pointer by hand
        (rf.releases_dir(home) / rf.CURRENT).write_text(name + "\n")
    else:
        rf.set_current(home, name)
    body = _wait_refused(srv, name, needle)
    assert body["release"] == good and body["status"] == "ready"
    status, _, out = _json(srv.port, "POST", "/v1/recommend", b'{"k":3}')
    assert status == 200 and out["artifact_version"] == body["artifact_version"]
    # the admin reload on a broken CURRENT is a 409 with the reason, never a 500
    status, _, out = _json(srv.port, "POST", "/v1/admin/reload", headers={"Authorization": "Bearer t0k"})
    assert status == 409 and needle in out["detail"], out
    # back to the good release for the next case
    rf.set_current(home, good)
    shutil.rmtree(new)


def test_refused_release_not_retried_until_repaired_in_place(server):
    from recs_serving import release as rf

    srv, home = server
    good = srv.readyz()[1]["release"]
    name = "29990101T000000000000Z-repair"
    new = _second(home, name)
    saved = (new / "topn.parquet").read_bytes()
    (new / "topn.parquet").write_bytes(saved[: len(saved) // 3])
    rf.set_current(home, name)
    _wait_refused(srv, name, "topn.parquet")
    time.sleep(1.5)  # ~7 polls: the refusal must not be re-verified (no new log line)
    log = srv.log.read_text()
    assert log.count(f"release {name} refused") == 1, log[-3000:]
    (new / "topn.parquet").write_bytes(saved)  # repaired in place: size and mtime change
    body = srv.wait(lambda s, b: b.get("release") == name)
    assert body["refused"] is None or body["refused"]["name"] != name
    rf.set_current(home, good)
    srv.wait(lambda s, b: b.get("release") == good)
    shutil.rmtree(new)


def test_directory_name_differing_from_manifest_version_no_storm(server):
    from recs_serving import release as rf

    srv, home = server
    good = srv.readyz()[1]["release"]
    name = "29990101T000000000000Z-renamed"
    shutil.copytree(_current(home), rf.releases_dir(home) / name)  # manifest still says the old version
    rf.set_current(home, name)
    body = srv.wait(lambda s, b: b.get("release") == name)
    time.sleep(1.5)
    log = srv.log.read_text()
    assert log.count(f"serving release {name}") == 1, log[-3000:]
    assert srv.readyz()[1]["release"] == name
    rf.set_current(home, good)
    srv.wait(lambda s, b: b.get("release") == good)
    shutil.rmtree(rf.releases_dir(home) / name)


@pytest.mark.parametrize("fault", ["missing dir", "truncated topn"])
def test_startup_with_broken_current_serves_newest_valid(base_home, tmp_path, fault):
    from recs_serving import release as rf

    home = _copy_home(base_home, tmp_path)
    good = rf.current_version(home)
    if fault == "missing dir":
        (rf.releases_dir(home) / rf.CURRENT).write_text("29990101T000000000000Z-gone\n")
        bad = "29990101T000000000000Z-gone"
    else:
        bad = "29990101T000000000000Z-trunc"
        new = _second(home, bad)
        p = new / "topn.parquet"
        p.write_bytes(p.read_bytes()[:1000])
        rf.set_current(home, bad)
    srv = Server(home)
    try:
        status, body = srv.readyz()
        assert status == 200 and body["release"] == good, body
        assert body["refused"]["name"] == bad and body["current"] == bad
        assert _json(srv.port, "POST", "/v1/recommend", b'{"k":2}')[0] == 200
    finally:
        srv.stop()


def test_server_error_logged_with_traceback_and_request_id(base_home, monkeypatch):
    """Any unexpected exception in a handler: a 500 naming a request id, and the traceback
    logged under that id (the answering code is replaced by one that raises)."""
    import logging

    from litestar.testing import TestClient

    from recs_serving import Recommender
    from recs_serving.app import create_app

    rec = Recommender(base_home, watch=False)

    def boom(*a, **k):
        raise RuntimeError("injected fault")

    class Keep(logging.Handler):  # on the logger itself: the app's logging config replaces root handlers
        records: list = []

        def emit(self, record):
            self.records.append(record)

    keep = Keep(level=logging.ERROR)
    monkeypatch.setattr(rec, "recommend", boom)
    logging.getLogger("recs_serving").addHandler(keep)
    try:
        with TestClient(create_app(rec)) as c:
            r = c.post("/v1/recommend", json={"k": 3})
    finally:
        logging.getLogger("recs_serving").removeHandler(keep)
    assert r.status_code == 500
    rid = r.json()["request_id"]
    assert r.headers["x-request-id"] == rid
    rec_log = [x for x in keep.records if rid in x.getMessage()]
    assert rec_log and rec_log[0].exc_info and "injected fault" in str(rec_log[0].exc_info[1])


def _socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` holds; an fd closed while being listed is skipped (the
    worker keeps serving meanwhile: its connections come and go)."""
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def test_workers_share_the_port_and_one_mapped_copy(base_home, tmp_path):
    """``--workers 2``: two processes answer on one port, each on its own listening socket, both
    map the same release files, and a newly published release reaches both."""
    from recs_serving import mapped
    from recs_serving import release as rf

    home = _copy_home(base_home, tmp_path)
    srv = Server(home, workers=2)
    try:
        pids = set()
        deadline = time.time() + 60
        while len(pids) < 2 and time.time() < deadline:
            s, b = srv.readyz()
            if s == 200:
                pids.add(b["pid"])
        assert len(pids) == 2, pids
        # each worker listens on its own SO_REUSEPORT socket (the kernel spreads connections over them)
        listening = {int(f[9]) for f in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
                     if f[3] == "0A" and int(f[1].split(":")[1], 16) == srv.port}
        owned = {pid: _socket_inodes(pid) & listening for pid in pids}
        assert len(listening) == 2 and all(len(v) == 1 for v in owned.values()) and set().union(*owned.values()) == listening, owned
        cache = str(mapped.cache_root(home))
        for pid in pids:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert cache in maps and ".npy" in maps, f"worker {pid} does not map the release cache"
        name = "29990101T000000000000Z-next"
        _second(home, name)
        rf.set_current(home, name)
        deadline = time.time() + 90
        while time.time() < deadline:
            seen = {srv.readyz()[1]["release"] for _ in range(20)}
            if seen == {name}:
                break
            time.sleep(0.2)
        assert seen == {name}
        assert len(list(mapped.cache_root(home).glob(f"{name}-*"))) == 1  # built once for both workers
    finally:
        srv.stop()


def test_customers_candidate_path_matches_full_scan_when_it_covers_everyone(base_home, monkeypatch):
    """Above SCAN_USERS users /customers scores bounded candidates (neighbours' buyers and a
    block of users); when the block holds every user, both paths must give the same answer."""
    from recs_serving import Recommender
    from recs_serving import recommender as rmod

    rec = Recommender(base_home, watch=False)
    rel = rec.release
    items = [rel.item_ids[i] for i in rel.popularity_lists[("global", "")][:5]]
    full = [rec.top_customers(i, 15) for i in items]
    monkeypatch.setattr(rmod, "SCAN_USERS", 0)
    monkeypatch.setattr(rmod, "CUSTOMER_SAMPLE", rel.n_users)  # the block covers everyone
    cand = [rec.top_customers(i, 15) for i in items]
    for f, c in zip(full, cand):
        assert c.metadata["strategy"] == "als_candidates" and c.metadata["candidates"] == rel.n_users
        assert [x.user_id for x in c.customers] == [x.user_id for x in f.customers]
    rec.close()


def test_mapped_cache_round_trip(base_home, tmp_path, monkeypatch):
    """What workers map is what the loader built: arrays as read-only memory maps, big lists
    and dicts in pickled slices, every field equal."""
    from recs_serving import mapped
    from recs_serving import release as rf
    from recs_serving.holder import load_verified

    rel = load_verified(base_home, rf.current_version(base_home))
    monkeypatch.setattr(mapped, "CHUNK", 500)  # force the sliced path on the small release
    mapped.write(rel, tmp_path / "entry")
    back = mapped.read(tmp_path / "entry")
    assert mapped.is_mapped(back.topn_ids) and not back.topn_ids.flags.writeable
    assert back.item_index == rel.item_index and list(back.item_ids) == list(rel.item_ids)
    assert list(back.user_ids) == list(rel.user_ids) and back.titles == rel.titles
    for name in ("topn_ids", "topn_scores", "hist_indptr", "hist_items", "als_user", "als_item", "price"):
        np.testing.assert_array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(rel, name)))
    np.testing.assert_array_equal(back.covis.indices, rel.covis.indices)
    assert back.contract == rel.contract and back.version == rel.version
    # a reload's paced read (it sleeps between slices while requests run) reads the same release
    paced = mapped.read(tmp_path / "entry", pace=0.5)
    assert paced.item_index == rel.item_index and paced.titles == rel.titles and list(paced.item_ids) == list(rel.item_ids)


def test_admin_reload_reaches_every_worker(base_home, tmp_path):
    """``--workers 2`` with CURRENT polling effectively off (``--poll-interval 3600``): one
    ``POST /v1/admin/reload`` reaches one worker, and both serve the new release (the worker
    it reached bumps the reload generation; the other's watcher follows)."""
    from recs_serving import release as rf

    home = _copy_home(base_home, tmp_path)
    srv = Server(home, workers=2, poll=3600)
    try:
        first = rf.current_version(home)
        pids: dict = {}
        deadline = time.time() + 60
        while len(pids) < 2 and time.time() < deadline:
            s, b = srv.readyz()
            if s == 200:
                pids[b["pid"]] = b["release"]
        assert set(pids.values()) == {first} and len(pids) == 2, pids
        name = "29990101T000000000000Z-admin"
        _second(home, name)
        rf.set_current(home, name)
        time.sleep(1.0)
        assert {srv.readyz()[1]["release"] for _ in range(20)} == {first}  # nobody polls CURRENT
        status, _, body = _json(srv.port, "POST", "/v1/admin/reload", b"", {"Authorization": "Bearer t0k"})
        assert status == 200 and body["artifact_version"] == name, body
        seen: dict = {}
        deadline = time.time() + 30
        while time.time() < deadline:
            for _ in range(20):
                s, b = srv.readyz()
                seen[b["pid"]] = b["release"]
            if set(seen) == set(pids) and set(seen.values()) == {name}:
                break
            time.sleep(0.2)
        assert set(seen) == set(pids) and set(seen.values()) == {name}, seen
    finally:
        srv.stop()


def test_swap_maps_the_derived_state_and_derives_nothing(base_home, tmp_path, monkeypatch):
    """With the mapped cache, a swap builds no blend and reads no Parquet in the serving
    process: the blend's moments, z-scored vectors, id array and readable catalog come from the
    cache (built by the child process). Answers equal those of a release loaded in process."""
    import recs_kernels.blend as kb
    from recs_serving import Recommender, explain, mapped, prepared
    from recs_serving import release as rf

    home = _copy_home(base_home, tmp_path)
    rec = Recommender(home, watch=False, cache=True)
    name = "29990101T000000000000Z-derived"
    _second(home, name)
    rf.set_current(home, name)

    def forbidden(*a, **k):
        raise AssertionError("derived in the serving process at swap time")

    monkeypatch.setattr(prepared, "release_blend", forbidden)
    monkeypatch.setattr(kb._Moments, "__init__", forbidden)
    monkeypatch.setattr(explain.CatalogView, "read", staticmethod(forbidden))
    assert rec.reload() is True and rec.version == name
    st = rec._current()
    assert mapped.is_mapped(st.scorer.moments["als"].cov) and mapped.is_mapped(st.item_id_arr)
    assert explain.catalog(st.rel).titles is st.rel.titles  # the release's own list, built before the flip
    monkeypatch.undo()

    plain = Recommender(home, watch=False)  # loaded and derived in this process
    rel = plain.release
    users = [rel.user_ids[i] for i in range(0, rel.n_users, max(1, rel.n_users // 5))][:5]
    items = [rel.item_ids[int(i)] for i in rel.popularity_lists[("global", "")][:3]]
    for u in users:
        recent = [{"item_id": items[0], "timestamp": T0, "event": "view"}]
        for kw in ({"user_id": u}, {"user_id": u, "recent": recent}):
            a, b = rec.recommend(as_dict=True, **kw), plain.recommend(as_dict=True, **kw)
            assert [(x["item_id"], x["reasons"]) for x in a["items"]] == [(x["item_id"], x["reasons"]) for x in b["items"]]
            np.testing.assert_allclose([x["score"] for x in a["items"]], [x["score"] for x in b["items"]], rtol=1e-5, atol=1e-6)
    for i in items:
        assert rec.similar_items(i, 10, as_dict=True)["items"] == plain.similar_items(i, 10, as_dict=True)["items"]
    bat_a, bat_b = rec.recommend_batch(users, 10, as_dict=True), plain.recommend_batch(users, 10, as_dict=True)
    assert bat_a["results"] == bat_b["results"]
    va, vb = explain.catalog(rec.release), explain.CatalogView.read(rel.path, rel.version)
    assert [va.info(i) for i in items] == [vb.info(i) for i in items]
    rec.close()
    plain.close()


def test_compact_user_ids_from_the_start_load_the_same_release(base_home, monkeypatch):
    """Above COMPACT_IDS_ABOVE users the loader maps user ids through sorted bytes from the
    start (no 1M-entry dict in the cache builder): same arrays as the dict path."""
    from recs_serving import loader
    from recs_serving import release as rf

    name = rf.current_version(base_home)
    plain = loader.load_release(base_home, name)
    monkeypatch.setattr(loader, "COMPACT_IDS_ABOVE", 0)
    compact = loader.load_release(base_home, name)
    assert isinstance(compact.user_index, loader.CompactIndex) and isinstance(plain.user_index, dict)
    for f in ("topn_ids", "topn_scores", "hist_indptr", "hist_items", "hist_weight", "als_user"):
        np.testing.assert_array_equal(getattr(compact, f), getattr(plain, f))
    np.testing.assert_array_equal(compact.buyers.indices, plain.buyers.indices)
    assert list(compact.user_ids) == list(plain.user_ids)
