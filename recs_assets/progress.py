"""Progress of long steps in the Dagster log: done/total, rate and ETA, at most every ~10 s.

Kernels stay free of Dagster: they accept a plain ``callback(done, total)`` and the asset
passes ``Progress(context.log.info, "BPR epochs", total)`` (or its ``.callback``).
"""
from __future__ import annotations

import time
from typing import Callable


def _duration(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.1f}min"
    return f"{s / 3600:.1f}h"


class Progress:
    """Call with (done, total); logs the first call after every ``every`` seconds and the last."""

    def __init__(self, log: Callable[[str], None], what: str, total: int | None = None, *,
                 unit: str = "", every: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.log, self.what, self.total, self.unit, self.every, self.clock = log, what, total, unit, every, clock
        self.start = clock()
        self.last = self.start
        self.lines = 0

    def __call__(self, done: int, total: int | None = None) -> None:
        total = self.total if total is None else total
        now = self.clock()
        finished = total is not None and done >= total
        if now - self.last < self.every and not finished:
            return
        if finished and self.lines == 0 and now - self.start < self.every:
            return  # a short step needs no progress line
        self.last = now
        self.lines += 1
        self.log(self.message(done, total, now))

    def message(self, done: int, total: int | None, now: float | None = None) -> str:
        elapsed = (self.clock() if now is None else now) - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        unit = f" {self.unit}" if self.unit else ""
        if total:
            eta = (total - done) / rate if rate > 0 else float("inf")
            eta_s = _duration(eta) if eta != float("inf") else "?"
            return (f"{self.what}: {done:,}/{total:,}{unit} ({100.0 * done / total:.0f}%), "
                    f"{rate:,.1f}{unit}/s, elapsed {_duration(elapsed)}, ETA {eta_s}")
        return f"{self.what}: {done:,}{unit}, {rate:,.1f}{unit}/s, elapsed {_duration(elapsed)}"

    @property
    def callback(self) -> Callable[[int, int], None]:
        return self.__call__
