"""Upstream connections: an httptools response parser on a BufferedProtocol, and a keep-alive pool.

Reads land in one buffer shared by every connection of the loop. That is safe because each
read is parsed and written downstream synchronously inside ``buffer_updated``, and it keeps
an idle stream's memory free of a read buffer; the slice handed to each connection is the
route's ``bufferSize``, which bounds every read (and so every chunk forwarded).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Final, cast

import httptools
from mypy_extensions import mypyc_attr

from api_router.core.http import HeaderList
from api_router.errors import UpstreamUnreachable, from_os_error
from api_router.net.hangup import send_fin_now
from api_router.targets import Origin

_SHARED_READ_BUFFER = bytearray(0)
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
# A response head is bounded as a request head is (limits.maxHeaderBytes / maxHeaders defaults):
# an upstream streaming header lines without end grew the router by ~118 MB.
MAX_RESPONSE_HEAD_BYTES: Final = 65536
MAX_RESPONSE_HEADERS: Final = 100
_OVER_LIMITS: Final = "sent a response head over the limits"


class _RefusedHead(Exception):
    """Raised from a parser callback to refuse a response head; the message follows "upstream X"."""


_VIEWS: dict[int, memoryview] = {}


def _read_view(size: int) -> memoryview:
    """A view of ``size`` bytes of the loop-wide read buffer.

    A larger size than any before gets a new, larger buffer. Views of the old one are never
    released: live connections still read into them (releasing them broke every stream in flight
    when a route with a larger ``bufferSize`` was first used); each keeps the old buffer alive
    for as long as it holds the view (a few buffers at most: one per growth).
    """
    global _SHARED_READ_BUFFER
    view = _VIEWS.get(size)
    if view is None:
        if size > len(_SHARED_READ_BUFFER):
            _VIEWS.clear()
            _SHARED_READ_BUFFER = bytearray(size)
        view = _VIEWS[size] = memoryview(_SHARED_READ_BUFFER)[:size]
    return view


@mypyc_attr(allow_interpreted_subclasses=True)  # fetch's collector, the tests' recorder
class ResponseListener:
    """What a connection reports to the exchange that borrowed it (``attempts.Attempts``): a base
    class, not a Protocol, so the three calls of every upstream read are native (~200 less each)."""

    __slots__ = ()

    def upstream_head(self, status: int, headers: HeaderList) -> None:
        raise NotImplementedError

    def upstream_read(self, buffer: bytearray, nbytes: int) -> None:
        raise NotImplementedError

    def upstream_body(self, data: bytes) -> None:
        raise NotImplementedError

    def upstream_flush(self) -> None:
        raise NotImplementedError

    def upstream_done(self, keep_alive: bool) -> None:
        raise NotImplementedError

    def upstream_lost(self, exc: BaseException | None) -> None:
        raise NotImplementedError

    def upstream_writable(self, writable: bool) -> None:
        raise NotImplementedError


class UpstreamConnection(asyncio.BufferedProtocol):
    """One HTTP/1.1 connection to an origin; re-enters the pool only after a complete response."""

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self.pool = pool
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.listener: ResponseListener | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._view = _read_view(8192)
        self._headers: HeaderList = []
        self._head_bytes = 0
        self._close_delimited = False
        # Pool hygiene (no client may get bytes meant for another): ``_answered`` is set when the
        # final response of the current request is complete; anything after it is a defect of the
        # upstream and condemns the connection. ``_feeding`` defers a release asked for inside a
        # read until the whole read is parsed, so bytes after the response in the same read are
        # seen before any other exchange can borrow the connection.
        self._answered = False
        self._feeding = False
        self._release_pending = False
        self.requests = 0
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        listener = self.listener
        if listener is None:
            # Bytes nobody asked for (an idle pooled connection, or after the response): whatever
            # they are, they must never reach the next borrower, so the connection is discarded.
            self.close()
            return
        # The read as it came, before parsing (usage is looked for once per read, not per event);
        # the view starts at the shared buffer's start, so the bytearray is searched in place.
        listener.upstream_read(cast(bytearray, self._view.obj), nbytes)
        self._feeding = True
        try:
            self.parser.feed_data(self._view[:nbytes])
        except httptools.HttpParserUpgrade:  # 101 Switching Protocols: nothing we asked for
            self._fail(UpstreamUnreachable(f"upstream {self.origin} switched protocols (101); not supported"))
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _RefusedHead):
                message = f"upstream {self.origin} {exc.__context__}"
            else:
                message = f"upstream {self.origin} sent invalid HTTP: {exc}"
            self._fail(UpstreamUnreachable(message))
        finally:
            self._feeding = False
        listener.upstream_flush()  # one downstream write per upstream read
        if self._release_pending:
            self._release_pending = False
            self.pool.release(self)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        listener, self.listener = self.listener, None
        if listener is None:
            return
        if self._close_delimited:  # an HTTP/1.0-style body ends with the connection
            listener.upstream_done(False)
        else:
            listener.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.upstream_writable(False)

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.upstream_writable(True)

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._answered:  # a second response to one request: the upstream is out of step
            self.close()
            return
        self._headers = []
        self._head_bytes = 0
        self._close_delimited = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        self._headers.append((name.lower(), value))
        if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise _RefusedHead(f"{_OVER_LIMITS}: over {MAX_RESPONSE_HEAD_BYTES} bytes")
        if len(self._headers) > MAX_RESPONSE_HEADERS:
            raise _RefusedHead(f"{_OVER_LIMITS}: more than {MAX_RESPONSE_HEADERS} headers")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        close_delimited = True  # no length and not chunked: the body ends with the connection
        for name, value in self._headers:
            if name in _FRAMING:
                close_delimited = False
                if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
                    # httptools undoes only chunked: a gzip (or other) transfer-coding would reach the
                    # client as plain chunked bytes it cannot decode. Asked for none, so refused.
                    coding = value.decode("latin-1")
                    raise _RefusedHead(f"used transfer-coding {coding!r}; only chunked is supported")
        self._close_delimited = close_delimited and status not in (204, 304) and not 100 <= status < 200
        if self.listener is not None:
            self.listener.upstream_head(status, self._headers)
        self._headers = []  # not kept for the life of the stream

    def on_body(self, body: bytes) -> None:
        if self.listener is not None:
            self.listener.upstream_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return  # an interim response (100 Continue): the real one follows on this connection
        keep_alive = self.parser.should_keep_alive()
        self._close_delimited = False
        self._answered = True
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.upstream_done(keep_alive)

    # -- used by the Forwarder ----------------------------------------------------------
    def bind(self, listener: ResponseListener, buffer_size: int) -> None:
        self.listener = listener
        self._answered = False
        self.requests += 1
        if len(self._view) != buffer_size:
            self._view = _read_view(buffer_size)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def close(self) -> None:
        """Drop the connection at once (never pooled): the backend sees the close and stops."""
        self.listener = None
        if self.transport is not None and not self.closed:
            self.closed = True
            send_fin_now(self.transport)  # uvloop's own close comes a loop turn later (net/hangup.py)
            self.transport.abort()
            self.pool.forget(self)

    def _fail(self, error: Exception) -> None:
        listener, self.listener = self.listener, None
        self.close()
        if listener is not None:
            listener.upstream_lost(error)

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("active" if self.listener else "idle")
        return f"<UpstreamConnection {self.origin} {state} requests={self.requests}>"


class UpstreamPool:
    """Per-origin LIFO keep-alive pool. Only a connection whose response completed cleanly returns."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        max_idle_per_origin: int = 256,
        idle_timeout: float = 30.0,
    ) -> None:
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_origin
        self._idle_timeout = idle_timeout
        # oldest first (take_idle pops the newest); lists: append and pop are native, a deque's generic
        self._idle: dict[tuple[str, str, int], list[UpstreamConnection]] = {}
        # One timer for the whole pool closes connections idle past idle_timeout, so none is held
        # open longer than documented (they were only dropped when next taken: 206 sockets still
        # open 33 s after a burst). Armed when the first connection goes idle, not per release.
        self._sweep: asyncio.TimerHandle | None = None
        self.opened = 0
        self.reused = 0

    def take_idle(self, origin: Origin, now: float) -> UpstreamConnection | None:
        """The most recently used idle connection, if any: no await, so no loop pass before sending."""
        idle = self._idle.get(origin.key)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now - conn.idle_since > self._idle_timeout:
                conn.close()
                continue
            self.reused += 1
            return conn
        return None

    async def acquire(self, origin: Origin) -> tuple[UpstreamConnection, bool]:
        """A connection and whether it was reused (a reused one may turn out stale)."""
        conn = self.take_idle(origin, asyncio.get_running_loop().time())
        if conn is not None:
            return conn, True
        return await self.connect(origin), False

    async def connect(self, origin: Origin) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        tls = self._ssl if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise from_os_error(exc, str(origin)) from exc
        self.opened += 1
        return conn

    async def open_raw(self, origin: Origin, factory: Callable[[], asyncio.Protocol]) -> None:
        """A connection to ``origin`` outside the pool, for ``factory``'s protocol (a tunnel's,
        net/tunnel.py): the pool's TLS and connect timeout, nothing else of the pool."""
        loop = asyncio.get_running_loop()
        tls = self._ssl if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    factory, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise from_os_error(exc, str(origin)) from exc

    def configure(
        self,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        max_idle_per_origin: int,
        idle_timeout: float,
    ) -> None:
        """New settings (a reload) apply to new connections; pooled ones stay valid."""
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle_per_origin
        self._idle_timeout = idle_timeout

    def release(self, conn: UpstreamConnection) -> None:
        if conn.closed or conn.listener is not None:
            return
        if conn._feeding:  # asked from inside a read: pooled once the rest of that read is parsed
            conn._release_pending = True
            return
        idle = self._idle.get(conn.origin.key)
        if idle is None:
            idle = self._idle[conn.origin.key] = []
        if len(idle) >= self._max_idle:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweep is None:
            self._sweep = loop.call_at(conn.idle_since + self._idle_timeout, self._close_expired)

    def _close_expired(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        oldest: float | None = None
        timeout = self._idle_timeout
        for idle in self._idle.values():
            expired = 0  # the oldest come first
            while expired < len(idle) and (idle[expired].closed or now - idle[expired].idle_since >= timeout):
                expired += 1
            gone, idle[:expired] = idle[:expired], []  # out of the pool before closing (it may forget them)
            for conn in gone:
                conn.close()
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is None:
            self._sweep = None
        else:
            self._sweep = loop.call_at(oldest + self._idle_timeout, self._close_expired)

    def forget(self, conn: UpstreamConnection) -> None:
        idle = self._idle.get(conn.origin.key)
        if idle and conn in idle:
            idle.remove(conn)

    def close_all(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self._idle.values():
            while idle:
                idle.pop().close()

    @property
    def idle_count(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def __repr__(self) -> str:
        return f"<UpstreamPool idle={self.idle_count} opened={self.opened} reused={self.reused}>"
