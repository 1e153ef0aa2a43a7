"""The client side: read requests with httptools; net/dispatch.py answers them.

One exchange runs at a time per connection; pipelined requests wait in a queue. JSON bodies are
read whole (capped) so the model can be mapped; multipart and pass-through bodies stream as they
arrive. A half-closed client is gone, as nginx takes it: ``eof_received`` ends its exchange at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from api_router import logs
from api_router.core.deadline import KEEP_TIMER, NO_DEADLINE, PASSED, Deadline
from api_router.core.flow_control import QUEUE_FULL, UNREADABLE, UPSTREAM_FULL, ReadGate
from api_router.core.request_head import read_head, refusal, surely_http11
from api_router.errors import (
    ApiFlavor,
    BadRequest,
    GatewayError,
    HeadersTooLarge,
    PayloadTooLarge,
    RequestTimeout,
)
from api_router.net.dispatch import answer, answered, error_response, refuse_connection, start_streamed
from api_router.net.request import ConnectionClosed, Request, pick_request_id
from api_router.net.tunnel import upgrade_refused
from api_router.routing import Route, RouteKind

if TYPE_CHECKING:
    from api_router.net.forward import Forwarder
    from api_router.net.ports import Gateway

_MAX_QUEUED: Final = 16
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class DownstreamProtocol(asyncio.Protocol):
    # Slots: one of these per client connection, thousands at once; a dict would cost ~1 KB more.
    __slots__ = (
        "_deadline",
        "_max_header_bytes",
        "_max_headers",
        "_queue",
        "_read_gate",
        "_req",
        "_timer",
        "_unreadable",
        "_write_blocked",
        "_write_limit",
        "app",
        "close_after",
        "closed",
        "exchange",
        "fetching",
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
        self.close_after = False  # the request asked to close (RFC 9112 §9.6): so does the response
        self.exchange: Forwarder | None = None
        self._req: Request | None = None
        self._queue: deque[Request] | None = None  # pipelined requests; made on first use (~0.4 KB)
        self._read_gate = ReadGate()
        # Over the write buffer's high-water mark, the client is not reading: no queued request is
        # answered until it drains (a pipelining client that never read grew us ~68 MB / 100k).
        self._write_blocked = False
        self.closed = False
        self._unreadable: tuple[GatewayError, ApiFlavor] | None = None  # junk after requests: sent after them
        self.fetching = False  # a local answer is being fetched (net/dispatch.py)
        limits = app.runtime.config.limits
        self._max_header_bytes = limits.max_header_bytes
        self._max_headers = limits.max_headers
        self._deadline = Deadline(min(limits.header_timeout_secs, limits.body_timeout_secs))
        self._timer: asyncio.TimerHandle | None = None
        self._write_limit = 0  # the write buffer's high-water mark, once an exchange set it

    # -- asyncio callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else None
        self.app.connection_opened(self)
        if len(self.app.connections) > self.app.runtime.config.limits.max_connections:
            refuse_connection(self)  # and closed
            return
        self._arm(self.app.runtime.keep_alive_timeout)

    def data_received(self, data: bytes) -> None:
        self._deadline.last_data = self.app.loop.time()
        req = self._req
        if req is not None and req.raw_body_left:
            data = self._read_raw_body(req, data)
            if not data:
                return
        parser = self.parser
        if parser is None:
            parser = self.parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self.closed:
                return  # a callback already answered and closed
            if self._req is not None and isinstance(self._req.error, HeadersTooLarge):
                self.reject_and_close(self._req.error)
            else:
                logs.log.exception("request handling failed")
                self.reject_and_close(GatewayError("internal error while reading the request"))
        except httptools.HttpParserUpgrade as upgrade:  # an ignored h2c offer, or a tunnel's
            self.parser = None  # llhttp stops at an upgrade: what follows is read afresh
            if len(data) > upgrade.args[0] and not self.closed:  # a tunnel's protocol took over
                cast(asyncio.Protocol, self.transport.get_protocol()).data_received(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            self.reject_and_close(BadRequest(f"malformed HTTP request: {exc}", code="malformed_request"))
        else:
            if self.exchange is not None and self.exchange.streaming and self._req is None:
                # At a message boundary while a response streams: a new parser is made if the client
                # sends again, so a stream holds none (~0.5 KB); a whole answer's is kept (~2.7k instr.)
                self.parser = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deadline.clear()
        if self._timer is not None:  # nothing left to time: free the protocol now
            self._timer.cancel()
            self._timer = None
        self.app.connection_closed(self)
        self.eof_received()

    def eof_received(self) -> bool:
        """The client's FIN: its exchange ends now (left to connection_lost, it waited for the poll's
        other callbacks: bench disconnect). False: the transport closes, connection_lost follows."""
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.downstream_lost()
        req = self._req
        if req is not None and req.forwarder is not None and req.forwarder is not exchange:
            req.forwarder.downstream_lost()
        return False

    def pause_writing(self) -> None:
        self._write_blocked = True
        if self.exchange is not None:
            self.exchange.downstream_writable(False)

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self.exchange is not None:
            self.exchange.downstream_writable(True)
        elif self._queue:
            self.answer_queued()

    # -- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.closed:  # bytes after a response that closed the connection are not requests
            raise ConnectionClosed
        runtime = self.app.runtime  # the request keeps it to the end of its exchange (runtime.py)
        self._req = Request(time.perf_counter(), runtime)
        # Slowloris: the whole head must arrive within headerTimeoutSecs of its first byte.
        self._arm(runtime.header_timeout, absolute=True)

    def on_url(self, url: bytes) -> None:
        cast(Request, self._req).take_url(url, self._max_header_bytes)

    def on_header(self, name: bytes, value: bytes) -> None:
        cast(Request, self._req).take_header(name, value, self._max_header_bytes, self._max_headers)

    def on_headers_complete(self) -> None:
        req = cast(Request, self._req)
        req.head_done = True
        parser = cast(httptools.HttpRequestParser, self.parser)  # a callback of this very parser
        req.method = parser.get_method().decode("ascii")
        req.keep_alive = parser.should_keep_alive()
        length, request_id, expect, bad_coding, connection = read_head(req.headers)
        version = "1.1" if surely_http11(req.keep_alive, connection) else parser.get_http_version()
        self.http11 = version == "1.1"
        req.request_id = pick_request_id(request_id)
        self._arm(req.runtime.body_timeout)  # idle time allowed between body bytes
        req.resolve_target()
        route, idle = req.route, self.exchange is None and not self.fetching and not self._queue
        upgrade = parser.should_upgrade()
        if upgrade or (isinstance(route, Route) and route.kind is RouteKind.TUNNEL):  # net/tunnel.py
            upgrade = upgrade_refused(req, upgrade, length, idle)  # h2c ignored, websocket a tunnel's
        error = refusal(version, upgrade, req.method, bad_coding)
        if error is not None:
            self.reject_and_close(error)
            raise error  # stop parsing: nothing after this head may be read as a request
        if not isinstance(route, Route):
            return
        limit = req.body_limit()
        if length is not None and length.isdigit() and int(length) > limit:
            self.reject_and_close(PayloadTooLarge(f"request body over the {limit} byte limit"), route.flavor)
            return
        if expect == b"100-continue" and self.http11 and idle:
            # only with nothing before it to answer (else it went out inside an earlier answer);
            # a client not told to continue sends its body after its own wait (RFC 9110 §10.1.1)
            self.transport.write(_CONTINUE)
        if route.kind in (RouteKind.MULTIPART, RouteKind.PASSTHROUGH) and idle:
            start_streamed(self, req, route, int(length) if length is not None and length.isdigit() else None)

    def on_body(self, body: bytes) -> None:
        req = self._req
        if req is None or req.error is not None or self.closed:  # closed: already answered
            return
        req.body_bytes += len(body)
        route = req.route
        limit = req.body_limit()
        if req.forwarder is not None and req.body_bytes <= limit:
            req.forwarder.request_body(body)
            return
        if req.forwarder is None:
            req.body += body
        if req.body_bytes > limit:  # also catches chunked bodies, which announce no length
            flavor = route.flavor if isinstance(route, Route) else ApiFlavor.OPENAI
            self.reject_and_close(PayloadTooLarge(f"request body over the {limit} byte limit"), flavor)

    def on_message_complete(self) -> None:
        req, self._req = self._req, None
        if req is None or self.closed:
            return
        if req.raw_body_left:  # an ignored h2c offer: llhttp left its body to us (_read_raw_body)
            self._req = req
            return
        parser = self.parser  # None after an ignored h2c offer: its body was read raw
        req.keep_alive = req.keep_alive and (parser is None or parser.should_keep_alive())
        self._deadline.clear()  # the request is in; the exchange's own watchdog guards the rest
        if req.forwarder is not None:
            req.forwarder.request_body_end()
            return
        if self._queue is None and self._free_to_answer():
            answer(self, req)  # the common case: nothing is waiting, so no queue is needed
            return
        if self._queue is None:
            self._queue = deque()
        self._queue.append(req)
        if len(self._queue) > _MAX_QUEUED:
            self.pause_reading(QUEUE_FULL)
        self.answer_queued()

    def _read_raw_body(self, req: Request, data: bytes) -> bytes:
        """The Content-Length body of a request whose h2c offer was ignored; returns what follows."""
        piece = data[: req.raw_body_left]
        req.raw_body_left -= len(piece)
        self.on_body(piece)
        if not req.raw_body_left and not self.closed:
            self.on_message_complete()
        return data[len(piece) :]

    # -- dispatch -----------------------------------------------------------------------
    def _free_to_answer(self) -> bool:
        """Nothing is being answered and the client reads what it was sent."""
        return self.exchange is None and not self.fetching and not self._write_blocked and not self.closed

    def answer_queued(self) -> None:
        queue = self._queue
        while queue and self._free_to_answer():
            answer(self, queue.popleft())
        if not queue:
            self._queue = None
            if self._unreadable is not None:
                if self._free_to_answer():
                    self.reject_and_close(*self._unreadable)
                return
            self.resume_reading(QUEUE_FULL)
        elif len(queue) <= _MAX_QUEUED // 2:
            self.resume_reading(QUEUE_FULL)

    def send_error(
        self, error: GatewayError, flavor: ApiFlavor, request_id: bytes, keep_alive: bool = True
    ) -> int:
        """Write a whole error response; returns the body's size, or -1 if the connection was gone."""
        if self.closed:
            return -1
        body = error.body(flavor)
        self.transport.write(error_response(error, body, request_id, keep_alive))
        if not keep_alive:
            self.close()  # and nothing more is read as a request (RFC 9112 §9.6)
        return len(body)

    def reject_and_close(self, error: GatewayError, flavor: ApiFlavor = ApiFlavor.OPENAI) -> None:
        """For input we stop reading: answer once, then close (the parser state is unusable)."""
        req = self._req
        if req is not None and req.forwarder is not None:
            req.forwarder.fail(error)  # answers if nothing was sent yet, and closes its upstream
        elif self.exchange is not None or self._queue or self.fetching:
            # Requests before the bad one are still being answered: they get their answers (the
            # old router closed at once, and a valid request's answer was lost), then this error.
            if self._unreadable is None:
                self._unreadable = (error, flavor)
                self._req = None
                self.pause_reading(UNREADABLE)
            return
        elif self.exchange is None:
            if req is None:  # input that never became a request: the line still has an id
                req = Request(time.perf_counter(), self.app.runtime)
            if not req.request_id:
                req.request_id = pick_request_id(None)
            sent = self.send_error(error, flavor, req.request_id, keep_alive=False)
            answered(self.app, req, error.status, sent, "rejected")
        self.close()

    # -- the deadline (core/deadline.py) --------------------------------------------------
    def _arm(self, seconds: float, absolute: bool = False) -> None:
        timer, loop = self._timer, self.app.loop
        at = self._deadline.arm(loop.time(), seconds, absolute, timer.when() if timer is not None else None)
        if at != KEEP_TIMER:
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        deadline, loop = self._deadline, self.app.loop
        check = deadline.check(loop.time())
        if check != PASSED:
            if check != NO_DEADLINE:
                self._timer = loop.call_at(check, self._on_timer)
            return
        req = self._req
        if req is None and self.exchange is None and not self.fetching:
            self.close()  # idle keep-alive connection
        elif req is not None and req.forwarder is None and self.exchange is None:
            self.reject_and_close(RequestTimeout("the request was not received in time"))
        elif req is not None and req.forwarder is not None:
            self.close()  # an upload stalled mid-body: closing ends its upstream exchange too
        elif deadline.absolute:
            # A head deadline passed while an earlier response is still going out (pipelining):
            # it cannot be answered before that response ends; check again soon, deadline kept.
            self._timer = loop.call_at(loop.time() + deadline.wake_every, self._on_timer)
        else:
            self._arm(deadline.seconds)  # an exchange is running; its own watchdog guards the upstream

    def exchange_started(self, forwarder: Forwarder, keep_alive: bool, buffer_size: int) -> None:
        self.exchange = forwarder
        self.close_after = not keep_alive
        if buffer_size != self._write_limit:  # backpressure starts at the route's bufferSize
            self._write_limit = buffer_size
            self.transport.set_write_buffer_limits(high=buffer_size)

    def exchange_finished(self, forwarder: object, keep_alive: bool) -> None:
        if self.exchange is forwarder:
            self.exchange = None
        if self.app.draining or self.close_after:
            keep_alive = False
        req = self._req
        if req is not None and req.forwarder is forwarder:
            keep_alive = False  # the response ended before the client finished its body
        if not keep_alive or self.closed:
            self.close()
            return
        self.resume_reading(UPSTREAM_FULL)  # the body is whole (else we closed above): nothing left to hold
        if req is None:
            self._arm(self.app.runtime.keep_alive_timeout)
        # else a request began while the response was going out: it keeps its own head deadline
        # (replacing it by the idle rule let a head dripped line by line stay open: slowloris).
        self.answer_queued()

    def close_if_idle(self) -> None:
        """Draining: a connection between requests is closed now, a busy one after its response."""
        if self.exchange is None and not self.fetching and self._req is None:
            self.close()

    def shut_down(self) -> None:
        if self.exchange is not None:
            self.exchange.shut_down()  # writes the error event; the draining flag then closes us
        self.close()

    def abort(self) -> None:
        self.closed = True
        self.transport.abort()

    def close(self) -> None:
        self.closed = True
        self.transport.close()

    def pause_reading(self, reason: int) -> None:
        """Stop reading the client for ``reason`` (core/flow_control.py) until that reason is lifted."""
        if self._read_gate.pause(reason) and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self, reason: int) -> None:
        if self._read_gate.resume(reason) and not self.closed:
            self.transport.resume_reading()

    def __repr__(self) -> str:
        return f"<DownstreamProtocol peer={self.peer} exchange={self.exchange!r} queued={self._queue!r}>"
