"""Memory per stream is bounded by bufferSize, whatever the response size: a slow reader makes
the router stop reading the upstream instead of buffering."""

from __future__ import annotations

import time

from tests.integration.conftest import chat
from tests.rawhttp import request

PAYLOAD = 65536
TOKENS = 3200  # ≈ 210 MB of SSE
READ_RATE = 40 * 1024 * 1024  # bytes/s: slower than the upstream can write


def test_rss_stays_flat_while_200mb_stream_to_a_slow_reader(make_router, upstream):
    router = make_router()
    upstream.reset()
    # Warm up so the allocator's first-use growth is not counted.
    request(
        router.port,
        "POST",
        "/v1/chat/completions",
        chat({"tokens": 50, "payload": PAYLOAD, "interval_ms": 0}),
    ).body()
    baseline = router.rss_kb()
    resp = request(
        router.port,
        "POST",
        "/v1/chat/completions",
        chat({"tokens": TOKENS, "payload": PAYLOAD, "interval_ms": 0, "req_id": "slow"}),
        rcvbuf=65536,
        timeout=60,
    )
    assert resp.status == 200
    received = 0
    peak = baseline
    started = time.monotonic()
    for chunk in resp.chunks():
        received += len(chunk)
        if received // (4 * 1024 * 1024) != (received - len(chunk)) // (4 * 1024 * 1024):
            peak = max(peak, router.rss_kb())
        ahead = received / READ_RATE - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)  # pace the reader: this is the slowness under test
    assert received > TOKENS * PAYLOAD
    growth_kb = peak - baseline
    assert growth_kb < 4096, f"router RSS grew {growth_kb} KB while streaming {received >> 20} MB"
    stream = next(s for s in upstream.stats()["streams"] if s.get("req_id") == "slow")
    assert stream["end_reason"] == "completed"
    assert stream["pauses"] > 0, "the upstream's writes must have blocked: the router stopped reading"
