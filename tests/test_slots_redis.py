"""slots_redis.py against a real Redis: the cap is shared, leases are renewed while a stream is
open, and a router that dies without releasing loses its slots when their leases end."""

from __future__ import annotations

import asyncio

import pytest

from api_router.limits_redis import RedisLimiter
from api_router.slots_redis import RedisStreamSlots
from tests.integration.test_rate_limits import needs_redis
from tests.redis_server import RedisServer

LEASE_MS = 300


@pytest.fixture
def redis_url():
    with RedisServer() as server:
        yield server.url


async def members(limiter: RedisLimiter, key: str) -> int:
    return await limiter._redis.zcard("api-router:streams:" + key)  # type: ignore[no-any-return]


@needs_redis
def test_the_cap_is_shared_and_a_release_frees_the_slot(redis_url: str) -> None:
    async def main() -> None:
        one, two = RedisLimiter(redis_url, timeout=2), RedisLimiter(redis_url, timeout=2)
        first, second = RedisStreamSlots(one, lease_ms=LEASE_MS), RedisStreamSlots(two, lease_ms=LEASE_MS)
        assert await first.acquire("key:a", 2) is None
        assert await second.acquire("key:a", 2) is None
        refused = await second.acquire("key:a", 2)
        assert refused is not None and refused.reason == "concurrency"
        assert await second.acquire("key:b", 2) is None  # another key has its own slots
        first.release("key:a")
        for _ in range(100):  # the release is written in the background
            if await members(one, "key:a") == 1:
                break
            await asyncio.sleep(0.01)
        assert await second.acquire("key:a", 2) is None
        first.close()
        second.close()
        await one.close()
        await two.close()

    asyncio.run(main())


@needs_redis
def test_leases_are_renewed_while_open_and_end_when_the_router_is_gone(redis_url: str) -> None:
    async def main() -> None:
        alive, dead = RedisLimiter(redis_url, timeout=2), RedisLimiter(redis_url, timeout=2)
        live_slots = RedisStreamSlots(alive, lease_ms=LEASE_MS)
        dead_slots = RedisStreamSlots(dead, lease_ms=LEASE_MS)
        assert await live_slots.acquire("key:live", 1) is None
        assert await dead_slots.acquire("key:dead", 1) is None
        dead_slots.close()  # a router that died: no release, no renewal
        await asyncio.sleep(3 * LEASE_MS / 1000)  # the behaviour under test is the lease's time
        assert await live_slots.acquire("key:live", 1) is not None  # renewed: still held
        assert await live_slots.acquire("key:dead", 1) is None  # expired: free again
        live_slots.close()
        await alive.close()
        await dead.close()

    asyncio.run(main())


def test_redis_down_fails_open_or_closed() -> None:
    async def main() -> None:
        for fail_open in (True, False):
            limiter = RedisLimiter("redis://127.0.0.1:1/0", fail_open=fail_open, timeout=0.2)
            seen: list[bool] = []
            limiter.on_failure = seen.append
            slots = RedisStreamSlots(limiter)
            refused = await slots.acquire("key:a", 1)
            assert (refused is None) is fail_open and seen == [fail_open]
            if fail_open:
                assert slots.open_streams("key:a") == 1
                slots.release("key:a")  # nothing to remove in Redis
                assert slots.open_streams("key:a") == 0
            await limiter.close()

    asyncio.run(main())
