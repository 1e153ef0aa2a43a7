"""Several real upstream processes behind one router: balancing, failover, breakers, cache."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import chat
from tests.integration.test_streaming import wait_for
from tests.redis_server import RedisServer, free_port
from tests.router_process import RouterProcess
from tests.upstream_process import UpstreamProcess


@pytest.fixture(scope="module")
def three() -> Iterator[list[UpstreamProcess]]:
    with UpstreamProcess() as a, UpstreamProcess() as b, UpstreamProcess() as c:
        yield [a, b, c]


def served(upstream: UpstreamProcess) -> int:
    return len(upstream.stats()["streams"])


def backends(ups: list[UpstreamProcess], weights: list[int] | None = None) -> list[dict[str, Any]]:
    return [{"url": u.url, "weight": w} for u, w in zip(ups, weights or [1] * len(ups), strict=True)]


class FixedStatusServer:
    """A backend that answers every request with one status: the far end for failover tests."""

    def __init__(self, status: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.status = status
        self.hits = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                if data.startswith(b"GET "):
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
                    continue
                self.hits += 1
                if self.status == 200:
                    body = json.dumps({"object": "list", "data": [], "model": "m"}).encode()
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                    continue
                body = json.dumps(
                    {"error": {"message": "busy", "type": "server_error", "code": None}}
                ).encode()
                conn.sendall(
                    b"HTTP/1.1 %d Busy\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (self.status, len(body), body)
                )

    def close(self) -> None:
        self.sock.close()


def test_weights_are_respected_over_1000_requests(three):
    for u in three:
        u.reset()
    with (
        RouterProcess({"backends": backends(three, [5, 3, 2])}) as router,
        httpx.Client(base_url=router.url) as client,
    ):
        for _ in range(1000):
            assert client.post("/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 200
    counts = [served(u) for u in three]
    for count, expected in zip(counts, [500, 300, 200], strict=True):
        assert abs(count - expected) <= 0.05 * expected, counts


def test_least_connections_spreads_long_streams(three):
    for u in three:
        u.reset()
    config = {"backends": backends(three, [3, 1, 1]), "balancing": "least-connections"}
    with RouterProcess(config) as router:
        streams = [
            httpx.stream(
                "POST", router.url + "/v1/chat/completions", json=chat({"tokens": 40, "interval_ms": 50})
            )
            for _ in range(9)
        ]
        with contextlib.ExitStack() as stack:
            lines = [stack.enter_context(s).iter_lines() for s in streams]  # keep them: a dropped one closes
            for it in lines:
                next(it)
            active = [u.stats()["active_streams"] for u in three]
        assert active == [3, 3, 3], "in-flight counts, not weights, decide for long streams"


def test_killing_a_backend_mid_run(tmp_path):
    with UpstreamProcess() as a, UpstreamProcess() as b, UpstreamProcess() as victim:
        config = {
            "backends": backends([a, b, victim]),
            "healthCheck": {"failureThreshold": 1, "cooldownSecs": 30},
        }
        with RouterProcess(config) as router:
            opened = [
                httpx.stream(
                    "POST", router.url + "/v1/chat/completions", json=chat({"tokens": 200, "interval_ms": 20})
                )
                for _ in range(6)
            ]
            with contextlib.ExitStack() as stack:
                responses = [stack.enter_context(s) for s in opened]
                lines = [r.iter_lines() for r in responses]
                for it in lines:
                    next(it)
                on_victim = victim.stats()["active_streams"]
                assert on_victim == 2
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait(timeout=5)
                errors = 0
                for it in lines:
                    rest = list(it)
                    errors += "event: error" in rest
                assert errors == on_victim, "the streams on the dead backend get the error event"
            with httpx.Client(base_url=router.url) as client:
                statuses = [
                    client.post("/v1/chat/completions", json=chat(stream=False)).status_code
                    for _ in range(30)
                ]
            assert statuses == [200] * 30, "requests not yet started see no failure"
            health = httpx.get(router.url + "/health").json()["backends"]["default"]
            assert [b["circuit"] for b in health if b["url"] == victim.url] == ["open"]


def test_503_before_the_first_byte_is_retried_elsewhere(upstream):
    busy = FixedStatusServer(503)
    try:
        config = {"backends": [{"url": busy.url, "weight": 10}, {"url": upstream.url, "weight": 1}]}
        with RouterProcess(config) as router:
            resp = httpx.post(router.url + "/v1/chat/completions", json=chat(stream=False))
            assert resp.status_code == 200
            assert busy.hits == 1
            text = httpx.get(router.url + "/metrics").text
            assert "backend_failovers_total 1.0" in text
    finally:
        busy.close()


def test_circuit_opens_then_a_probe_closes_it(upstream):
    flaky = FixedStatusServer(502)  # passes its health check, fails real requests
    config = {
        "backends": [{"url": flaky.url}, {"url": upstream.url}],
        "healthCheck": {"failureThreshold": 2, "cooldownSecs": 0.5, "intervalSecs": 60},
    }
    try:
        with RouterProcess(config) as router, httpx.Client(base_url=router.url) as client:

            def circuit() -> str:
                states = client.get("/health").json()["backends"]["default"]
                return next(b["circuit"] for b in states if b["url"] == flaky.url)

            for _ in range(4):  # each failure is retried on the good backend: clients see none
                assert client.post("/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 200
            assert circuit() == "open"
            hits = flaky.hits
            for _ in range(4):
                client.post("/v1/embeddings", json={"model": "m", "input": "x"})
            assert flaky.hits == hits, "an open circuit gets no traffic"
            flaky.status = 200
            wait_for(
                lambda: (
                    client.post("/v1/embeddings", json={"model": "m", "input": "x"}).status_code == 200
                    and circuit() == "closed"
                ),
                what="the half-open probe to close the circuit",
            )
    finally:
        flaky.close()


def test_no_healthy_backend_is_503_with_retry_after():
    dead = free_port()
    config = {
        "backends": [{"url": f"http://127.0.0.1:{dead}"}],
        "healthCheck": {"intervalSecs": 0.1, "timeoutSecs": 0.2, "cooldownSecs": 3},
    }
    with RouterProcess(config) as router:
        wait_for(
            lambda: not httpx.get(router.url + "/health").json()["backends"]["default"][0]["healthy"],
            what="the active health check to mark the backend down",
        )
        resp = httpx.post(router.url + "/v1/chat/completions", json=chat(stream=False))
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "3"
        assert resp.json()["error"]["code"] == "no_healthy_backend"


def test_response_cache_hit_miss_bypass_and_eviction(upstream):
    config = {"baseUrl": upstream.url, "cache": {"enabled": True, "maxBytes": 4096, "ttlSecs": 60}}
    body = {"model": "m", "input": "cache me", "temperature": 0}
    with RouterProcess(config) as router, httpx.Client(base_url=router.url) as client:
        upstream.reset()
        first = client.post("/v1/embeddings", json=body)
        second = client.post("/v1/embeddings", json=body)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert (
            first.content == second.content
            and second.headers["x-request-id"] != first.headers["x-request-id"]
        )
        assert served(upstream) == 1
        bypass = client.post("/v1/embeddings", json=body, headers={"cache-control": "no-cache"})
        assert bypass.headers["x-cache"] == "BYPASS" and served(upstream) == 2
        sampled = client.post("/v1/chat/completions", json={**chat(stream=False), "temperature": 0.7})
        assert "x-cache" not in sampled.headers, "sampled requests are not cached by default"
        stream = client.post("/v1/chat/completions", json=chat({"tokens": 2}))
        assert "x-cache" not in stream.headers, "streams are never cached"
        for i in range(20):  # far more than 4 KB of entries: the first one is evicted
            client.post("/v1/embeddings", json={**body, "input": f"other {i}"})
        assert client.post("/v1/embeddings", json=body).headers["x-cache"] == "MISS"
        stats = client.get("/cache/stats").json()
        assert stats["hits"] == 1 and stats["evictions"] > 0 and stats["bytes"] <= 4096


def test_redis_cache_is_shared_by_two_routers(upstream):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with RedisServer() as redis:
        config = {"baseUrl": upstream.url, "cache": {"enabled": True, "redis": redis.url}}
        body = {"model": "m", "input": "shared", "temperature": 0}
        with RouterProcess(config) as one, RouterProcess(config) as two:
            upstream.reset()
            assert httpx.post(one.url + "/v1/embeddings", json=body).headers["x-cache"] == "MISS"
            hit = wait_for(
                lambda: (
                    (r := httpx.post(two.url + "/v1/embeddings", json=body)).headers["x-cache"] == "HIT" and r
                ),
                what="the second router to see the first one's entry",
            )
            assert hit.json()["data"]
            assert served(upstream) == 1
            # Redis's own count reaches /cache/stats (it was never taken: entries stayed null).
            stats = wait_for(
                lambda: (s := httpx.get(two.url + "/cache/stats").json())["entries"] == 1 and s,
                what="the Redis entry count in /cache/stats",
            )
            assert stats["bytes"] > 0 and stats["backend"] == "redis"
