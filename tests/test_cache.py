"""Response caches: the memory LRU with a driven clock, then Redis for real (skipped without redis-server)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from api_router.cache import CachedResponse, MemoryCache, RedisCache, decode, encode
from tests.redis_server import REDIS_SERVER, RedisServer, free_port

HEADERS = [(b"content-type", b"application/json"), (b"x-request-id", b"")]


def response(body: bytes = b'{"ok":true}', status: int = 200) -> CachedResponse:
    return CachedResponse(status, list(HEADERS), body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- format ----------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    for value in (response(), CachedResponse(404, [], b""), response(b"\x00\xff" * 1000, 503)):
        assert decode(encode(value)) == value


@pytest.mark.parametrize("data", [b"", b"AR1", b"XX1\x00\xc8\x00\x00", encode(response())[:12]])
def test_decode_rejects_what_it_did_not_write(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


# --- memory ----------------------------------------------------------------------------------


def size(key: str, value: CachedResponse) -> int:
    return len(key) + len(value.body) + sum(len(n) + len(v) for n, v in value.headers)


def test_memory_hit_miss_and_stats() -> None:
    cache = MemoryCache(max_bytes=10_000, ttl_secs=60, clock=Clock())
    assert cache.get_now("a") is None
    cache.put_now("a", response())
    assert cache.get_now("a") == response()
    assert cache.get_now("a") == response()
    assert cache.stats() == {
        "hits": 2,
        "misses": 1,
        "hit_rate": 2 / 3,
        "evictions": 0,
        "entries": 1,
        "bytes": size("a", response()),
        "backend": "memory",
    }
    assert (
        repr(cache)
        == f"<MemoryCache entries=1 bytes={size('a', response())}/10000 hits=2 misses=1 evictions=0>"
    )


def test_memory_async_api() -> None:
    cache = MemoryCache(max_bytes=10_000, ttl_secs=60)

    async def scenario() -> CachedResponse | None:
        await cache.put("k", response())
        return await cache.get("k")

    assert asyncio.run(scenario()) == response()


def test_memory_evicts_least_recently_used_by_bytes() -> None:
    value = CachedResponse(200, [], b"x" * 98)  # 100 bytes with a 2-char key
    cache = MemoryCache(max_bytes=300, ttl_secs=60, clock=Clock())
    for key in ("k1", "k2", "k3"):
        cache.put_now(key, value)
    assert cache.bytes == 300
    assert cache.get_now("k1") is not None  # k1 is now the most recent; k2 the least
    cache.put_now("k4", value)
    assert cache.get_now("k2") is None
    assert [cache.get_now(k) is not None for k in ("k1", "k3", "k4")] == [True, True, True]
    assert cache.stats()["evictions"] == 1
    big = CachedResponse(200, [], b"x" * 198)  # 200 bytes: two entries must go
    cache.put_now("k5", big)
    assert cache.stats()["evictions"] == 3
    assert cache.stats()["entries"] == 2
    assert cache.bytes == 300


def test_memory_replacing_an_entry_recounts_bytes() -> None:
    cache = MemoryCache(max_bytes=1000, ttl_secs=60, clock=Clock())
    cache.put_now("k", response(b"a" * 500))
    cache.put_now("k", response(b"b"))
    assert cache.bytes == size("k", response(b"b"))
    assert cache.stats()["entries"] == 1
    assert cache.stats()["evictions"] == 0


def test_memory_skips_an_entry_larger_than_the_whole_cache() -> None:
    cache = MemoryCache(max_bytes=100, ttl_secs=60, clock=Clock())
    cache.put_now("small", response(b"1"))
    cache.put_now("huge", response(b"x" * 200))
    assert cache.get_now("huge") is None
    assert cache.get_now("small") is not None
    assert cache.stats()["evictions"] == 0


def test_memory_ttl_expiry_with_injected_clock() -> None:
    clock = Clock()
    cache = MemoryCache(max_bytes=10_000, ttl_secs=30, clock=clock)
    cache.put_now("k", response())
    clock.now += 29.9
    assert cache.get_now("k") is not None
    clock.now += 0.1
    assert cache.get_now("k") is None
    assert cache.stats() | {"hit_rate": None} == {
        "hits": 1,
        "misses": 1,
        "hit_rate": None,
        "evictions": 0,  # expiry is not eviction
        "entries": 0,
        "bytes": 0,
        "backend": "memory",
    }


def test_memory_expired_entries_are_not_counted_as_evictions() -> None:
    clock = Clock()
    value = CachedResponse(200, [], b"x" * 98)
    cache = MemoryCache(max_bytes=200, ttl_secs=10, clock=clock)
    cache.put_now("k1", value)
    cache.put_now("k2", value)
    clock.now += 11
    cache.put_now("k3", value)
    assert cache.stats()["evictions"] == 0
    assert cache.stats()["entries"] == 2


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0, "ttl_secs": 1}, {"max_bytes": 1, "ttl_secs": 0}])
def test_memory_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MemoryCache(**kwargs)  # type: ignore[arg-type]


# --- redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH")
    with RedisServer() as server:
        yield server.url


def test_redis_instances_share_entries(redis_url: str) -> None:
    async def scenario() -> None:
        writer = RedisCache(redis_url, ttl_secs=60, timeout=1.0)
        reader = RedisCache(redis_url, ttl_secs=60, timeout=1.0)
        try:
            assert await reader.get("shared") is None
            await writer.put("shared", response(b"\x00binary\xff"))
            assert await reader.get("shared") == response(b"\x00binary\xff")
            pttl = await reader._client.pttl("api-router:cache:shared")
            assert 0 < pttl <= 60_000
            await reader.refresh_stats()
            assert reader.stats() == {
                "hits": 1,
                "misses": 1,
                "hit_rate": 0.5,
                "evictions": 0,
                "entries": 1,
                "bytes": len(encode(response(b"\x00binary\xff"))),
                "errors": 0,
                "backend": "redis",
            }
        finally:
            await writer.aclose()
            await reader.aclose()

    asyncio.run(scenario())


def test_redis_entries_expire(redis_url: str) -> None:
    async def scenario() -> None:
        cache = RedisCache(redis_url, ttl_secs=0.05, timeout=1.0)
        try:
            await cache.put("short", response())
            await asyncio.sleep(0.2)  # waiting on Redis's own clock: nothing to await instead
            assert await cache.get("short") is None
            assert cache.stats()["errors"] == 0  # the put did reach Redis
        finally:
            await cache.aclose()

    asyncio.run(scenario())


def test_redis_foreign_value_is_a_miss(redis_url: str) -> None:
    async def scenario() -> None:
        cache = RedisCache(redis_url, ttl_secs=60, timeout=1.0)
        try:
            await cache._client.set("api-router:cache:foreign", b"not ours")
            assert await cache.get("foreign") is None
            assert cache.stats()["errors"] == 1
            await cache.put("after", response())
            assert await cache.get("after") == response()  # Redis is not put in backoff
        finally:
            await cache.aclose()

    asyncio.run(scenario())


def test_redis_skips_oversized_puts(redis_url: str) -> None:
    async def scenario() -> None:
        cache = RedisCache(redis_url, ttl_secs=60, timeout=1.0, max_entry_bytes=100)
        try:
            await cache.put("big", response(b"x" * 200))
            assert await cache.get("big") is None
        finally:
            await cache.aclose()

    asyncio.run(scenario())


def test_redis_down_is_a_miss_and_backs_off() -> None:
    clock = Clock()

    async def scenario() -> None:
        cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", ttl_secs=60, error_backoff=5, clock=clock)
        try:
            started = time.monotonic()
            assert await cache.get("k") is None
            await cache.put("k", response())
            assert time.monotonic() - started < 1
            assert cache.stats()["errors"] == 1  # the put was skipped during the backoff
            assert cache.stats()["misses"] == 1
            assert "backing-off" in repr(cache)
            clock.now += 5
            await cache.put("k", response())
            assert cache.stats()["errors"] == 2
        finally:
            await cache.aclose()

    asyncio.run(scenario())


def test_redis_that_never_answers_is_bounded_by_the_timeout() -> None:
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"redis://:secret@127.0.0.1:{silent.getsockname()[1]}/0"

        async def scenario() -> float:
            cache = RedisCache(url, ttl_secs=60, timeout=0.05)
            try:
                started = time.monotonic()
                assert await cache.get("k") is None
                elapsed = time.monotonic() - started
                assert cache.stats()["errors"] == 1
                assert "secret" not in repr(cache)
                return elapsed
            finally:
                await cache.aclose()

        assert asyncio.run(scenario()) < 0.5
