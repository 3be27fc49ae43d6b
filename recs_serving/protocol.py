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
"""
from __future__ import annotations

import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

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
