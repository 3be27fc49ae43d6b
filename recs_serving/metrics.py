"""Prometheus text exposition, by hand: request counters, errors, a latency histogram.

Updated from a raw ASGI middleware on the event-loop thread (and, for handlers run in the
thread pool, only after they return), so plain dict updates under the GIL are enough.
"""
from __future__ import annotations

import time
from time import perf_counter
from bisect import bisect_left
from collections import defaultdict

BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.hist: dict[str, list[int]] = {}
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, status)] += 1
        if status >= 500:
            self.errors[route] += 1
        h = self.hist.get(route)
        if h is None:
            h = self.hist[route] = [0] * (len(BUCKETS) + 1)
        h[bisect_left(BUCKETS, seconds)] += 1  # first bucket with seconds <= le; past the last: +Inf
        self.sums[route] += seconds

    def render(self, recommender=None) -> str:
        out = [
            "# HELP recs_requests_total HTTP requests by method, route and status.",
            "# TYPE recs_requests_total counter",
        ]
        for (m, r, s), n in sorted(self.requests.items()):
            out.append(f'recs_requests_total{{method="{m}",route="{_esc(r)}",status="{s}"}} {n}')
        out += ["# HELP recs_request_errors_total Responses with status >= 500.", "# TYPE recs_request_errors_total counter"]
        for r, n in sorted(self.errors.items()):
            out.append(f'recs_request_errors_total{{route="{_esc(r)}"}} {n}')
        out += ["# HELP recs_request_duration_seconds Request latency.", "# TYPE recs_request_duration_seconds histogram"]
        for r, h in sorted(self.hist.items()):
            cum = 0
            for le, c in zip(BUCKETS, h):
                cum += c
                out.append(f'recs_request_duration_seconds_bucket{{route="{_esc(r)}",le="{le}"}} {cum}')
            cum += h[-1]
            out.append(f'recs_request_duration_seconds_bucket{{route="{_esc(r)}",le="+Inf"}} {cum}')
            out.append(f'recs_request_duration_seconds_sum{{route="{_esc(r)}"}} {self.sums[r]:.6f}')
            out.append(f'recs_request_duration_seconds_count{{route="{_esc(r)}"}} {cum}')
        if recommender is not None:
            v = recommender.version
            out += ["# HELP recs_release_info The loaded release (value 1).", "# TYPE recs_release_info gauge"]
            if v:
                out.append(f'recs_release_info{{artifact_version="{_esc(v)}"}} 1')
            out += ["# HELP recs_release_ready 1 when a release is loaded.", "# TYPE recs_release_ready gauge",
                    f"recs_release_ready {1 if v else 0}"]
            if v:
                out += ["# HELP recs_release_loaded_timestamp_seconds When the loaded release was swapped in.",
                        "# TYPE recs_release_loaded_timestamp_seconds gauge",
                        f"recs_release_loaded_timestamp_seconds {recommender.release.loaded_at:.3f}"]
            out += ["# HELP recs_release_reloads_total Releases loaded since start.", "# TYPE recs_release_reloads_total counter",
                    f"recs_release_reloads_total {recommender.reloads}",
                    "# HELP recs_release_reload_errors_total Failed release loads.", "# TYPE recs_release_reload_errors_total counter",
                    f"recs_release_reload_errors_total {recommender.reload_errors}"]
        out += ["# HELP recs_process_start_time_seconds Process start.", "# TYPE recs_process_start_time_seconds gauge",
                f"recs_process_start_time_seconds {self.started:.3f}"]
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Raw ASGI middleware timing every HTTP request; route label = the handler's path template.

    Per request: two ``perf_counter`` calls, one closure for ``send``, and a few dict updates
    (the route label is computed once per handler and cached).
    """

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics
        self._labels: dict = {}

    def _route(self, scope) -> str:
        handler = scope.get("route_handler")
        if handler is None:
            return scope.get("path", "?")
        label = self._labels.get(handler)
        if label is None:
            paths = getattr(handler, "paths", None)
            label = sorted(paths)[0] if paths else scope.get("path", "?")
            self._labels[handler] = label
        return label

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = perf_counter()
        status = 500

        async def _send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            self.metrics.observe(scope.get("method", "?"), self._route(scope), status, perf_counter() - t0)
