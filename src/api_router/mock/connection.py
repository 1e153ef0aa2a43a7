"""One client connection of the simulated upstream, as HTTP/1.1: requests parsed (httptools) as
bytes arrive, answered one at a time in order (pipelining), written with backpressure (counted
on the stream being written), closed or aborted. What each request is answered with is
``handler.py``'s: a subclass fills in ``handle``.
"""

from __future__ import annotations

import asyncio
import http
import itertools
import json
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast

import httptools

from api_router.mock.multipart import MultipartCounter
from api_router.mock.shape import AUDIO_ROUTES
from api_router.mock.stats import MockStats, StreamRecord

WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = 16 * 1024

# The loop keeps only weak references to tasks: the running ones are held here (as net/tasks.py
# does for the router, which this package does not import).
_running: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


class Request:
    """One parsed request: head, and the body as chunks or fed to a multipart counter."""

    __slots__ = ("body", "body_bytes", "headers", "keep_alive", "method", "multipart", "path", "query", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = self.path = self.query = ""
        self.headers: list[list[str]] = []
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.multipart: MultipartCounter | None = None
        self.keep_alive = True

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")


class Connection(asyncio.Protocol):
    """One client connection: requests are parsed as bytes arrive and answered in order."""

    _ids = itertools.count(1)

    def __init__(self, stats: MockStats, connections: set[Connection]) -> None:
        self.stats, self.connections = stats, connections
        self.conn_id = next(self._ids)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = self.broken = False
        self.req: Request | None = None
        self.pending: deque[Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.current: StreamRecord | None = None
        self._drained: asyncio.Future[None] | None = None

    # --- transport callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self.stats.connections_opened += 1
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.broken = True  # answer what was parsed before the bad bytes, then close
            if self.worker is None or self.worker.done():
                self._write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.close()

    def eof_received(self) -> bool:
        return False  # the peer is gone: close, connection_lost follows at once

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stats.connections_closed += 1
        self.connections.discard(self)
        if self.current is not None:
            self.stats.end(self.current, "peer_closed")
        self._wake()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()  # stop generating now

    def pause_writing(self) -> None:
        if self.current is not None:
            self.current.pauses += 1
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake()

    # --- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.req = Request()

    def on_url(self, url: bytes) -> None:
        assert self.req is not None
        self.req.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.req is not None
        self.req.headers.append([name.decode("latin-1").lower(), value.decode("latin-1")])

    def on_headers_complete(self) -> None:
        req = self.req
        assert req is not None
        req.method = self.parser.get_method().decode()
        parsed = httptools.parse_url(req.url)
        req.path, req.query = parsed.path.decode("latin-1"), (parsed.query or b"").decode("latin-1")
        if req.path in AUDIO_ROUTES:
            req.multipart = MultipartCounter.from_content_type(req.header("content-type"))
        idle = not self.pending and (self.worker is None or self.worker.done())
        if idle and req.header("expect").lower() == "100-continue":
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        req = self.req
        assert req is not None
        req.body_bytes += len(body)
        if req.multipart is not None:
            req.multipart.feed(body)
        else:
            req.body.append(body)

    def on_message_complete(self) -> None:
        req = self.req
        assert req is not None
        req.keep_alive = self.parser.should_keep_alive()
        self.req = None
        self.pending.append(req)
        if self.worker is None or self.worker.done():
            self.worker = _spawn(self._serve())

    # --- writing --------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(data)
        if self.current is not None:
            self.current.bytes_written += len(data)

    async def _drain(self) -> None:
        if self._drained is not None:
            started = time.monotonic()
            try:
                await self._drained
            finally:
                if self.current is not None:
                    self.current.paused_s += time.monotonic() - started

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _send(self, status: int, body: bytes, req: Request, ctype: bytes = b"application/json") -> None:
        try:
            reason = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Mock Status"
        conn = b"keep-alive" if req.keep_alive else b"close"
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status,
            reason,
            ctype,
            len(body),
        )
        self._write(head + b"Connection: %s\r\nx-mock-conn-id: %d\r\n\r\n%s" % (conn, self.conn_id, body))

    def _json(self, status: int, obj: Any, req: Request) -> None:
        self._send(status, json.dumps(obj).encode(), req)

    def _die(self, rec: StreamRecord) -> None:
        self.stats.end(rec, "died")
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # RST, no terminating chunk

    # --- answering, in order --------------------------------------------------------------
    async def _serve(self) -> None:
        while self.pending and not self.closed:
            req = self.pending.popleft()
            await self._handle(req)
            if not req.keep_alive:
                self.close()
        if self.broken:
            self.close()

    async def _handle(self, req: Request) -> None:
        """Answer ``req`` (write its whole response); the subclass decides with what."""
        raise NotImplementedError
