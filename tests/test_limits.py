"""Rate limits: client keys, limit resolution, the in-process limiter, then Redis on a real server."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from api_router import config as cfg
from api_router.core.access import presented_key
from api_router.errors import ApiFlavor
from api_router.limits import (
    CONCURRENCY_LIMITED,
    Decision,
    InProcessLimiter,
    Limit,
    RateLimited,
    ServiceUnavailable,
    StreamSlots,
    client_key,
    decision_error,
    resolve_limit,
)
from api_router.limits_redis import Limiter, RedisLimiter, build_limiter
from tests.redis_server import REDIS_SERVER, RedisServer

if TYPE_CHECKING:
    from redis.asyncio import Redis

NO_REDIS = (
    "redis-server is not on PATH (apt install redis-server)"
    if REDIS_SERVER is None
    else "the redis package is not installed (pip install 'redis>=5')"
    if importlib.util.find_spec("redis") is None
    else ""
)
needs_redis = pytest.mark.skipif(bool(NO_REDIS), reason=NO_REDIS)
T = TypeVar("T")
CHAT = "/v1/chat/completions"
EMBED = "/v1/embeddings"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


# --- client keys -------------------------------------------------------------------------------


def key_of(token: bytes) -> str:
    return "key:" + hashlib.sha256(token).hexdigest()[:16]


def test_bearer_token_is_hashed_never_kept() -> None:
    key = client_key([(b"authorization", b"Bearer sk-abc123")], "10.0.0.1")
    assert key == key_of(b"sk-abc123")
    assert len(key) == len("key:") + 16 and "sk-abc123" not in key


def test_the_same_token_in_either_header_is_the_same_client() -> None:
    via_bearer = client_key([(b"authorization", b"bearer  sk-abc123 ")], "10.0.0.1")
    via_x_api_key = client_key([(b"x-api-key", b"sk-abc123")], "10.0.0.2")
    assert via_bearer == via_x_api_key == key_of(b"sk-abc123")
    assert client_key([(b"authorization", b"Bearer sk-other")], None) != via_bearer


def test_the_bucket_owner_is_the_key_access_control_reads() -> None:
    """One parser of the caller's key (layers issue, defect 4): the limiter used to hash any
    Authorization value while access control read only Bearer tokens."""
    both = [(b"x-api-key", b"one"), (b"authorization", b"Bearer two")]
    assert client_key(both, None) == key_of(b"two") == key_of(presented_key(both))
    basic_then_key = [(b"authorization", b"Basic dXNlcjpwdw=="), (b"x-api-key", b"three")]
    assert client_key(basic_then_key, None) == key_of(b"three") == key_of(presented_key(basic_then_key))
    assert client_key([(b"authorization", b"Basic dXNlcjpwdw==")], "192.0.2.7") == "ip:192.0.2.7"


@pytest.mark.parametrize(
    "headers",
    [[], [(b"authorization", b"Bearer ")], [(b"authorization", b"")], [(b"x-api-key", b"  ")]],
)
def test_no_key_means_the_peer_address_bucket(headers: list[tuple[bytes, bytes]]) -> None:
    assert client_key(headers, "192.0.2.7") == "ip:192.0.2.7"
    assert client_key(headers, "::1") == "ip:::1"
    assert client_key(headers, "192.0.2.7") != client_key(headers, "192.0.2.8")


# --- resolving the limit of a route -------------------------------------------------------------


def config_with(rate_limit: dict[str, Any] | None, endpoint: dict[str, Any] | None = None) -> cfg.Config:
    data: dict[str, Any] = {"baseUrl": "http://127.0.0.1:9"}
    if rate_limit is not None:
        data["rateLimit"] = rate_limit
    if endpoint is not None:
        data["endpoints"] = {CHAT: {"rateLimit": endpoint}}
    return cfg.from_dict(data)


ENV = {"RATE_LIMIT_REQUESTS_PER_MINUTE": "30", "RATE_LIMIT_BURST": "3"}


@pytest.mark.parametrize(
    ("global_", "endpoint", "env", "chat", "embed"),
    [
        (None, None, {}, None, None),
        (None, None, ENV, Limit(30, 3), Limit(30, 3)),
        ({"requestsPerMinute": 120, "burst": 40}, None, ENV, Limit(120, 40), Limit(120, 40)),
        ({"requestsPerMinute": 120, "burst": 40}, {"requestsPerMinute": 6}, {}, Limit(6, 6), Limit(120, 40)),
        ({"requestsPerMinute": 120}, {"burst": 5}, {}, Limit(120, 5), Limit(120, 120)),
        ({"requestsPerMinute": 120, "burst": 40}, {"requestsPerMinute": 0}, {}, None, Limit(120, 40)),
        ({"requestsPerMinute": 0}, {"requestsPerMinute": 60}, ENV, Limit(60, 60), None),
        ({"burst": 9}, None, ENV, Limit(30, 9), Limit(30, 9)),
        ({"requestsPerMinute": 1, "burst": 0}, None, {}, Limit(1, 1), Limit(1, 1)),
        (
            {"redis": "redis://h"},
            None,
            {"RATE_LIMIT_REQUESTS_PER_MINUTE": "10"},
            Limit(10, 10),
            Limit(10, 10),
        ),
    ],
    ids=[
        "nothing-unlimited",
        "env-defaults",
        "config-beats-env",
        "endpoint-rate-brings-its-own-burst",
        "endpoint-burst-with-global-rate",
        "endpoint-zero-is-unlimited",
        "global-zero-is-unlimited",
        "global-burst-with-env-rate",
        "burst-zero-means-default",
        "env-burst-unset",
    ],
)
def test_resolve_limit(
    global_: dict[str, Any] | None,
    endpoint: dict[str, Any] | None,
    env: dict[str, str],
    chat: Limit | None,
    embed: Limit | None,
) -> None:
    config = config_with(global_, endpoint)
    assert resolve_limit(config, CHAT, env) == chat
    assert resolve_limit(config, EMBED, env) == embed


@pytest.mark.parametrize("value", ["-1", "1.5", "ten", "\u00b2"])
def test_a_bad_environment_value_is_a_config_error(value: str) -> None:
    env = {"RATE_LIMIT_REQUESTS_PER_MINUTE": "5", "RATE_LIMIT_BURST": value}
    with pytest.raises(cfg.ConfigError, match=r"RATE_LIMIT_BURST: must be a whole number >= 0, got "):
        resolve_limit(config_with(None), CHAT, env)


def test_limit_values() -> None:
    assert Limit(0, 0).unlimited and not Limit(60, 1).unlimited
    assert Limit(600, 5).rate_per_sec == 10.0
    assert repr(Limit(60, 5)) == "Limit(requests_per_minute=60, burst=5)"
    with pytest.raises(ValueError, match="burst must be >= 1"):
        Limit(60, 0)
    with pytest.raises(ValueError, match="negative"):
        Limit(-1, 1)


# --- decisions become errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "header"), [(0.0, "1"), (0.001, "1"), (0.999, "1"), (1.0, "1"), (1.0001, "2"), (2.5, "3")]
)
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(retry_after: float, header: str) -> None:
    error = decision_error(Decision(False, retry_after, "rate"))
    assert isinstance(error, RateLimited)
    assert error.status == 429 and error.headers == (("Retry-After", header),)
    body = json.loads(error.body())
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "rate_limit_exceeded"
    assert json.loads(error.body(ApiFlavor.ANTHROPIC))["error"]["type"] == "rate_limit_error"


def test_concurrency_and_backend_decisions() -> None:
    concurrency = decision_error(CONCURRENCY_LIMITED)
    assert concurrency.status == 429 and "concurrent streams" in concurrency.message
    closed = decision_error(Decision(False, 0.5, "backend_error_closed"))
    assert isinstance(closed, ServiceUnavailable) and closed.status == 503
    assert closed.headers == (("Retry-After", "1"),) and closed.code == "rate_limiter_unavailable"
    assert json.loads(closed.body(ApiFlavor.ANTHROPIC))["error"]["type"] == "overloaded_error"
    with pytest.raises(ValueError, match="allowed"):
        decision_error(Decision(True, 0.0, "ok"))


# --- the in-process limiter ---------------------------------------------------------------------


def test_in_process_burst_then_refusals_then_refill() -> None:
    limiter = InProcessLimiter()
    limit = Limit(requests_per_minute=60, burst=3)  # one per second
    decisions = [limiter.check("key:a", CHAT, limit, now=100.0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[3][::2] == (False, "rate") and decisions[3].retry_after == pytest.approx(1.0)
    assert decision_error(decisions[3]).headers == (("Retry-After", "1"),)
    assert limiter.check("key:a", CHAT, limit, now=100.4).retry_after == pytest.approx(0.6)
    assert limiter.check("key:a", CHAT, limit, now=101.0).allowed
    assert not limiter.check("key:a", CHAT, limit, now=101.0).allowed
    assert limiter.check("key:a", CHAT, limit, now=200.0).allowed


def test_in_process_isolation_per_key_and_per_route() -> None:
    limiter = InProcessLimiter()
    limit = Limit(60, 1)
    assert limiter.check("key:a", CHAT, limit, 0.0).allowed
    assert not limiter.check("key:a", CHAT, limit, 0.0).allowed
    assert limiter.check("key:b", CHAT, limit, 0.0).allowed
    assert limiter.check("key:a", EMBED, limit, 0.0).allowed
    assert limiter.check("ip:10.0.0.1", CHAT, limit, 0.0).allowed
    assert limiter.snapshot() == {
        "backend": "memory",
        "active_buckets": 4,
        "routes": {CHAT: {"allowed": 3, "limited": 1}, EMBED: {"allowed": 1, "limited": 0}},
        "backend_errors": 0,
    }


def test_unlimited_is_counted_but_keeps_no_bucket() -> None:
    limiter = InProcessLimiter()
    for _ in range(100):
        assert limiter.check("key:a", CHAT, Limit(0, 0), 0.0) == Decision(True, 0.0, "ok")
    assert limiter.snapshot()["active_buckets"] == 0
    assert limiter.snapshot()["routes"] == {CHAT: {"allowed": 100, "limited": 0}}


def test_a_changed_limit_starts_a_new_bucket() -> None:
    limiter = InProcessLimiter()
    assert limiter.check("key:a", CHAT, Limit(60, 1), 0.0).allowed
    assert not limiter.check("key:a", CHAT, Limit(60, 1), 0.0).allowed
    assert limiter.check("key:a", CHAT, Limit(60, 2), 0.0).allowed


def test_idle_buckets_are_evicted_so_memory_stays_bounded() -> None:
    limiter = InProcessLimiter(sweep_every=100)
    limit = Limit(600, 2)  # a used bucket is full again 0.2 s later
    now = 0.0
    for i in range(20_000):
        now += 0.001  # a new client every millisecond: ~200 are ever live at once
        assert limiter.check(f"key:{i}", CHAT, limit, now).allowed
        assert len(limiter._buckets) <= 400
    assert limiter.evicted > 19_000
    assert repr(limiter).startswith("<InProcessLimiter buckets=")


def test_eviction_never_forgets_a_bucket_that_still_matters() -> None:
    limiter = InProcessLimiter(sweep_every=1)
    limit = Limit(60, 2)
    limiter.check("key:a", CHAT, limit, 0.0)
    limiter.check("key:a", CHAT, limit, 0.0)
    for step in range(1, 10):  # other traffic sweeps every check
        limiter.check(f"key:{step}", CHAT, limit, step * 0.1)
    assert limiter.check("key:a", CHAT, limit, 0.95).retry_after == pytest.approx(0.05)
    assert limiter.check("key:a", CHAT, limit, 1.0).allowed


def test_a_hard_cap_drops_the_oldest_buckets() -> None:
    limiter = InProcessLimiter(sweep_every=10, max_buckets=50)
    for i in range(1000):
        limiter.check(f"key:{i}", CHAT, Limit(1, 1), 0.0)  # none is full again for a minute
        # Between sweeps (every max(sweep_every, size) checks) it may grow to twice the cap.
        assert limiter.snapshot()["active_buckets"] <= 100
    limiter.sweep(0.0)
    assert limiter.snapshot()["active_buckets"] == 50


def test_build_limiter_picks_the_backend() -> None:
    limiter: Limiter = build_limiter(config_with(None))  # both backends fit the protocol (mypy)
    assert isinstance(limiter, InProcessLimiter)
    assert isinstance(build_limiter(config_with({"requestsPerMinute": 5})), InProcessLimiter)


@needs_redis
def test_build_limiter_redis_from_config() -> None:
    async def with_redis() -> RedisLimiter:
        limiter = build_limiter(
            config_with({"redis": "redis://127.0.0.1:1", "timeoutMs": 7, "failOpen": False})
        )
        assert isinstance(limiter, RedisLimiter)
        await limiter.close()
        return limiter

    limiter = run(with_redis())
    assert (limiter.timeout, limiter.fail_open) == (0.007, False)


# --- concurrent streams -------------------------------------------------------------------------


def test_stream_slots() -> None:
    slots = StreamSlots()
    assert slots.acquire("key:a", 2) and slots.acquire("key:a", 2)
    assert not slots.acquire("key:a", 2)
    assert slots.acquire("key:b", 2)
    assert repr(slots) == "<StreamSlots keys=2 streams=3>"
    slots.release("key:a")
    assert slots.open_streams("key:a") == 1 and slots.acquire("key:a", 2)
    for _ in range(2):
        slots.release("key:a")
    slots.release("key:b")
    assert len(slots) == 0  # no entry outlives its last stream
    slots.release("key:zzz")  # a stray release never goes negative
    assert slots.open_streams("key:zzz") == 0
    assert all(slots.acquire("key:c", None) for _ in range(100))
    assert slots.open_streams("key:c") == 100


# --- Redis, against a real redis-server ---------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if NO_REDIS:
        pytest.skip(NO_REDIS)
    with RedisServer() as server:
        yield server


def redis_client(url: str) -> Redis:
    """A plain client for poking at the server behind the limiter's back."""
    from redis.asyncio import Redis  # noqa: PLC0415 - optional dependency

    return Redis.from_url(url)


