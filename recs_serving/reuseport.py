"""One listening socket per worker process (``SO_REUSEPORT``), so the kernel spreads connections.

With one socket shared by every worker, whichever worker's event loop wakes first accepts
every connection waiting in the queue (libuv accepts until the queue is empty): a load
generator opening 32 keep-alive connections at once left one worker with nearly all of them
(measured: 0.29 vs 0.06 cores at 300 req/s) and that worker saturated alone. With a socket per
worker bound to the same address, the kernel picks the socket of each new connection by a
hash of its addresses and ports.

uvicorn's supervisor binds one socket and hands it to each worker it starts (and restarts);
``PerWorkerSocket`` stands in for it: pickled to the worker, it arrives as that worker's own
listening socket. The supervisor keeps a socket bound to the address (not listening, so it
takes no connections) to hold the port while workers come and go.
"""
from __future__ import annotations

import socket
import sys

SO_REUSEPORT = getattr(socket, "SO_REUSEPORT", None)


def available() -> bool:
    """Linux balances connections over a port's SO_REUSEPORT sockets; elsewhere the option may
    exist without that (the last socket bound can get them all): one shared socket there."""
    return SO_REUSEPORT is not None and sys.platform.startswith("linux")


def _socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def reserve(host: str, port: int) -> socket.socket:
    """The supervisor's socket: bound (the port is ours; a clash fails here, before any worker
    starts), never listening."""
    return _socket(host, port)


def listening(host: str, port: int, backlog: int) -> socket.socket:
    sock = _socket(host, port)
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class PerWorkerSocket:
    """What uvicorn's supervisor passes to each worker instead of its one shared socket."""

    def __init__(self, host: str, port: int, backlog: int):
        self.host, self.port, self.backlog = host, port, backlog

    def __reduce__(self):
        return listening, (self.host, self.port, self.backlog)

    def close(self) -> None:  # nothing is open in the supervisor
        pass
