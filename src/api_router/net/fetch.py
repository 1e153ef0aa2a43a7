"""Small whole exchanges off the streaming path (model lists, health checks), and TLS settings."""

from __future__ import annotations

import asyncio
import ssl

from api_router.core.http import HeaderList
from api_router.errors import UpstreamUnreachable
from api_router.net.upstream import ResponseListener, UpstreamPool
from api_router.targets import Origin


def make_ssl_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """System CA store, verification on by default; ``ca_file`` adds a private CA."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Collector(ResponseListener):
    """A ResponseListener that keeps one small whole response (model lists, health checks)."""

    def __init__(self, future: asyncio.Future[tuple[int, HeaderList, bytes]], limit: int) -> None:
        self.future = future
        self.limit = limit
        self.status = 0
        self.headers: HeaderList = []
        self.body = bytearray()
        self.keep_alive = False

    def upstream_head(self, status: int, headers: HeaderList) -> None:
        self.status = status
        self.headers = headers

    def upstream_read(self, buffer: bytearray, nbytes: int) -> None:
        pass

    def upstream_body(self, data: bytes) -> None:
        self.body += data
        if len(self.body) > self.limit and not self.future.done():
            self.future.set_exception(UpstreamUnreachable("upstream response too large"))

    def upstream_flush(self) -> None:
        pass

    def upstream_done(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        if not self.future.done():
            self.future.set_result((self.status, self.headers, bytes(self.body)))

    def upstream_lost(self, exc: BaseException | None) -> None:
        if not self.future.done():
            error = exc if isinstance(exc, UpstreamUnreachable) else UpstreamUnreachable("upstream closed")
            self.future.set_exception(error)

    def upstream_writable(self, writable: bool) -> None:
        pass


async def fetch(
    pool: UpstreamPool, origin: Origin, head: bytes, *, limit: int = 4 * 1024 * 1024
) -> tuple[int, HeaderList, bytes]:
    """Send ``head`` (no body) and return the whole response; off the streaming path."""
    conn, _ = await pool.acquire(origin)
    future: asyncio.Future[tuple[int, HeaderList, bytes]] = asyncio.get_running_loop().create_future()
    collector = _Collector(future, limit)
    conn.bind(collector, 16384)
    conn.write(head)
    try:
        result = await future
    except BaseException:
        conn.close()
        raise
    if collector.keep_alive:
        pool.release(conn)
    else:
        conn.close()
    return result
