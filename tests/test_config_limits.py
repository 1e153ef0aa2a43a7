"""rateLimit's backend fields: redis URL, failOpen, timeoutMs, concurrentStreams."""

from __future__ import annotations

from typing import Any

import pytest

from api_router import config as cfg


def load(rate_limit: dict[str, Any]) -> cfg.Config:
    return cfg.from_dict({"baseUrl": "http://127.0.0.1:9", "rateLimit": rate_limit}, source="<test>")


def problem(rate_limit: dict[str, Any]) -> str:
    with pytest.raises(cfg.ConfigError) as info:
        load(rate_limit)
    return str(info.value)


def test_defaults_keep_old_configs_meaning() -> None:
    limit = load({"requestsPerMinute": 120, "burst": 40}).rate_limit
    assert limit == cfg.RateLimitConfig(requests_per_minute=120, burst=40)
    assert limit is not None
    assert (limit.redis, limit.fail_open, limit.timeout_ms, limit.concurrent_streams) == (
        None,
        True,
        50,
        None,
    )


def test_all_fields_camel_case() -> None:
    limit = load(
        {
            "requestsPerMinute": 60,
            "redis": "rediss://:secret@cache.internal:6380/2",
            "failOpen": False,
            "timeoutMs": 20,
            "concurrentStreams": 4,
        }
    ).rate_limit
    assert limit is not None
    assert limit.redis == "rediss://:secret@cache.internal:6380/2"
    assert (limit.fail_open, limit.timeout_ms, limit.concurrent_streams) == (False, 20, 4)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1", "redis://localhost:6379/0", "REDIS://h/", "rediss://h:1"]
)
def test_redis_urls_accepted(url: str) -> None:
    limit = load({"redis": url}).rate_limit
    assert limit is not None and limit.redis == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379", "scheme must be redis or rediss, got 'http'"),
        ("unix:///tmp/redis.sock", "scheme must be redis or rediss"),
        ("127.0.0.1:6379", "scheme must be redis or rediss"),
        ("redis://", "URL has no host"),
        ("redis://h:port", "not a valid URL"),
        ("redis://h/cache", "the path must be a database number"),
    ],
)
def test_bad_redis_urls(url: str, message: str) -> None:
    text = problem({"redis": url})
    assert text.startswith("<test>: rateLimit.redis: ")
    assert message in text


def test_a_redis_password_is_never_echoed() -> None:
    text = problem({"redis": "http://:hunter2@h:6379"})
    assert "hunter2" not in text
    limit = load({"redis": "redis://:hunter2@h:6379"})
    assert "hunter2" not in repr(limit) and "hunter2" not in repr(limit.rate_limit)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timeoutMs", 0, "rateLimit.timeoutMs: Input should be greater than 0"),
        ("timeoutMs", -5, "rateLimit.timeoutMs: Input should be greater than 0"),
        ("timeoutMs", 1.5, "rateLimit.timeoutMs: Input should be a valid integer"),
        ("concurrentStreams", 0, "rateLimit.concurrentStreams: Input should be greater than or equal to 1"),
        ("failOpen", "sometimes", "rateLimit.failOpen: Input should be a valid boolean"),
        ("redis", 6379, "rateLimit.redis: Input should be a valid string"),
        ("failopen", True, "rateLimit.failopen: Extra inputs are not permitted"),
    ],
)
def test_bad_values(field: str, value: object, message: str) -> None:
    assert message in problem({field: value})


def test_endpoint_rate_limits_are_checked_by_the_same_rules() -> None:
    data = {
        "baseUrl": "http://127.0.0.1:9",
        "endpoints": {"/v1/chat/completions": {"rateLimit": {"requestsPerMinute": 6, "redis": "http://h"}}},
    }
    with pytest.raises(cfg.ConfigError) as info:
        cfg.from_dict(data, source="<test>")
    assert str(info.value).startswith(
        "<test>: endpoints./v1/chat/completions.rateLimit.redis: scheme must be redis or rediss"
    )


def test_json_round_trip_keeps_the_new_fields() -> None:
    config = load({"requestsPerMinute": 60, "redis": "redis://h", "failOpen": False, "concurrentStreams": 2})
    again = config.with_overrides({})
    assert again.rate_limit == config.rate_limit
