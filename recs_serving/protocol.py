"""uvicorn's httptools protocol with a read deadline against slow clients.

uvicorn times out idle keep-alive connections but not a request that arrives slowly: a client
sending one header byte a second (or a body that never completes) held a connection for as long
as it liked. Here a deadline starts with the connection and with every new request and ends
when the request is complete (headers and body); past it the server answers 408 and closes.
The timer is one ``call_later`` per request.
"""
from __future__ import annotations

import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

READ_TIMEOUT_ENV = "RECS_READ_TIMEOUT"
DEFAULT_READ_TIMEOUT = 10.0

_RESPONSE_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                 b"content-length: %d\r\n\r\n%s")


def read_timeout() -> float:
    try:
        return float(os.environ.get(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT))
    except ValueError:
        return DEFAULT_READ_TIMEOUT


class ReadTimeoutProtocol(HttpToolsProtocol):
    read_timeout = read_timeout()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def on_message_complete(self) -> None:
        self._cancel_deadline()
        super().on_message_complete()

    def connection_lost(self, exc) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def _cancel_deadline(self) -> None:
        d = getattr(self, "_deadline", None)
        if d is not None:
            d.cancel()
            self._deadline = None

    def _read_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            body = b'{"status_code":408,"detail":"request not received in time (read timeout %.0fs)"}' % self.read_timeout
            self.transport.write(_RESPONSE_408 % (len(body), body))
        self.transport.close()
