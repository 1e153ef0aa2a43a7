"""The runtime snapshot: everything the router builds from one config, built whole, swapped in one
assignment on reload.

Rules:
1. Building a ``Runtime`` changes nothing that is running: it creates what the new config needs
   and reuses (never alters) the previous runtime's long-lived parts whose config did not change
   (the limiter, the cache, the tracer, so a reload forgets no rate-limit bucket, cached answer
   or span). A build that raises leaves the old runtime in force, untouched.
2. Only after the swap does anything start (``start``: health checks) or stop (``retire``: the
   previous runtime's health checks, and the parts the new one did not take over).
3. A request keeps the runtime it was matched with for its whole exchange: its router, backends,
   timeouts, limiter and stream slots, accounting and tracer. The old Router was the only part
   that held this before; the timeouts, the pool settings and the stream slots were read live.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from api_router import access_log
from api_router.accounting import Accounting
from api_router.admin import usage_answer
from api_router.backends import BackendSet
from api_router.cache import CachedResponse, MemoryCache, RedisCache, ResponseCache
from api_router.config import Config
from api_router.config_backends import CacheConfig
from api_router.config_security import access_control
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
from api_router.routing import Route, Router, accounted
from api_router.slots_redis import RedisStreamSlots
from api_router.tracing import Tracing, end_span

if TYPE_CHECKING:
    import ssl

    from api_router.core.access import ClientPolicy
    from api_router.net.forward import Forwarder
    from api_router.net.ports import Admitted, Exchange


class Runtime:
    """One config, made ready to serve: routing, backends, admission, accounting, tracing."""

    def __init__(
        self,
        config: Config,
        previous: Runtime | None,
        *,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics,
        pool: UpstreamPool,
    ) -> None:
        self.config = config
        self.loop = loop
        self.metrics = metrics
        self.pool = pool
        self.router = Router(config)
        self.backends = BackendSet(config)
        https = any(
            target.origin.scheme == "https"
            for group in self.backends.all_groups()
            for target in group.targets.values()
        )
        tls = config.upstream_tls  # a CA file that holds no certificate fails here, before the swap
        self.ssl_context: ssl.SSLContext | None = make_ssl_context(tls.verify, tls.ca_file) if https else None
        self.access = access_control(config.clients)
        self.limits = {route.path: resolve_limit(config, route.path) for route in self.router.routes}
        self.client_limits = {
            c.name: Limit(
                c.rate_limit.requests_per_minute,
                c.rate_limit.burst or max(1, c.rate_limit.requests_per_minute),
            )
            for c in config.clients
            if c.rate_limit is not None and c.rate_limit.requests_per_minute
        }
        # Long-lived parts: taken over from the previous runtime while their config is the same.
        keep_cache = previous is not None and previous.config.cache == config.cache
        self.cache: ResponseCache | None = (
            previous.cache if previous and keep_cache else make_cache(config.cache)
        )
        keep_limiter = previous is not None and previous.config.rate_limit == config.rate_limit
        if previous is not None and keep_limiter:
            self.limiter: InProcessLimiter | RedisLimiter = previous.limiter
            self.stream_slots: StreamSlots | RedisStreamSlots = previous.stream_slots
        else:
            self.limiter = build_limiter(config)
            if isinstance(self.limiter, RedisLimiter):
                self.limiter.on_failure = metrics.limiter_failed
                self.stream_slots = RedisStreamSlots(self.limiter)
            else:
                self.stream_slots = StreamSlots()
        self.accounting = Accounting(config, metrics)
        keep_tracing = previous is not None and previous.config.telemetry == config.telemetry
        self.tracing: Tracing | None = (
            previous.tracing
            if previous is not None and keep_tracing
            else Tracing(config.telemetry)
            if config.telemetry is not None
            else None
        )
        # last: the in-process ledger and buckets are handed over only once nothing else can fail
        self.quota: MemoryQuota | RedisQuota = build_quota(
            config, self.limiter, previous.quota if previous else None
        )
        self.max_streams = config.rate_limit.concurrent_streams if config.rate_limit else None
        # Plain copies of what every request reads: a pydantic attribute read costs ~10x a plain one.
        self.read_timeout = config.timeouts.read_secs
        self.max_body_bytes = config.max_body_bytes
        self.max_multipart_bytes = config.max_multipart_bytes
        limits = config.limits
        self.keep_alive_timeout = limits.keep_alive_timeout_secs
        self.header_timeout = limits.header_timeout_secs
        self.body_timeout = limits.body_timeout_secs
        self.max_open_streams = limits.max_streams

    # -- life (rule 2) ------------------------------------------------------------------
    def start(self) -> None:
        """Now in force: the shared pool takes this config's settings; health checks begin."""
        config = self.config
        self.pool.configure(
            ssl_context=self.ssl_context,
            connect_timeout=config.timeouts.connect_secs,
            max_idle_per_origin=config.pool.max_idle_per_backend,
            idle_timeout=config.pool.idle_timeout_secs,
        )
        self.backends.start_health_checks(self.pool)

    def retire(self, successor: Runtime | None) -> None:
        """Replaced by ``successor`` (None: the router stops): stop what it did not take over.
        Exchanges still running on this runtime keep what they hold: an admitted exchange asks
        the limiter nothing more, and a stream slot released into a closed Redis counter is a
        lease that ends by itself (slots_redis.py, rule 2)."""
        self.backends.stop()
        cache = self.cache
        if isinstance(cache, RedisCache) and (successor is None or successor.cache is not cache):
            spawn(cache.aclose())  # its connections would stay open for good
        if successor is None or successor.limiter is not self.limiter:
            spawn(self.limiter.close())
            if isinstance(self.stream_slots, RedisStreamSlots):
                self.stream_slots.close()
        tracing = self.tracing
        if tracing is not None and (successor is None or successor.tracing is not tracing):
            self.loop.run_in_executor(None, tracing.shutdown)  # flushing blocks: off the loop

    # -- admission ----------------------------------------------------------------------
    def client_of(self, headers: HeaderList) -> ClientPolicy | None:
        return self.access.authenticate(headers) if self.access.enabled else None

    def admission_key(
        self,
        route: Route,
        streaming: bool,
        client: ClientPolicy | None,
        headers: HeaderList,
        peer: str | None,
    ) -> str | None:
        """The rate-limit identity of a request, or None when no limit applies to it; ``client``:
        the one its key named (``client_of``, at authorization: each request's key is hashed once)."""
        if client is not None and client.name in self.client_limits:
            return "client:" + client.name
        if self.limits.get(route.path) is not None or (streaming and self.max_streams is not None):
            return client_key(headers, peer)
        if accounted(route.kind) and self.quota.applies(client.name if client else "anonymous", route.path):
            return client_key(headers, peer)
        return None

    def admits_now(self) -> bool:
        """Whether admission can be decided without awaiting (no Redis limiter in the way)."""
        return not isinstance(self.limiter, RedisLimiter)

    def admit_now(self, forwarder: Admitted, key: str) -> GatewayError | None:
        """``admit`` for the in-process limiter: synchronous, so no task per request."""
        limit = self._limit_for(forwarder, key)
        now = self.loop.time()
        if limit is not None and isinstance(self.limiter, InProcessLimiter):
            decision = self.limiter.check(key, forwarder.route.path, limit, now)
            if not decision.allowed:
                return decision_error(decision)
        quota, route = self.quota, forwarder.route
        if isinstance(quota, MemoryQuota) and accounted(route.kind):
            admitted = quota.admit_now(forwarder.client_name, key, route.path, forwarder.reserve_tokens, now)
            if isinstance(admitted, GatewayError):
                return admitted
            forwarder.quota_ticket = admitted
        return self._take_stream_slot(forwarder, key)

    def _limit_for(self, forwarder: Admitted, key: str) -> Limit | None:
        if key.startswith("client:"):
            return self.client_limits[key.removeprefix("client:")]
        return self.limits.get(forwarder.route.path)

    def _take_stream_slot(self, forwarder: Admitted, key: str) -> GatewayError | None:
        if forwarder.streaming and self.max_streams is not None:
            assert isinstance(self.stream_slots, StreamSlots)
            if not self.stream_slots.acquire(key, self.max_streams):
                return decision_error(CONCURRENCY_LIMITED)
            forwarder.slot_key = key
        return None

    async def admit(self, forwarder: Admitted, key: str) -> GatewayError | None:
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
        quota, route = self.quota, forwarder.route
        if isinstance(quota, RedisQuota) and accounted(route.kind):
            admitted = await quota.admit(forwarder.client_name, key, route.path, forwarder.reserve_tokens)
            if isinstance(admitted, GatewayError):
                return admitted
            forwarder.quota_ticket = admitted
        return None if isinstance(slots, RedisStreamSlots) else self._take_stream_slot(forwarder, key)

    # -- the response cache -------------------------------------------------------------
    def cacheable(self, body: dict[str, Any]) -> bool:
        return cacheable(body, allow_sampling=self.config.cache.cache_sampled)

    def cache_store(self, key: str, status: int, headers: HeaderList, body: bytes) -> None:
        """Keep a complete 200 response; the request id, cache status and any ``Connection: close``
        (the client that asked to close) are per response."""
        if self.cache is None:
            return
        kept = [(n, v) for n, v in headers if n not in (b"x-request-id", b"x-cache", b"connection")]
        response = CachedResponse(status, kept, body)
        if isinstance(self.cache, MemoryCache):
            self.cache.put_now(key, response)
        else:
            spawn(self.cache.put(key, response))

    # -- the end of an exchange ---------------------------------------------------------
    def account(self, forwarder: Exchange, outcome: str) -> None:
        """An exchange ended: its usage is priced and counted (accounting.py), then goes into
        the ledger and settles its tokens-per-minute reservation (quota.py). Read as the native
        class it is: through the Protocol each read was a generic getattr (~1.7k a request)."""
        exchange = cast("Forwarder", forwarder)  # checked: the one kind of exchange that ends here
        self.accounting.finished(exchange)
        if exchange.span is not None:
            end_span(exchange, outcome, None) if self.tracing is None else self.tracing.finish(
                exchange, outcome
            )
        ticket = exchange.quota_ticket
        # what reached no backend (refused, or none was up) cost nothing and is not in the ledger
        reached = exchange.backend_name is not None
        if accounted(exchange.route.kind) and (reached or ticket is not None):
            assert ticket is None or isinstance(ticket, Ticket)
            self.quota.settle(
                ticket, exchange.client_name, exchange.usage, exchange.cost_usd, self.loop.time(), reached
            )

    def access_log(self, forwarder: Exchange, outcome: str) -> None:
        access_log.access_line(forwarder, outcome)

    # -- answers the router gives itself ------------------------------------------------
    async def admin_usage(self, headers: HeaderList, query: bytes) -> tuple[int, bytes]:
        """``GET /admin/usage`` (admin.py)."""
        return await usage_answer(self.config.admin_key_hash, self.quota, headers, query)

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
    config: Config, limiter: InProcessLimiter | RedisLimiter, previous: MemoryQuota | RedisQuota | None
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
