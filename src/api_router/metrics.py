"""Prometheus metrics, tallied in plain dicts and published in batches.

Each prometheus_client update walks its label values and takes a lock; done per request, that
cost as much as forwarding a short stream. So exchanges only count into dicts here, and
``flush`` publishes the tallies at most ``FLUSH_SECS`` later and before every scrape: a scrape
of this process is always exact, other workers' figures (``--workers``) may lag by that much.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Final, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from api_router.core.usage import Usage

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UNMATCHED: Final = "unmatched"  # label for paths with no route: arbitrary paths must not grow the label set
FLUSH_SECS: Final = 1.0
# A tuple of unknown length: as (float, ..., int, ...) mypyc unboxed all 18 items at each use and
# boxed them again for each observation (~3k instructions, 3 observations a request)
_BOUNDS: Final[tuple[float, ...]] = (*_LATENCY_BUCKETS, float("inf"))
OTHER_MODEL: Final = "other"  # label for models the config does not know: clients choose the name
TOKEN_KINDS: Final = ("input", "output", "cached_input", "reasoning")


class _Progress(Protocol):
    @property
    def bytes_forwarded(self) -> int: ...
    @property
    def heartbeats(self) -> int: ...
    @property
    def sse(self) -> bool: ...


class _Named(Protocol):
    @property
    def path(self) -> str: ...


class Exchange(Protocol):
    """What the metrics read off an exchange (a Forwarder); a Protocol keeps this module below net/."""

    published_bytes: int
    published_heartbeats: int

    @property
    def route(self) -> _Named: ...
    @property
    def state(self) -> _Progress: ...
    @property
    def status(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def ttfb(self) -> float | None: ...


class HistogramTally:
    """One histogram child's observations since the last flush: a count per bucket, and the sum.

    Published with prometheus_client's per-bucket values (``_buckets``, ``_sum``: the library has
    no bulk observe), so a flush costs per label set, not per observation, and never stalls the
    loop however many requests it covers. tests/test_metrics.py checks the exposition.
    """

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * len(_BOUNDS)
        self.total = 0.0

    def add(self, seconds: float) -> None:
        # The first bound not below it (bisect_left: buckets are "le", a bound counts as inside),
        # found by a native loop from the smallest: a request's time is in the first few buckets,
        # and the generic call to bisect_left cost ~1.5k instructions (3 observations a request)
        index = 0
        for bound in _BOUNDS:
            if seconds <= bound:
                break
            index += 1
        else:  # NaN, which no bound holds: counted where bisect_left puts it
            index = 0
        self.counts[index] += 1
        self.total += seconds

    def publish(self, child: Histogram) -> None:
        buckets = child._buckets  # private, see the class docstring
        for index, count in enumerate(self.counts):
            if count:
                buckets[index].inc(count)
        child._sum.inc(self.total)


def _tally(tallies: dict[str, HistogramTally], key: str) -> HistogramTally:
    tally = tallies.get(key)
    if tally is None:
        tally = tallies[key] = HistogramTally()
    return tally


class Metrics:
    def __init__(
        self, known_routes: set[str] | None = None, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._loop = loop  # None: publish at once (no loop to defer to)
        self._flush_handle: asyncio.TimerHandle | None = None
        self._requests: dict[tuple[str, int], int] = {}
        self._errors: dict[str, int] = {}
        self._backend_requests: dict[tuple[str, str], int] = {}
        self._durations: dict[str, HistogramTally] = {}  # by route
        self._ttfbs: dict[str, HistogramTally] = {}  # by route
        self._backend_latencies: dict[str, HistogramTally] = {}  # by backend
        # by (client, model): tokens of each kind, then cost; requests by (client, model, status)
        self._tokens: dict[tuple[str, str], list[float]] = {}
        self._llm_requests: dict[tuple[str, str, int], int] = {}
        self._estimated: dict[tuple[str, str], int] = {}
        self.known_models: frozenset[str] = frozenset()  # model label values allowed (App.apply)
        self._bytes = 0
        self._heartbeats = 0
        self._disconnects = 0
        # With --workers, values live in PROMETHEUS_MULTIPROC_DIR and every scrape sums all workers.
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        self.known_routes = known_routes or set()
        self.active_streams = 0  # mirrors the gauge, for /health
        r = self.registry
        if not self.multiprocess:
            # process_cpu_seconds_total, process_resident_memory_bytes, open fds: read from /proc
            # at scrape time only. (With --workers each worker is its own process and the summed
            # multiprocess view has no per-process figures; per pod, run one worker.)
            ProcessCollector(registry=r)
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

        self.llm_tokens = Counter(
            "llm_tokens",
            "Tokens the upstreams reported (or, for broken streams, estimated), by kind",
            ["client", "model", "kind"],
            registry=r,
        )
        self.llm_cost = Counter(
            "llm_cost_usd",
            "What those tokens cost at the prices table, US dollars",
            ["client", "model"],
            registry=r,
        )
        self.llm_requests = Counter(
            "llm_requests",
            "Forwarded requests, by client, model and status",
            ["client", "model", "status"],
            registry=r,
        )
        self.llm_estimated = Counter(
            "llm_usage_estimated",
            "Requests whose usage was estimated (abandoned or broken streams, no usage reported)",
            ["client", "model"],
            registry=r,
        )

        self.limiter_failures = Counter(
            "ratelimit_backend_failures",
            "Limit, budget or ledger calls Redis did not answer, by what failOpen decided",
            ["decision"],
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
        self.backend_in_flight = Gauge(
            "backend_in_flight", "Exchanges in flight", ["backend"], registry=r, multiprocess_mode="livesum"
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
        key = (backend, outcome)
        self._backend_requests[key] = self._backend_requests.get(key, 0) + 1
        _tally(self._backend_latencies, backend).add(seconds)
        self._pending()

    def limiter_failed(self, admitted: bool) -> None:
        """Redis gave no answer (rare: counted at once, not tallied)."""
        self.limiter_failures.labels("admitted" if admitted else "refused").inc()

    def set_backend_state(self, backend: str, in_flight: int, healthy: bool, circuit: int) -> None:
        self.backend_in_flight.labels(backend).set(in_flight)
        self.backend_healthy.labels(backend).set(1 if healthy else 0)
        self.backend_circuit.labels(backend).set(circuit)

    def stream_started(self) -> None:
        self.active_streams += 1  # the gauge is set from this at each flush

    def publish_progress(self, forwarder: Exchange) -> None:
        """Count bytes and heartbeats sent so far (long streams, at heartbeat ticks)."""
        self._count_progress(forwarder)
        self._pending()

    def _count_progress(self, forwarder: Exchange) -> None:
        state = forwarder.state
        self._bytes += state.bytes_forwarded - forwarder.published_bytes
        forwarder.published_bytes = state.bytes_forwarded
        self._heartbeats += state.heartbeats - forwarder.published_heartbeats
        forwarder.published_heartbeats = state.heartbeats

    def exchange_finished(self, forwarder: Exchange, reason: str) -> None:
        route = forwarder.route.path
        self._count_progress(forwarder)
        if forwarder.state.sse:
            self.active_streams -= 1
        if reason == "client_disconnect":
            self._disconnects += 1
        elif reason != "completed":
            self._errors[reason] = self._errors.get(reason, 0) + 1
        key = (route, forwarder.status or 499)
        self._requests[key] = self._requests.get(key, 0) + 1
        _tally(self._durations, route).add(time.perf_counter() - forwarder.started_at)
        if forwarder.ttfb is not None:
            _tally(self._ttfbs, route).add(forwarder.ttfb)
        self._pending()

    def model_label(self, model: str | None) -> str:
        """Bounded cardinality: only names the config knows become label values."""
        return model if model is not None and model in self.known_models else OTHER_MODEL

    def usage_finished(
        self, client: str, model: str, status: int, usage: Usage | None, cost: float | None
    ) -> None:
        """One forwarded request's accounting; ``model`` is already a label (``model_label``)."""
        key = (client, model, status)
        self._llm_requests[key] = self._llm_requests.get(key, 0) + 1
        if usage is not None:
            pair = (client, model)
            tally = self._tokens.get(pair)
            if tally is None:
                tally = self._tokens[pair] = [0.0, 0.0, 0.0, 0.0, 0.0]
            tally[0] += usage.input
            tally[1] += usage.output
            tally[2] += usage.cached_input
            tally[3] += usage.reasoning
            tally[4] += cost or 0.0
            if usage.estimated:
                self._estimated[pair] = self._estimated.get(pair, 0) + 1
        self._pending()

    def local_response(self, path: str, status: int) -> None:
        key = (path if path in self.known_routes else UNMATCHED, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        self._pending()

    def _pending(self) -> None:
        if self._loop is None:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_later(FLUSH_SECS, self.flush)

    def flush(self) -> None:
        """Publish everything tallied since the last flush to prometheus_client."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self.streaming_active.set(self.active_streams)
        if self._bytes:
            self.bytes_forwarded.inc(self._bytes)
            self._bytes = 0
        if self._heartbeats:
            self.heartbeats.inc(self._heartbeats)
            self._heartbeats = 0
        if self._disconnects:
            self.client_disconnects.inc(self._disconnects)
            self._disconnects = 0
        errors, self._errors = self._errors, {}
        for reason, count in errors.items():
            self.streaming_errors.labels(reason).inc(count)
        requests, self._requests = self._requests, {}
        for (route, status), count in requests.items():
            self.requests.labels(route, str(status)).inc(count)
        self._flush_usage()
        backend_requests, self._backend_requests = self._backend_requests, {}
        for (backend, outcome), count in backend_requests.items():
            self.backend_requests.labels(backend, outcome).inc(count)
        for tallies, histogram in (
            (self._durations, self.duration),
            (self._ttfbs, self.ttfb),
            (self._backend_latencies, self.backend_latency),
        ):
            for label, tally in tallies.items():
                tally.publish(histogram.labels(label))
            tallies.clear()

    def _flush_usage(self) -> None:
        llm_requests, self._llm_requests = self._llm_requests, {}
        for (client, model, status), count in llm_requests.items():
            self.llm_requests.labels(client, model, str(status)).inc(count)
        tokens, self._tokens = self._tokens, {}
        for (client, model), tally in tokens.items():
            for index, kind in enumerate(TOKEN_KINDS):
                self.llm_tokens.labels(client, model, kind).inc(tally[index])
            self.llm_cost.labels(client, model).inc(tally[4])
        estimated, self._estimated = self._estimated, {}
        for (client, model), count in estimated.items():
            self.llm_estimated.labels(client, model).inc(count)

    def render(self) -> tuple[bytes, bytes]:
        self.flush()
        registry = self.registry
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST.encode()
