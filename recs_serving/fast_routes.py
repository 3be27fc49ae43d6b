"""The hot read-only routes answered in front of Litestar's router when nothing about the request is unusual.

Per request, Litestar's routing, kwargs extraction, signature model, response object and header
machinery cost about as much CPU as a recommendation itself (0.2-0.4 ms of a ~1.5 ms request
under load). These five routes carry almost all traffic and need none of it:
``POST /v1/recommend``, ``/v1/cart/addons``, ``/v1/recommend/batch`` and
``GET /v1/items/{id}/similar``, ``/v1/items/{id}/customers``.

A request is answered here only when it is certainly fine: a ``content-length`` body within the
limit that parses with the same pydantic-core parser (``guards.StrictJSONRequest``) and validates
against the same models in strict mode (as Litestar's pydantic plugin is configured), path ids
and query values of plain characters, no CORS ``Origin`` header, and an answer computed without
an exception. Everything else goes to Litestar as it came (a body already read is replayed), so
every 4xx/5xx answer, its body and its log line are Litestar's, and an answer that raises here is
simply computed again there. The answers come from the same functions as the Litestar routes
(``app.py``), encoded by Litestar's JSON encoder, with the same headers (``x-request-id`` as
``guards`` assigns it) and counted in the same metrics under the same route labels.
"""
from __future__ import annotations

import re
from time import perf_counter
from typing import Any, Callable

import pydantic_core
from litestar.serialization import encode_json

from .guards import assign_request_id
from .schemas import MAX_K

_PLAIN = re.compile(r"[A-Za-z0-9._:-]{1,256}\Z")  # ids and query values needing no decoding or escaping
_K = re.compile(rb"[1-9][0-9]{0,2}\Z")
_JSON = (b"content-type", b"application/json")
DECLINED = "recs_fast_declined"  # scope key: the protocol tried this request here already; Litestar answers it

Answer = Callable[..., Any]


class FastRoutes:
    """ASGI wrapper of a Litestar app's handler (``app.asgi_handler``); see the module doc.

    ``plan`` (from the request line and headers) and ``respond`` (with the body) are also called
    directly by the HTTP protocol (``protocol.FastPathProtocol``), which then writes the answer
    itself without an ASGI task; a request either declines goes through this wrapper as usual."""

    def __init__(self, app, litestar_app, *, posts: dict[str, tuple[type, Answer, str]],
                 gets: dict[str, tuple[Answer, str, bool]], max_body: int, cors: bool, metrics):
        self.app = app
        self.litestar_app = litestar_app
        self.posts = posts  # path -> (request model, answer(rec, data), metrics route label)
        self.gets = gets  # last path segment -> (answer(rec, item_id, k, brand), route label, takes brand)
        self.max_body = max_body
        self.cors = cors
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not scope.get(DECLINED):
            plan = self.plan(scope)
            if plan is not None:
                t0 = perf_counter()
                if plan[0] == "GET":
                    await self._answer(plan, None, scope, receive, send, t0)
                    return
                chunks = []
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away: Litestar sees the same
                        await self.app(scope, _replay(chunks, receive, message), send)
                        return
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
                await self._answer(plan, chunks, scope, receive, send, t0)
                return
        await self.app(scope, receive, send)

    def plan(self, scope) -> tuple | None:
        """What answers this request here, from its method, path, query and headers (the body
        comes later), or None: Litestar's."""
        method = scope["method"]
        if method == "POST":
            route = self.posts.get(scope["path"])
            if route is None or self._headers_ok(scope) is None:
                return None
            return "POST", route
        if method == "GET" and scope["path"].startswith("/v1/items/"):
            if self.cors and _has_origin(scope):
                return None  # CORS headers are Litestar's middleware's
            call = self._get(scope)
            return None if call is None else ("GET", call)
        return None

    def respond(self, plan, body: bytes | None, scope) -> tuple[bytes, tuple[bytes, bytes], str] | None:
        """(JSON body, request id header, metrics label) of a planned request, or None when the
        body does not validate or the answer raises: Litestar then answers it, with its words."""
        try:
            if plan[0] == "POST":
                model, answer, label = plan[1]
                data = model.model_validate(pydantic_core.from_json(body or b"null", allow_inf_nan=False), strict=True)
                payload = encode_json(answer(self.litestar_app.state.recommender, data))
            else:
                answer, args, label = plan[1]
                payload = encode_json(answer(self.litestar_app.state.recommender, *args))
        except Exception:  # noqa: BLE001 - any problem (bad body, not ready, unknown item, a bug): Litestar answers and logs it
            return None
        return payload, assign_request_id(scope), label

    def _headers_ok(self, scope) -> int | None:
        """The declared body length when the headers hold nothing this path leaves to Litestar."""
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if length is not None or not value.isdigit():
                    return None
                length = int(value)
            elif name == b"transfer-encoding" or (name == b"origin" and self.cors):
                return None
        return length if length is not None and length <= self.max_body else None

    def _get(self, scope) -> tuple | None:
        parts = scope["path"].split("/")  # "", "v1", "items", id, similar|customers
        if len(parts) != 5 or parts[4] not in self.gets or not _PLAIN.match(parts[3]):
            return None
        answer, label, takes_brand = self.gets[parts[4]]
        k, brand = 20, None
        qs = scope["query_string"]
        if qs:
            seen = set()
            for pair in qs.split(b"&"):
                name, eq, value = pair.partition(b"=")
                if not eq or name in seen:
                    return None
                seen.add(name)
                if name == b"k" and _K.match(value) and int(value) <= MAX_K:
                    k = int(value)
                elif name == b"brand" and takes_brand and _PLAIN.match(value.decode("latin-1")):
                    brand = value.decode()
                else:
                    return None
        return answer, (parts[3], k, brand), label

    async def _answer(self, plan, chunks, scope, receive, send, t0: float) -> None:
        got = self.respond(plan, b"".join(chunks) if chunks is not None else None, scope)
        if got is None:
            await self.app(scope, _replay(chunks, receive) if chunks is not None else receive, send)
            return
        payload, rid, label = got
        await send({"type": "http.response.start", "status": 200, "headers": response_headers(payload, rid)})
        await send({"type": "http.response.body", "body": payload, "more_body": False})
        self.metrics.observe(scope["method"], label, 200, perf_counter() - t0)


def response_headers(payload: bytes, rid: tuple[bytes, bytes]) -> list:
    """The headers of an answer given here (what Litestar's route sends, in its order)."""
    return [_JSON, (b"content-length", str(len(payload)).encode()), rid]


def _has_origin(scope) -> bool:
    for name, _ in scope["headers"]:
        if name == b"origin":
            return True
    return False


def _replay(chunks: list[bytes], receive, last: dict | None = None):
    """``receive`` for Litestar after the body was read here: the body again, then the real one."""
    pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
    if last is not None:
        pending = [last]  # a disconnect: nothing worth replaying

    async def again():
        if pending:
            return pending.pop()
        return await receive()

    return again
