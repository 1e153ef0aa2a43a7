"""What every connection shares: config, router, upstream pool, metrics; reload and drain."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from api_router import __version__, logs
from api_router.config import Config, ConfigError
from api_router.core.http import HeaderList, header_value
from api_router.errors import ApiFlavor, GatewayError, UpstreamTimeout
from api_router.metrics import Metrics
from api_router.net.upstream import UpstreamPool, make_ssl_context
from api_router.routing import LOCAL_ROUTES, Route, Router

if TYPE_CHECKING:
    from api_router.net.downstream import DownstreamProtocol
    from api_router.net.forward import Forwarder

_MODELS_LIMIT = 4 * 1024 * 1024


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
        self.metrics = Metrics()
        self.pool = UpstreamPool(ssl_context=None, connect_timeout=config.timeouts.connect_secs)
        self.connections: set[DownstreamProtocol] = set()
        self.started_at = time.time()
        self.draining = False
        self._reload = reload
        self._pinned = dict(pinned or {})
        self._all_closed: asyncio.Event | None = None
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Make ``config`` the one new requests use; exchanges in flight keep their Router."""
        self.config = config
        self.router = Router(config)
        tls = config.upstream_tls
        https = self.router.origin.scheme == "https"
        self.pool.configure(
            ssl_context=make_ssl_context(tls.verify, tls.ca_file) if https else None,
            connect_timeout=config.timeouts.connect_secs,
        )
        self.read_timeout = config.timeouts.read_secs
        self.max_body_bytes = config.max_body_bytes
        self.max_multipart_bytes = config.max_multipart_bytes
        self.metrics.known_routes = {route.path for route in self.router.routes} | set(LOCAL_ROUTES)

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
        self.pool.close_all()

    def connection_opened(self, protocol: DownstreamProtocol) -> None:
        self.connections.add(protocol)

    def connection_closed(self, protocol: DownstreamProtocol) -> None:
        self.connections.discard(protocol)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    def access_log(self, forwarder: Forwarder, outcome: str) -> None:
        logs.access_line(forwarder, outcome)

    def health_body(self) -> bytes:
        return json.dumps(
            {
                "status": "draining" if self.draining else "ok",
                "version": __version__,
                "uptime_s": round(time.time() - self.started_at, 1),
                "upstream": str(self.router.origin),
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
        head = self.router.upstream_head(route, headers, b"", 0, request_id, peer, False)
        try:
            async with asyncio.timeout(self.config.timeouts.connect_secs + 10):
                status, content_type, body = await _fetch(self.pool, self.router, head, route.buffer_size)
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


class _Collect:
    """A ResponseListener that keeps a small whole response (the model list)."""

    def __init__(self, future: asyncio.Future[tuple[int, bytes, bytes]]) -> None:
        self.future = future
        self.status = 0
        self.content_type = b""
        self.body = bytearray()

    def upstream_head(self, status: int, headers: HeaderList) -> None:
        self.status = status
        self.content_type = header_value(headers, b"content-type") or b""

    def upstream_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > _MODELS_LIMIT and not self.future.done():
            self.future.set_exception(GatewayError("upstream model list too large"))

    def upstream_done(self, keep_alive: bool) -> None:
        if not self.future.done():
            self.future.set_result((self.status, self.content_type, bytes(self.body)))

    def upstream_lost(self, exc: BaseException | None) -> None:
        if not self.future.done():
            self.future.set_exception(
                exc if isinstance(exc, GatewayError) else GatewayError("upstream closed")
            )

    def upstream_writable(self, writable: bool) -> None:
        pass


async def _fetch(
    pool: UpstreamPool, router: Router, head: bytes, buffer_size: int
) -> tuple[int, bytes, bytes]:
    conn, _ = await pool.acquire(router.origin)
    future: asyncio.Future[tuple[int, bytes, bytes]] = asyncio.get_running_loop().create_future()
    conn.bind(_Collect(future), buffer_size)
    conn.write(head)
    try:
        result = await future
    except BaseException:
        conn.close()
        raise
    pool.release(conn)
    return result
