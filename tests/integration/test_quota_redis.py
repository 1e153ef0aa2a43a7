"""Budgets, tokens per minute and the ledger shared by two router processes through one real Redis
(quota_redis.py), and what ``failOpen`` does when Redis goes away."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import httpx
import openai
import pytest

from tests.integration.conftest import chat
from tests.integration.test_quota import ADMIN_KEY, _chat, client_config
from tests.integration.test_rate_limits import needs_redis
from tests.integration.test_streaming import wait_for
from tests.integration.test_usage import MOCK_INPUT, value
from tests.redis_server import RedisServer
from tests.router_process import RouterProcess

ENV = {"TEST_ADMIN_KEY": ADMIN_KEY}


def _usage(router: RouterProcess) -> dict[str, Any]:
    answer = httpx.get(router.url + "/admin/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code == 200, answer.text
    return {row["client"]: row for row in answer.json()["clients"]}["team-a"]


def _config(upstream, redis: RedisServer, fail_open: bool = True, **client: Any) -> dict[str, Any]:
    return {
        "baseUrl": upstream.url,
        "rateLimit": {"redis": redis.url, "timeoutMs": 2000, "failOpen": fail_open},
        **client_config(**client),
    }


@needs_redis
def test_two_routers_share_the_ledger_and_the_budget(upstream):
    with RedisServer() as redis:
        config = _config(upstream, redis, budget={"usd": 20, "period": "month"})
        with RouterProcess(config, env=ENV) as one, RouterProcess(config, env=ENV) as two:
            _chat(one, tokens=15)  # $25 spent through the first router
            row = wait_for(lambda: _usage(two)["requests"] == 1 and _usage(two), what="the ledger in Redis")
            assert row["cost_usd"] == MOCK_INPUT + 15 and row["tokens"]["output"] == 15
            assert row["budget_usd"] == 20 and row["remaining_usd"] == 0
            with pytest.raises(openai.RateLimitError) as refused:
                _chat(two)  # the second router refuses what the first one spent
            assert refused.value.code == "insufficient_quota"
        with RouterProcess(config, env=ENV) as restarted:  # the spend outlives the routers
            assert _usage(restarted)["cost_usd"] == MOCK_INPUT + 15


@needs_redis
def test_two_routers_share_one_tokens_per_minute_bucket(upstream):
    with RedisServer() as redis:
        config = _config(upstream, redis, rateLimit={"tokensPerMinute": 60})
        with RouterProcess(config, env=ENV) as one, RouterProcess(config, env=ENV) as two:
            _chat(one, tokens=50, max_tokens=50)  # 60 tokens: the minute's worth
            wait_for(lambda: _usage(two)["requests"] == 1, what="the first answer settled")
            with pytest.raises(openai.RateLimitError) as refused:
                _chat(two, tokens=1)
            assert refused.value.code == "rate_limit_exceeded"
            assert "tokens per minute" in refused.value.message


@needs_redis
@pytest.mark.parametrize("fail_open", [True, False])
def test_redis_down_the_budget_check_fails_open_or_closed_and_is_counted(upstream, fail_open):
    with RedisServer() as redis:
        config = _config(upstream, redis, fail_open=fail_open, budget={"usd": 1000})
        config["rateLimit"]["timeoutMs"] = 50
        with RouterProcess(config, env=ENV) as router:
            _chat(router, tokens=1)
            redis.kill()
            started = time.monotonic()
            if fail_open:
                _chat(router, tokens=1)
            else:
                with pytest.raises(openai.InternalServerError) as refused:
                    _chat(router, tokens=1)
                assert refused.value.status_code == 503
                assert refused.value.code == "rate_limiter_unavailable"
            assert time.monotonic() - started < 2.0
            decision = "admitted" if fail_open else "refused"
            failures = value(router, "ratelimit_backend_failures_total", decision=decision)
            assert failures >= 1
            ledger = httpx.get(router.url + "/admin/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
            assert ledger.status_code == 503 and ledger.json()["error"]["code"] == "ledger_unavailable"
            with contextlib.suppress(Exception):
                redis.stop()


@needs_redis
def test_concurrent_streams_hold_across_two_routers(upstream):
    with RedisServer() as redis:
        config = {
            "baseUrl": upstream.url,
            "rateLimit": {"redis": redis.url, "timeoutMs": 2000, "concurrentStreams": 1},
        }
        body = chat({"tokens": 200, "interval_ms": 20})
        headers = {"authorization": "Bearer k"}
        with RouterProcess(config) as one, RouterProcess(config) as two:
            with httpx.stream("POST", one.url + "/v1/chat/completions", json=body, headers=headers) as first:
                assert first.status_code == 200
                lines = first.iter_lines()  # kept: a dropped generator closes the response
                next(lines)
                second = httpx.post(two.url + "/v1/chat/completions", json=body, headers=headers)
                assert second.status_code == 429
                assert "concurrent streams" in second.json()["error"]["message"]
                other_key = {"authorization": "Bearer someone-else"}
                with httpx.stream(
                    "POST", two.url + "/v1/chat/completions", json=body, headers=other_key
                ) as third:
                    assert third.status_code == 200
            # the first stream is gone (the client left): its slot is freed in Redis for both routers
            wait_for(
                lambda: (
                    httpx.post(
                        two.url + "/v1/chat/completions", json=chat({"tokens": 2}), headers=headers
                    ).status_code
                    == 200
                ),
                what="the slot released",
            )
