"""quota.py, ledger.py, core/reserve.py and the tokens-per-minute half of core/token_bucket.py,
without I/O: the clock is an argument."""

from __future__ import annotations

import asyncio
import calendar
import hashlib
from typing import Any

import pytest

from api_router import config as cfg
from api_router.admin import check_admin, usage_answer
from api_router.core.access import Unauthorized
from api_router.core.reserve import reservation
from api_router.core.token_bucket import TokenBucket
from api_router.core.usage import Usage
from api_router.errors import NotFound
from api_router.ledger import MemoryLedger, Spend, period_id, period_start
from api_router.quota import InsufficientQuota, MemoryQuota, Ticket, TokenLimit, resolve_token_limit

KEY = "0" * 64


def config(**extra: Any) -> cfg.Config:
    return cfg.Config.model_validate({"baseUrl": "http://127.0.0.1:9", **extra})


def team(**client: Any) -> cfg.Config:
    return config(clients=[{"name": "team", "keySha256": KEY, **client}])


def used(input_: int, output: int) -> Usage:
    return Usage(input_, output, 0, 0, False)


def test_spend_admits_while_a_token_is_left_and_may_go_into_debt() -> None:
    bucket = TokenBucket(1.0, 60)  # 60 a minute
    assert bucket.spend(0.0, 100) == 0.0  # a reservation over the burst is still admitted...
    wait = bucket.spend(0.0, 1)
    assert wait == pytest.approx(41.0)  # ...and the debt (40) plus one token must come back first
    assert bucket.spend(41.0, 1) == 0.0


def test_adjust_charges_or_gives_back_but_never_above_full() -> None:
    bucket = TokenBucket(1.0, 10)
    bucket.spend(0.0, 10)
    assert bucket.spend(0.0, 1) > 0
    bucket.adjust(0.0, -4)  # the answer used 4 fewer than reserved
    assert bucket.spend(0.0, 1) == 0.0
    bucket.adjust(0.0, -1000)
    assert bucket.tokens(0.0) == 10  # full, not more


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, 25),
        ({"max_tokens": 50}, 75),
        ({"max_completion_tokens": 7}, 32),
        ({"max_output_tokens": 9}, 34),
        ({"max_tokens": True}, 25),
        ({"max_tokens": "50"}, 25),
        ({"max_tokens": -3}, 25),
    ],
)
def test_reservation_is_the_output_cap_plus_a_token_per_four_body_bytes(
    body: dict[str, Any], expected: int
) -> None:
    assert reservation(body, 100) == expected


def test_token_limits_resolve_client_then_endpoint_then_global() -> None:
    conf = config(
        rateLimit={"tokensPerMinute": 1000},
        endpoints={
            "/v1/embeddings": {"rateLimit": {"tokensPerMinute": 0}},
            "/v1/completions": {"rateLimit": {"tokensPerMinute": 5}},
        },
        clients=[{"name": "team", "keySha256": KEY, "rateLimit": {"tokensPerMinute": 7}}],
    )
    assert resolve_token_limit(conf, "/v1/chat/completions") == TokenLimit(1000)
    assert resolve_token_limit(conf, "/v1/embeddings") is None  # 0: this endpoint is unlimited
    quota = MemoryQuota(conf)
    assert quota.token_limit("team", "/v1/completions") == TokenLimit(7)
    assert quota.token_limit("anonymous", "/v1/completions") == TokenLimit(5)
    assert quota.token_limit("anonymous", "/v1/chat/completions") == TokenLimit(1000)
    assert quota.bucket_key("team", "key:abc") == "client:team"
    assert quota.bucket_key("anonymous", "key:abc") == "key:abc"
    assert not MemoryQuota(config()).applies("anonymous", "/v1/chat/completions")


def test_a_reservation_is_reconciled_with_the_usage() -> None:
    quota = MemoryQuota(config(rateLimit={"tokensPerMinute": 60}))
    route = "/v1/chat/completions"
    ticket = quota.admit_now("anonymous", "key:a", route, 60, now=0.0)
    assert isinstance(ticket, Ticket)
    assert quota.admit_now("anonymous", "key:a", route, 1, now=0.0) is not None  # spent by the reservation
    quota.settle(ticket, "anonymous", used(5, 5), None, now=0.0)  # used 10 of the 60 reserved
    assert isinstance(quota.admit_now("anonymous", "key:a", route, 1, now=0.0), Ticket)
    assert isinstance(quota.admit_now("anonymous", "key:b", route, 1, now=0.0), Ticket)  # its own bucket


def test_a_refusal_names_tokens_per_minute_and_says_when_to_retry() -> None:
    quota = MemoryQuota(config(rateLimit={"tokensPerMinute": 60}))
    quota.admit_now("anonymous", "key:a", "/r", 70, now=0.0)
    refused = quota.admit_now("anonymous", "key:a", "/r", 1, now=0.0)
    assert not isinstance(refused, Ticket) and refused is not None
    assert refused.status == 429 and refused.code == "rate_limit_exceeded"
    assert "60 tokens per minute" in refused.message
    assert dict(refused.headers)["Retry-After"] == "11"


