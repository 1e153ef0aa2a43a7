"""Rate limits: which bucket a request draws from, and the two places buckets live.

Rule 1: one token bucket (``core/token_bucket.py``) per (client key, route). The client key is
        ``key:`` + 16 hex digits of the SHA-256 of the bearer token (``Authorization: Bearer X``
        or ``x-api-key: X``), so the token is never stored, sent to Redis or logged; a request
        without one draws from its peer address's bucket (``ip:ADDR``), never a shared one.
Rule 2: the limit of a route is resolved once (``resolve_limit``): the endpoint's ``rateLimit``,
        else the global one, else ``$RATE_LIMIT_REQUESTS_PER_MINUTE`` / ``$RATE_LIMIT_BURST``.
        ``requestsPerMinute`` 0 or unset everywhere means unlimited.
Rule 3: over the limit is 429 with ``Retry-After`` in whole seconds, rounded up, at least 1.
Rule 4: with Redis (``limits_redis.py``), the bucket is read and written by one Lua script on
        Redis's own clock, so every process and host shares one limit exactly. When Redis fails
        or takes longer than ``timeoutMs``, ``failOpen`` admits the request, else it gets 503;
        either way the check returns in bounded time and ``backend_errors`` counts it.
Rule 5: ``concurrentStreams`` caps open streams per client key: in this process (``StreamSlots``),
        or with Redis across every router (``slots_redis.py``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from api_router.config import Config, ConfigError
from api_router.core.access import presented_key
from api_router.core.token_bucket import TokenBucket
from api_router.errors import GatewayError, ServiceUnavailable

if TYPE_CHECKING:
    pass

__all__ = [
    "ENV_BURST",
    "ENV_REQUESTS_PER_MINUTE",
    "Decision",
    "InProcessLimiter",
    "Limit",
    "RateLimited",
    "ServiceUnavailable",
    "StreamSlots",
    "client_key",
    "decision_error",
    "resolve_limit",
]


ENV_REQUESTS_PER_MINUTE = "RATE_LIMIT_REQUESTS_PER_MINUTE"
ENV_BURST = "RATE_LIMIT_BURST"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


@dataclass(frozen=True, slots=True)
class Limit:
    """A resolved limit: ``burst`` requests at once, refilled at ``requests_per_minute``."""

    requests_per_minute: int
    burst: int
    rate_per_sec: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.requests_per_minute < 0 or self.burst < 0:
            raise ValueError(f"negative limit: {self}")
        if self.requests_per_minute and self.burst < 1:
            raise ValueError(f"burst must be >= 1: {self}")
        object.__setattr__(self, "rate_per_sec", self.requests_per_minute / 60.0)

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute == 0


Reason = Literal["ok", "rate", "concurrency", "backend_error_open", "backend_error_closed"]


class Decision(NamedTuple):
    allowed: bool
    retry_after: float  # seconds; 0.0 when allowed
    reason: Reason


ALLOWED = Decision(True, 0.0, "ok")
# When a stream will end is unknown; one second is the smallest Retry-After there is.
CONCURRENCY_LIMITED = Decision(False, 1.0, "concurrency")


def client_key(headers: list[tuple[bytes, bytes]], peer: str | None) -> str:
    """The bucket owner: ``key:<hash of the caller's key>`` (``core.access.presented_key``),
    else ``ip:<peer address>``."""
    token = presented_key(headers)
    if token:
        return "key:" + hashlib.sha256(token).hexdigest()[:16]
    # peer is None only on transports without an address (never TCP); they share "ip:unknown".
    return f"ip:{peer or 'unknown'}"


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise ConfigError(f"${name}", [("", f"must be a whole number >= 0, got {raw!r}")])
    return int(raw)


def resolve_limit(config: Config, route_path: str, env: Mapping[str, str] | None = None) -> Limit | None:
    """The limit of ``route_path``, or None if unlimited. Call once per route (it reads ``env``).

    ``requestsPerMinute`` comes from the most specific place that sets it: the endpoint, the
    global ``rateLimit``, the environment. ``burst`` comes from that same place or a more
    specific one (a burst belongs with its rate); otherwise, or if 0, it is ``max(1, rpm)``:
    a minute's worth of requests at once.
    """
    environ = os.environ if env is None else env
    endpoint = config.endpoints.get(route_path)
    levels: list[tuple[int | None, int | None]] = []
    for rate_limit in (endpoint.rate_limit if endpoint else None, config.rate_limit):
        if rate_limit is not None:
            levels.append((rate_limit.requests_per_minute, rate_limit.burst))
    levels.append((_env_int(environ, ENV_REQUESTS_PER_MINUTE), _env_int(environ, ENV_BURST)))
    burst: int | None = None
    for rpm, level_burst in levels:
        burst = burst if burst is not None else level_burst
        if rpm is not None:
            return None if rpm == 0 else Limit(rpm, burst or max(1, rpm))
    return None


def decision_error(decision: Decision) -> GatewayError:
    """The client-facing error for a refusal: 429 with ``Retry-After``, or 503 if Redis failed."""
    if decision.allowed:
        raise ValueError("an allowed decision has no error")
    retry_after = str(max(1, math.ceil(decision.retry_after)))
    if decision.reason == "backend_error_closed":
        return ServiceUnavailable(
            "rate limiter unavailable; try again shortly",
            code="rate_limiter_unavailable",
            headers=(("Retry-After", retry_after),),
        )
    what = "concurrent streams" if decision.reason == "concurrency" else "requests"
    return RateLimited(
        f"rate limit exceeded: too many {what}; retry after {retry_after} s",
        headers=(("Retry-After", retry_after),),
    )


class _Stats:
    """Per-route allowed/limited counts for /health; one small list per route, no lock."""

    __slots__ = ("routes",)

    def __init__(self) -> None:
        self.routes: dict[str, list[int]] = {}

    def count(self, route: str, allowed: bool) -> None:
        counts = self.routes.get(route)
        if counts is None:
            counts = self.routes[route] = [0, 0]
        counts[0 if allowed else 1] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {route: {"allowed": a, "limited": n} for route, (a, n) in self.routes.items()}


class InProcessLimiter:
    """Buckets in a dict, for one process. ``check`` is synchronous and allocation-light.

    Memory stays bounded: every ``sweep_every`` checks (or once per current size, if larger,
    so the cost per check stays O(1)) buckets that are full again are dropped, since a full
    bucket and a missing one are the same. Over ``max_buckets`` after a sweep, the oldest
    buckets go first; those clients get a fresh bucket, which is the only leniency. Between
    sweeps the dict may grow to twice ``max_buckets``.
    """

    backend = "memory"

    def __init__(self, *, sweep_every: int = 4096, max_buckets: int = 1_000_000) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._stats = _Stats()
        self._sweep_every = sweep_every
        self._max_buckets = max_buckets
        self._until_sweep = sweep_every
        self.backend_errors = 0  # always 0: nothing here can fail; kept for one interface
        self.evicted = 0

    def check(self, key: str, route: str, limit: Limit, now: float) -> Decision:
        """Admit or refuse one request at ``now`` (a monotonic clock, in seconds)."""
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self.sweep(now)
        if limit.unlimited:
            self._stats.count(route, True)
            return ALLOWED
        bucket_key = (key, route)
        bucket = self._buckets.get(bucket_key)
        if bucket is None or bucket.burst != limit.burst or bucket.rate_per_sec != limit.rate_per_sec:
            bucket = self._buckets[bucket_key] = TokenBucket(limit.rate_per_sec, limit.burst)
        wait = bucket.take(now)
        self._stats.count(route, not wait)
        return Decision(False, wait, "rate") if wait else ALLOWED

    def sweep(self, now: float) -> None:
        """Drop buckets that are full again at ``now``, then the oldest over ``max_buckets``."""
        idle = [k for k, bucket in self._buckets.items() if bucket.full_at <= now]
        for k in idle:
            del self._buckets[k]
        excess = len(self._buckets) - self._max_buckets
        if excess > 0:
            for k in list(self._buckets)[:excess]:
                del self._buckets[k]
        self.evicted += len(idle) + max(0, excess)
        self._until_sweep = max(self._sweep_every, len(self._buckets))

    def snapshot(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "active_buckets": len(self._buckets),
            "routes": self._stats.snapshot(),
            "backend_errors": 0,
        }

    async def close(self) -> None:
        self._buckets.clear()

    def __repr__(self) -> str:
        return f"<InProcessLimiter buckets={len(self._buckets)} evicted={self.evicted}>"


# GCRA, as core/token_bucket.py, in microseconds on Redis's clock (TIME), so that hosts with
# skewed clocks agree. Times near 1.7e15 us are exact in a double; %.17g round-trips one.
# The key expires when the bucket is full again. Returns {allowed, retry_us, ttl_ms}.
class StreamSlots:
    """Open streams per client key in this process; a key's entry goes when its last stream ends."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def acquire(self, key: str, max_streams: int | None) -> bool:
        """Take a slot unless ``key`` already has ``max_streams`` open (None: no cap, still counted)."""
        current = self._open.get(key, 0)
        if max_streams is not None and current >= max_streams:
            return False
        self._open[key] = current + 1
        return True

    def release(self, key: str) -> None:
        """Give a slot back; call exactly once per successful ``acquire``, when the stream ends."""
        current = self._open.get(key, 0)
        if current <= 1:
            self._open.pop(key, None)
        else:
            self._open[key] = current - 1

    def open_streams(self, key: str) -> int:
        return self._open.get(key, 0)

    def __len__(self) -> int:
        return len(self._open)

    def __repr__(self) -> str:
        return f"<StreamSlots keys={len(self._open)} streams={sum(self._open.values())}>"
