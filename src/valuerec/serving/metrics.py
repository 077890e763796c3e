"""Prometheus metrics: request counts and latencies per route, and a middleware that records them.

The middleware is plain ASGI (no per-request task or body buffering) and labels each request with its
route template (``/v1/users/{user_id}/recommendations``), never the raw path, so labels stay bounded.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("valuerec_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("valuerec_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=BUCKETS, registry=self.registry)
        self.events = Counter("valuerec_events_total", "Events received on POST /v1/events", ["outcome"],
                              registry=self.registry)
        self.model_info = Gauge("valuerec_model_info", "The model being served (value 1)", ["name", "version"],
                                registry=self.registry)
        self.reloads = Counter("valuerec_model_reloads_total", "Model reloads", ["outcome"], registry=self.registry)

    def set_model(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version).set(1)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=path, status=str(status["code"])).inc()
            self.metrics.latency.labels(method=method, route=path).observe(time.perf_counter() - start)
