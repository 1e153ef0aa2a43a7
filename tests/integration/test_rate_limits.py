"""Rate limits through real router processes: in-process, and shared through a real redis-server."""

from __future__ import annotations

import contextlib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.integration.conftest import chat
from tests.redis_server import RedisServer
from tests.router_process import RouterProcess

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


def _post(url: str, key: str = "client-a") -> httpx.Response:
    return httpx.post(
        url + "/v1/embeddings", json={"model": "m", "input": "x"}, headers={"authorization": f"Bearer {key}"}
    )


def test_in_process_limit_429_with_retry_after_per_key(upstream):
    config = {"baseUrl": upstream.url, "rateLimit": {"requestsPerMinute": 60, "burst": 3}}
    with RouterProcess(config) as router:
        statuses = [_post(router.url).status_code for _ in range(3)]
        refused = _post(router.url)
        assert statuses == [200, 200, 200]
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert _post(router.url, "client-b").status_code == 200, "another key has its own bucket"
        health = httpx.get(router.url + "/health").json()["rate_limit"]
        assert health["active_buckets"] >= 2
        assert "client-a" not in httpx.get(router.url + "/health").text, "keys are never shown in clear"


def test_endpoint_limit_overrides_global(upstream):
    config = {
        "baseUrl": upstream.url,
        "rateLimit": {"requestsPerMinute": 600, "burst": 100},
        "endpoints": {"/v1/embeddings": {"rateLimit": {"requestsPerMinute": 60, "burst": 1}}},
    }
    with RouterProcess(config) as router:
        assert [_post(router.url).status_code for _ in range(2)] == [200, 429]


def test_concurrent_streams_per_key(upstream):
    config = {"baseUrl": upstream.url, "rateLimit": {"concurrentStreams": 1}}
    with RouterProcess(config) as router:
        body = chat({"tokens": 30, "interval_ms": 30})
        headers = {"authorization": "Bearer k"}
        with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, headers=headers) as first:
            lines = first.iter_lines()
            next(lines)
            second = httpx.post(router.url + "/v1/chat/completions", json=body, headers=headers)
            assert second.status_code == 429
            error = second.json()["error"]
            assert error["code"] == "rate_limit_exceeded" and "concurrent streams" in error["message"]
            list(lines)
        with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, headers=headers) as third:
            assert third.status_code == 200, "the slot is released when the stream ends"


@needs_redis
def test_two_routers_share_one_redis_limit_exactly(upstream):
    with RedisServer() as redis:
        config = {
            "baseUrl": upstream.url,
            "rateLimit": {"requestsPerMinute": 12, "burst": 5, "redis": redis.url, "timeoutMs": 2000},
        }
        with RouterProcess(config) as one, RouterProcess(config) as two:
            urls = [one.url, two.url] * 8
            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(lambda u: _post(u).status_code, urls))
            assert statuses.count(200) == 5 and statuses.count(429) == 11
            time.sleep(5.05)  # the refill under test: one token per 5 s (slow, so a loaded machine adds none)
            later = [_post(one.url).status_code, _post(two.url).status_code]
            assert sorted(later) == [200, 429]


@needs_redis
@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_down_fails_open_or_closed_without_hanging(upstream, fail_open):
    with RedisServer() as redis:
        limit = {
            "requestsPerMinute": 600,
            "burst": 50,
            "redis": redis.url,
            "failOpen": fail_open,
            "timeoutMs": 50,
        }
        with RouterProcess({"baseUrl": upstream.url, "rateLimit": limit}) as router:
            assert _post(router.url).status_code == 200
            redis.kill()
            started = time.monotonic()
            resp = _post(router.url)
            assert time.monotonic() - started < 2.0
            if fail_open:
                assert resp.status_code == 200
            else:
                assert resp.status_code == 503
                assert resp.json()["error"]["code"] == "rate_limiter_unavailable"
            with contextlib.suppress(Exception):
                redis.stop()
