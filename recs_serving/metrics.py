"""Prometheus metrics through ``prometheus_client``: requests, errors, latency, the release, the process.

Each app has its own registry (tests build several apps in one process), holding the request
metrics, the process collector (CPU, memory, open files, start time), the platform and GC
collectors, and a collector that reads the recommender's release state at scrape time.

Several worker processes (uvicorn ``--workers``): set ``PROMETHEUS_MULTIPROC_DIR`` to an empty
directory shared by the workers before they start; request metrics are then written to files
there and ``/metrics`` answers with all workers' sums (``MultiProcessCollector``), plus the
release state of the worker that answered. Clear the directory when the server restarts.
"""
from __future__ import annotations

import os
import time
from time import perf_counter

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

disable_created_metrics()  # no *_created series: half the lines, nothing a dashboard reads

BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _ReleaseCollector:
    """The loaded release, read from the recommender when scraped."""

    def __init__(self, metrics: "Metrics"):
        self.m = metrics

    def collect(self):
        rec = self.m.recommender
        if rec is None:
            return
        v = rec.version
        info = GaugeMetricFamily("recs_release_info", "The loaded release (value 1).", labels=["artifact_version"])
        if v:
            info.add_metric([v], 1)
        yield info
        yield GaugeMetricFamily("recs_release_ready", "1 when a release is loaded.", value=1 if v else 0)
        if v:
            try:
                loaded = float(rec.release.loaded_at)
            except Exception:  # noqa: BLE001 - a scrape never fails on the release's shape
                loaded = None
            if loaded is not None:
                yield GaugeMetricFamily("recs_release_loaded_timestamp_seconds", "When the loaded release was swapped in.",
                                        value=loaded)
        yield CounterMetricFamily("recs_release_reloads", "Releases loaded since start.", value=getattr(rec, "reloads", 0))
        yield CounterMetricFamily("recs_release_reload_errors", "Failed release loads.", value=getattr(rec, "reload_errors", 0))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.started = time.time()
        self.recommender = None
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = registry or CollectorRegistry(auto_describe=True)
        # in multi-process mode values live in files: the metric objects register nowhere and
        # the scrape reads every worker's files through MultiProcessCollector
        target = None if self.multiprocess else self.registry
        self.requests = Counter("recs_requests", "HTTP requests by method, route and status.", ["method", "route", "status"],
                                registry=target)
        self.errors = Counter("recs_request_errors", "Responses with status >= 500.", ["route"], registry=target)
        self.latency = Histogram("recs_request_duration_seconds", "Request latency.", ["route"], buckets=BUCKETS,
                                 registry=target)
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(self.registry)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_ReleaseCollector(self))
        self._children: dict = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        ch = self._children.get(key)
        if ch is None:  # label lookups cost a few microseconds: once per (method, route, status)
            ch = self._children[key] = (self.requests.labels(method, route, str(status)), self.latency.labels(route),
                                        self.errors.labels(route) if status >= 500 else None)
        ch[0].inc()
        ch[1].observe(seconds)
        if ch[2] is not None:
            ch[2].inc()

    def render(self, recommender=None) -> str:
        if recommender is not None:
            self.recommender = recommender
        return generate_latest(self.registry).decode()


CONTENT_TYPE = CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Raw ASGI middleware timing every HTTP request; route label = the handler's path template.

    Per request: two ``perf_counter`` calls, one closure for ``send``, and cached metric children.
    """

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics
        self._labels: dict = {}

    def _route(self, scope) -> str:
        handler = scope.get("route_handler")
        if handler is None:
            return "unmatched"  # never the raw path: unknown paths must not grow the label set
        label = self._labels.get(handler)
        if label is None:
            paths = getattr(handler, "paths", None)
            label = sorted(paths)[0] if paths else "unmatched"
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
