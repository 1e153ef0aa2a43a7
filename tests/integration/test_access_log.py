"""The access log, read from a real router: one line per response, the router's own answers too
(refusals 400/401/404/413/429/431/505, /health, cache hits), and ``bytes`` is the body the
client got: the upstream's bytes plus the router's own (heartbeats, the SSE error event, an error
body), counted here on the client's side of a raw socket (issue 14, "Config schema and CLI")."""

from __future__ import annotations

import json
import socket
from typing import Any

from tests.integration.conftest import chat
from tests.rawhttp import RawResponse, request
from tests.test_mock_upstream import wait_for

KEY = "test-client-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def raw(port: int, data: bytes) -> RawResponse:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(data)
    return RawResponse(sock)


def access_lines(router: Any, ids: set[str]) -> dict[str, dict[str, Any]]:
    def found() -> dict[str, dict[str, Any]] | None:
        entries = [
            json.loads(line) for line in router.logs().splitlines() if '"logger":"api_router.access"' in line
        ]
        by_id = {e["request_id"]: e for e in entries}
        return by_id if ids <= by_id.keys() else None

    by_id: dict[str, dict[str, Any]] = wait_for(found, what="an access line for every request")
    return by_id


def test_every_answer_has_an_access_line_and_bytes_is_the_body_received(make_router: Any) -> None:
    router = make_router(
        {
            "logFormat": "json",
            "maxBodyBytes": 2048,
            "clients": [{"name": "app", "keyEnv": "TEST_ACCESS_CLIENT_KEY"}],
            "streamConfig": {"heartbeatIntervalSecs": 0.2},
            "endpoints": {"/v1/embeddings": {"rateLimit": {"requestsPerMinute": 1, "burst": 1}}},
        },
        env={"TEST_ACCESS_CLIENT_KEY": KEY},
    )
    port = router.port
    expected: dict[str, tuple[int, int, str]] = {}  # request id -> (status, body bytes, outcome)
    bodies: dict[str, bytes] = {}

    def check(rid: str, resp: RawResponse, outcome: str) -> None:
        body = bodies[rid] = resp.body()
        assert resp.headers["x-request-id"] == rid
        expected[rid] = (resp.status, len(body), outcome)

    def ask(
        rid: str, method: str, path: str, body: Any = None, outcome: str = "rejected", **headers: str
    ) -> int:
        resp = request(port, method, path, body, headers={"X-Request-ID": rid, **headers})
        check(rid, resp, outcome)
        return resp.status

    assert ask("no-route", "GET", "/nope", **AUTH) == 404
    assert ask("no-key", "POST", "/v1/chat/completions", chat(stream=False)) == 401
    assert ask("bad-json", "POST", "/v1/chat/completions", b'{"model": ', **AUTH) == 400
    assert ask("too-big", "POST", "/v1/chat/completions", b"x" * 4096, **AUTH) == 413
    embed = {"model": "mock-embed", "input": "hi"}
    assert ask("embed-1", "POST", "/v1/embeddings", embed, outcome="completed", **AUTH) == 200
    assert ask("embed-2", "POST", "/v1/embeddings", embed, outcome="rate_limited", **AUTH) == 429
    assert ask("health", "GET", "/health", outcome="answered") == 200
    # Heartbeats while the first token is awaited, then tokens: all of it is body the client got.
    slow = chat({"tokens": 3, "first_token_delay_ms": 700, "interval_ms": 0})
    assert ask("beats", "POST", "/v1/chat/completions", slow, outcome="completed", **AUTH) == 200
    # The upstream dies mid-stream: the router's SSE error event is part of the body too.
    dying = chat({"tokens": 10, "interval_ms": 1, "die_after": 3})
    assert ask("died", "POST", "/v1/chat/completions", dying, outcome="upstream_died", **AUTH) == 200

    version = raw(port, b"GET /health HTTP/2.0\r\nHost: x\r\nX-Request-ID: http2\r\n\r\n")
    check("http2", version, "rejected")
    huge = raw(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    huge_id = huge.headers["x-request-id"]  # the head never completed: the id is the router's
    check(huge_id, huge, "rejected")

    lines = access_lines(router, set(expected))
    for rid, (status, size, outcome) in expected.items():
        line = lines[rid]
        assert (line["status"], line["bytes"], line["outcome"]) == (status, size, outcome), (rid, line)
    assert lines["http2"]["status"] == 505 and lines[huge_id]["status"] == 431
    assert lines["no-route"]["route"] == "/nope" and lines[huge_id]["route"] == "-"
    assert lines["health"]["upstream_latency_ms"] is None and lines["beats"]["upstream_latency_ms"] > 0
    assert b": heartbeat" in bodies["beats"] and b"event: error" in bodies["died"]  # the router's own bytes


def test_cache_hit_has_an_access_line(make_router: Any) -> None:
    router = make_router({"logFormat": "json", "cache": {"enabled": True}})
    body = {"model": "mock-embed", "input": "cache me"}
    for rid in ("miss", "hit"):
        resp = request(router.port, "POST", "/v1/embeddings", body, headers={"X-Request-ID": rid})
        assert resp.status == 200
        size = len(resp.body())
    lines = access_lines(router, {"miss", "hit"})
    assert lines["miss"]["outcome"] == "completed"
    assert (lines["hit"]["outcome"], lines["hit"]["bytes"], lines["hit"]["status"]) == (
        "cache_hit",
        size,
        200,
    )
