"""Metrics are tallied per exchange and published in batches: exact at every scrape of this
process, within FLUSH_SECS for the registry (other workers' scrapes), never lost at drain."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from prometheus_client import Histogram

from api_router import metrics as metrics_module
from api_router.metrics import Metrics


def finished_exchange(route: str = "/v1/chat/completions", status: int = 200, sse: bool = True) -> Any:
    """The fields Metrics reads off a Forwarder at the end of its exchange."""
    state = SimpleNamespace(bytes_forwarded=120, heartbeats=1, sse=sse)
    return SimpleNamespace(
        route=SimpleNamespace(path=route),
        state=state,
        published_bytes=0,
        published_heartbeats=0,
        status=status,
        started_at=0.0,
        ttfb=0.01,
    )


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_tallies_wait_for_the_flush_and_a_scrape_flushes_first() -> None:
    asyncio.run(_tallies_wait_for_the_flush_and_a_scrape_flushes_first())


async def _tallies_wait_for_the_flush_and_a_scrape_flushes_first() -> None:
    metrics = Metrics({"/v1/chat/completions"}, loop=asyncio.get_running_loop())
    metrics.stream_started()
    metrics.exchange_finished(finished_exchange(), "completed")
    metrics.exchange_finished(finished_exchange(status=502, sse=False), "upstream_unreachable")
    metrics.backend_result("b1", True, 0.2)
    metrics.local_response("/nowhere", 404)
    assert sample(metrics, "requests_total", route="/v1/chat/completions", status="200") == 0.0

    text = metrics.render()[0].decode()

    assert 'requests_total{route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'requests_total{route="/v1/chat/completions",status="502"} 1.0' in text
    assert 'requests_total{route="unmatched",status="404"} 1.0' in text
    assert 'streaming_errors_total{reason="upstream_unreachable"} 1.0' in text
    assert 'backend_requests_total{backend="b1",outcome="ok"} 1.0' in text
    assert sample(metrics, "streaming_bytes_forwarded_total") == 240
    assert sample(metrics, "stream_heartbeats_sent_total") == 2
    assert sample(metrics, "streaming_active") == 0
    assert sample(metrics, "request_duration_seconds_count", route="/v1/chat/completions") == 2
    assert sample(metrics, "upstream_time_to_first_byte_seconds_count", route="/v1/chat/completions") == 2
    assert sample(metrics, "backend_request_duration_seconds_count", backend="b1") == 1


def test_the_loop_flushes_on_its_own_within_flush_secs() -> None:
    asyncio.run(_the_loop_flushes_on_its_own_within_flush_secs())


async def _the_loop_flushes_on_its_own_within_flush_secs() -> None:
    loop = asyncio.get_running_loop()
    metrics = Metrics({"/v1/chat/completions"}, loop=loop)
    started = loop.time()
    metrics.exchange_finished(finished_exchange(), "completed")
    assert sample(metrics, "requests_total", route="/v1/chat/completions", status="200") == 0
    handle = metrics._flush_handle  # the flush the loop will run (Metrics is compiled: not patchable)
    assert handle is not None
    assert metrics_module.FLUSH_SECS * 0.9 <= handle.when() - started <= metrics_module.FLUSH_SECS * 1.1
    after_flush = loop.create_future()
    loop.call_at(handle.when() + 0.01, after_flush.set_result, None)
    await asyncio.wait_for(after_flush, metrics_module.FLUSH_SECS + 5)
    assert metrics._flush_handle is None
    assert sample(metrics, "requests_total", route="/v1/chat/completions", status="200") == 1


def buckets(histogram: Histogram) -> dict[str, float]:
    samples = histogram.collect()[0].samples
    return {s.labels["le"]: s.value for s in samples if s.name.endswith("_bucket")}


def test_histogram_tallies_publish_the_same_buckets_as_observe() -> None:
    metrics = Metrics({"/v1/chat/completions"})
    reference = Histogram("reference_seconds", "", buckets=metrics_module._LATENCY_BUCKETS, registry=None)
    tally = metrics_module.HistogramTally()
    for seconds in (0.0, 0.001, 0.0011, 0.5, 0.5, 7.0, 300.0, 301.0):  # on, between and past the bounds
        tally.add(seconds)
        reference.observe(seconds)
    child = metrics.duration.labels("/v1/chat/completions")
    tally.publish(child)
    ours = {
        s.labels.get("le"): s.value
        for s in metrics.duration.collect()[0].samples
        if s.name.endswith("_bucket")
    }
    theirs = {
        s.labels.get("le"): s.value for s in reference.collect()[0].samples if s.name.endswith("_bucket")
    }
    assert ours == theirs
    assert sample(metrics, "request_duration_seconds_sum", route="/v1/chat/completions") == sum(
        (0.0, 0.001, 0.0011, 0.5, 0.5, 7.0, 300.0, 301.0)
    )


def test_without_a_loop_everything_is_published_at_once() -> None:
    metrics = Metrics({"/v1/chat/completions"})
    metrics.exchange_finished(finished_exchange(), "client_disconnect")
    assert sample(metrics, "stream_client_disconnects_total") == 1
    assert sample(metrics, "requests_total", route="/v1/chat/completions", status="200") == 1
