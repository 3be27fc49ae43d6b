"""uvicorn's httptools protocol with a read deadline against slow clients.

uvicorn times out idle keep-alive connections but not a request that arrives slowly: a client
sending one header byte a second (or a body that never completes) held a connection for as long
as it liked. Here a deadline starts with the connection and with every new request and ends
when the request is complete (headers and body); past it the server answers 408 and closes.
A request only records when it began (``loop.time()``); the connection's one timer checks that
when it fires and re-arms for what is left, so a busy keep-alive connection creates a timer
about once per read timeout instead of one per request.

Each response also leaves in one write: the status line and headers are held until the first
body chunk and written with it (uvicorn writes them separately: two syscalls per response, and
the client wakes up for each).

``FastPathProtocol`` (what ``python -m recs_serving`` runs) answers the hot routes that
``fast_routes.FastRoutes`` would answer without an ASGI task at all: when the request line and
headers qualify (``FastRoutes.plan``), uvicorn's request/response cycle is built as usual but
not started; once the body is in, ``FastRoutes.respond`` computes the answer and the protocol
writes the response as uvicorn would (status line, uvicorn's ``date``/``server`` headers, then
the route's headers, ``connection: close`` when the request does not keep the connection alive),
counts it in the same metrics and completes the cycle. A request it declines (a body that does
not validate, an answer that raises, a client sending ``Expect: 100-continue``, a peer not
reading its answers) starts the cycle's ASGI task with the body already in: Litestar answers it
as before. Per request this saves the task, the ASGI messages and uvicorn's per-header checks.
"""
from __future__ import annotations

import os
from time import perf_counter

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from .fast_routes import DECLINED, FastRoutes, response_headers

READ_TIMEOUT_ENV = "RECS_READ_TIMEOUT"
DEFAULT_READ_TIMEOUT = 10.0

_RESPONSE_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                 b"content-length: %d\r\n\r\n%s")


def read_timeout() -> float:
    try:
        return float(os.environ.get(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT))
    except ValueError:
        return DEFAULT_READ_TIMEOUT


class _Held:
    """Stands in for the transport while uvicorn writes a response's head: keeps the bytes."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _WithHead:
    """Stands in for the transport while uvicorn writes the first body message: the held head
    goes out in front of the first write, or on its own before a close."""

    __slots__ = ("transport", "head")

    def __init__(self, transport, head: bytes) -> None:
        self.transport, self.head = transport, head

    def flush(self) -> None:
        if self.head:
            head, self.head = self.head, b""
            if not self.transport.is_closing():
                self.transport.write(head)

    def write(self, data: bytes) -> None:
        if self.head:
            data, self.head = self.head + data, b""
        self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class _OneWriteCycle(RequestResponseCycle):
    """uvicorn's request/response cycle writing the head together with the first body chunk."""

    _head: bytes = b""

    async def send(self, message) -> None:  # type: ignore[override]
        transport = self.transport
        if message["type"] == "http.response.start" and not self.response_started:
            held = self.transport = _Held()  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            self._head = held.data
            return
        head = self._head
        if not head:
            await super().send(message)
            return
        self._head = b""
        out = self.transport = _WithHead(transport, head)  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
            out.flush()  # a HEAD answer or an empty body: the head alone


class ReadTimeoutProtocol(HttpToolsProtocol):
    read_timeout = read_timeout()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reading_since: float | None = self.loop.time()
        self._deadline = self.loop.call_later(self.read_timeout, self._check_deadline)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._reading_since is None:
            self._reading_since = self.loop.time()
            if self._deadline is None:
                self._deadline = self.loop.call_later(self.read_timeout, self._check_deadline)

    def on_message_complete(self) -> None:
        self._reading_since = None
        super().on_message_complete()

    def connection_lost(self, exc) -> None:
        self._reading_since = None
        d = getattr(self, "_deadline", None)
        if d is not None:
            d.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle, app) -> None:  # type: ignore[override]
        cycle.__class__ = _OneWriteCycle  # same object, one method more: built by uvicorn's on_headers_complete
        super()._start_asgi_task(cycle, app)

    def _check_deadline(self) -> None:
        self._deadline = None
        since = self._reading_since
        if since is None:  # between requests: the next one arms the timer again
            return
        left = since + self.read_timeout - self.loop.time()
        if left > 0:  # a later request than the one the timer was set for
            self._deadline = self.loop.call_later(left, self._check_deadline)
            return
        self._read_timed_out()

    def _read_timed_out(self) -> None:
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            body = b'{"status_code":408,"detail":"request not received in time (read timeout %.0fs)"}' % self.read_timeout
            self.transport.write(_RESPONSE_408 % (len(body), body))
        self.transport.close()


def _find_fast_routes(app) -> FastRoutes | None:
    """The ``FastRoutes`` in front of the Litestar app that uvicorn serves (through its
    middleware wrappers: each keeps the next one in ``.app``)."""
    for _ in range(8):
        if app is None:
            return None
        handler = getattr(app, "asgi_handler", None)
        if isinstance(handler, FastRoutes):
            return handler
        app = getattr(app, "app", None)
    return None


_STATUS_200 = STATUS_LINE[200]
_CLOSE = b"connection: close\r\n"


class FastPathProtocol(ReadTimeoutProtocol):
    """See the module doc: the hot routes answered in the protocol, everything else by ASGI."""

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._waiting = None  # (cycle, app, plan) of a planned request whose body is still arriving
        self._fast = _find_fast_routes(self.app)

    def _start_asgi_task(self, cycle, app) -> None:  # type: ignore[override]
        fast = self._fast
        if fast is not None and app is self.app and not cycle.waiting_for_100_continue:
            plan = fast.plan(cycle.scope)
            if plan is not None:
                if cycle.more_body:  # from on_headers_complete: the body follows
                    self._waiting = (cycle, app, plan)
                    return
                self._answer_now(cycle, app, plan, fast)  # a pipelined request, already complete
                return
        super()._start_asgi_task(cycle, app)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        waiting = self._waiting
        if waiting is not None and waiting[0] is self.cycle:
            self._waiting = None
            self._answer_now(waiting[0], waiting[1], waiting[2], self._fast)

    def connection_lost(self, exc) -> None:
        self._waiting = None
        super().connection_lost(exc)

    def _answer_now(self, cycle, app, plan, fast: FastRoutes) -> None:
        t0 = perf_counter()
        transport = self.transport
        got = None
        if not cycle.disconnected and not transport.is_closing() and not self.flow.write_paused:
            got = fast.respond(plan, bytes(cycle.body), cycle.scope)
        if got is None:  # Litestar answers, with the body already in the cycle
            cycle.scope[DECLINED] = True
            super()._start_asgi_task(cycle, app)
            return
        payload, rid, label = got
        scope = cycle.scope
        if self.access_log:  # the line uvicorn's cycle logs as the response starts
            self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(scope), scope["method"],
                                    get_path_with_query_string(scope), scope["http_version"], 200)
        out = [_STATUS_200]
        for name, value in (*self.server_state.default_headers, *response_headers(payload, rid)):
            out += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            out.append(_CLOSE)
        out += (b"\r\n", payload)
        cycle.response_started = cycle.response_complete = True
        cycle.body = bytearray()
        transport.write(b"".join(out))
        cycle.message_event.set()
        if not cycle.keep_alive:
            transport.close()
        fast.metrics.observe(cycle.scope["method"], label, 200, perf_counter() - t0)
        cycle.on_response()
