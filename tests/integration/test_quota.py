"""Tokens per minute, budgets and the ledger (quota.py) in one router, through the official SDKs.

The mock upstream reports ``MOCK_INPUT`` input tokens and ``mock.tokens`` output tokens; the
prices here make a token cost $1, so spends are whole numbers of dollars.
"""

from __future__ import annotations

import hashlib
import json
import signal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.integration.test_streaming import wait_for
from tests.integration.test_usage import MESSAGES, MOCK_INPUT, value
from tests.router_process import RouterProcess

ADMIN_KEY = "admin-secret-key-1"
TEAM_KEY = "team-a-key-1"
DOLLAR_A_TOKEN = {"inputPer1M": 1_000_000, "outputPer1M": 1_000_000}


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def client_config(**client: Any) -> dict[str, Any]:
    return {
        "adminKeyEnv": "TEST_ADMIN_KEY",
        "prices": {"gpt-4o": DOLLAR_A_TOKEN, "claude-sonnet-4": DOLLAR_A_TOKEN},
        "clients": [{"name": "team-a", "keySha256": _sha(TEAM_KEY), **client}],
    }


def start(make_router, config: dict[str, Any]) -> RouterProcess:
    return make_router(config, env={"TEST_ADMIN_KEY": ADMIN_KEY})


def _openai(router: RouterProcess, key: str = TEAM_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0, timeout=20)


def _chat(router: RouterProcess, tokens: int = 5, key: str = TEAM_KEY, **extra: Any) -> Any:
    with _openai(router, key) as client:  # closed: an unclosed client's socket warns in a later test
        answer = client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_body={"mock": {"tokens": tokens}}, **extra
        )
        return list(answer) if extra.get("stream") else answer


def usage_of(router: RouterProcess, client: str = "team-a", period: str | None = None) -> dict[str, Any]:
    params = {"period": period} if period else None
    answer = httpx.get(
        router.url + "/admin/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, params=params
    )
    assert answer.status_code == 200, answer.text
    rows = {row["client"]: row for row in answer.json()["clients"]}
    return rows[client]


def test_budget_refuses_the_next_request_with_insufficient_quota(make_router):
    router = start(make_router, client_config(budget={"usd": 20, "period": "day"}))
    _chat(router, tokens=5)  # 10 in + 5 out: $15 of $20
    row = usage_of(router)
    assert row["cost_usd"] == 15 and row["remaining_usd"] == 5 and row["period"] == "day"
    assert row["tokens"]["input"] == MOCK_INPUT and row["tokens"]["output"] == 5 and row["requests"] == 1
    _chat(router, tokens=5)  # still under at admission: $30 now
    with pytest.raises(openai.RateLimitError) as refused:
        _chat(router)
    assert refused.value.code == "insufficient_quota"
    assert refused.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert "budget" in refused.value.message
    row = usage_of(router)
    assert (
        row["requests"] == 2 and row["cost_usd"] == 30 and row["remaining_usd"] == 0
    )  # the refusal cost nothing


def test_budget_on_the_anthropic_route_is_in_anthropics_shape(make_router):
    router = start(make_router, client_config(budget={"usd": 1}))
    with anthropic.Anthropic(base_url=router.url, api_key=TEAM_KEY, max_retries=0, timeout=20) as claude:
        claude.messages.create(model="claude-sonnet-4", max_tokens=3, messages=MESSAGES)
        with pytest.raises(anthropic.RateLimitError) as refused:
            claude.messages.create(model="claude-sonnet-4", max_tokens=3, messages=MESSAGES)
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error" and "budget" in body["error"]["message"]


def test_a_stream_that_crosses_the_budget_is_not_cut(make_router):
    router = start(make_router, client_config(budget={"usd": 12}))
    chunks = _chat(router, tokens=40, stream=True)  # $50 by its end
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(
        f"t{i:08d}" for i in range(40)
    )
    assert usage_of(router)["cost_usd"] == 50
    with pytest.raises(openai.RateLimitError):
        _chat(router)


def test_tokens_per_minute_refuses_while_the_bucket_is_spent(make_router):
    config = client_config(rateLimit={"tokensPerMinute": 60})
    router = start(make_router, config)
    # reserves max_tokens (50) + body bytes / 4; reconciled to 10 + 50 = 60 when it ends
    _chat(router, tokens=50, max_tokens=50)
    with pytest.raises(openai.RateLimitError) as refused:
        _chat(router, tokens=1)
    assert refused.value.code == "rate_limit_exceeded"
    assert "60 tokens per minute" in refused.value.message
    retry_after = int(refused.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 2  # a token comes back every second at 60 a minute


def test_an_endpoints_tokens_per_minute_applies_to_every_key(make_router):
    router = start(
        make_router, {"endpoints": {"/v1/chat/completions": {"rateLimit": {"tokensPerMinute": 30}}}}
    )
    _chat(router, tokens=30, key="k1")
    _chat(router, tokens=1, key="k2")
    with pytest.raises(openai.RateLimitError):  # k1's bucket is spent, k2's is not
        _chat(router, tokens=1, key="k1")


def test_an_abandoned_stream_is_charged_its_estimate(make_router):
    router = start(make_router, client_config())
    with httpx.stream(
        "POST",
        router.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {TEAM_KEY}"},
        json={"model": "gpt-4o", "stream": True, "messages": MESSAGES, "mock": {"tokens": 100000}},
        timeout=20,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and "t00000020" in line:
                break  # the client goes away mid-stream
    wait_for(lambda: usage_of(router)["requests"] == 1)
    row = usage_of(router)
    assert row["tokens"]["output"] >= 20 and row["cost_usd"] >= 20
    assert value(router, "llm_usage_estimated_total", client="team-a", model="gpt-4o") == 1


def test_admin_usage_needs_the_admin_key(make_router):
    router = start(make_router, client_config())
    url = router.url + "/admin/usage"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TEAM_KEY}"}):
        answer = httpx.get(url, headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
    bad = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, params={"period": "week"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_period"
    for period in ("day", "month", "total"):
        assert usage_of(router, period=period)["period"] == period
    assert ADMIN_KEY not in router.logs()  # never logged


def test_admin_usage_is_off_without_an_admin_key(make_router):
    router = make_router({})
    answer = httpx.get(router.url + "/admin/usage", headers={"Authorization": "Bearer x"})
    assert answer.status_code == 404 and "adminKeyEnv" in answer.json()["error"]["message"]


def test_the_ledger_outlives_a_reload(make_router, upstream):
    router = start(make_router, client_config())
    _chat(router, tokens=2)
    router.config_path.write_text(
        json.dumps({**client_config(), "baseUrl": upstream.url, "logLevel": "debug"})
    )
    router.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "config reloaded (SIGHUP)" in router.logs(), what="reload log line")
    assert usage_of(router)["cost_usd"] == MOCK_INPUT + 2