def test_budget_refuses_once_the_period_spend_reaches_it() -> None:
    quota = MemoryQuota(team(budget={"usd": 1.0, "period": "day"}))
    assert quota.admit_now("team", "k", "/r", 0, now=0.0) is None
    quota.settle(None, "team", used(10, 10), 0.6, now=0.0)
    assert quota.admit_now("team", "k", "/r", 0, now=0.0) is None  # $0.60 of $1
    quota.settle(None, "team", used(10, 10), 0.6, now=0.0)
    refused = quota.admit_now("team", "k", "/r", 0, now=0.0)
    assert isinstance(refused, InsufficientQuota)
    assert refused.status == 429 and refused.type == refused.code == "insufficient_quota"
    assert "$1" in refused.message and "today" in refused.message


def test_the_ledger_keeps_three_periods_and_starts_a_new_day_at_zero() -> None:
    ledger = MemoryLedger()
    day1 = calendar.timegm((2026, 12, 31, 23, 59, 0))
    ledger.record("team", Usage(10, 5, 4, 2, False), 0.25, day1)
    ledger.record("team", None, None, day1)  # a request that reported nothing still counts
    assert ledger.spend("team", "day", day1) == Spend(2, 10, 5, 4, 2, 0.25)
    day2 = day1 + 120  # 2027-01-01: a new day, month (and year)
    ledger.record("team", used(1, 1), 0.5, day2)
    assert ledger.spend("team", "day", day2) == Spend(1, 1, 1, 0, 0, 0.5)
    assert ledger.spend("team", "month", day2) == Spend(1, 1, 1, 0, 0, 0.5)
    assert ledger.spend("team", "total", day2) == Spend(3, 11, 6, 4, 2, 0.75)
    assert (period_id("day", day1), period_id("month", day2), period_id("total", day2)) == (
        "2026-12-31",
        "2027-01",
        "total",
    )
    assert period_start("month", day1) == "2026-12-01T00:00:00Z" and period_start("total", day1) is None
    assert Spend.from_fields({b"requests": b"2", b"cost_usd": b"0.5"}) == Spend(2, cost_usd=0.5)


def test_the_report_shows_every_client_in_its_budgets_period() -> None:
    conf = config(
        clients=[
            {"name": "a", "keySha256": KEY, "budget": {"usd": 2, "period": "day"}},
            {"name": "b", "keySha256": "1" * 64},
        ]
    )
    quota = MemoryQuota(conf)
    quota.settle(None, "a", used(3, 4), 0.5, now=0.0)
    rows = {row["client"]: row for row in asyncio.run(quota.report(None))["clients"]}
    assert rows["a"]["period"] == "day" and rows["a"]["remaining_usd"] == 1.5
    assert rows["a"]["tokens"] == {"input": 3, "output": 4, "cached_input": 0, "reasoning": 0}
    assert rows["b"]["period"] == "month" and rows["b"]["budget_usd"] is None and rows["b"]["requests"] == 0
    totals = {row["client"]: row for row in asyncio.run(quota.report("total"))["clients"]}
    assert totals["a"]["budget_usd"] is None  # a day's budget says nothing of the total


def test_a_reload_keeps_the_in_process_spend() -> None:
    first = MemoryQuota(team(budget={"usd": 1.0}))
    first.settle(None, "team", used(1, 1), 2.0, now=0.0)
    second = MemoryQuota(team(budget={"usd": 1.0}), previous=first)
    assert isinstance(second.admit_now("team", "k", "/r", 0, now=0.0), InsufficientQuota)


def test_the_admin_key_is_checked_by_digest() -> None:
    digest = hashlib.sha256(b"admin").digest()
    check_admin(digest, [(b"authorization", b"Bearer admin")])
    check_admin(digest, [(b"authorization", b"bearer  admin ")])
    for headers in (
        [],
        [(b"authorization", b"Bearer nope")],
        [(b"authorization", b"Basic admin")],
        [(b"x-api-key", b"admin")],
    ):
        with pytest.raises(Unauthorized):
            check_admin(digest, headers)
    with pytest.raises(NotFound):
        check_admin(None, [(b"authorization", b"Bearer admin")])


def test_admin_key_env_is_read_and_hashed_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_ADMIN", "s3cret")
    conf = config(adminKeyEnv="ROUTER_ADMIN")
    assert conf.admin_key_hash == hashlib.sha256(b"s3cret").digest()
    assert "s3cret" not in repr(conf)
    monkeypatch.delenv("ROUTER_ADMIN")
    with pytest.raises(Exception, match="adminKeyEnv"):
        config(adminKeyEnv="ROUTER_ADMIN")
    status, body = asyncio.run(usage_answer(None, MemoryQuota(config()), [], b""))
    assert status == 404 and b"adminKeyEnv" in body


def test_budget_config_is_validated() -> None:
    for bad in ({"usd": 0}, {"usd": 5, "period": "week"}, {"period": "day"}):
        with pytest.raises(Exception, match="budget"):
            team(budget=bad)
