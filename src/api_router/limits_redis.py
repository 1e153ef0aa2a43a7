"""The Redis rate limiter (rule 4 of ``limits.py``), and the choice between it and the in-process one."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from api_router.config import Config, RateLimitConfig
from api_router.limits import ALLOWED, Decision, InProcessLimiter, Limit, _Stats

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Limiter", "RedisLimiter", "build_limiter"]

log = logging.getLogger("api_router.limits")
T = TypeVar("T")


_SCRIPT = """
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
local new_tat = tat + cost * interval
local wait = new_tat - now - burst * interval
if wait > 1 then
  return {0, math.ceil(wait), math.ceil((tat - now) / 1000)}
end
local ttl = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', ttl)
return {1, 0, ttl}
"""


class Script:
    """A Lua script and the SHA-1 Redis names it by (EVALSHA, loaded on first use)."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()


_BUCKET = Script(_SCRIPT)


def _driver_info() -> dict[str, Any]:
    """redis-py 8 reads its own version from package metadata for every new connection
    (measured: 2.5 ms each, so a burst of 30 cold checks overran a 50 ms timeout). Give it once."""
    try:
        import redis  # noqa: PLC0415 - optional dependency, needed only when configured
        from redis.driver_info import DriverInfo  # noqa: PLC0415
    except ImportError:  # an older redis-py without DriverInfo: leave its default
        return {}
    return {"driver_info": DriverInfo(lib_version=redis.__version__)}


class RedisLimiter:
    """Buckets in Redis, shared by every process and host that uses the same server.

    After a failure, checks skip Redis for ``retry_interval`` seconds and take the
    ``fail_open`` answer at once: a hung Redis then costs one timeout, not one per request.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        fail_open: bool = True,
        timeout: float = 0.05,
        retry_interval: float = 0.5,
        key_prefix: str = "api-router:rl:",
        max_connections: int = 64,
    ) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis  # noqa: PLC0415 - optional dependency
        from redis.asyncio.retry import Retry  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.exceptions import NoScriptError, RedisError  # noqa: PLC0415

        self._no_script = NoScriptError
        # Everything that means "Redis gave no usable answer"; anything else is a bug and raises.
        self._failures: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)
        self.fail_open = fail_open
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.key_prefix = key_prefix
        self.backend_errors = 0
        self.script_loads = 0
        self._down_until = 0.0
        self._stats = _Stats()
        self._expiries: dict[str, float] = {}  # buckets this process touched -> when full again
        self._until_sweep = 4096
        # One immediate retry on a stale pooled connection (Redis restarted); the outer
        # timeout bounds everything, including the wait for a free connection.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            **_driver_info(),
        )
        self._redis: Redis = Redis(connection_pool=pool)
        self._pool = pool
        # Told of every failure (True: failOpen admitted); App points it at the metrics.
        self.on_failure: Callable[[bool], None] | None = None

    @classmethod
    def from_config(cls, config: RateLimitConfig) -> RedisLimiter:
        if config.redis is None:
            raise ValueError("rateLimit.redis is not set")
        return cls(config.redis, fail_open=config.fail_open, timeout=config.timeout_ms / 1000)

    async def check(self, key: str, route: str, limit: Limit, cost: float = 1.0) -> Decision:
        """Admit or refuse one request; never raises for Redis trouble, never waits past ``timeout``."""
        if limit.unlimited:
            self._stats.count(route, True)
            return ALLOWED
        now = time.monotonic()
        bucket_key = f"{self.key_prefix}{route}|{key}"
        args = (1_000_000 / limit.rate_per_sec, limit.burst, cost)
        answer = await self.attempt(lambda redis: self.run_script(redis, _BUCKET, (bucket_key,), args))
        if answer is None:
            return self.failed_decision()
        allowed, retry_us, ttl_ms = answer
        self._note_bucket(bucket_key, now + ttl_ms / 1000)
        self._stats.count(route, bool(allowed))
        return ALLOWED if allowed else Decision(False, retry_us / 1_000_000, "rate")

    async def attempt(self, call: Callable[[Redis], Awaitable[T]]) -> T | None:
        """``call(redis)`` within ``timeout``; None when Redis gave no answer (then, for
        ``retry_interval``, every attempt is None at once: a hung Redis costs one timeout)."""
        if time.monotonic() < self._down_until:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                return await call(self._redis)
        except self._failures as exc:
            self._down_until = time.monotonic() + self.retry_interval
            log.warning("rate limiter: Redis failed (%s); failing %s", type(exc).__name__, self._mode)
            return None

    async def run_script(
        self, redis: Redis, script: Script, keys: tuple[str, ...], args: tuple[float | int | str, ...]
    ) -> list[Any]:
        try:
            return await redis.evalsha(script.sha, len(keys), *keys, *args)  # type: ignore[no-any-return]
        except self._no_script:  # first use, or SCRIPT FLUSH / a restart / a failover since
            await redis.script_load(script.text)
            self.script_loads += 1
            return await redis.evalsha(script.sha, len(keys), *keys, *args)  # type: ignore[no-any-return]

    @property
    def _mode(self) -> str:
        return "open" if self.fail_open else "closed"

    def failed_decision(self) -> Decision:
        """What a check answers when Redis did not: ``failOpen`` decides, and it is counted."""
        self.backend_errors += 1
        if self.on_failure is not None:
            self.on_failure(self.fail_open)
        if self.fail_open:
            return Decision(True, 0.0, "backend_error_open")
        # Retry when Redis is next tried (decision_error rounds up to whole seconds, at least 1).
        return Decision(False, max(0.0, self._down_until - time.monotonic()), "backend_error_closed")

    def _note_bucket(self, bucket_key: str, full_at: float) -> None:
        """Track this process's live buckets for /health, bounded by the same lazy sweep."""
        self._expiries[bucket_key] = full_at
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            now = time.monotonic()
            self._expiries = {k: t for k, t in self._expiries.items() if t > now}
            self._until_sweep = max(4096, len(self._expiries))

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "backend": self.backend,
            "active_buckets": sum(1 for t in self._expiries.values() if t > now),
            "routes": self._stats.snapshot(),
            "backend_errors": self.backend_errors,
        }

    async def close(self) -> None:
        await self._redis.aclose()
        await self._pool.aclose()

    def __repr__(self) -> str:
        down = " down" if time.monotonic() < self._down_until else ""
        return (
            f"<RedisLimiter fail_{self._mode} timeout={self.timeout}s{down}"
            f" backend_errors={self.backend_errors} script_loads={self.script_loads}>"
        )


class Limiter(Protocol):
    """What the server needs from either backend."""

    backend_errors: int

    def snapshot(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


def build_limiter(config: Config) -> InProcessLimiter | RedisLimiter:
    """Redis if the global ``rateLimit.redis`` is set, else in-process."""
    rate_limit = config.rate_limit
    if rate_limit is not None and rate_limit.redis is not None:
        return RedisLimiter.from_config(rate_limit)
    return InProcessLimiter()
