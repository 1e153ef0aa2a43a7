"""The client side: parse requests with httptools, admit them, hand each to a Forwarder.

One exchange runs at a time per connection; pipelined requests wait in a queue. Bodies of
JSON routes are read whole (capped) so the model can be mapped; multipart and pass-through
bodies stream to the upstream as they arrive.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import secrets
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import httptools

from api_router import logs
from api_router.cache import CachedResponse, MemoryCache
from api_router.core.cache_key import cache_key
from api_router.core.flow_control import QUEUE_FULL, UNREADABLE, UPSTREAM_FULL, ReadGate
from api_router.core.http import Framing, HeaderList, header_value, response_head
from api_router.core.multipart import MultipartModelRewriter, boundary_from_content_type
from api_router.core.reserve import reservation
from api_router.errors import (
    ApiFlavor,
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    VersionNotSupported,
)
from api_router.net.forward import Forwarder
from api_router.net.tasks import spawn
from api_router.routing import Route, RouteKind, flavor_for_path
from api_router.targets import Target

if TYPE_CHECKING:
    from api_router.net.ports import BackendGroup, Gateway

_MAX_QUEUED = 16
_REQUEST_ID_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_READ_HERE = frozenset({b"content-length", b"x-request-id", b"transfer-encoding", b"expect"})


class _Request:
    __slots__ = (
        "body",
        "body_bytes",
        "client_name",
        "error",
        "forwarder",
        "head_done",
        "header_bytes",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "request_id",
        "route",
        "started_at",
        "url",
    )

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.url = b""
        self.headers: HeaderList = []
        self.header_bytes = 0
        self.head_done = False  # after it, on_header reports trailer fields of a chunked body
        self.method = "GET"
        self.path = "-"  # until the request target is parsed: "-" in the access line
        self.query = b""
        self.route: Route | RouteKind | None = None
        self.error: GatewayError | None = None
        self.client_name = "anonymous"  # the gateway client (core/access.py) once authorized
        self.body = bytearray()
        self.body_bytes = 0
        self.forwarder: Forwarder | None = None
        self.keep_alive = True
        self.request_id = b""


class DownstreamProtocol(asyncio.Protocol):
    # Slots: one of these per client connection, thousands at once; a dict would cost ~1 KB more.
    __slots__ = (
        "_closed",
        "_fetching",
        "_last_data",
        "_max_header_bytes",
        "_max_headers",
        "_queue",
        "_read_gate",
        "_req",
        "_rule",
        "_timer",
        "_unreadable",
        "_wake_every",
        "_write_blocked",
        "_write_limit",
        "app",
        "close_after",
        "exchange",
        "http11",
        "parser",
        "peer",
        "transport",
    )

    def __init__(self, app: Gateway) -> None:
        self.app = app
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set in connection_made
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.peer: str | None = None
        self.http11 = True
        # The exchange's request said "Connection: close" (or is HTTP/1.0 without keep-alive):
        # RFC 9112 §9.6, the connection closes after its response, which says so.
        self.close_after = False
        self.exchange: Forwarder | None = None
        self._req: _Request | None = None
        self._queue: deque[_Request] | None = None  # pipelined requests; made on first use (~0.4 KB)
        self._read_gate = ReadGate()
        # The transport's write buffer is above its high-water mark: the client is not reading.
        # No further queued request is answered until it drains (a pipelining client that never
        # read grew the router by ~68 MB per 100 000 requests).
        self._write_blocked = False
        self._closed = False
        # The request stream broke (junk after valid requests): the error to send, and its API
        # shape, once the requests before it have their answers.
        self._unreadable: tuple[GatewayError, ApiFlavor] | None = None
        self._fetching = False  # a /v1/models answer is being fetched
        limits = app.config.limits
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._wake_every = min(limits.header_timeout_secs, limits.body_timeout_secs)
        self._last_data = 0.0
        self._rule: tuple[float, float, bool] | None = None  # (from, seconds, absolute): see _arm
        self._timer: asyncio.TimerHandle | None = None
        self._write_limit = 0  # the write buffer's high-water mark, once an exchange set it

    # -- asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self.app.connection_opened(self)
        if len(self.app.connections) > self.app.config.limits.max_connections:
            busy = ServiceUnavailable(
                "too many connections to this router; retry shortly",
                code="too_many_connections",
                headers=(("Retry-After", "1"),),
            )
            request_id = _request_id(None)
            sent = self.send_error(busy, ApiFlavor.OPENAI, request_id, keep_alive=False)
            logs.local_access_line(request_id, "-", busy.status, None, sent, "rejected")
            self._closed = True
            return
        self._arm(self.app.keep_alive_timeout)

    def data_received(self, data: bytes) -> None:
        self._last_data = self.app.loop.time()
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            req = self._req
            if self._closed:
                return  # a callback already answered and closed
            if req is not None and isinstance(req.error, HeadersTooLarge):
                self._reject_and_close(req.error)
            else:
                logs.log.exception("request handling failed")
                self._reject_and_close(GatewayError("internal error while reading the request"))
        except httptools.HttpParserUpgrade:
            self._reject_and_close(
                BadRequest("protocol upgrades are not supported", code="upgrade_not_supported")
            )
        except httptools.HttpParserError as exc:
            self._reject_and_close(BadRequest(f"malformed HTTP request: {exc}", code="malformed_request"))
        else:
            if self.exchange is not None and self._req is None:
                # At a message boundary while a response streams: a new parser is made if the
                # client sends again, so a long stream does not hold one (~0.5 KB).
                self.parser = None

    def eof_received(self) -> bool:
        return False  # a client that half-closes is gone: close, which ends any stream

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._disarm()
        if self._timer is not None:  # nothing left to time: free the protocol now
            self._timer.cancel()
            self._timer = None
        self.app.connection_closed(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.downstream_lost()
        req = self._req
        if req is not None and req.forwarder is not None and req.forwarder is not exchange:
            req.forwarder.downstream_lost()

    def pause_writing(self) -> None:
        self._write_blocked = True
        if self.exchange is not None:
            self.exchange.downstream_writable(False)

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self.exchange is not None:
            self.exchange.downstream_writable(True)
        elif self._queue:
            self._dispatch()

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._req = _Request(time.perf_counter())
        # Slowloris: the whole head must arrive within headerTimeoutSecs of its first byte.
        self._arm(self.app.header_timeout, absolute=True)

    def on_url(self, url: bytes) -> None:
        req = self._req
        assert req is not None
        req.url += url
        req.header_bytes += len(url)
        if req.header_bytes > self._max_header_bytes:
            self._too_large(req, "request line and headers are too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._req
        assert req is not None
        req.header_bytes += len(name) + len(value) + 4
        if not req.head_done:
            req.headers.append((name.lower(), value))
        # else a chunked body's trailer field: dropped, never merged into the head (it would go
        # upstream as a header and could carry credentials), but counted against the same limits
        if req.header_bytes > self._max_header_bytes:
            self._too_large(req, f"request headers over {self._max_header_bytes} bytes")
        elif len(req.headers) > self._max_headers:
            self._too_large(req, f"more than {self._max_headers} request headers")

    @staticmethod
    def _too_large(req: _Request, message: str) -> None:
        req.error = HeadersTooLarge(message)
        raise req.error  # stops the parser; data_received answers 431 and closes

    def on_headers_complete(self) -> None:
        req = self._req
        assert req is not None
        req.head_done = True
        parser = self.parser
        assert parser is not None  # a callback of this very parser
        req.method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        self.http11 = version == "1.1"
        req.keep_alive = parser.should_keep_alive()
        request_id = length = expect = None
        bad_coding = False
        for name, value in req.headers:  # one pass for the few headers the router itself reads
            if name in _READ_HERE:
                if name == b"content-length":
                    length = value
                elif name == b"x-request-id":
                    request_id = request_id or value
                elif name == b"transfer-encoding":
                    bad_coding = bad_coding or value.strip().lower() != b"chunked"
                else:
                    expect = value
        req.request_id = _request_id(request_id)
        self._arm(self.app.body_timeout)  # idle time allowed between body bytes
        if version not in ("1.0", "1.1"):  # HTTP/2.0 or 3.0 in an HTTP/1 request line
            error: GatewayError = VersionNotSupported(f"HTTP/{version} is not supported here; use HTTP/1.1")
            self._reject_and_close(error)
            raise error  # stop parsing: nothing after this head may be read as a request
        if parser.should_upgrade() or req.method == "CONNECT":
            error = BadRequest(
                "protocol upgrades and CONNECT are not supported", code="upgrade_not_supported"
            )
            self._reject_and_close(error)
            raise error  # stop parsing: nothing after this head may be read as a request
        if bad_coding:
            # We decode no transfer coding but chunked; anything else must not reach the upstream.
            error = BadRequest("unsupported Transfer-Encoding", code="unsupported_transfer_encoding")
            self._reject_and_close(error)
            raise error
        if not req.url.startswith(b"/"):
            # Absolute-form or asterisk-form: answered, then closed (SECURITY.md), as a proxy
            # request this router will not serve must not leave a connection open for the next.
            req.error = BadRequest(
                "only origin-form request targets (/path) are accepted", code="invalid_url"
            )
            req.keep_alive = False
            return
        try:
            url: Any = httptools.parse_url(req.url)  # .query is None without one (stub says bytes)
            req.path = url.path.decode()
            req.query = url.query or b""
            req.route = self.app.router.match(req.method, req.path)
        except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
            req.error = BadRequest("invalid request target", code="invalid_url")
            return
        except GatewayError as error:
            req.error = error
            return
        route = req.route
        if not isinstance(route, Route):
            return
        limit = self.app.max_multipart_bytes if route.kind is RouteKind.MULTIPART else self.app.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            self._reject_and_close(PayloadTooLarge(f"request body over the {limit} byte limit"), route.flavor)
            return
        if expect == b"100-continue" and self.http11:
            self.transport.write(_CONTINUE)
        idle = self.exchange is None and not self._fetching and not self._queue
        if route.kind in (RouteKind.MULTIPART, RouteKind.PASSTHROUGH) and idle:
            self._start_streamed(req, route, int(length) if length is not None and length.isdigit() else None)

    def on_body(self, body: bytes) -> None:
        req = self._req
        if req is None or req.error is not None:
            return
        req.body_bytes += len(body)
        route = req.route
        limit = self.app.max_multipart_bytes
        if isinstance(route, Route) and route.kind is RouteKind.JSON:
            limit = self.app.max_body_bytes
        if req.forwarder is not None and req.body_bytes <= limit:
            req.forwarder.request_body(body)
            return
        if req.forwarder is None:
            req.body += body
        if req.body_bytes > limit:  # also catches chunked bodies, which announce no length
            flavor = route.flavor if isinstance(route, Route) else ApiFlavor.OPENAI
            self._reject_and_close(PayloadTooLarge(f"request body over the {limit} byte limit"), flavor)

    def on_message_complete(self) -> None:
        req, self._req = self._req, None
        if req is None or self._closed:
            return
        assert self.parser is not None
        req.keep_alive = req.keep_alive and self.parser.should_keep_alive()
        self._disarm()
        if req.forwarder is not None:
            req.forwarder.request_body_end()
            return
        if self._queue is None and self._free_to_answer():
            self._handle(req)  # the common case: nothing is waiting, so no queue is needed
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(req)
        if len(self._queue) > _MAX_QUEUED:
            self.pause_reading(QUEUE_FULL)
        self._dispatch()

    # -- dispatch -----------------------------------------------------------------------
    def _free_to_answer(self) -> bool:
        """Nothing is being answered and the client reads what it was sent."""
        return self.exchange is None and not self._fetching and not self._write_blocked and not self._closed

    def _dispatch(self) -> None:
        queue = self._queue
        while queue and self._free_to_answer():
            self._handle(queue.popleft())
        if not queue:
            self._queue = None
            if self._unreadable is not None:
                if self._free_to_answer():
                    self._reject_and_close(*self._unreadable)
                return
            self.resume_reading(QUEUE_FULL)
        elif len(queue) <= _MAX_QUEUED // 2:
            self.resume_reading(QUEUE_FULL)

    def _refuse(self, req: _Request, error: GatewayError, flavor: ApiFlavor = ApiFlavor.OPENAI) -> None:
        """Answer a request the router itself turned down (the connection stays usable)."""
        sent = self.send_error(error, flavor, req.request_id, req.keep_alive)
        self._answered(req, error.status, sent, "rejected")

    def _handle(self, req: _Request) -> None:
        route = req.route
        if req.error is not None or route is None:
            flavor = route.flavor if isinstance(route, Route) else flavor_for_path(req.path)
            self._refuse(req, req.error or BadRequest("bad request"), flavor)
            return
        if route is RouteKind.HEALTH:
            self._send_local(req, 200, b"application/json", self.app.health_body())
        elif route is RouteKind.METRICS:
            body, content_type = self.app.render_metrics()
            self._send_local(req, 200, content_type, body)
        elif route is RouteKind.CACHE_STATS:
            self._send_local(req, 200, b"application/json", self.app.cache_stats_body())
        elif route is RouteKind.ADMIN_USAGE:
            self._fetching = True
            spawn(self._answer_admin_usage(req))
        elif isinstance(route, Route) and route.kind is RouteKind.MODELS:
            try:
                self._authorize(req, route, None)
            except GatewayError as error:
                self._refuse(req, error, route.flavor)
                return
            self._fetching = True
            spawn(self._answer_models(req, route))
        elif isinstance(route, Route) and route.kind is RouteKind.JSON:
            self._start_json(req, route)
        elif isinstance(route, Route):  # a streamed-body route that had to wait its turn
            self._start_streamed(req, route, len(req.body))
            if req.forwarder is not None:  # None: refused (and answered) by access control
                req.forwarder.request_body(bytes(req.body))
                req.forwarder.request_body_end()

    def _start_json(self, req: _Request, route: Route) -> None:
        try:
            prepared = self.app.router.prepare_json(route, bytes(req.body))
            self._authorize(req, route, prepared.model)
        except GatewayError as error:
            self._refuse(req, error, route.flavor)
            return
        group = self.app.backends.group(prepared.group or route.backend_group)
        if prepared.stream and self.app.metrics.active_streams >= self.app.max_open_streams:
            busy = ServiceUnavailable(
                "too many open streams on this router; retry shortly",
                code="too_many_streams",
                headers=(("Retry-After", "1"),),
            )
            self._refuse(req, busy, route.flavor)
            return
        cache = self.app.cache
        if cache is None or prepared.stream or not self.app.cacheable(prepared.body):
            self._begin(
                req,
                route,
                body=prepared.raw,
                streaming=prepared.stream,
                group=group,
                model=prepared.model,
                strip_usage=prepared.strip_usage,
                reserve_tokens=reservation(prepared.body, len(prepared.raw)),
            )
            return
        control = header_value(req.headers, b"cache-control") or b""
        if b"no-cache" in control or b"no-store" in control:
            self._begin(
                req,
                route,
                body=prepared.raw,
                streaming=False,
                group=group,
                x_cache=b"BYPASS",
                model=prepared.model,
            )
            return
        key = cache_key(route.path, prepared.body, None)
        if isinstance(cache, MemoryCache):
            self._answer_cached(req, route, prepared.raw, group, key, cache.get_now(key), prepared.model)
        else:
            self._fetching = True
            spawn(self._lookup_then_answer(req, route, prepared.raw, group, key, prepared.model))

    async def _lookup_then_answer(
        self, req: _Request, route: Route, body: bytes, group: BackendGroup, key: str, model: str | None
    ) -> None:
        assert self.app.cache is not None
        cached = await self.app.cache.get(key)
        self._fetching = False
        if not self._closed:
            self._answer_cached(req, route, body, group, key, cached, model)
            if self.exchange is None:
                self._dispatch()

    def _answer_cached(
        self,
        req: _Request,
        route: Route,
        body: bytes,
        group: BackendGroup,
        key: str,
        cached: CachedResponse | None,
        model: str | None,
    ) -> None:
        if cached is None:
            self._begin(
                req,
                route,
                body=body,
                streaming=False,
                group=group,
                cache_key=key,
                x_cache=b"MISS",
                model=model,
            )
            return
        headers = [*cached.headers, (b"x-request-id", req.request_id), (b"x-cache", b"HIT")]
        if not req.keep_alive:
            headers.append((b"connection", b"close"))
        self.transport.write(
            response_head(cached.status, headers, Framing.LENGTH, len(cached.body)) + cached.body
        )
        self.app.metrics.local_response(route.path, cached.status)
        logs.local_access_line(
            req.request_id, route.path, cached.status, req.started_at, len(cached.body), "cache_hit"
        )
        if not req.keep_alive:
            self._closed = True
            self.transport.close()

    def _authorize(self, req: _Request, route: Route, model: str | None) -> None:
        """Gateway access control (when ``clients`` are configured): 401 or 403, else nothing."""
        client = self.app.client_of(req.headers)
        if client is not None:
            self.app.access.authorize(client, route.path, model)
            req.client_name = client.name

    def _start_streamed(self, req: _Request, route: Route, length: int | None) -> None:
        try:
            self._authorize(req, route, None)  # a multipart model is only known once streamed
        except GatewayError as error:
            self._reject_and_close(error, route.flavor)
            return
        rewriter = None
        if route.kind is RouteKind.MULTIPART:
            boundary = boundary_from_content_type(
                (header_value(req.headers, b"content-type") or b"").decode("latin-1")
            )
            if boundary is not None:
                rewriter = MultipartModelRewriter(boundary, self.app.router.model_names())
        group = self.app.backends.group(route.backend_group)
        req.forwarder = self._begin(
            req, route, body=None, streaming=False, group=group, rewriter=rewriter, length=length
        )

    def _begin(
        self,
        req: _Request,
        route: Route,
        *,
        body: bytes | None,
        streaming: bool,
        group: BackendGroup,
        rewriter: MultipartModelRewriter | None = None,
        length: int | None = None,
        cache_key: str | None = None,
        x_cache: bytes | None = None,
        model: str | None = None,
        strip_usage: bool = False,
        reserve_tokens: int = 0,
    ) -> Forwarder:
        router = self.app.router
        headers, query, request_id, peer = req.headers, req.query, req.request_id, self.peer
        self.close_after = not req.keep_alive
        tracing, span = self.app.tracing, None
        if tracing is not None:  # its traceparent goes into headers, so upstream (tracing.py)
            mapped = self.app.config.mapped_model(model) if model is not None else None
            span = tracing.start(route.path, route.flavor.system, model, mapped, headers, req.started_at)

        def head(target: Target, body_length: int | None) -> bytes:
            return router.upstream_head(
                route, target, headers, query, body_length, request_id, peer, streaming, req.method, req.path
            )

        forwarder = Forwarder(
            self.app,
            self,
            route,
            request_id=request_id,
            head=head,
            body=body,
            streaming=streaming,
            started_at=req.started_at,
            rewriter=rewriter,
            body_length=length,
            group=group,
            cache_key=cache_key,
            x_cache=x_cache,
            client_key=self.app.admission_key(route, streaming, headers, peer),
            client_name=req.client_name,
            model=model,
            strip_usage=strip_usage,
            reserve_tokens=reserve_tokens,
            span=span,
        )
        self.exchange = forwarder
        if route.buffer_size != self._write_limit:  # backpressure starts at the route's bufferSize
            self._write_limit = route.buffer_size
            self.transport.set_write_buffer_limits(high=route.buffer_size)
        forwarder.start()
        return forwarder

    async def _answer_models(self, req: _Request, route: Route) -> None:
        status, content_type, body = await self.app.fetch_models(
            route, req.headers, req.request_id, self.peer
        )
        self._fetching = False
        if self._closed:
            return
        self._send_local(req, status, content_type, body)
        self._dispatch()

    async def _answer_admin_usage(self, req: _Request) -> None:
        status, body = await self.app.admin_usage(req.headers, req.query)
        self._fetching = False
        if self._closed:
            return
        self._send_local(req, status, b"application/json", body)
        self._dispatch()

    # -- writing ------------------------------------------------------------------------
    def _send_local(self, req: _Request, status: int, content_type: bytes, body: bytes) -> None:
        headers = [(b"content-type", content_type), (b"x-request-id", req.request_id)]
        if not req.keep_alive:
            headers.append((b"connection", b"close"))
        payload = b"" if req.method == "HEAD" else body
        self.transport.write(response_head(status, headers, Framing.LENGTH, len(body)) + payload)
        self._answered(req, status, len(payload), "answered")
        if not req.keep_alive:
            self.transport.close()

    def _answered(self, req: _Request, status: int, body_bytes: int, outcome: str) -> None:
        """A response the router wrote itself is counted and gets its access line, as forwarded ones
        (``body_bytes`` -1: the connection was gone, nothing was written, so no line)."""
        self.app.metrics.local_response(req.path, status)
        if body_bytes >= 0:
            logs.local_access_line(req.request_id, req.path, status, req.started_at, body_bytes, outcome)

    def send_error(
        self, error: GatewayError, flavor: ApiFlavor, request_id: bytes, keep_alive: bool = True
    ) -> int:
        """Write a whole error response; returns the body's size, or -1 if the connection was gone."""
        if self._closed:
            return -1
        body = error.body(flavor)
        headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id)]
        headers.extend((name.encode(), value.encode()) for name, value in error.headers)
        if not keep_alive:
            headers.append((b"connection", b"close"))
        self.transport.write(response_head(error.status, headers, Framing.LENGTH, len(body)) + body)
        if not keep_alive:
            self.transport.close()
        return len(body)

    def _reject_and_close(self, error: GatewayError, flavor: ApiFlavor = ApiFlavor.OPENAI) -> None:
        """For input we stop reading: answer once, then close (the parser state is unusable)."""
        req = self._req
        if req is not None and req.forwarder is not None:
            req.forwarder.fail(error)  # answers if nothing was sent yet, and closes its upstream
        elif self.exchange is not None or self._queue or self._fetching:
            # Requests before the bad one are still being answered: they get their answers (the
            # old router closed at once, and a valid request's answer was lost), then this error.
            if self._unreadable is None:
                self._unreadable = (error, flavor)
                self._req = None
                self.pause_reading(UNREADABLE)
            return
        elif self.exchange is None:
            if req is None:  # input that never became a request: the line still has an id
                req = _Request(time.perf_counter())
            if not req.request_id:
                req.request_id = _request_id(None)
            sent = self.send_error(error, flavor, req.request_id, keep_alive=False)
            self._answered(req, error.status, sent, "rejected")
        self._closed = True
        self.transport.close()

    # -- timers -------------------------------------------------------------------------
    # A request passes through up to three deadlines (keep-alive idle, head, body). Cancelling
    # and re-creating a loop timer for each cost more than the rest of the request's bookkeeping,
    # so a deadline is a rule the one timer checks when it fires, and the timer moves only when a
    # new deadline comes before it. Idle connections wake every _wake_every seconds at most,
    # which lets the next request's head deadline fit under the keep-alive timer already there.
    # Per request: one timer made (keep-alive, after the response), one cancelled (request in).
    def _arm(self, seconds: float, absolute: bool = False) -> None:
        """Deadline: ``seconds`` from now (absolute) or since the last byte read (idle)."""
        now = self.app.loop.time()
        self._rule = (now, seconds, absolute)
        timer = self._timer
        if timer is not None:
            if timer.when() <= now + seconds:
                return
            timer.cancel()
        self._timer = self.app.loop.call_at(now + min(seconds, self._wake_every), self._on_timer)

    def _disarm(self) -> None:
        """No deadline: the request is in, and the exchange's own watchdog guards the rest.

        The timer is left to lapse (it finds no rule and is dropped, at most ``_wake_every``
        later, so a long stream soon holds none) rather than cancelled: the next request's
        head deadline reuses it. Cancelling here and making a new timer per request cost
        100 000 pipelined requests +45 MB of RSS (uvloop frees cancelled timers late) and
        instructions on every request.
        """
        self._rule = None

    def _on_timer(self) -> None:
        self._timer = None
        rule = self._rule
        if self._closed or rule is None:
            return
        start, seconds, absolute = rule
        since = start if absolute else max(start, self._last_data)
        if self.app.loop.time() < since + seconds:
            self._timer = self.app.loop.call_at(since + seconds, self._on_timer)
            return
        req = self._req
        if req is None and self.exchange is None and not self._fetching:
            self._closed = True
            self.transport.close()  # idle keep-alive connection
        elif req is not None and req.forwarder is None and self.exchange is None:
            self._reject_and_close(RequestTimeout("the request was not received in time"))
        elif req is not None and req.forwarder is not None:
            self._closed = True
            self.transport.close()  # an upload stalled mid-body: closing ends its upstream exchange too
        elif absolute:
            # A head deadline passed while an earlier response is still going out (pipelining):
            # it cannot be answered before that response ends; check again soon, deadline kept.
            self._timer = self.app.loop.call_at(self.app.loop.time() + self._wake_every, self._on_timer)
        else:
            self._arm(seconds)  # an exchange is running; its own watchdog guards the upstream

    def exchange_finished(self, forwarder: object, keep_alive: bool) -> None:
        if self.exchange is forwarder:
            self.exchange = None
        if self.app.draining or self.close_after:
            keep_alive = False
        req = self._req
        if req is not None and req.forwarder is forwarder:
            keep_alive = False  # the response ended before the client finished its body
        if not keep_alive or self._closed:
            self._closed = True
            self.transport.close()
            return
        self.resume_reading(UPSTREAM_FULL)  # the body is whole (else we closed above): nothing left to hold
        if req is None:
            self._arm(self.app.keep_alive_timeout)
        # else a request began while the response was going out: it keeps its own deadline
        # (replacing its absolute head deadline by the idle rule let a head dripped one line at
        # a time stay open for ever: slowloris on a kept-alive connection).
        self._dispatch()

    def close_if_idle(self) -> None:
        """Draining: a connection between requests is closed now, a busy one after its response."""
        if self.exchange is None and not self._fetching and self._req is None:
            self._closed = True
            self.transport.close()

    def shut_down(self) -> None:
        if self.exchange is not None:
            self.exchange.shut_down()  # writes the error event; the draining flag then closes us
        if not self._closed:
            self._closed = True
            self.transport.close()

    def abort(self) -> None:
        self._closed = True
        self.transport.abort()

    def pause_reading(self, reason: int) -> None:
        """Stop reading the client for ``reason`` (core/flow_control.py) until that reason is lifted."""
        if self._read_gate.pause(reason) and not self._closed:
            self.transport.pause_reading()

    def resume_reading(self, reason: int) -> None:
        if self._read_gate.resume(reason) and not self._closed:
            self.transport.resume_reading()

    def __repr__(self) -> str:
        queued = len(self._queue or ())
        return f"<DownstreamProtocol peer={self.peer} exchange={self.exchange!r} queued={queued}>"


class _RequestIds:
    """Unique request ids without a syscall each: a random prefix per process, then a counter."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(6).encode()
        self._count = itertools.count()

    def next(self) -> bytes:
        return b"%s%012x" % (self._prefix, next(self._count))


_ids = _RequestIds()
os.register_at_fork(after_in_child=_ids.reseed)  # --workers: each worker its own prefix


def _request_id(client_value: bytes | None) -> bytes:
    """The client's X-Request-ID when it is a sane token, else a new one."""
    if client_value and len(client_value) <= 128 and all(c in _REQUEST_ID_CHARS for c in client_value):
        return client_value
    return _ids.next()
