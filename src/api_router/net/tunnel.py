"""A WebSocket session through the router (OpenAI Realtime, ``GET /v1/realtime``; endpoints issue).

The handshake goes upstream as any request does (routing.py writes its head: the router's
credentials, never the client's when the router has its own) with its Upgrade kept; the
upstream's answer comes back. After a 101 the connection is no longer HTTP: bytes are relayed
both ways verbatim, the router parses no frames.

Rule 1: from its request on, the client connection is the tunnel's: the transport is switched to
        the tunnel's client end at once, so frames a client sends early wait here (never in an
        HTTP parser; reading pauses once bufferSize bytes wait) and go upstream after the 101.
        The client is still read meanwhile, so a client that leaves during the handshake is seen.
Rule 2: backpressure: an end whose peer does not read (pause_writing) stops the reading of the
        other end until it drains (resume_writing); neither buffer grows much past bufferSize.
Rule 3: a close on either end (EOF, reset, close) closes the other once what was written to it
        (a close frame, say) is flushed, within LINGER_SECS (then it is aborted: a peer that
        does not read must not hold the connection); the access line is written then, once.
Rule 4: an upstream that refuses the upgrade is answered for: its status, headers and body go to
        the client as an ordinary response, then the connection closes; one that cannot be
        reached is a 502 (504 when it does not answer within timeouts.readSecs).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from api_router import access_log
from api_router.core.http import Framing, HeaderList, end_to_end, header_value, response_head
from api_router.core.request_head import offers_only_h2c, offers_websocket
from api_router.errors import ApiFlavor, GatewayError, UpgradeRequired, UpstreamTimeout, UpstreamUnreachable
from api_router.net.tasks import spawn
from api_router.net.upstream import MAX_RESPONSE_HEAD_BYTES, MAX_RESPONSE_HEADERS
from api_router.routing import Route, RouteKind

if TYPE_CHECKING:
    from api_router.core.balancer import Backend
    from api_router.net.ports import Gateway
    from api_router.net.request import Request
    from api_router.targets import Target

LINGER_SECS = 5.0  # as nginx's lingering_timeout
_MAX_REFUSAL_BODY = 1 << 20  # an upstream's refusal is a small error body; more is a broken upstream
# Framing is the router's; the request id the client knows is the router's.
_NOT_FORWARDED = frozenset({b"content-length", b"x-request-id"})


def upgrade_refused(req: Request, upgrade: bool, length: bytes | None, idle: bool) -> bool:
    """Whether a request's upgrade is refused (400 upgrade_not_supported), once its route is known.

    An h2c-only offer is ignored, as nginx does: the request is answered in HTTP/1.1 and its
    Content-Length body read raw (llhttp leaves it to us). A WebSocket offer on a tunnel route is
    the tunnel's when nothing before it on the connection is still to be answered (what follows
    its head are frames, not requests); a tunnel route asked without an upgrade is answered 426.
    """
    if upgrade and offers_only_h2c(req.headers):
        req.raw_body_left = int(length) if length is not None and length.isdigit() else 0
        return False
    route = req.route
    if not isinstance(route, Route) or route.kind is not RouteKind.TUNNEL:
        return upgrade
    if not upgrade:
        if req.error is None:
            message = f"{route.path} takes a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)"
            req.error = UpgradeRequired(message, headers=(("Upgrade", "websocket"),))
        return False
    if not idle or not offers_websocket(req.headers):
        return True
    req.keep_alive = False  # after the tunnel nothing more on this connection is a request
    return False


class TunnelClient(Protocol):
    """What a tunnel uses of its client connection (a ``DownstreamProtocol``)."""

    fetching: bool

    @property
    def app(self) -> Gateway: ...
    @property
    def peer(self) -> str | None: ...
    @property
    def transport(self) -> asyncio.Transport: ...
    def send_error(
        self, error: GatewayError, flavor: ApiFlavor, request_id: bytes, keep_alive: bool = True
    ) -> int: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def close(self) -> None: ...


class _End(asyncio.Protocol):
    """One end of a tunnel: tells the tunnel what its transport reports."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport | None) -> None:
        self.tunnel = tunnel
        self.transport = transport  # the upstream end's once connected
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.tunnel.received(self, data)

    def eof_received(self) -> bool:
        return False  # a half-close ends the session: the transport closes (rule 3)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.tunnel.lost(self, exc)

    def pause_writing(self) -> None:
        self.tunnel.writable(self, False)

    def resume_writing(self) -> None:
        self.tunnel.writable(self, True)


def _read(transport: asyncio.Transport | None, on: bool) -> None:
    if transport is None or transport.is_closing():
        return
    if on:
        transport.resume_reading()
    else:
        transport.pause_reading()


