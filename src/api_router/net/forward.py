"""The Forwarder joins one client request to one upstream exchange.

It is the thin interpreter of ``core/stream.py``: upstream callbacks go in, the StreamState
decides, and the Forwarder writes, arms timers and moves flow control between the two
transports. No coroutine runs per event; a task runs only to open a new upstream connection or
to ask a Redis rate limiter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from api_router.core.flow_control import UPSTREAM_FULL
from api_router.core.http import (
    CRLF,
    HOP_BY_HOP,
    LAST_CHUNK,
    PLAIN_CONNECTION,
    Framing,
    HeaderList,
    chunk_head,
    end_to_end,
    response_head,
)
from api_router.core.stream import Ending, Phase, StreamState
from api_router.core.usage import Usage, UsageReader
from api_router.core.usage_filter import NOTHING, SCAN, UsageChunkFilter, read_mode
from api_router.errors import (
    GatewayError,
    ServiceUnavailable,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
    from_os_error,
)
from api_router.net.tasks import spawn
from api_router.routing import Route, RouteKind
from api_router.targets import Target

if TYPE_CHECKING:
    from api_router.core.balancer import Backend
    from api_router.core.multipart import MultipartModelRewriter
    from api_router.net.ports import BackendGroup, ClientSide, Gateway, Runtime
    from api_router.net.upstream import UpstreamConnection

_OURS_IN_RESPONSE = frozenset({b"content-length", b"x-request-id"})  # the framing and the id are ours
_DROP_FROM_RESPONSE = HOP_BY_HOP | _OURS_IN_RESPONSE
_READ_IN_RESPONSE = frozenset(
    {b"content-type", b"content-length", b"cache-control", b"connection", b"content-encoding"}
)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRY_BODY_LIMIT = 1024 * 1024  # bodies above this are not held for failover


def _no_head(target: Target, length: int | None) -> bytes:
    """Stands in for the request-head builder once the response started (it held the client's headers)."""
    raise AssertionError("the request head is sent only before the response starts")


class Forwarder:
    """One exchange. Created by the downstream protocol once the route is known."""

    # Slots: thousands of these live at once; a dict per exchange would cost ~0.7 KB each.
    __slots__ = (
        "_body",
        "_body_chunked_upstream",
        "_body_complete",
        "_body_length",
        "_capture",
        "_client_key",
        "_client_saw",
        "_connect_task",
        "_framing",
        "_head",
        "_head_sent",
        "_headers_out",
        "_last_error",
        "_out",
        "_paused",
        "_pending",
        "_pending_bytes",
        "_read_found",
        "_read_timeout",
        "_retried",
        "_reused",
        "_rewriter",
        "_scan_pieces",
        "_strip_usage",
        "_timer",
        "_tried",
        "_upstream_full",
        "_usage_filter",
        "_x_cache",
        "app",
        "backend",
        "cache_key",
        "client_name",
        "conn",
        "cost_usd",
        "downstream",
        "group",
        "last_heartbeat",
        "last_read",
        "loop",
        "model",
        "own_bytes",
        "published_bytes",
        "published_heartbeats",
        "quota_ticket",
        "request_id",
        "reserve_tokens",
        "route",
        "runtime",
        "slot_key",
        "span",
        "started_at",
        "state",
        "status",
        "streaming",
        "target",
        "transport",
        "ttfb",
        "usage",
        "usage_reader",
    )

    def __init__(
        self,
        app: Gateway,
        runtime: Runtime,
        downstream: ClientSide,
        route: Route,
        *,
        request_id: bytes,
        head: Callable[[Target, int | None], bytes],
        body: bytes | None,
        streaming: bool,
        started_at: float,
        rewriter: MultipartModelRewriter | None = None,
        body_length: int | None = None,
        group: BackendGroup,
        cache_key: str | None = None,
        x_cache: bytes | None = None,
        client_key: str | None = None,
        client_name: str = "anonymous",
        model: str | None = None,
        strip_usage: bool = False,
        reserve_tokens: int = 0,
        span: object | None = None,
    ) -> None:
        self.app = app
        self.runtime = runtime  # the config this exchange started with, to its end (runtime.py)
        self._read_timeout = runtime.read_timeout
        self.loop = app.loop
        self.downstream = downstream
        self.transport = downstream.transport
        self.route = route
        self.request_id = request_id
        self.state = StreamState(route.heartbeat_interval, route.flavor)
        self.streaming = streaming
        self.started_at = started_at
        self.conn: UpstreamConnection | None = None
        self._head = head
        self._body = body  # a whole JSON body, kept until the first response byte (stale retry)
        self._rewriter = rewriter
        self._body_length = body_length  # the client's Content-Length of a streamed body
        self._body_chunked_upstream = False
        self._pending: list[bytes] = []  # streamed body bytes waiting for the connection
        self._pending_bytes = 0
        self._body_complete = body is not None
        self._head_sent = False
        self._reused = False
        self._retried = False
        self._connect_task: asyncio.Task[None] | None = None
        self._framing = Framing.CHUNKED
        self.status = 0
        self.ttfb: float | None = None
        self.last_read = self.loop.time()  # loop clock (timers); started_at is perf_counter (latency)
        self.last_heartbeat = 0.0
        self._timer: asyncio.TimerHandle | None = None  # one per exchange: watchdog and heartbeat
        self._paused = False
        self._upstream_full = False  # the upstream's write buffer is over its high-water mark
        self._client_saw = False  # a byte of the response (its head included) was written
        self.published_bytes = 0
        self.published_heartbeats = 0
        self.own_bytes = 0  # the router's own bytes in the body: heartbeats, error event or response
        self.group = group
        self.backend: Backend | None = None
        self.target: Target = group.targets[group.backends[0].name]  # replaced at each pick
        self._tried: list[str] = []  # backends this request went to, in order (failover)
        self._last_error: GatewayError | None = None
        self.cache_key = cache_key
        self._client_key = client_key  # set when the request must pass the limits first
        self.slot_key: str | None = None  # a concurrent-stream slot this exchange holds
        self._x_cache = x_cache
        self._capture: bytearray | None = None  # a cacheable response's body while it streams
        self._headers_out: HeaderList = []
        self._out: list[bytes] = []  # what the current upstream read produced, written at its end
        self.client_name = client_name  # who is calling (core/access.py), for accounting
        self.model = model  # the model the client asked for (before modelMapping)
        self._strip_usage = strip_usage  # the router asked for the usage chunk (streamUsage force)
        # core/usage.py reads usage on model routes; dropped at the head unless the answer is 2xx
        self.usage_reader: UsageReader | None = (
            UsageReader() if route.kind is RouteKind.JSON or route.kind is RouteKind.MULTIPART else None
        )
        # What this read's body pieces need (core/usage_filter.read_mode)
        self._scan_pieces = NOTHING
        self._read_found = False  # the last read held a usage object (UsageReader.read)
        self._usage_filter: UsageChunkFilter | None = None
        self.usage: Usage | None = None  # the answer's usage, set when the exchange ends
        self.cost_usd: float | None = None  # its price (App.account), None: no price known
        self.reserve_tokens = reserve_tokens  # its tokens-per-minute estimate (core/reserve.py)
        self.quota_ticket: object | None = None  # what quota.py reserved, settled at the end
        self.span: Any = span  # its OpenTelemetry span (tracing.py), ended by App.account

    # -- request side -------------------------------------------------------------------
    def start(self) -> None:
        """Admit, pick a backend and send on an idle pooled connection without leaving this call;
        a task runs only when something must be awaited (a new connection, a Redis limit check)."""
        if self._client_key is not None:
            if not self.runtime.admits_now():
                self._spawn(self._admit_then_go())
                return
            key, self._client_key = self._client_key, None
            refused = self.runtime.admit_now(self, key)
            if refused is not None:
                self._apply(self.state.upstream_failed(refused))
                return
        self._go()

    async def _admit_then_go(self) -> None:
        key, self._client_key = self._client_key, None
        assert key is not None
        refused = await self.runtime.admit(self, key)
        if refused is not None:
            self._apply(self.state.upstream_failed(refused))
        elif self.state.phase is Phase.AWAITING_UPSTREAM:
            self._go()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._connect_task = spawn(coro)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[None]) -> None:
        if self._connect_task is task:
            self._connect_task = None  # a finished task holds memory for the life of the stream

    def _go(self) -> None:
        """Pick a backend (failover excludes those tried) and use or open a connection to it."""
        backend = self.group.pick(self.loop.time(), self._tried)
        if backend is None:
            self._apply(self.state.upstream_failed(self._last_error or self.group.unavailable()))
            return
        self.backend = backend
        backend.in_flight += 1
        self._tried.append(backend.name)
        self.target = self.group.targets[backend.name]
        conn = self.app.pool.take_idle(self.target.origin, self.loop.time())
        if conn is not None:
            self._bind(conn, reused=True)
        else:
            self._spawn(self._connect_new())

    async def _connect_new(self) -> None:
        """A fresh connection to the current backend (also the retry for a stale pooled one)."""
        pool = self.app.pool
        try:
            conn = await pool.connect(self.target.origin)
        except GatewayError as error:
            self._backend_failed(error)
            return
        if self.state.phase is not Phase.AWAITING_UPSTREAM:
            pool.release(conn)  # the client left while we connected; nothing was sent on it
            return
        self._bind(conn, reused=False)

    def _bind(self, conn: UpstreamConnection, *, reused: bool) -> None:
        self.conn = conn
        self._reused = reused
        conn.bind(self, self.route.buffer_size)
        self._send_request()  # before the timer: the request is on the first-token path, the timer not
        if self.conn is conn:
            # Early enough for the first heartbeat too, so a response that starts at once (the
            # usual case) need not move the timer: re-creating one costs more than a wake-up.
            self._arm(self.last_read + min(self._read_timeout, self.route.heartbeat_interval))

    def _can_fail_over(self) -> bool:
        """Only before the first byte went to the client, with the whole body held, within budget."""
        body = self._body
        return (
            self.state.phase is Phase.AWAITING_UPSTREAM
            and body is not None
            and len(body) <= RETRY_BODY_LIMIT
            and len(self._tried) <= self.group.retries
            and self.group.has_alternative(self.loop.time(), self._tried)
        )

    def _backend_failed(self, error: GatewayError, *, breaker_failure: bool = True) -> None:
        """This backend failed before answering: try the next one, or give the client the error."""
        self._release_backend(False if breaker_failure else None)
        self._last_error = error
        self._cancel_timers()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._head_sent = False
        self.status = 0
        if self._can_fail_over():
            self.app.metrics.failovers.inc()
            self._go()
        else:
            self._apply(self.state.upstream_failed(error))

    def _release_backend(self, success: bool | None) -> None:
        """Give the backend its verdict: True/False feed its breaker, None (client left) abandons."""
        backend, self.backend = self.backend, None
        if backend is None:
            return
        backend.in_flight -= 1
        now = self.loop.time()
        if success is True:
            backend.breaker.record_success(now)
        elif success is False:
            backend.breaker.record_failure(now)
        else:
            backend.breaker.abandon(now)
        self.app.metrics.backend_result(backend.name, success, time.perf_counter() - self.started_at)

    def _send_request(self) -> None:
        conn = self.conn
        if conn is None or self._head_sent:
            return
        if self._body is not None:
            self._head_sent = True
            conn.write(self._head(self.target, len(self._body)) + self._body)
            return
        if self._rewriter is not None and not self._rewriter.decided:
            return
        length = self._body_length
        if self._rewriter is not None and length is not None:
            delta = self._rewriter.length_delta
            length = None if delta is None else length + delta
        if self._body_length is None and self._body_complete:
            length = self._pending_bytes  # no body, or one that ended before the head went out
        self._body_chunked_upstream = length is None
        self._head_sent = True
        conn.write(self._head(self.target, length))
        self._flush_pending()

    def request_body(self, data: bytes) -> None:
        """A piece of a streamed (multipart or pass-through) client body."""
        if self._rewriter is not None:
            data = self._rewriter.feed(data)
            if self._rewriter.decided and not self._head_sent:
                self._send_request()
        if data:
            self._pending.append(data)
            self._pending_bytes += len(data)
        if self._head_sent:
            self._flush_pending()
        elif self._pending_bytes > self.route.buffer_size:
            self.downstream.pause_reading(UPSTREAM_FULL)  # hold at most bufferSize until it is ready

    def request_body_end(self) -> None:
        self._body_complete = True
        if self._rewriter is not None:
            tail = self._rewriter.finish()
            if tail:
                self._pending.append(tail)
                self._pending_bytes += len(tail)
        if self._head_sent:
            self._flush_pending()
        else:
            self._send_request()

    def _flush_pending(self) -> None:
        conn = self.conn
        if conn is None or conn.closed:
            return
        pending, self._pending = self._pending, []
        for piece in pending:
            conn.write(b"%x\r\n%b\r\n" % (len(piece), piece) if self._body_chunked_upstream else piece)
        if self._body_complete and self._body_chunked_upstream:
            conn.write(LAST_CHUNK)
            self._body_chunked_upstream = False
        if self._body_complete:
            self.last_read = self.loop.time()  # the upstream's silence clock starts now
        self._pending_bytes = 0
        # Only if those writes left room: a write above the upstream's high-water mark paused
        # the client (upstream_writable) and resuming here would undo it, so an upload to a
        # slow upstream was read into memory whole (80 MB upload: +72 MB RSS).
        if not self._upstream_full:
            self.downstream.resume_reading(UPSTREAM_FULL)

    def upstream_writable(self, writable: bool) -> None:
        self._upstream_full = not writable
        if writable:
            self.downstream.resume_reading(UPSTREAM_FULL)
        else:
            self.downstream.pause_reading(UPSTREAM_FULL)

    # -- response side ------------------------------------------------------------------
    def upstream_head(self, status: int, headers: HeaderList) -> None:
        if status < 200:
            return  # 1xx interim responses are not forwarded
        if status in RETRY_STATUSES and self._can_fail_over():
            error = UpstreamUnreachable(
                f"backend {self.target.origin} answered {status}", code="backend_status"
            )
            self._backend_failed(error, breaker_failure=status != 429)  # a busy backend is not a broken one
            return
        now = self.loop.time()
        self.status = status
        self.ttfb = time.perf_counter() - self.started_at
        self._body = None  # from here on there is no retry, so neither body nor head is needed
        self._head = _no_head
        content_type = length = None
        cache_control = listed = encoded = False
        out: HeaderList = []
        for item in headers:  # one pass: what the router reads, and what it forwards
            name = item[0]
            if name in _READ_IN_RESPONSE:
                if name == b"content-type":
                    content_type = item[1]
                elif name == b"content-length":
                    length = item[1]
                elif name == b"cache-control":
                    cache_control = True
                elif name == b"content-encoding":
                    encoded = encoded or item[1].strip().lower() != b"identity"
                else:  # connection
                    listed = listed or item[1] not in PLAIN_CONNECTION
            if name not in _DROP_FROM_RESPONSE:
                out.append(item)
        if listed:  # Connection names other headers (rare): they are hop-by-hop too
            out = end_to_end(headers, _OURS_IN_RESPONSE)
        event_stream = content_type is not None and content_type.startswith(b"text/event-stream")
        # Heartbeats and error events are SSE text written between events: inside a compressed body
        # (an upstream that ignored our Accept-Encoding: identity) they would corrupt it, so such a
        # stream is forwarded as an opaque body.
        is_sse = event_stream and not encoded
        out.append((b"x-request-id", self.request_id))
        if self._x_cache is not None:
            out.append((b"x-cache", self._x_cache))
            if self.cache_key is not None and status == 200 and not event_stream:
                self._capture = bytearray()
                self._headers_out = out
        reader = self.usage_reader
        if reader is not None:
            if status >= 300:
                self.usage_reader = None  # an error or a redirect reports no usage
            elif is_sse and self._strip_usage:
                strip = self._usage_filter = UsageChunkFilter(reader, self.route.buffer_size)
                # the rest of this read (usually all of a short answer), judged with the filter
                self._scan_pieces = read_mode(reader, strip, self._read_found)
        if event_stream:
            if not cache_control:
                out.append((b"cache-control", b"no-cache"))
            out.append((b"x-accel-buffering", b"no"))
        if not self.downstream.http11:
            self._framing = Framing.CLOSE
        elif length is not None and not is_sse and length.isdigit():
            self._framing = Framing.LENGTH
        else:
            self._framing = Framing.CHUNKED
        if self.downstream.close_after and self._framing is not Framing.CLOSE:  # CLOSE says it already
            out.append((b"connection", b"close"))
        self._out.append(response_head(status, out, self._framing, int(length or 0)))
        self.state.response_started(is_sse)
        self.last_read = now
        if is_sse:
            self.app.metrics.stream_started()
            timer = self._timer
            if timer is None or timer.when() > now + self.route.heartbeat_interval:
                self._arm(now + self.route.heartbeat_interval)

    def upstream_read(self, buffer: bytearray, nbytes: int) -> None:
        """A whole upstream read, before it is parsed: usage is looked for once per read."""
        reader = self.usage_reader
        if reader is not None:
            found = self._read_found = reader.read(buffer, nbytes)
            self._scan_pieces = read_mode(reader, self._usage_filter, found)

    def upstream_body(self, data: bytes) -> None:
        """The hot path: one call per body piece of an upstream read; allocates only the chunk header."""
        mode = self._scan_pieces
        if mode:  # else nothing in this read concerns the usage chunk (the usual read)
            strip = self._usage_filter
            if strip is not None and (mode == SCAN or strip.holding or not data.endswith(b"\n\n")):
                self._filtered_body(strip.feed(data, mode == SCAN))
                return
        # _forward, inlined: a call per event is measurable here (bench.instructions)
        self.state.data(data)
        if self._capture is not None:
            self._capture += data
        if self._framing is Framing.CHUNKED:
            self._out += (chunk_head(len(data)), data, CRLF)
        else:
            self._out.append(data)

    def _filtered_body(self, data: bytes) -> None:
        """What the usage-chunk filter let through (core/usage_filter.py): nothing, or whole events."""
        if not data:
            return  # held or removed: an empty chunk would end the body
        size = self.route.buffer_size
        if len(data) <= size:
            self._forward(data)
            return
        for at in range(0, len(data), size):  # a released tail: no write above bufferSize
            self._forward(data[at : at + size])

    def _forward(self, data: bytes) -> None:
        self.state.data(data)
        if self._capture is not None:
            self._capture += data
        if self._framing is Framing.CHUNKED:
            self._out += (chunk_head(len(data)), data, CRLF)
        else:
            self._out.append(data)

    def upstream_flush(self) -> None:
        """The end of one upstream read: everything it carried goes out in one write (one syscall).

        Nothing waits for more data: this runs before the loop reads anything else.
        """
        out = self._out
        if out:
            self._out = []
            self._client_saw = True
            self.transport.writelines(out)
        if self.status:  # pieces of a head still unfinished do not reset the silence clock
            self.last_read = self.loop.time()

    def upstream_done(self, keep_alive: bool) -> None:
        self._apply(self.state.upstream_finished(keep_alive and self._body_complete))

    def upstream_lost(self, exc: BaseException | None) -> None:
        phase = self.state.phase
        if (
            phase is Phase.AWAITING_UPSTREAM
            and self._reused
            and not self._retried
            and self._body is not None
            and self.status == 0
        ):
            # A pooled connection the server had already closed: resend once on a fresh one.
            self._retried = True
            self.conn = None
            self._head_sent = False
            self._cancel_timers()
            self._spawn(self._connect_new())
            return
        error: GatewayError
        if isinstance(exc, GatewayError):
            error = exc
        elif phase is Phase.STREAMING:
            error = UpstreamBroken("the upstream connection closed in the middle of the response")
        elif exc is None:
            error = UpstreamUnreachable(
                f"upstream {self.target.origin} closed the connection without answering"
            )
        else:
            error = from_os_error(exc, str(self.target.origin))
        if phase is Phase.AWAITING_UPSTREAM and self.status == 0:
            self._backend_failed(error)
            return
        if not self._client_saw:  # the head is still only queued (the failure came in its read)
            self._out = []
        self._apply(self.state.upstream_failed(error, client_saw_nothing=not self._client_saw))

    def downstream_writable(self, writable: bool) -> None:
        """Backpressure: a slow client stops us reading the upstream."""
        conn = self.conn
        if conn is None:
            return
        self._paused = not writable
        if writable:
            conn.resume_reading()
        else:
            conn.pause_reading()

    def downstream_lost(self) -> None:
        self._apply(self.state.downstream_lost())

    def shut_down(self) -> None:
        """The drain timeout passed: end this exchange the way a failed upstream would."""
        self.fail(ServiceUnavailable("the router is shutting down"))

    def fail(self, error: GatewayError) -> None:
        """End the exchange with ``error``: a whole error response if nothing was sent yet."""
        self._apply(self.state.upstream_failed(error))

    # -- timers -------------------------------------------------------------------------
    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        """The upstream-silence watchdog and the heartbeat share one timer (memory per stream)."""
        self._timer = None
        now = self.loop.time()
        timeout = self._read_timeout
        if self._paused or not self._body_complete:
            # Silence we caused by not reading, or while the client is still uploading (the
            # upstream cannot answer before the body ends), is not the upstream's fault.
            self.last_read = now
        if now - self.last_read >= timeout:
            self._apply(self.state.upstream_failed(UpstreamTimeout(f"upstream silent for {timeout:g} s")))
            return
        data, next_check = self.state.tick(max(self.last_read, self.last_heartbeat), now)
        if data is not None and not self._paused:
            self.last_heartbeat = now
            self.upstream_body_write(data)
        deadline = self.last_read + timeout
        self._timer = self.loop.call_at(
            deadline if next_check is None else min(deadline, next_check), self._on_timer
        )
        self.app.metrics.publish_progress(self)

    def upstream_body_write(self, data: bytes) -> None:
        """Write bytes of our own (heartbeat, error event) in the response's framing, after what is queued."""
        self.own_bytes += len(data)
        if self._framing is Framing.CHUNKED:
            self._out += (b"%x\r\n" % len(data), data, CRLF)
        else:
            self._out.append(data)
        self._client_saw = True
        self.transport.writelines(self._out)
        self._out = []

    def _cancel_timers(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the end ------------------------------------------------------------------------
    def _apply(self, ending: Ending) -> None:
        if ending.reason == "ignored":
            return
        # The client's last bytes go out first: the rest is bookkeeping it need not wait for
        # (for a short answer, this write carries its first token too).
        keep_alive = False
        if ending.error_response is not None:
            self.status = ending.error_response.status
            close_after = self.downstream.close_after
            sent = self.downstream.send_error(
                ending.error_response, self.route.flavor, self.request_id, not close_after
            )
            keep_alive = sent >= 0 and not close_after
            self.own_bytes += max(sent, 0)
        elif ending.close_downstream:
            self.downstream.abort()
        else:
            strip = self._usage_filter
            if strip is not None and ending.reason == "completed":
                held = strip.finish()  # an unfinished last event: forwarded as it came
                if held:
                    self.state.data(held)
                    self.upstream_body_write(held)
            if ending.trailer:
                self.upstream_body_write(ending.trailer)
            if self._framing is Framing.CHUNKED:
                self._out.append(LAST_CHUNK)
            self.transport.writelines(self._out)
            self._out = []
            keep_alive = self._framing is not Framing.CLOSE and self._body_complete
        self._cancel_timers()
        task = self._connect_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            if ending.reuse_upstream:
                self.app.pool.release(conn)
            else:
                conn.close()
        if ending.reason == "client_disconnect":
            self._release_backend(None)
        else:
            self._release_backend(ending.reason == "completed" and self.status < 500)
        if self.slot_key is not None:
            self.runtime.stream_slots.release(self.slot_key)
            self.slot_key = None
        capture = self._capture
        if capture is not None and ending.reason == "completed" and self.cache_key is not None:
            self.runtime.cache_store(self.cache_key, self.status, self._headers_out, bytes(capture))
        if ending.reason == "client_disconnect":  # many may leave at once: every upstream is
            self.loop.call_soon(self._record, ending.reason)  # closed first (bench disconnect)
        else:
            self._record(ending.reason)
        self.downstream.exchange_finished(self, keep_alive)

    def _record(self, reason: str) -> None:
        reader = self.usage_reader
        if reader is not None:
            self.usage = reader.usage(reason == "completed")
        self.app.metrics.exchange_finished(self, reason)
        self.runtime.account(self, reason)
        self.runtime.access_log(self, reason)

    @property
    def backend_name(self) -> str | None:
        """The backend that answered (the last one tried), for the access line."""
        return self._tried[-1] if self._tried else None

    def __repr__(self) -> str:
        return (
            f"<Forwarder {self.route.path} id={self.request_id.decode()} {self.state!r} conn={self.conn!r}>"
        )
