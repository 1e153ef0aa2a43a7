"""Lifecycle: build everything from a Config, bind, serve until a signal, close."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import TYPE_CHECKING

import uvloop

from api_router import __version__, logs
from api_router.config import Config
from api_router.core.http import HeaderList, header_value
from api_router.errors import ApiFlavor, GatewayError, UpstreamTimeout
from api_router.metrics import Metrics
from api_router.net.downstream import DownstreamProtocol
from api_router.net.upstream import UpstreamPool, make_ssl_context
from api_router.routing import LOCAL_ROUTES, Route, Router

if TYPE_CHECKING:
    from api_router.net.forward import Forwarder

_MODELS_LIMIT = 4 * 1024 * 1024


class App:
    """What every connection shares: config, router, upstream pool, metrics."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.config = config
        self.router = Router(config)
        tls = config.upstream_tls
        self.pool = UpstreamPool(
            ssl_context=make_ssl_context(tls.verify, tls.ca_file)
            if self.router.origin.scheme == "https"
            else None,
            connect_timeout=config.timeouts.connect_secs,
        )
        self.read_timeout = config.timeouts.read_secs
        self.max_body_bytes = config.max_body_bytes
        self.max_multipart_bytes = config.max_multipart_bytes
        self.metrics = Metrics({route.path for route in self.router.routes} | set(LOCAL_ROUTES))
        self.connections: set[DownstreamProtocol] = set()
        self.started_at = time.time()

    def connection_opened(self, protocol: DownstreamProtocol) -> None:
        self.connections.add(protocol)

    def connection_closed(self, protocol: DownstreamProtocol) -> None:
        self.connections.discard(protocol)

    def access_log(self, forwarder: Forwarder, outcome: str) -> None:
        logs.access_line(forwarder, outcome)

    def health_body(self) -> bytes:
        return json.dumps(
            {
                "status": "ok",
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


async def serve(config: Config, *, start_mock: bool, stop: asyncio.Event | None = None) -> int:
    loop = asyncio.get_running_loop()
    mock = None
    if start_mock:
        from api_router import mock_upstream  # noqa: PLC0415 - only when asked for

        mock = await mock_upstream.start("127.0.0.1", 0)
        config = config.with_overrides({"base_url": f"http://127.0.0.1:{mock.port}"})
    app = App(config, loop)
    server = await loop.create_server(
        lambda: DownstreamProtocol(app), config.host, config.port, backlog=4096, reuse_address=True
    )
    port = server.sockets[0].getsockname()[1]
    if mock is not None:
        print(_mock_banner(config.host, port, mock.port), file=sys.stderr, flush=True)
    logs.log.info(
        "api-router %s listening on http://%s:%d, upstream %s",
        __version__,
        config.host,
        port,
        app.router.origin,
    )
    print(f"api-router listening on http://{config.host}:{port}", flush=True)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        server.close()
        for protocol in list(app.connections):
            protocol.abort()
        app.pool.close_all()
        if mock is not None:
            mock.close()
    return 0


def run(config: Config, *, start_mock: bool, workers: int = 1) -> int:
    logs.configure(config.log_level, config.log_format)
    if workers != 1:
        print("api-router: --workers above 1 is not available yet; run one process per core", file=sys.stderr)
        return 2
    return uvloop.run(serve(config, start_mock=start_mock))


def _mock_banner(host: str, port: int, mock_port: int) -> str:
    return (
        "\n  api-router is using its BUILT-IN MOCK UPSTREAM (no config given, or --provider mock):\n"
        f"  simulated LLM at http://127.0.0.1:{mock_port}; no network or API key needed.\n"
        "  Stream tokens through the router with:\n"
        f"    curl -N http://{host}:{port}/v1/chat/completions -H 'content-type: application/json' \\\n"
        '      -d \'{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}\'\n'
        "  Point it at a real provider with --provider openai (and OPENAI_API_KEY) or --config FILE.\n"
    )
