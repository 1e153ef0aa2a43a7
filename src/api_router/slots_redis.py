"""``concurrentStreams`` across replicas (``limits.py``, rule 5, with Redis): open streams per client
key counted in Redis, so the cap holds for the whole fleet, not per process.

Rule 1. A client key's open streams are a sorted set, ``api-router:streams:<key>``: one member per
        open stream (``<process>:<n>``), scored by when its lease ends (Redis's clock, ms). One
        script drops expired leases, refuses at ``max``, else adds the stream: atomic, so two
        routers cannot both take the last slot.
Rule 2. A stream's member is removed when it ends. A router that dies cannot remove its members;
        their leases (``LEASE_MS``) end them instead. So a live router renews the leases of its
        open streams every ``LEASE_MS / 3``: a stream longer than a lease keeps its slot.
Rule 3. Redis failing: ``failOpen`` decides (as for request limits). A stream admitted open
        without Redis is counted in process only; its release touches nothing in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
from typing import TYPE_CHECKING, Any

from api_router.limits import Decision
from api_router.limits_redis import RedisLimiter, Script
from api_router.net.tasks import spawn

if TYPE_CHECKING:
    from redis.asyncio import Redis

LEASE_MS = 30_000

# KEYS[1] the key's set; ARGV: max streams, lease ms, member. Returns 1 (taken) or 0 (full).
_ACQUIRE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
""")
# KEYS: sets; ARGV[1] lease ms, then one member per key. Renews leases that still exist (XX).
_RENEW = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('PEXPIRE', key, lease)
end
return #KEYS
""")


class RedisStreamSlots:
    """``StreamSlots`` for the fleet: ``acquire`` awaits Redis; ``release`` does not wait for it."""

    def __init__(
        self, limiter: RedisLimiter, prefix: str = "api-router:streams:", lease_ms: int = LEASE_MS
    ) -> None:
        self.limiter = limiter
        self.lease_ms = lease_ms
        self.prefix = prefix
        self._me = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._numbers = itertools.count()
        self._open: dict[str, list[str | None]] = {}  # key -> its members (None: admitted open)
        self._renewer: asyncio.TimerHandle | None = None

    async def acquire(self, key: str, max_streams: int) -> Decision | None:
        """None: taken; else the refusal (``concurrency``, or what failOpen decided)."""
        member = f"{self._me}:{next(self._numbers)}"

        async def take(redis: Redis) -> list[Any]:
            args = (max_streams, self.lease_ms, member)
            return [await self.limiter.run_script(redis, _ACQUIRE, (self.prefix + key,), args)]

        answer = await self.limiter.attempt(take)
        if answer is None:
            decision = self.limiter.failed_decision()
            if not decision.allowed:
                return decision
            self._open.setdefault(key, []).append(None)
            return None
        if not answer[0]:
            return Decision(False, 1.0, "concurrency")
        self._open.setdefault(key, []).append(member)
        self._renew_soon()
        return None

    def release(self, key: str) -> None:
        members = self._open.get(key)
        if not members:
            return
        member = members.pop()
        if not members:
            del self._open[key]
        if member is not None:
            spawn(self._remove(key, member))

    async def _remove(self, key: str, member: str) -> None:
        async def remove(redis: Redis) -> int:
            return await redis.zrem(self.prefix + key, member)

        await self.limiter.attempt(remove)  # lost: the lease ends it (rule 2)

    def _renew_soon(self) -> None:
        if self._renewer is None:
            loop = asyncio.get_running_loop()
            self._renewer = loop.call_later(self.lease_ms / 3000, lambda: spawn(self._renew()))

    async def _renew(self) -> None:
        self._renewer = None
        pairs = [(self.prefix + key, m) for key, members in self._open.items() for m in members if m]
        if not pairs:
            return
        self._renew_soon()
        keys = tuple(name for name, _ in pairs)
        args: tuple[int | str, ...] = (self.lease_ms, *(member for _, member in pairs))
        await self.limiter.attempt(lambda redis: self.limiter.run_script(redis, _RENEW, keys, args))

    def open_streams(self, key: str) -> int:
        return len(self._open.get(key, ()))

    def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    def __len__(self) -> int:
        return len(self._open)
