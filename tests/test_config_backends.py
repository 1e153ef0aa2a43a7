"""Backend groups, cache and pool config: old configs keep loading, and every error names its field."""

from __future__ import annotations

from typing import Any

import pytest

from api_router import config as cfg
from api_router.config_backends import (
    BackendConfig,
    BackendGroupConfig,
    CacheConfig,
    HealthCheckConfig,
    ModelRoute,
    PoolConfig,
)

MiB = 1024 * 1024


def problems(data: dict[str, Any]) -> str:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.from_dict(data, "test.json")
    return str(info.value)


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DEFAULT_API_KEY", "BACKEND_KEY"):
        monkeypatch.delenv(var, raising=False)


def test_old_config_gets_defaults_and_an_implicit_group() -> None:
    config = cfg.from_dict({"baseUrl": "https://api.example.com/v1", "modelMapping": {"a": "b"}})
    assert config.backends is None
    assert config.backend_groups == {}
    assert config.cache == CacheConfig()
    assert config.cache.enabled is False
    assert config.cache.max_bytes == 64 * MiB
    assert config.cache.ttl_secs == 300
    assert config.pool == PoolConfig(max_idle_per_backend=256, idle_timeout_secs=30)
    group = config.default_group()
    assert group == BackendGroupConfig(backends=[BackendConfig(url="https://api.example.com/v1")])
    assert (group.balancing, group.retries, group.health_check) == ("round-robin", 2, None)
    assert config.mapped_model("a") == "b"
    assert config.model_group("a") is None
    assert config.mapped_model("unknown") is None
    assert config.model_group("unknown") is None


def test_presets_still_load() -> None:
    for name in cfg.PRESETS:
        config = cfg.load_preset(name)
        assert config.default_group().backends[0].url == config.base_url


def test_full_backend_config() -> None:
    config = cfg.from_dict(
        {
            "backends": [
                {"url": "http://10.0.0.1:8000", "weight": 3, "maxConnections": 100},
                {"url": "http://10.0.0.2:8000", "headers": {"X-Node": "2"}, "apiKeyEnv": "BACKEND_KEY"},
            ],
            "balancing": "least-connections",
            "retries": 1,
            "healthCheck": {"path": "/v1/models", "intervalSecs": 5, "failureThreshold": 3},
            "backendGroups": {
                "big": {
                    "backends": [{"url": "https://big.example.com"}],
                    "retries": 0,
                    "healthCheck": {"cooldownSecs": 30},
                }
            },
            "modelMapping": {
                "gpt-4o": {"model": "llama-70b", "backends": "big"},
                "gpt-4o-mini": "llama-8b",
                "plain": {"model": "qwen"},
            },
            "endpoints": {"/v1/embeddings": {"backends": "big"}},
            "cache": {"enabled": True, "maxBytes": 1024, "ttlSecs": 5, "redis": "redis://:pw@r:6379/1"},
            "pool": {"maxIdlePerBackend": 8, "idleTimeoutSecs": 2.5},
        }
    )
    assert config.base_url is None
    group = config.default_group()
    assert [b.url for b in group.backends] == ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
    assert group.backends[0].weight == 3
    assert group.backends[0].max_connections == 100
    assert group.backends[1].weight == 1
    assert group.backends[1].headers == {"X-Node": "2"}
    assert (group.balancing, group.retries) == ("least-connections", 1)
    assert group.health_check == HealthCheckConfig(path="/v1/models", interval_secs=5, failure_threshold=3)
    assert group.health_check.timeout_secs == 2
    assert group.health_check.cooldown_secs == 10
    big = config.backend_groups["big"]
    assert (big.balancing, big.retries, big.health_check) == (
        "round-robin",
        0,
        HealthCheckConfig(cooldown_secs=30),
    )
    assert config.mapped_model("gpt-4o") == "llama-70b"
    assert config.model_group("gpt-4o") == "big"
    assert config.mapped_model("gpt-4o-mini") == "llama-8b"
    assert config.model_group("gpt-4o-mini") is None
    assert config.model_mapping["plain"] == ModelRoute(model="qwen")
    assert config.model_group("plain") is None
    assert config.endpoints["/v1/embeddings"].backends == "big"
    assert config.cache.redis == "redis://:pw@r:6379/1"
    assert "pw" not in repr(config.cache)
    assert config.pool.max_idle_per_backend == 8


def test_backend_api_key_is_read_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKEND_KEY", "sk-backend")
    backend = BackendConfig(url="http://x", api_key_env="BACKEND_KEY")
    monkeypatch.delenv("BACKEND_KEY")
    assert backend.api_key() == "sk-backend"
    assert BackendConfig(url="http://x").api_key() is None


