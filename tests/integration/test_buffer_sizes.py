"""Routes with different bufferSize on one router (layers issue, defect 1), over real sockets.

The first request on a route with a larger bufferSize than any before used to release the
read views that live upstream connections held, so a stream in flight on another route got
``event: error ... upstream_disconnected`` at that moment.
"""

from __future__ import annotations

import httpx

from tests.integration.conftest import chat


def test_a_larger_buffer_route_does_not_break_a_stream_in_flight(make_router):
    router = make_router(
        {
            "streamConfig": {"bufferSize": 4096},
            "endpoints": {"/v1/completions": {"streamConfig": {"bufferSize": 65536}}},
        }
    )
    with (
        httpx.Client(base_url=router.url, timeout=20) as client,
        client.stream("POST", "/v1/chat/completions", json=chat({"tokens": 20, "interval_ms": 20})) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")  # the stream is in flight
        other = client.post("/v1/completions", json={"model": "gpt-4o", "prompt": "hi", "stream": False})
        assert other.status_code == 200
        rest = list(lines)
    assert "event: error" not in rest
    assert "data: [DONE]" in rest  # the stream ran to its end
