"""The response cache for non-streamed answers: in memory (LRU by bytes) or shared in Redis.

What may be cached and under which key is decided by ``core/cache_key.py``; this module only
stores. A cache is an optimisation, so the Redis one never raises to the caller: any error or
slow answer is a miss (or a skipped put), counted in ``stats()["errors"]``.

Stored value format (``encode``/``decode``), big-endian::

    b"AR1"                      magic and version
    status          uint16
    header count    uint16
    per header:     name length uint16, value length uint32, name, value
    body            the rest
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "KEY_PREFIX",
    "CachedResponse",
    "MemoryCache",
    "RedisCache",
    "ResponseCache",
    "decode",
    "encode",
]

KEY_PREFIX = "api-router:cache:"
_MAGIC = b"AR1"
_HEAD = struct.Struct(">HH")
_HEADER = struct.Struct(">HI")


class CachedResponse(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class ResponseCache(Protocol):
    # True: ``get_now`` answers without awaiting (in process), so a lookup needs no task; False:
    # only ``await get`` does (over the network). net/ asks this, not the cache's type.
    answers_now: bool

    def get_now(self, key: str) -> CachedResponse | None: ...

    async def get(self, key: str) -> CachedResponse | None: ...

    async def put(self, key: str, response: CachedResponse) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def encode(response: CachedResponse) -> bytes:
    parts = [_MAGIC, _HEAD.pack(response.status, len(response.headers))]
    for name, value in response.headers:
        parts += (_HEADER.pack(len(name), len(value)), name, value)
    parts.append(response.body)
    return b"".join(parts)


def decode(data: bytes) -> CachedResponse:
    """The inverse of ``encode``; ValueError if ``data`` is not a value it wrote."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _HEAD.size:
        raise ValueError("not a cached response")
    view = memoryview(data)
    offset = len(_MAGIC)
    status, count = _HEAD.unpack_from(view, offset)
    offset += _HEAD.size
    headers: list[tuple[bytes, bytes]] = []
    for _ in range(count):
        if offset + _HEADER.size > len(data):
            raise ValueError("truncated cached response")
        name_len, value_len = _HEADER.unpack_from(view, offset)
        offset += _HEADER.size
        end = offset + name_len + value_len
        if end > len(data):
            raise ValueError("truncated cached response")
        headers.append((bytes(view[offset : offset + name_len]), bytes(view[offset + name_len : end])))
        offset = end
    return CachedResponse(status, headers, bytes(view[offset:]))


def _size(key: str, response: CachedResponse) -> int:
    """The bytes an entry is charged: key, header names and values, body."""
    return len(key) + len(response.body) + sum(len(n) + len(v) for n, v in response.headers)


def _hit_rate(hits: int, misses: int) -> float:
    lookups = hits + misses
    return hits / lookups if lookups else 0.0


