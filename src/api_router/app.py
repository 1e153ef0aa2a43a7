"""What every connection shares: config, router, upstream pool, metrics; reload and drain."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from api_router import __version__, logs
from api_router.accounting import ACCOUNTED, Accounting
from api_router.admin import usage_answer
from api_router.backends import BackendSet, circuit_value
from api_router.cache import CachedResponse, MemoryCache, RedisCache, ResponseCache
from api_router.config import Config, ConfigError, RateLimitConfig
from api_router.config_backends import CacheConfig
from api_router.config_security import access_control
from api_router.core.access import ClientPolicy
from api_router.core.cache_key import cacheable
from api_router.core.http import HeaderList, header_value
from api_router.errors import ApiFlavor, GatewayError, UpstreamTimeout
from api_router.limits import (
    CONCURRENCY_LIMITED,
    InProcessLimiter,
    Limit,
    StreamSlots,
    client_key,
    decision_error,
    resolve_limit,
)
from api_router.limits_redis import RedisLimiter, build_limiter
from api_router.metrics import Metrics
from api_router.net.fetch import fetch, make_ssl_context
from api_router.net.tasks import spawn
from api_router.net.upstream import UpstreamPool
from api_router.quota import MemoryQuota, Ticket
from api_router.quota_redis import RedisQuota
from api_router.routing import LOCAL_ROUTES, Route, Router
from api_router.slots_redis import RedisStreamSlots
from api_router.tracing import Tracing, end_span

if TYPE_CHECKING:
    from api_router.net.ports import Connection, Exchange


CACHE_STATS_EVERY_SECS = 1.0


class App:
    """What every connection shares: config, router, upstream pool, metrics."""

    def __init__(
        self,
        config: Config,
        loop: asyncio.AbstractEventLoop,
        *,
        reload: Callable[[], Config] | None = None,
        pinned: Mapping[str, Any] | None = None,
    ) -> None:
        self.loop = loop
        self.metrics = Metrics(loop=loop)
        self.pool = UpstreamPool(ssl_context=None, connect_timeout=config.timeouts.connect_secs)
        self.connections: set[Connection] = set()
        self.started_at = time.time()
        self.draining = False
        self._reload = reload
        self._pinned = dict(pinned or {})
        self._all_closed: asyncio.Event | None = None
        self.cache: ResponseCache | None = None
        self._cache_config: CacheConfig | None = None
        self._cache_stats_at = -CACHE_STATS_EVERY_SECS  # loop time of the last Redis count
        self.limiter: InProcessLimiter | RedisLimiter | None = None
        self._limiter_config: RateLimitConfig | None = None
        self.stream_slots: StreamSlots | RedisStreamSlots = StreamSlots()
        self.quota: MemoryQuota | RedisQuota | None = None
        self.tracing: Tracing | None = None
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Make ``config`` the one new requests use; exchanges in flight keep their Router."""
        self.config = config
        self.router = Router(config)
        old = getattr(self, "backends", None)
        if old is not None:
            old.stop()
        self.backends = BackendSet(config)
        self.backends.start_health_checks(self.pool)
        if self.cache is None or self._cache_config != config.cache:
            old_cache, self.cache = self.cache, make_cache(config.cache)
            self._cache_config = config.cache
            if isinstance(old_cache, RedisCache):  # its connections would stay open for good
                spawn(old_cache.aclose())
        self.limits = {route.path: resolve_limit(config, route.path) for route in self.router.routes}
        self.access = access_control(config.clients)
        self.client_limits = {
            c.name: Limit(
                c.rate_limit.requests_per_minute,
                c.rate_limit.burst or max(1, c.rate_limit.requests_per_minute),
            )
            for c in config.clients
            if c.rate_limit is not None and c.rate_limit.requests_per_minute
        }
        if self.limiter is None or self._limiter_config != config.rate_limit:
            if self.limiter is not None:
                spawn(self.limiter.close())
            self.limiter = build_limiter(config)
            self._limiter_config = config.rate_limit
            if isinstance(self.stream_slots, RedisStreamSlots):
                self.stream_slots.close()
            # Streams in flight release into the new counter: harmless (an unknown key is a
            # no-op), and their Redis leases end by themselves (slots_redis.py, rule 2).
            self.stream_slots = StreamSlots()
            if isinstance(self.limiter, RedisLimiter):
                self.limiter.on_failure = self.metrics.limiter_failed
                self.stream_slots = RedisStreamSlots(self.limiter)
        self.quota = build_quota(config, self.limiter, self.quota)
        if self.tracing is None or self.tracing.config != config.telemetry:
            if self.tracing is not None:  # flushing blocks: off the loop
                self.loop.run_in_executor(None, self.tracing.shutdown)
            self.tracing = Tracing(config.telemetry) if config.telemetry is not None else None
        self.max_streams = config.rate_limit.concurrent_streams if config.rate_limit else None
        tls = config.upstream_tls
        https = any(
            target.origin.scheme == "https"
            for group in self.backends.all_groups()
            for target in group.targets.values()
        )
        self.pool.configure(
            ssl_context=make_ssl_context(tls.verify, tls.ca_file) if https else None,
            connect_timeout=config.timeouts.connect_secs,
            max_idle_per_origin=config.pool.max_idle_per_backend,
            idle_timeout=config.pool.idle_timeout_secs,
        )
        # Plain copies of what every request reads: a pydantic attribute read costs ~10x a plain one.
        self.read_timeout = config.timeouts.read_secs
        self.max_body_bytes = config.max_body_bytes
        self.max_multipart_bytes = config.max_multipart_bytes
        limits = config.limits
        self.keep_alive_timeout = limits.keep_alive_timeout_secs
        self.header_timeout = limits.header_timeout_secs
        self.body_timeout = limits.body_timeout_secs
        self.max_open_streams = limits.max_streams
        self.metrics.known_routes = {route.path for route in self.router.routes} | set(LOCAL_ROUTES)
        self.accounting = Accounting(config, self.metrics)

    def reload(self, why: str) -> bool:
        """Load the config again; an invalid one is refused and the old one stays in force."""
        if self._reload is None:
            return False
        try:
            config = self._reload()
            if self._pinned:
                config = config.with_overrides(self._pinned)
        except ConfigError as exc:
            logs.log.error("config reload (%s) refused, keeping the running config: %s", why, exc)
            return False
        if (config.host, config.port) != (self.config.host, self.config.port):
            logs.log.warning("config reload: host/port changes take effect at the next restart")
        self.apply(config)
        logs.log.info("config reloaded (%s) from %s", why, config.source)
        return True

    async def drain(self, grace_secs: float) -> None:
        """Let exchanges in flight finish (up to ``grace_secs``), then end the rest cleanly."""
        self.draining = True
        for protocol in list(self.connections):
            protocol.close_if_idle()
        if self.connections:
            self._all_closed = asyncio.Event()
            try:
                async with asyncio.timeout(grace_secs):
                    await self._all_closed.wait()
            except TimeoutError:
                logs.log.warning("drain timeout: ending %d streams still open", len(self.connections))
        for protocol in list(self.connections):
            protocol.shut_down()
        self.backends.stop()
        self.pool.close_all()
        if self.tracing is not None:  # the last spans go out before the process exits
            await self.loop.run_in_executor(None, self.tracing.shutdown)
        self.metrics.flush()  # a worker's last tallies (the multiprocess files outlive it)
        logs.flush()  # the last access lines

    def connection_opened(self, protocol: Connection) -> None:
        self.connections.add(protocol)

    def connection_closed(self, protocol: Connection) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def admission_key(
        self, route: Route, streaming: bool, headers: HeaderList, peer: str | None
    ) -> str | None:
        """The rate-limit identity of a request, or None when no limit applies to it."""
        client = self.client_of(headers)
        if client is not None and client.name in self.client_limits:
            return "client:" + client.name
        if self.limits.get(route.path) is not None or (streaming and self.max_streams is not None):
            return client_key(headers, peer)
        if route.kind in ACCOUNTED and self._quota().applies(
            client.name if client else "anonymous", route.path
        ):
            return client_key(headers, peer)
        return None

    def _quota(self) -> MemoryQuota | RedisQuota:
        assert self.quota is not None  # set by apply
        return self.quota

    def client_of(self, headers: HeaderList) -> ClientPolicy | None:
        return self.access.authenticate(headers) if self.access.enabled else None

    def admits_now(self) -> bool:
        """Whether admission can be decided without awaiting (no Redis limiter in the way)."""
        return not isinstance(self.limiter, RedisLimiter)

    def admit_now(self, forwarder: Exchange, key: str) -> GatewayError | None:
        """``admit`` for the in-process limiter: synchronous, so no task per request."""
        limit = self._limit_for(forwarder, key)
        now = self.loop.time()
        if limit is not None and isinstance(self.limiter, InProcessLimiter):
            decision = self.limiter.check(key, forwarder.route.path, limit, now)
            if not decision.allowed:
                return decision_error(decision)
        quota, route = self._quota(), forwarder.route
        if isinstance(quota, MemoryQuota) and route.kind in ACCOUNTED:
            admitted = quota.admit_now(forwarder.client_name, key, route.path, forwarder.reserve_tokens, now)
            if isinstance(admitted, GatewayError):
                return admitted
            forwarder.quota_ticket = admitted
        return self._take_stream_slot(forwarder, key)

    def _limit_for(self, forwarder: Exchange, key: str) -> Limit | None:
        if key.startswith("client:"):
            return self.client_limits[key.removeprefix("client:")]
        return self.limits.get(forwarder.route.path)

    def _take_stream_slot(self, forwarder: Exchange, key: str) -> GatewayError | None:
        if forwarder.streaming and self.max_streams is not None:
            assert isinstance(self.stream_slots, StreamSlots)
            if not self.stream_slots.acquire(key, self.max_streams):
                return decision_error(CONCURRENCY_LIMITED)
            forwarder.slot_key = key
        return None

    async def admit(self, forwarder: Exchange, key: str) -> GatewayError | None:
        """Rate limit (Redis), then the concurrent-stream limit; the slot is the forwarder's to release."""
        limit = self._limit_for(forwarder, key)
        if limit is not None and isinstance(self.limiter, RedisLimiter):
            decision = await self.limiter.check(key, forwarder.route.path, limit)
            if not decision.allowed:
                return decision_error(decision)
        slots = self.stream_slots
        if forwarder.streaming and self.max_streams is not None and isinstance(slots, RedisStreamSlots):
            refusal = await slots.acquire(key, self.max_streams)  # across replicas (slots_redis.py)
            if refusal is not None:
                return decision_error(refusal)
            forwarder.slot_key = key  # released by the forwarder, whatever happens next
        quota, route = self._quota(), forwarder.route
        if isinstance(quota, RedisQuota) and route.kind in ACCOUNTED:
            admitted = await quota.admit(forwarder.client_name, key, route.path, forwarder.reserve_tokens)
            if isinstance(admitted, GatewayError):
                return admitted
            forwarder.quota_ticket = admitted
        return None if isinstance(slots, RedisStreamSlots) else self._take_stream_slot(forwarder, key)

    def cacheable(self, body: dict[str, Any]) -> bool:
        return cacheable(body, allow_sampling=self.config.cache.cache_sampled)

    def cache_store(self, key: str, status: int, headers: HeaderList, body: bytes) -> None:
        """Keep a complete 200 response; the request id and cache status are per response."""
        if self.cache is None:
            return
        kept = [(n, v) for n, v in headers if n not in (b"x-request-id", b"x-cache")]
        response = CachedResponse(status, kept, body)
        if isinstance(self.cache, MemoryCache):
            self.cache.put_now(key, response)
        else:
            spawn(self.cache.put(key, response))

    def render_metrics(self) -> tuple[bytes, bytes]:
        for group in self.backends.all_groups():
            for backend in group.backends:
                state = circuit_value(backend.breaker.state)
                self.metrics.set_backend_state(backend.name, backend.in_flight, backend.healthy, state)
        return self.metrics.render()

    def cache_stats_body(self) -> bytes:
        self._count_redis_entries_soon()
        stats = self.cache.stats() if self.cache is not None else {"enabled": False}
        return json.dumps(stats).encode()

    def _count_redis_entries_soon(self) -> None:
        """A Redis cache's entries and bytes are counted (SCAN) when someone asks for them, at
        most once per CACHE_STATS_EVERY_SECS: the answer shows the last count, never waits for one."""
        cache, now = self.cache, self.loop.time()
        if isinstance(cache, RedisCache) and now - self._cache_stats_at >= CACHE_STATS_EVERY_SECS:
            self._cache_stats_at = now
            spawn(cache.refresh_stats())

    def account(self, forwarder: Exchange, outcome: str) -> None:
        """An exchange ended: its usage is priced and counted (accounting.py), then goes into
        the ledger and settles its tokens-per-minute reservation (quota.py)."""
        self.accounting.finished(forwarder)
        if forwarder.span is not None:
            end_span(forwarder, outcome, None) if self.tracing is None else self.tracing.finish(
                forwarder, outcome
            )
        ticket = forwarder.quota_ticket
        # what reached no backend (refused, or none was up) cost nothing and is not in the ledger
        reached = forwarder.backend_name is not None
        if forwarder.route.kind in ACCOUNTED and (reached or ticket is not None):
            assert ticket is None or isinstance(ticket, Ticket)
            self._quota().settle(
                ticket, forwarder.client_name, forwarder.usage, forwarder.cost_usd, self.loop.time(), reached
            )

    async def admin_usage(self, headers: HeaderList, query: bytes) -> tuple[int, bytes]:
        """``GET /admin/usage`` (admin.py)."""
        return await usage_answer(self.config.admin_key_hash, self._quota(), headers, query)

    def access_log(self, forwarder: Exchange, outcome: str) -> None:
        logs.access_line(forwarder, outcome)

    def health_body(self) -> bytes:
        self._count_redis_entries_soon()
        return json.dumps(
            {
                "status": "draining" if self.draining else "ok",
                "version": __version__,
                "uptime_s": round(time.time() - self.started_at, 1),
                "upstream": self.backends.describe(),
                "backends": self.backends.snapshot(),
                "cache": self.cache.stats() if self.cache is not None else None,
                "rate_limit": self.limiter.snapshot() if self.limiter is not None else None,
                "quota": self._quota().snapshot(),
                "open_streams_by_key": len(self.stream_slots),
                "config": self.config.source,
                "connections": len(self.connections),
                "streams_active": self.metrics.active_streams,
                "upstream_pool": {
                    "idle": self.pool.idle_count,
                    "opened": self.pool.opened,
                    "reused": self.pool.reused,
                },
            }
        ).encode()

    async def fetch_models(
        self, route: Route, headers: HeaderList, request_id: bytes, peer: str | None
    ) -> tuple[int, bytes, bytes]:
        """The upstream's model list; the modelMapping names when the upstream has none."""
        group = self.backends.group(route.backend_group)
        backend = group.pick(self.loop.time(), [])
        try:
            if backend is None:
                raise group.unavailable()
            target = group.targets[backend.name]
            head = self.router.upstream_head(route, target, headers, b"", 0, request_id, peer, False)
            async with asyncio.timeout(self.config.timeouts.connect_secs + 10):
                status, response_headers, body = await fetch(self.pool, target.origin, head)
            content_type = header_value(response_headers, b"content-type") or b""
            if status == 200:
                return status, content_type, body
            error: GatewayError | None = None
        except TimeoutError:
            error = UpstreamTimeout("upstream did not list its models in time")
            status, content_type, body = 504, b"", b""
        except GatewayError as exc:
            error = exc
            status, content_type, body = exc.status, b"", b""
        if self.config.model_mapping:
            return 200, b"application/json", self.router.model_list()
        if error is not None:
            return error.status, b"application/json", error.body(ApiFlavor.OPENAI)
        return status, content_type or b"application/json", body


def build_quota(
    config: Config, limiter: InProcessLimiter | RedisLimiter | None, previous: MemoryQuota | RedisQuota | None
) -> MemoryQuota | RedisQuota:
    """In Redis beside the request limits when they are there, else in process; an in-process
    quota hands its ledger and buckets to the next one (a reload does not forget the spend)."""
    if isinstance(limiter, RedisLimiter):
        return RedisQuota(config, limiter)
    return MemoryQuota(config, previous=previous if isinstance(previous, MemoryQuota) else None)


def make_cache(config: CacheConfig) -> ResponseCache | None:
    if not config.enabled:
        return None
    if config.redis:
        return RedisCache(config.redis, config.ttl_secs)
    return MemoryCache(config.max_bytes, config.ttl_secs)
