"""Prometheus metrics. Counted per exchange and published once at its end (or at a heartbeat
tick for long streams), so the per-event path never takes a prometheus_client lock."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from api_router.net.forward import Forwarder

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UNMATCHED = "unmatched"  # label for paths with no route: arbitrary paths must not grow the label set


class Metrics:
    def __init__(self, known_routes: set[str] | None = None) -> None:
        # With --workers, values live in PROMETHEUS_MULTIPROC_DIR and every scrape sums all workers.
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        self.known_routes = known_routes or set()
        self.active_streams = 0  # mirrors the gauge, for /health
        r = self.registry
        self.streaming_active = Gauge(
            "streaming_active", "SSE streams open now", registry=r, multiprocess_mode="livesum"
        )
        self.bytes_forwarded = Counter(
            "streaming_bytes_forwarded", "Response body bytes forwarded from upstreams to clients", registry=r
        )
        self.streaming_errors = Counter(
            "streaming_errors", "Exchanges that ended in an error, by reason", ["reason"], registry=r
        )
        self.client_disconnects = Counter(
            "stream_client_disconnects", "Clients that went away before their response ended", registry=r
        )
        self.heartbeats = Counter("stream_heartbeats_sent", "SSE heartbeat comments sent", registry=r)
        self.requests = Counter(
            "requests", "Requests answered, by route and status", ["route", "status"], registry=r
        )
        self.duration = Histogram(
            "request_duration_seconds",
            "Request start to response end",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "upstream_time_to_first_byte_seconds",
            "Request start to the upstream's response head",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.failovers = Counter("backend_failovers", "Requests retried on another backend", registry=r)
        self.backend_requests = Counter(
            "backend_requests", "Exchanges per backend, by outcome", ["backend", "outcome"], registry=r
        )
        self.backend_latency = Histogram(
            "backend_request_duration_seconds",
            "Exchange duration per backend",
            ["backend"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        mode = {"multiprocess_mode": "livesum"}
        self.backend_in_flight = Gauge(
            "backend_in_flight", "Exchanges in flight", ["backend"], registry=r, **mode
        )
        self.backend_healthy = Gauge(
            "backend_healthy",
            "1 if the last health check passed",
            ["backend"],
            registry=r,
            multiprocess_mode="max",
        )
        self.backend_circuit = Gauge(
            "backend_circuit_state",
            "0 closed, 1 half-open, 2 open",
            ["backend"],
            registry=r,
            multiprocess_mode="max",
        )

    def backend_result(self, backend: str, success: bool | None, seconds: float) -> None:
        outcome = "ok" if success else ("error" if success is False else "abandoned")
        self.backend_requests.labels(backend, outcome).inc()
        self.backend_latency.labels(backend).observe(seconds)

    def set_backend_state(self, backend: str, in_flight: int, healthy: bool, circuit: int) -> None:
        self.backend_in_flight.labels(backend).set(in_flight)
        self.backend_healthy.labels(backend).set(1 if healthy else 0)
        self.backend_circuit.labels(backend).set(circuit)

    def stream_started(self) -> None:
        self.active_streams += 1
        self.streaming_active.inc()

    def publish_progress(self, forwarder: Forwarder) -> None:
        """Publish bytes and heartbeats counted so far (long streams, at heartbeat ticks)."""
        state = forwarder.state
        fresh = state.bytes_forwarded - forwarder.published_bytes
        if fresh:
            self.bytes_forwarded.inc(fresh)
            forwarder.published_bytes = state.bytes_forwarded
        beats = state.heartbeats - forwarder.published_heartbeats
        if beats:
            self.heartbeats.inc(beats)
            forwarder.published_heartbeats = state.heartbeats

    def exchange_finished(self, forwarder: Forwarder, reason: str) -> None:
        route = forwarder.route.path
        self.publish_progress(forwarder)
        if forwarder.state.sse:
            self.active_streams -= 1
            self.streaming_active.dec()
        if reason == "client_disconnect":
            self.client_disconnects.inc()
        elif reason != "completed":
            self.streaming_errors.labels(reason).inc()
        self.requests.labels(route, str(forwarder.status or 499)).inc()
        self.duration.labels(route).observe(time.perf_counter() - forwarder.started_at)
        if forwarder.ttfb is not None:
            self.ttfb.labels(route).observe(forwarder.ttfb)

    def local_response(self, path: str, status: int) -> None:
        route = path if path in self.known_routes else UNMATCHED
        self.requests.labels(route, str(status)).inc()

    def render(self) -> tuple[bytes, bytes]:
        registry = self.registry
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST.encode()
