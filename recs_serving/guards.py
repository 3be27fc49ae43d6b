"""What stands between a malformed request and a 500: body parsing, request ids, the last handler.

- ``StrictJSONRequest`` parses bodies with pydantic-core's JSON parser: invalid UTF-8, nesting
  deeper than its recursion limit, NaN/Infinity and trailing garbage are a 400 naming the
  problem (msgspec let deep nesting through to the validators and raised UnicodeDecodeError).
- ``RequestIdMiddleware`` gives every request an id (the client's ``X-Request-ID`` when it is
  short and plain, else a fresh one) and returns it in ``X-Request-ID``.
- ``on_server_error`` is the handler of every unexpected exception: it logs the traceback with
  the request id and answers a 500 that carries the same id, so a log line can be found from
  the response.
"""
from __future__ import annotations

import itertools
import logging
import os
import re

import pydantic_core
from litestar import Request, Response
from litestar.exceptions import ClientException, HTTPException
from litestar.types import Empty

log = logging.getLogger("recs_serving")

REQUEST_ID_HEADER = b"x-request-id"
_SAFE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
_PREFIX = os.urandom(4).hex()
_counter = itertools.count(1)


class StrictJSONRequest(Request):
    async def json(self):
        if self._json is Empty:
            state = self._connection_state
            if state.json is not Empty:
                self._json = state.json
            else:
                body = await self.body()
                try:
                    value = pydantic_core.from_json(body or b"null", allow_inf_nan=False)
                except ValueError as exc:  # pydantic-core names the problem and its position
                    raise ClientException(status_code=400, detail=f"request body is not valid JSON: {exc}") from None
                self._json = state.json = value
        return self._json


def request_id(scope) -> str:
    return scope.get("recs_request_id") or "-"


def assign_request_id(scope) -> tuple[bytes, bytes]:
    """The request's id (the client's when short and plain, else a fresh one), recorded in the
    scope; returns the response header carrying it."""
    rid = None
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _SAFE_ID.match(value):
                rid = value
            break
    if rid is None:
        rid = f"{_PREFIX}-{next(_counter):x}".encode()
    scope["recs_request_id"] = rid.decode()
    return REQUEST_ID_HEADER, rid


class RequestIdMiddleware:
    """Raw ASGI: one id per HTTP request, echoed in the response headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = assign_request_id(scope)

        async def _send(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, _send)


def on_server_error(request: Request, exc: Exception) -> Response:
    """Every 5xx that is not a deliberate answer: logged with its traceback and request id."""
    rid = request_id(request.scope)
    status = exc.status_code if isinstance(exc, HTTPException) and exc.status_code >= 500 else 500
    log.error("request %s %s %s failed with %d: %s", rid, request.method, request.url.path, status, type(exc).__name__,
              exc_info=exc)
    return Response({"status_code": status, "detail": "internal server error", "request_id": rid}, status_code=status)