async def flushall(url: str) -> None:
    client = redis_client(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


def with_limiters(
    server: RedisServer, body: Callable[..., Awaitable[T]], count: int = 1, **options: Any
) -> T:
    """Run ``body(*limiters)`` with ``count`` independent limiters (own pools, like processes)."""

    async def main() -> T:
        await flushall(server.url)
        limiters = [RedisLimiter(server.url, **options) for _ in range(count)]
        try:
            return await body(*limiters)
        finally:
            for limiter in limiters:
                await limiter.close()

    return asyncio.run(main())


@needs_redis
def test_redis_two_processes_share_one_limit_exactly(redis_server: RedisServer) -> None:
    burst = 10
    limit = Limit(60, burst)  # refills one per second: none during the test

    async def body(one: RedisLimiter, two: RedisLimiter) -> list[Decision]:
        checks = [(one if i % 2 else two).check("key:shared", CHAT, limit) for i in range(3 * burst)]
        return list(await asyncio.gather(*checks))

    # A generous timeout: a cold burst opens a connection per check, and exactness is the point here.
    decisions = with_limiters(redis_server, body, count=2, timeout=2.0)
    assert sum(d.allowed for d in decisions) == burst
    refused = [d for d in decisions if not d.allowed]
    assert {d.reason for d in refused} == {"rate"}
    assert all(0 < d.retry_after <= 1.0 for d in refused)


@needs_redis
def test_redis_refills_at_the_configured_rate(redis_server: RedisServer) -> None:
    limit = Limit(600, 5)  # 10 per second

    async def body(limiter: RedisLimiter) -> tuple[int, float, float]:
        while (await limiter.check("key:r", CHAT, limit)).allowed:
            pass
        drained = time.monotonic()
        await asyncio.sleep(0.5)
        start = time.monotonic()
        admitted = 0
        for _ in range(20):
            admitted += (await limiter.check("key:r", CHAT, limit)).allowed
        return admitted, start - drained, time.monotonic() - drained

    admitted, low, high = with_limiters(redis_server, body)
    assert int(10 * low) - 1 <= admitted <= int(10 * high) + 1, (admitted, low, high)


@needs_redis
def test_redis_retry_after_and_key_expiry(redis_server: RedisServer) -> None:
    limit = Limit(600, 2)

    async def body(limiter: RedisLimiter) -> tuple[Decision, int, int, dict[str, Any]]:
        await limiter.check("key:e", CHAT, limit)
        await limiter.check("key:e", CHAT, limit)
        refused = await limiter.check("key:e", CHAT, limit)
        client = redis_client(redis_server.url)
        try:
            keys = await client.keys("api-router:rl:*")
            assert keys == [f"api-router:rl:{CHAT}|key:e".encode()]
            ttl = await client.pttl(keys[0])
            await asyncio.sleep(ttl / 1000 + 0.05)
            left = await client.exists(keys[0])
        finally:
            await client.aclose()
        return refused, ttl, left, limiter.snapshot()

    refused, ttl, left, snapshot = with_limiters(redis_server, body)
    assert refused.reason == "rate" and refused.retry_after == pytest.approx(0.1, abs=0.02)
    assert 0 < ttl <= 200  # full again 2 tokens x 100 ms after the last admit
    assert left == 0
    assert snapshot["backend"] == "redis" and snapshot["routes"] == {CHAT: {"allowed": 2, "limited": 1}}
    assert snapshot["backend_errors"] == 0


@needs_redis
def test_redis_reloads_the_script_after_script_flush(redis_server: RedisServer) -> None:
    limit = Limit(60, 5)

    async def body(limiter: RedisLimiter, fresh: RedisLimiter) -> list[tuple[bool, int]]:
        client = redis_client(redis_server.url)
        seen = []
        try:
            await client.script_flush()
            for _ in range(2):
                seen.append(((await limiter.check("key:s", CHAT, limit)).allowed, limiter.script_loads))
            await client.script_flush()
            for _ in range(2):
                seen.append(((await limiter.check("key:s", CHAT, limit)).allowed, limiter.script_loads))
            # Loaded once per server, not per limiter: another process finds it there.
            seen.append(((await fresh.check("key:s", CHAT, limit)).allowed, fresh.script_loads))
        finally:
            await client.aclose()
        return seen

    seen = with_limiters(redis_server, body, count=2)
    assert seen == [(True, 1), (True, 1), (True, 2), (True, 2), (True, 0)]


async def timed(limiter: RedisLimiter, key: str) -> tuple[Decision, float]:
    start = time.monotonic()
    decision = await limiter.check(key, CHAT, Limit(60, 5))
    return decision, time.monotonic() - start


MARGIN = 0.25  # scheduling slack on a loaded CI machine


@needs_redis
def test_redis_killed_fail_open_allows_and_fail_closed_refuses_quickly() -> None:
    async def main() -> None:
        with RedisServer() as server:
            open_ = RedisLimiter(server.url, fail_open=True, timeout=0.05)
            closed = RedisLimiter(server.url, fail_open=False, timeout=0.05)
            try:
                assert (await open_.check("key:k", CHAT, Limit(60, 5))).reason == "ok"
                assert (await closed.check("key:k", CHAT, Limit(60, 5))).reason == "ok"
                server.kill()
                for limiter, reason, allowed in (
                    (open_, "backend_error_open", True),
                    (closed, "backend_error_closed", False),
                ):
                    for _ in range(3):
                        decision, elapsed = await timed(limiter, "key:k")
                        assert (decision.allowed, decision.reason) == (allowed, reason)
                        assert elapsed < limiter.timeout + MARGIN
                    assert limiter.backend_errors == 3
                    assert limiter.snapshot()["backend_errors"] == 3
                error = decision_error(decision)
                assert isinstance(error, ServiceUnavailable) and error.status == 503
                assert " down " in repr(closed)
            finally:
                await open_.close()
                await closed.close()

    asyncio.run(main())


@needs_redis
def test_redis_hung_costs_one_timeout_then_recovers() -> None:
    async def main() -> None:
        with RedisServer() as server:
            limiter = RedisLimiter(server.url, fail_open=True, timeout=0.05, retry_interval=0.2)
            try:
                assert (await limiter.check("key:h", CHAT, Limit(60, 5))).reason == "ok"
                server.pause()
                decision, elapsed = await timed(limiter, "key:h")
                assert decision.reason == "backend_error_open"
                assert 0.04 <= elapsed < 0.05 + MARGIN
                decision, elapsed = await timed(limiter, "key:h")  # within retry_interval: no Redis call
                assert decision.reason == "backend_error_open" and elapsed < 0.01
                server.resume()
                await asyncio.sleep(0.25)
                decision, _ = await timed(limiter, "key:h")
                assert decision.reason == "ok", repr(limiter)
                assert limiter.backend_errors == 2
            finally:
                await limiter.close()

    asyncio.run(main())