class MemoryCache:
    """An LRU bounded in bytes, entries expiring ``ttl_secs`` after they were stored.

    Per process, so each worker has its own. ``clock`` is injectable so tests drive expiry.
    Expired entries are dropped when looked up or when they reach the LRU end.
    """

    def __init__(
        self, max_bytes: int, ttl_secs: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if ttl_secs <= 0:
            raise ValueError("ttl_secs must be > 0")
        self.max_bytes = max_bytes
        self.ttl_secs = ttl_secs
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, CachedResponse, int]] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0  # entries pushed out to make room (not expiries)

    answers_now = True

    def get_now(self, key: str) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires_at, response, _ = entry
        if self._clock() >= expires_at:
            self._remove(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return response

    def put_now(self, key: str, response: CachedResponse) -> None:
        if key in self._entries:
            self._remove(key)
        size = _size(key, response)
        if size > self.max_bytes:
            return  # would evict everything and still not fit
        now = self._clock()
        while self.bytes + size > self.max_bytes:
            oldest, (expires_at, _, _) = next(iter(self._entries.items()))
            self._remove(oldest)
            if now < expires_at:
                self.evictions += 1
        self._entries[key] = (now + self.ttl_secs, response, size)
        self.bytes += size

    async def get(self, key: str) -> CachedResponse | None:
        return self.get_now(key)

    async def put(self, key: str, response: CachedResponse) -> None:
        self.put_now(key, response)

    def _remove(self, key: str) -> None:
        _, _, size = self._entries.pop(key)
        self.bytes -= size

    def stats(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": _hit_rate(self.hits, self.misses),
            "evictions": self.evictions,
            "entries": len(self._entries),
            "bytes": self.bytes,
            "backend": "memory",
        }

    def __repr__(self) -> str:
        return (
            f"<MemoryCache entries={len(self._entries)} bytes={self.bytes}/{self.max_bytes}"
            f" hits={self.hits} misses={self.misses} evictions={self.evictions}>"
        )


def _redacted(url: str) -> str:
    """The URL without its password, fit for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisCache:
    """Entries shared by every worker and router through Redis, expiring by ``PX``.

    Every call is bounded by ``timeout`` (default 50 ms: a cache slower than that costs more than
    it saves). After an error Redis is left alone for ``error_backoff`` seconds, so a dead Redis
    costs one failed attempt per backoff period rather than one per request. Hits, misses and
    errors are this process's; ``entries``/``bytes`` are Redis's, as of the last
    ``refresh_stats()`` (None before).
    """

    def __init__(
        self,
        url: str,
        ttl_secs: float,
        *,
        timeout: float = 0.05,
        error_backoff: float = 1.0,
        max_entry_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.asyncio import Redis  # noqa: PLC0415 - optional dependency, needed only when configured
        from redis.asyncio.retry import Retry  # noqa: PLC0415
        from redis.backoff import NoBackoff  # noqa: PLC0415

        if ttl_secs <= 0:
            raise ValueError("ttl_secs must be > 0")
        self.url = url
        self.ttl_ms = max(1, round(ttl_secs * 1000))
        self.timeout = timeout
        self.error_backoff = error_backoff
        self.max_entry_bytes = max_entry_bytes
        self._clock = clock
        # No client-side retries: the caller's time budget is smaller than any backoff.
        self._client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._down_until = 0.0
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.entries: int | None = None
        self.bytes: int | None = None

    def _usable(self) -> bool:
        return self._clock() >= self._down_until

    def _failed(self) -> None:
        self.errors += 1
        self._down_until = self._clock() + self.error_backoff

    answers_now = False

    def get_now(self, key: str) -> CachedResponse | None:
        raise TypeError("a Redis cache answers only by awaiting get()")  # answers_now is False

    async def get(self, key: str) -> CachedResponse | None:
        data = None
        if self._usable():
            try:
                async with asyncio.timeout(self.timeout):
                    data = await self._client.get(KEY_PREFIX + key)
            except Exception:  # any Redis or network problem is a miss
                self._failed()
        if isinstance(data, bytes):  # None if missing; never str: responses are not decoded
            try:
                response = decode(data)
            except ValueError:
                self.errors += 1  # someone else's value under our prefix; Redis itself is fine
            else:
                self.hits += 1
                return response
        self.misses += 1
        return None

    async def put(self, key: str, response: CachedResponse) -> None:
        if not self._usable():
            return
        value = encode(response)
        if self.max_entry_bytes is not None and len(value) > self.max_entry_bytes:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.set(KEY_PREFIX + key, value, px=self.ttl_ms)
        except Exception:  # a failed put only costs a future miss
            self._failed()

    async def refresh_stats(self, *, budget_secs: float = 1.0, limit: int = 10_000) -> None:
        """Count this cache's keys and value bytes in Redis (SCAN; at most ``limit`` keys)."""
        try:
            async with asyncio.timeout(budget_secs):
                keys = []
                async for found in self._client.scan_iter(match=KEY_PREFIX + "*", count=1000):
                    keys.append(found)
                    if len(keys) >= limit:
                        break
                pipe = self._client.pipeline(transaction=False)
                for found in keys:
                    pipe.strlen(found)
                sizes = await pipe.execute() if keys else []
        except Exception:  # stats are best effort
            self.errors += 1
            return
        self.entries = len(keys)
        self.bytes = sum(int(size) for size in sizes)

    async def aclose(self) -> None:
        await self._client.aclose()

    def stats(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": _hit_rate(self.hits, self.misses),
            "evictions": 0,  # Redis expires and evicts on its own; not visible from here
            "entries": self.entries,
            "bytes": self.bytes,
            "errors": self.errors,
            "backend": "redis",
        }

    def __repr__(self) -> str:
        state = "up" if self._usable() else "backing-off"
        counts = f"hits={self.hits} misses={self.misses} errors={self.errors}"
        return f"<RedisCache {_redacted(self.url)} {state} {counts}>"
