"""What every connection shares: the loop, the upstream pool, metrics, the connections; the
runtime snapshot in force (runtime.py), reload and drain."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from api_router import __version__, logs
from api_router.backends import circuit_value
from api_router.cache import RedisCache
from api_router.config import Config, ConfigError
from api_router.metrics import Metrics
from api_router.net.tasks import spawn
from api_router.net.upstream import UpstreamPool
from api_router.routing import LOCAL_ROUTES
from api_router.runtime import Runtime

if TYPE_CHECKING:
    from api_router.net.ports import Connection


CACHE_STATS_EVERY_SECS = 1.0


class App:
    """What every connection shares; ``runtime`` is what the config in force built."""

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
        self._cache_stats_at = -CACHE_STATS_EVERY_SECS  # loop time of the last Redis count
        self.runtime: Runtime = self._swap_in(
            Runtime(config, None, loop=loop, metrics=self.metrics, pool=self.pool)
        )

    @property
    def config(self) -> Config:
        return self.runtime.config

    def apply(self, config: Config) -> None:
        """Make ``config`` the one new requests use. The new runtime is built whole first (a
        failure leaves the running one untouched), then swapped in; exchanges in flight keep
        the runtime they started with (runtime.py)."""
        old = self.runtime
        self._swap_in(Runtime(config, old, loop=self.loop, metrics=self.metrics, pool=self.pool))
        old.retire(self.runtime)

    def _swap_in(self, runtime: Runtime) -> Runtime:
        self.runtime = runtime  # the one assignment new requests see
        runtime.start()
        self.metrics.known_routes = {route.path for route in runtime.router.routes} | set(LOCAL_ROUTES)
        return runtime

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
        try:
            self.apply(config)
        except Exception as exc:  # e.g. a caFile that holds no certificate: found only when built
            logs.log.error(
                "config reload (%s) refused, keeping the running config: %s: %s", why, type(exc).__name__, exc
            )
            return False
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
        runtime = self.runtime
        runtime.backends.stop()
        self.pool.close_all()
        if runtime.tracing is not None:  # the last spans go out before the process exits
            await self.loop.run_in_executor(None, runtime.tracing.shutdown)
        for _ in range(2):  # the records of clients that just left run two loop turns late (forward.py)
            await asyncio.sleep(0)
        self.metrics.flush()  # a worker's last tallies (the multiprocess files outlive it)
        logs.flush()  # the last access lines

    def connection_opened(self, protocol: Connection) -> None:
        self.connections.add(protocol)

    def connection_closed(self, protocol: Connection) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    # -- answers the router gives itself --------------------------------------------------
    def render_metrics(self) -> tuple[bytes, bytes]:
        for group in self.runtime.backends.all_groups():
            for backend in group.backends:
                state = circuit_value(backend.breaker.state)
                self.metrics.set_backend_state(backend.name, backend.in_flight, backend.healthy, state)
        return self.metrics.render()

    def cache_stats_body(self) -> bytes:
        self._count_redis_entries_soon()
        cache = self.runtime.cache
        stats = cache.stats() if cache is not None else {"enabled": False}
        return json.dumps(stats).encode()

    def _count_redis_entries_soon(self) -> None:
        """A Redis cache's entries and bytes are counted (SCAN) when someone asks for them, at
        most once per CACHE_STATS_EVERY_SECS: the answer shows the last count, never waits for one."""
        cache, now = self.runtime.cache, self.loop.time()
        if isinstance(cache, RedisCache) and now - self._cache_stats_at >= CACHE_STATS_EVERY_SECS:
            self._cache_stats_at = now
            spawn(cache.refresh_stats())

    def health_body(self) -> bytes:
        self._count_redis_entries_soon()
        runtime = self.runtime
        return json.dumps(
            {
                "status": "draining" if self.draining else "ok",
                "version": __version__,
                "uptime_s": round(time.time() - self.started_at, 1),
                "upstream": runtime.backends.describe(),
                "backends": runtime.backends.snapshot(),
                "cache": runtime.cache.stats() if runtime.cache is not None else None,
                "rate_limit": runtime.limiter.snapshot(),
                "quota": runtime.quota.snapshot(),
                "open_streams_by_key": len(runtime.stream_slots),
                "config": runtime.config.source,
                "connections": len(self.connections),
                "streams_active": self.metrics.active_streams,
                "upstream_pool": {
                    "idle": self.pool.idle_count,
                    "opened": self.pool.opened,
                    "reused": self.pool.reused,
                },
            }
        ).encode()
