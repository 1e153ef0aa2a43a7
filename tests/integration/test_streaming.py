"""The streaming promises, over real sockets: router process ↔ mock upstream process."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import pytest

from tests.integration.conftest import chat
from tests.rawhttp import request, sse_events

DONE = "data: [DONE]"


def metric(router_url: str, name: str) -> float:
    text = httpx.get(router_url + "/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll an observable outcome of another process (bounded); not a sleep standing in for an event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_chunk_order_and_content_preserved(make_router, upstream):
    router = make_router()
    events = [f'data: {{"id":"chunk-{i}","delta":"t{i}"}}\n\n' for i in range(50)] + [DONE + "\n\n"]
    resp = request(
        router.port, "POST", "/v1/chat/completions", chat({"raw_events": events, "interval_ms": 2})
    )
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-request-id"]
    assert resp.body() == "".join(events).encode()


def test_every_upstream_read_is_forwarded_at_once(make_router):
    router = make_router()
    events = ['data: {"n":1}\n\n', 'data: {"n":2}\n\n', DONE + "\n\n"]
    resp = request(
        router.port,
        "POST",
        "/v1/chat/completions",
        chat({"raw_events": events, "event_delays_ms": [0, 800, 0]}),
    )
    chunks = resp.chunks()
    started = time.monotonic()
    assert next(chunks) == events[0].encode()
    assert time.monotonic() - started < 0.5, "the first event must not wait for the next one"
    resp.close()


def test_heartbeats_on_slow_upstream(make_router):
    router = make_router({"streamConfig": {"bufferSize": 4096, "heartbeatIntervalSecs": 0.2}})
    events = ['data: {"delta":"start"}\n\n', 'data: {"delta":"end"}\n\n', DONE + "\n\n"]
    resp = request(
        router.port,
        "POST",
        "/v1/chat/completions",
        chat({"raw_events": events, "event_delays_ms": [0, 700, 0]}),
    )
    parts = sse_events(resp.body())
    assert parts[0] == 'data: {"delta":"start"}'
    assert parts[-2:] == ['data: {"delta":"end"}', DONE]
    beats = parts[1:-2]
    assert len(beats) >= 2 and set(beats) == {": heartbeat"}
    assert metric(router.url, "stream_heartbeats_sent_total") >= 2


def test_heartbeats_cover_the_wait_for_the_first_token(make_router):
    router = make_router({"streamConfig": {"heartbeatIntervalSecs": 0.2}})
    resp = request(
        router.port,
        "POST",
        "/v1/chat/completions",
        chat({"tokens": 2, "first_token_delay_ms": 700, "interval_ms": 0}),
    )
    parts = sse_events(resp.body())
    assert parts[0] == ": heartbeat"
    assert parts[-1] == DONE


@pytest.mark.parametrize("stream_usage", ["passthrough", "force"])
def test_no_heartbeat_inside_an_event_when_upstream_stalls_mid_event(make_router, stream_usage):
    router = make_router({"streamConfig": {"heartbeatIntervalSecs": 0.15}, "streamUsage": stream_usage})
    mock = {
        "tokens": 5,
        "interval_ms": 0,
        "first_token_delay_ms": 500,
        "stall_after": 2,
        "stall_s": 0.8,
        "stall_mid_event": True,
    }
    resp = request(router.port, "POST", "/v1/chat/completions", chat(mock))
    parts = sse_events(resp.body())
    data = [p for p in parts if not p.startswith(":")]
    for event in data[:-1]:
        assert event.startswith("data: ")
        json.loads(event[len("data: ") :])  # a heartbeat inside an event would break this
    assert data[-1] == DONE
    assert parts[0] == ": heartbeat", "idle at a boundary (before the first token): heartbeats flow"
    if stream_usage == "force":
        # The half event did not show a choice yet, so it may be the usage chunk: the filter holds
        # it (core/usage_filter.py, rule 2). The client was left at a boundary, so heartbeats may
        # come there; every event above still parsed whole, so none landed inside one.
        return
    first_data = next(i for i, p in enumerate(parts) if p.startswith("data: "))
    assert ": heartbeat" not in parts[first_data:], "the stall was mid-event: no heartbeat may be sent"


def test_custom_buffer_size_is_honoured(make_router):
    router = make_router({"streamConfig": {"bufferSize": 1024, "heartbeatIntervalSecs": 30}})
    big = "data: " + "x" * 2048 + "\n\n"
    resp = request(router.port, "POST", "/v1/chat/completions", chat({"raw_events": [big, DONE + "\n\n"]}))
    chunks = list(resp.chunks())
    assert b"".join(chunks) == (big + DONE + "\n\n").encode()
    assert max(len(c) for c in chunks) <= 1024, "no read or write larger than bufferSize"


def test_endpoint_stream_config_overrides_global(make_router):
    router = make_router(
        {
            "streamConfig": {"bufferSize": 8192, "heartbeatIntervalSecs": 10},
            "endpoints": {
                "/v1/chat/completions": {
                    "streamSupport": True,
                    "streamConfig": {"heartbeatIntervalSecs": 0.2},
                }
            },
        }
    )
    events = ['data: {"delta":"test"}\n\n', DONE + "\n\n"]
    resp = request(
        router.port, "POST", "/v1/chat/completions", chat({"raw_events": events, "event_delays_ms": [0, 600]})
    )
    parts = sse_events(resp.body())
    assert ": heartbeat" in parts
    # bufferSize was not overridden: the global 8192 still bounds reads
    resp = request(
        router.port, "POST", "/v1/chat/completions", chat({"raw_events": ["data: " + "y" * 6000 + "\n\n"]})
    )
    assert max(len(c) for c in resp.chunks()) > 4096


def test_large_chunks_under_backpressure_arrive_intact(make_router):
    router = make_router({"streamConfig": {"bufferSize": 4096, "heartbeatIntervalSecs": 30}})
    large = "data: " + "A" * 32768 + "\n\n"
    events = [large] * 20 + [DONE + "\n\n"]
    resp = request(router.port, "POST", "/v1/chat/completions", chat({"raw_events": events}), rcvbuf=4096)
    body = b""
    for chunk in resp.chunks():
        body += chunk
        time.sleep(0.002)  # a slow reader, so the router's write buffer fills
    assert body.count(b"A") == 32768 * 20
    assert body.endswith(b"data: [DONE]\n\n")


def test_completions_endpoint_streams(make_router):
    router = make_router()
    body = {
        "model": "gpt-4o",
        "prompt": "Once upon a time",
        "stream": True,
        "mock": {"tokens": 3, "interval_ms": 5},
    }
    resp = request(router.port, "POST", "/v1/completions", body)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    parts = sse_events(resp.body())
    texts = [json.loads(p[6:])["choices"][0]["text"] for p in parts if p.startswith("data: {")]
    assert texts[:3] == ["t00000000", "t00000001", "t00000002"]
    assert parts[-1] == DONE


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_client_disconnect_closes_upstream_at_once(make_router, upstream, how):
    router = make_router()
    req_id = f"abort-{how}"
    resp = request(
        router.port,
        "POST",
        "/v1/chat/completions",
        chat({"tokens": 500, "interval_ms": 20, "req_id": req_id}),
    )
    assert resp.status == 200
    next(resp.chunks())
    if how == "rst":
        resp.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    closed_at = time.monotonic()
    resp.sock.close()

    def upstream_saw_close():  # type: ignore[no-untyped-def]
        for stream in upstream.stats()["streams"]:
            if stream.get("req_id") == req_id and stream["end_reason"] == "peer_closed":
                return stream
        return None

    stream = wait_for(upstream_saw_close, what="the upstream to see its connection closed")
    assert stream["ended_at"] - closed_at < 0.5
    assert stream["tokens_sent"] < 100
    wait_for(lambda: metric(router.url, "stream_client_disconnects_total") >= 1, what="disconnect metric")
    wait_for(lambda: metric(router.url, "streaming_active") == 0, what="streaming_active back to 0")


def test_client_disconnect_before_upstream_answers(make_router, upstream):
    router = make_router()
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=5)
    body = json.dumps(chat({"header_delay_ms": 400, "tokens": 50, "req_id": "early-abort"})).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"X-Request-ID: early-abort\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    def reached_upstream() -> bool:
        return any(["x-request-id", "early-abort"] in r["headers"] for r in upstream.requests())

    wait_for(reached_upstream, what="the request to reach the upstream")
    sock.close()

    def closed() -> bool:
        return any(
            s.get("req_id") == "early-abort" and s["end_reason"] == "peer_closed"
            for s in upstream.stats()["streams"]
        )

    wait_for(closed, what="the upstream to see the early close")


def test_upstream_dies_mid_stream_gives_one_error_event(make_router):
    router = make_router()
    resp = request(
        router.port, "POST", "/v1/chat/completions", chat({"tokens": 10, "interval_ms": 1, "die_after": 3})
    )
    assert resp.status == 200
    parts = sse_events(resp.body())  # the body still ends with a proper last chunk
    assert parts[-1].startswith("event: error\ndata: ")
    error = json.loads(parts[-1].split("data: ", 1)[1])
    assert error["error"]["code"] == "upstream_disconnected"
    assert sum(1 for p in parts if p.startswith("event: error")) == 1
    assert metric(router.url, "streaming_errors_total") >= 1


def test_upstream_error_status_passes_through(make_router):
    router = make_router()
    resp = request(router.port, "POST", "/v1/chat/completions", chat({"status": 429}))
    assert resp.status == 429
    assert "error" in resp.json()


def test_unreachable_upstream_is_502_in_openai_shape(make_router):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead_port = placeholder.getsockname()[1]
    router = make_router({"baseUrl": f"http://127.0.0.1:{dead_port}"})
    resp = request(router.port, "POST", "/v1/chat/completions", chat())
    assert resp.status == 502
    error = resp.json()["error"]
    assert error["type"] == "upstream_error" and error["code"] == "upstream_unreachable" and error["message"]


def test_silent_upstream_is_504(make_router):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts, never answers
        router = make_router(
            {"baseUrl": f"http://127.0.0.1:{silent.getsockname()[1]}", "timeouts": {"readSecs": 0.3}}
        )
        resp = request(router.port, "POST", "/v1/chat/completions", chat())
        assert resp.status == 504
        assert resp.json()["error"]["code"] == "upstream_timeout"


def test_request_id_is_echoed_or_made(make_router, upstream):
    router = make_router()
    resp = httpx.post(
        router.url + "/v1/chat/completions", json=chat(stream=False), headers={"X-Request-ID": "abc-123"}
    )
    assert resp.headers["x-request-id"] == "abc-123"
    seen = [r for r in upstream.requests() if dict(map(tuple, r["headers"])).get("x-request-id") == "abc-123"]
    assert seen, "the upstream gets the same request id"
    resp = httpx.get(router.url + "/health")
    assert re.fullmatch(r"[0-9a-f]{24}", resp.headers["x-request-id"])


def test_access_log_has_one_line_per_request_and_no_key(make_router):
    router = make_router({"logFormat": "json"}, env={"DEFAULT_API_KEY": "sk-secret-never-logged"})
    httpx.post(
        router.url + "/v1/chat/completions", json=chat(stream=False), headers={"X-Request-ID": "log-1"}
    )
    resp = request(
        router.port, "POST", "/v1/chat/completions", chat({"tokens": 3}), headers={"X-Request-ID": "log-2"}
    )
    resp.body()

    def lines():  # type: ignore[no-untyped-def]
        found = [json.loads(line) for line in router.logs().splitlines() if '"request_id"' in line]
        return found if len(found) >= 2 else None

    entries = wait_for(lines, what="access log lines")
    by_id = {e["request_id"]: e for e in entries}
    assert by_id["log-1"]["status"] == 200 and by_id["log-2"]["stream"] is True
    for field in ("route", "latency_ms", "upstream_latency_ms", "bytes"):
        assert field in by_id["log-2"]
    assert "sk-secret-never-logged" not in router.logs()