class Tunnel:
    """One upgraded request: the handshake, then the relay, until either end closes."""

    def __init__(self, conn: TunnelClient, req: Request, route: Route) -> None:
        self.conn, self.req, self.route = conn, req, route
        self.client = _End(self, conn.transport)
        self.upstream = _End(self, None)
        self.early = bytearray()  # client bytes before the 101 (rule 1)
        self.parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: HeaderList = []
        self.head_bytes = 0
        self.body = bytearray()
        self.open = self.done = False
        self.upstream_full = False  # the upstream does not read: the client is not read (rule 2)
        self.to_client = self.to_upstream = 0  # bytes relayed after the 101, each way
        self.backend: Backend | None = None
        self.backend_name: str | None = None
        self.judged = False  # the backend's breaker has heard how the handshake went
        self.timer: asyncio.TimerHandle | None = None
        # what admission reads and writes (ports.Admitted): a tunnel holds no stream slot or quota
        self.quota_ticket: object | None = None
        self.slot_key: str | None = None
        self.streaming = False
        self.client_name = req.client_name
        self.reserve_tokens = 0

    def start(self) -> None:
        conn = self.conn
        conn.fetching = True  # busy, as a fetch is: a drain gives the session its grace (App.drain)
        transport = conn.transport
        transport.set_protocol(self.client)  # rule 1
        transport.set_write_buffer_limits(high=self.route.buffer_size)
        spawn(self._connect())

    async def _connect(self) -> None:
        req, route, app, peer = self.req, self.route, self.conn.app, self.conn.peer
        runtime = req.runtime
        try:
            key = runtime.admission_key(route, False, req.client, req.headers, peer)
            if key is not None:
                now = runtime.admits_now()
                refused = runtime.admit_now(self, key) if now else await runtime.admit(self, key)
                if refused is not None:
                    raise refused
            target = await self._open_upstream()
        except GatewayError as error:
            self.refuse(error)
            return
        transport = self.upstream.transport
        if self.done or transport is None:  # the client left meanwhile
            if transport is not None:
                transport.close()
            return
        head = runtime.router.upstream_head(
            route, target, req.headers, req.query, 0, req.request_id, peer, False, req.method, req.path
        )
        transport.set_write_buffer_limits(high=route.buffer_size)
        transport.write(head)
        self.timer = app.loop.call_later(runtime.read_timeout, self._timed_out)

    async def _open_upstream(self) -> Target:
        """A connection to a backend of the route's group; one that cannot be reached counts
        against its breaker and the next is tried, up to the group's retries (as net/attempts.py)."""
        app = self.conn.app
        group = self.req.runtime.backends.group(self.route.backend_group)
        tried: list[str] = []
        error: GatewayError | None = None
        while len(tried) <= group.retries and not self.done:
            backend = group.pick(app.loop.time(), tried)
            if backend is None:
                break
            tried.append(backend.name)
            self.backend, self.backend_name = backend, backend.name
            backend.in_flight += 1  # for the session's life: least-connections sees it
            target = group.targets[backend.name]
            try:
                await app.pool.open_raw(target.origin, lambda: self.upstream)
            except GatewayError as failed:
                self._verdict(False)
                self._release_backend()
                error = failed
                continue
            return target
        raise error or group.unavailable()

    def _verdict(self, success: bool | None) -> None:
        """The backend's breaker hears how the handshake went, once (True: it answered)."""
        backend = self.backend
        if backend is None or self.judged:
            return
        self.judged = True
        backend.breaker.record(success, self.conn.app.loop.time())
        elapsed = time.perf_counter() - self.req.started_at
        self.conn.app.metrics.backend_result(backend.name, success, elapsed)

    def _release_backend(self) -> None:
        backend, self.backend, self.judged = self.backend, None, False
        if backend is not None:
            backend.in_flight -= 1

    # -- what the ends report -----------------------------------------------------------
    def received(self, end: _End, data: bytes) -> None:
        if self.done:
            return
        if end is self.client:
            if self.open:
                self.to_upstream += len(data)
                cast(asyncio.Transport, self.upstream.transport).write(data)
            else:
                self.early += data
                if len(self.early) >= self.route.buffer_size:  # enough waits (rule 1)
                    _read(self.client.transport, False)
        elif self.open:
            self.to_client += len(data)
            cast(asyncio.Transport, self.client.transport).write(data)
        else:
            self._read_answer(data)

    def writable(self, end: _End, writable: bool) -> None:
        """Rule 2: ``end``'s peer reads again (or stopped): the other end is read (or not)."""
        if end is self.client:
            _read(self.upstream.transport, writable)
        else:
            self.upstream_full = not writable
            if self.open:
                _read(self.client.transport, writable)

    def lost(self, end: _End, exc: Exception | None) -> None:
        if end is self.client:
            self.conn.connection_lost(exc)  # the connection's own bookkeeping (app.connections)
        if self.done:
            return
        if self.open:
            by = "client" if end is self.client else "upstream"
            self._finish(101, self.to_client, f"closed_by_{by}")
        elif end is self.client:
            self._finish(499, 0, "client_closed")
        elif self.status >= 200:
            self._answer_refusal()  # a close-delimited answer ends with its connection
        else:
            message = f"upstream {self.backend_name} closed before answering the upgrade"
            self.refuse(UpstreamUnreachable(message))

    def _timed_out(self) -> None:
        self.timer = None
        if not self.open:
            self.refuse(UpstreamTimeout(f"upstream {self.backend_name} did not answer the upgrade in time"))

    # -- the upstream's answer to the handshake -----------------------------------------
    def _read_answer(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._switch(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            reason = exc.__context__ if isinstance(exc.__context__, GatewayError) else exc
            message = f"upstream {self.backend_name} answered the upgrade badly: {reason}"
            self.refuse(UpstreamUnreachable(message))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > MAX_RESPONSE_HEAD_BYTES or len(self.headers) >= MAX_RESPONSE_HEADERS:
            raise GatewayError("a response head over the limits")
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = cast(httptools.HttpResponseParser, self.parser).get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > _MAX_REFUSAL_BODY:
            raise GatewayError("a refusal body over 1 MiB")

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self._answer_refusal()
        elif self.status != 101:  # 100 Continue and the like: the answer is still to come
            self.headers, self.head_bytes = [], 0
        # a 101 with its Upgrade: the parser raises HttpParserUpgrade next (_read_answer)

    def _switch(self, rest: bytes) -> None:
        """The upstream switched: the client gets the 101, then the bytes start flowing."""
        self.parser = None
        self._verdict(True)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        upgrade = header_value(self.headers, b"upgrade") or b"websocket"
        headers = [(b"connection", b"Upgrade"), (b"upgrade", upgrade)]
        headers += end_to_end(self.headers, _NOT_FORWARDED)  # Sec-WebSocket-Accept/-Protocol/...
        headers.append((b"x-request-id", self.req.request_id))
        self.open = True
        self.to_client += len(rest)
        cast(asyncio.Transport, self.client.transport).write(response_head(101, headers, Framing.NONE) + rest)
        if self.early:
            self.to_upstream += len(self.early)
            cast(asyncio.Transport, self.upstream.transport).write(bytes(self.early))
            self.early = bytearray()
        _read(self.client.transport, not self.upstream_full)  # paused if early bytes filled up

    def _answer_refusal(self) -> None:
        """Rule 4: the upstream's own answer, as an ordinary response that closes."""
        if self.done:
            return
        self.parser = None
        self._verdict(self.status < 500)
        headers = end_to_end(self.headers, _NOT_FORWARDED)
        headers += [(b"x-request-id", self.req.request_id), (b"connection", b"close")]
        body = bytes(self.body)
        self.conn.transport.write(response_head(self.status, headers, Framing.LENGTH, len(body)) + body)
        self._finish(self.status, len(body), "upstream_refused")

    # -- the end ------------------------------------------------------------------------
    def refuse(self, error: GatewayError) -> None:
        """An answer of the router's own (502, 504, a limit); then both ends close."""
        if self.done:
            return
        self._verdict(False)  # no verdict yet: the backend failed (or was never reached)
        sent = self.conn.send_error(error, self.route.flavor, self.req.request_id, keep_alive=False)
        self._finish(error.status, max(sent, 0), "rejected")

    def _finish(self, status: int, body_bytes: int, outcome: str) -> None:
        """Rule 3: both ends close (each after its buffered bytes); counted, one access line."""
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._verdict(None)  # the client left before the upstream answered
        self._release_backend()
        self.conn.fetching = False
        loop = self.conn.app.loop
        for end in (self.client, self.upstream):
            transport = end.transport
            if transport is not None and not end.lost:
                if end is self.client:
                    self.conn.close()
                else:
                    transport.close()
                if transport.get_write_buffer_size():  # not flushed yet: it gets a while (rule 3)
                    loop.call_later(LINGER_SECS, transport.abort)
        self.conn.app.metrics.local_response(self.route.path, status)
        access_log.local_access_line(
            self.req.request_id,
            self.route.path,
            status,
            self.req.started_at,
            body_bytes,
            outcome,
            {"client": self.client_name, "backend": self.backend_name, "bytes_upstream": self.to_upstream},
        )