def test_round_trip_through_overrides() -> None:
    data = {
        "backends": [{"url": "http://a:1"}],
        "backendGroups": {"g": {"backends": [{"url": "http://g:1"}]}},
        "modelMapping": {"m": {"model": "u", "backends": "g"}, "n": "v"},
    }
    config = cfg.from_dict(data).with_overrides({"port": 9000})
    assert config.port == 9000
    assert config.model_group("m") == "g"
    assert config.mapped_model("n") == "v"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "test.json: baseUrl: Field required unless backends is given"),
        (
            {"baseUrl": "http://x", "backends": [{"url": "http://y"}]},
            "test.json: backends: give either baseUrl or backends, not both",
        ),
        ({"backends": []}, "backends: List should have at least 1 item"),
        ({"backends": [{"url": "ftp://y"}]}, "backends.0.url: scheme must be http or https"),
        ({"backends": [{"url": "http://u:p@y"}]}, "backends.0.url: credentials in the URL are not supported"),
        ({"backends": [{"url": "http://y", "weight": 0}]}, "backends.0.weight: Input should be greater than"),
        ({"backends": [{"url": "http://y", "maxConnections": 0}]}, "backends.0.maxConnections"),
        ({"backends": [{"url": "http://y", "bogus": 1}]}, "backends.0.bogus: Extra inputs"),
        (
            {"backends": [{"url": "http://y", "headers": {"Host": "z"}}]},
            "backends.0.headers: Host: this header is set by the router",
        ),
        (
            {"backends": [{"url": "http://y", "apiKeyEnv": "sk-123"}]},
            "backends.0.apiKeyEnv: must be the name of an environment variable",
        ),
        (
            {"backends": [{"url": "http://y"}, {"url": "http://y/"}]},
            "backends.1.url: same URL as backends.0",
        ),
        ({"baseUrl": "http://x", "balancing": "random"}, "balancing: Input should be 'round-robin'"),
        ({"baseUrl": "http://x", "retries": -1}, "retries: Input should be greater than or equal to 0"),
        ({"baseUrl": "http://x", "healthCheck": {"path": "health"}}, "healthCheck.path: must start with '/'"),
        ({"baseUrl": "http://x", "healthCheck": {"intervalSecs": 0}}, "healthCheck.intervalSecs"),
        ({"baseUrl": "http://x", "healthCheck": {"failureThreshold": 0}}, "healthCheck.failureThreshold"),
        (
            {"baseUrl": "http://x", "modelMapping": {"gpt": {"model": "m", "backends": "nope"}}},
            "test.json: modelMapping.gpt.backends: no backend group 'nope' in backendGroups (none defined)",
        ),
        (
            {
                "baseUrl": "http://x",
                "backendGroups": {"a": {"backends": [{"url": "http://a"}]}},
                "endpoints": {"/v1/x": {"backends": "b"}},
            },
            "test.json: endpoints./v1/x.backends: no backend group 'b' in backendGroups (a)",
        ),
        (
            {"baseUrl": "http://x", "modelMapping": {"m": 5}},
            "modelMapping.m: must be a model name or an object",
        ),
        (
            {"baseUrl": "http://x", "modelMapping": {"m": {"backends": "g"}}},
            "modelMapping.m.model: Field required",
        ),
        (
            {"baseUrl": "http://x", "modelMapping": {"m": {"model": "u", "x": 1}}},
            "modelMapping.m.x: Extra inputs",
        ),
        ({"baseUrl": "http://x", "backendGroups": {"g": {"backends": []}}}, "backendGroups.g.backends"),
        (
            {"baseUrl": "http://x", "backendGroups": {"g": {"backends": [{"url": "x"}]}}},
            "backendGroups.g.backends.0.url: scheme must be http or https",
        ),
        ({"baseUrl": "http://x", "cache": {"maxBytes": 0}}, "cache.maxBytes"),
        ({"baseUrl": "http://x", "cache": {"ttlSecs": 0}}, "cache.ttlSecs"),
        ({"baseUrl": "http://x", "cache": {"redis": "http://r"}}, "cache.redis: must be a redis://"),
        ({"baseUrl": "http://x", "pool": {"idleTimeoutSecs": 0}}, "pool.idleTimeoutSecs"),
        ({"baseUrl": "http://x", "pool": {"maxIdlePerBackend": -1}}, "pool.maxIdlePerBackend"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_errors_name_the_field(data: dict[str, Any], expected: str) -> None:
    assert expected in problems(data)


def test_all_reference_errors_reported_at_once() -> None:
    message = problems(
        {
            "backends": [{"url": "http://y"}],
            "baseUrl": "http://x",
            "modelMapping": {"a": {"model": "m", "backends": "g1"}, "b": {"model": "m", "backends": "g2"}},
        }
    )
    assert len(message.splitlines()) == 3
    assert "modelMapping.a.backends" in message
    assert "modelMapping.b.backends" in message
