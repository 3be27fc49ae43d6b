"""The hot routes answered in the HTTP protocol (``protocol.FastPathProtocol``) against a server
where Litestar answers everything (the plain protocol, ``FastRoutes`` removed): the same bytes on
the wire (status line, headers in order, body), for single requests, pipelined ones, bodies
arriving in pieces, HTTP/1.0, ``Connection: close`` and ``Expect: 100-continue``; malformed
requests still reach Litestar; the metrics count the same requests under the same labels."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time

import pytest
import uvicorn

from serving_fixtures import recommender, release_home  # noqa: F401

from recs_serving.app import create_app
from recs_serving.protocol import FastPathProtocol, ReadTimeoutProtocol

pytestmark = pytest.mark.xdist_group("serving_protocol")


class _Thread:
    """A uvicorn server on 127.0.0.1 in a thread, with its own event loop."""

    def __init__(self, app, protocol):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.sock, self.port = s, s.getsockname()[1]
        config = uvicorn.Config(app, http=protocol, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[s])), daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def _exchange(port: int, pieces: list[bytes], n_responses: int, pause: float = 0.05) -> bytes:
    """Send ``pieces`` (with a pause between them), read until ``n_responses`` complete responses
    (or the peer closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        for j, p in enumerate(pieces):
            if j:
                time.sleep(pause)
            s.sendall(p)
        data = b""
        while _complete(data) < n_responses:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def _complete(data: bytes) -> int:
    n, pos = 0, 0
    while True:
        i = data.find(b"\r\n\r\n", pos)
        if i < 0:
            return n
        head = data[pos:i]
        if head.startswith(b"HTTP/1.1 100 "):
            pos = i + 4
            continue
        m = re.search(rb"\r\ncontent-length: (\d+)", head)
        end = i + 4 + (int(m.group(1)) if m else 0)
        if len(data) < end:
            return n
        n, pos = n + 1, end


def _post(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    return (f"POST {path} HTTP/{version}\r\nHost: x\r\nx-request-id: rid-1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n").encode() + body


def _get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: x\r\nx-request-id: rid-1\r\n{extra}\r\n".encode()


def _normal(data: bytes) -> bytes:
    return re.sub(rb"\r\ndate: [^\r]*", b"\r\ndate: -", data)


class _Counting(FastPathProtocol):
    written: list = []

    def _answer_now(self, cycle, app, plan, fast):
        n = len(cycle.scope)
        super()._answer_now(cycle, app, plan, fast)
        if cycle.response_complete and len(cycle.scope) == n + 1:  # recs_request_id added, not declined
            self.written.append(cycle.scope["path"])


@pytest.fixture(scope="module")
def servers(recommender):  # noqa: F811
    fast_app = create_app(recommender, owns_recommender=False)
    fast = fast_app.asgi_handler
    inner = fast.app
    reached = []

    async def litestar(scope, receive, send):  # counts what reaches Litestar on the fast server
        reached.append(scope["path"])
        await inner(scope, receive, send)

    fast.app = litestar
    plain_app = create_app(recommender, owns_recommender=False)
    plain_app.asgi_handler = plain_app.asgi_handler.app  # Litestar answers everything
    a, b = _Thread(fast_app, _Counting), _Thread(plain_app, ReadTimeoutProtocol)
    yield a, b, reached, fast_app, plain_app
    a.stop()
    b.stop()


def test_protocol_answers_byte_for_byte_as_litestar(servers, recommender, caplog):  # noqa: F811
    fast, plain, reached, fast_app, plain_app = servers
    rel = recommender.release
    user = next(u for u in rel.user_ids if rel.history(rel.user_index[u])[0].size >= 3)
    item, item2 = rel.item_ids[rel.popularity_lists[("global", "")][0]], rel.item_ids[rel.popularity_lists[("global", "")][1]]
    rec = json.dumps({"user_id": user, "k": 5, "recent": [{"item_id": item, "timestamp": 1_323_000_000_000, "event": "view"}]}).encode()
    cart = json.dumps({"item_ids": [item, item2], "k": 4, "user_id": user}).encode()
    batch = json.dumps({"user_ids": [user, "nobody"], "k": 3}).encode()
    bad = b'{"k": true}'
    cases = [  # (pieces, responses, answered in the protocol)
        ([_post("/v1/recommend", rec)], 1, 1),
        ([_post("/v1/cart/addons", cart)], 1, 1),
        ([_post("/v1/recommend/batch", batch)], 1, 1),
        ([_get(f"/v1/items/{item}/similar?k=4")], 1, 1),
        ([_get(f"/v1/items/{item}/customers?k=3")], 1, 1),
        ([_post("/v1/recommend", bad)], 1, 0),
        ([_post("/v1/recommend", b'{"k": 3')], 1, 0),
        ([_get("/v1/items/NO-SUCH/similar")], 1, 0),
        ([_get(f"/v1/items/{item}/similar?k=0")], 1, 0),
        # pipelined: in one write, and answers in order whoever answers them
        ([_post("/v1/recommend", rec) + _post("/v1/recommend", bad) + _get(f"/v1/items/{item}/similar?k=2")], 3, 2),
        ([_post("/v1/recommend", bad) + _post("/v1/recommend", rec)], 2, 1),
        # the body in pieces, the headers too
        ([_post("/v1/recommend", rec)[:40], _post("/v1/recommend", rec)[40:-10], _post("/v1/recommend", rec)[-10:]], 1, 1),
        # the connection ends after the answer
        ([_post("/v1/recommend", rec, "connection: close\r\n")], 1, 1),
        ([_post("/v1/recommend", rec, version="1.0")], 1, 1),
        ([_get(f"/v1/items/{item}/similar?k=3", version="1.0")], 1, 1),
        # the client waits for 100 Continue: the ASGI path (uvicorn sends it, FastRoutes answers)
        ([_post("/v1/recommend", rec, "expect: 100-continue\r\n")], 1, 1),
        # no request id of the client's: a fresh one (its shape compared below)
        ([_post("/v1/recommend", rec).replace(b"x-request-id: rid-1\r\n", b"")], 1, 1),
    ]
    for pieces, n, here in cases:
        before, written = len(reached), len(_Counting.written)
        got, want, logged = [], [], []
        for s, out in ((fast, got), (plain, want)):
            with caplog.at_level(logging.INFO, logger="uvicorn.access"):
                caplog.clear()
                out.append(_exchange(s.port, pieces, n))
                logged.append([re.sub(r"^127.0.0.1:\d+", "-", r.getMessage()) for r in caplog.records if r.name == "uvicorn.access"])
        (got,), (want,) = got, want
        assert logged[0] == logged[1] and len(logged[0]) == n, logged  # access log lines as uvicorn writes them
        if b"x-request-id: rid-1" not in pieces[0]:
            got, want = (re.sub(rb"x-request-id: [0-9a-f]+-[0-9a-f]+", b"x-request-id: -", x) for x in (got, want))
        assert _complete(got) == n and b"HTTP/1.1 200 OK" in got or not here, got[:300]
        assert _normal(got) == _normal(want), (pieces[0][:80], got[:400], want[:400])
        assert len(reached) - before == n - here, (cases.index((pieces, n, here)), reached[before:])
        expect = 0 if b"expect: 100" in pieces[0] else here
        deadline = time.time() + 5  # counted right after the write: the client may read first
        while len(_Counting.written) - written < expect and time.time() < deadline:
            time.sleep(0.01)
        assert len(_Counting.written) - written == expect, cases.index((pieces, n, here))  # by the protocol itself
        assert (b"expect: 100" in pieces[0]) == got.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
    deadline = time.time() + 5  # both count a request after writing its answer
    while True:
        metrics = [sorted(re.findall(r"recs_requests_total\{[^}]*\} [0-9.]+", a.state.metrics.render())) for a in (fast_app, plain_app)]
        if metrics[0] == metrics[1] or time.time() > deadline:
            break
        time.sleep(0.05)
    assert metrics[0] == metrics[1] and metrics[0]


def test_cors_requests_keep_litestar_headers(recommender):  # noqa: F811
    """With CORS configured, a request carrying ``Origin`` is Litestar's (its middleware adds the
    access-control headers), on GET routes as on POST ones."""
    from litestar.testing import TestClient

    rel = recommender.release
    item = rel.item_ids[0]
    app = create_app(recommender, owns_recommender=False, cors_origins="https://shop.example")
    with TestClient(app) as c:
        for r in (c.get(f"/v1/items/{item}/similar?k=3", headers={"origin": "https://shop.example"}),
                  c.post("/v1/recommend", json={"k": 3}, headers={"origin": "https://shop.example"})):
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://shop.example"
