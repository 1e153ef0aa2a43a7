"""The Forwarder joins one client request to one upstream exchange; this module is its response
side (the request side, admission to failover, is ``Attempts`` in attempts.py).

It is the thin interpreter of ``core/stream.py``: upstream callbacks go in, the StreamState
decides, and the Forwarder writes, arms timers and moves flow control between the two
transports. No coroutine runs per event; a task runs only to open a new upstream connection or
to ask a Redis rate limiter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from api_router.core.http import CRLF, LAST_CHUNK, Framing, HeaderList, chunk_head
from api_router.core.response_head import plan as plan_head
from api_router.core.stream import Ending, Phase
from api_router.core.translate_answer import AnswerTranslator
from api_router.core.usage import Usage, UsageReader
from api_router.core.usage_filter import NOTHING, SCAN, TRANSLATE, UsageChunkFilter, read_mode
from api_router.errors import GatewayError, ServiceUnavailable, UpstreamTimeout, connection_lost_error
from api_router.net.attempts import Attempts
from api_router.routing import Route, accounted
from api_router.targets import Target

if TYPE_CHECKING:
    from api_router.core.multipart import MultipartModelRewriter
    from api_router.net.ports import BackendGroup, ClientSide, Gateway, Runtime
    from api_router.net.upstream import UpstreamConnection
    from api_router.translation import BackendRequests


class Forwarder(Attempts):
    """One exchange. Created by the downstream protocol once the route is known."""

    # Slots: thousands of these live at once; a dict per exchange would cost ~0.7 KB each.
    __slots__ = (
        "_capture",
        "_client_saw",
        "_framing",
        "_headers_out",
        "_out",
        "_paused",
        "_read_found",
        "_scan_pieces",
        "_strip_usage",
        "_timer",
        "_translator",
        "_usage_filter",
        "_x_cache",
        "cache_key",
        "cost_usd",
        "last_heartbeat",
        "model",
        "own_bytes",
        "published_bytes",
        "published_heartbeats",
        "span",
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
        requests: BackendRequests | None = None,
    ) -> None:
        super().__init__(
            app,
            runtime,
            downstream,
            route,
            request_id=request_id,
            head=head,
            body=body,
            streaming=streaming,
            started_at=started_at,
            rewriter=rewriter,
            body_length=body_length,
            group=group,
            client_key=client_key,
            client_name=client_name,
            reserve_tokens=reserve_tokens,
            requests=requests,
        )
        self._framing = Framing.CHUNKED
        self.ttfb: float | None = None
        self.last_heartbeat = 0.0
        self._timer: asyncio.TimerHandle | None = None  # one per exchange: watchdog and heartbeat
        self._paused = False
        self._client_saw = False  # a byte of the response (its head included) was written
        self.published_bytes = 0
        self.published_heartbeats = 0
        self.own_bytes = 0  # the router's own bytes in the body: heartbeats, error event or response
        self.cache_key = cache_key
        self._x_cache = x_cache
        self._capture: bytearray | None = None  # a cacheable response's body while it streams
        self._headers_out: HeaderList = []
        self._out: list[bytes] = []  # what the current upstream read produced, written at its end
        self.model = model  # the model the client asked for (before modelMapping)
        self._strip_usage = strip_usage  # the router asked for the usage chunk (streamUsage force)
        # core/usage.py reads usage on model routes; dropped at the head unless the answer is 2xx
        self.usage_reader: UsageReader | None = UsageReader(streaming) if accounted(route.kind) else None
        # What this read's body pieces need (core/usage_filter.read_mode)
        self._scan_pieces = NOTHING
        self._read_found = False  # the last read held a usage object (UsageReader.read)
        self._usage_filter: UsageChunkFilter | None = None
        self._translator: AnswerTranslator | None = None  # the answer is in the other API (translation.py)
        self.usage: Usage | None = None  # the answer's usage, set when the exchange ends
        self.cost_usd: float | None = None  # its price (Runtime.account), None: no price known
        self.span: Any = span  # its OpenTelemetry span (tracing.py), ended by Runtime.account

    def _bind(self, conn: UpstreamConnection, *, reused: bool) -> None:
        self.conn = conn
        self._reused = reused
        conn.bind(self, self.route.buffer_size)
        self._send_request()  # before the timer: the request is on the first-token path, the timer not
        if self.conn is conn:
            # Early enough for the first heartbeat too, so a response that starts at once (the
            # usual case) need not move the timer: re-creating one costs more than a wake-up.
            self._arm(self.last_read + min(self._read_timeout, self.route.heartbeat_interval))

    # -- response side ------------------------------------------------------------------
    def upstream_head(self, status: int, headers: HeaderList) -> None:
        if status < 200:
            return  # 1xx interim responses are not forwarded
        if self._failed_over_on(status, headers):
            return
        now = self.loop.time()
        self.status = status
        self.ttfb = time.perf_counter() - self.started_at
        self._no_more_attempts()
        requests, translator, dropped = self._requests, None, None
        if requests is not None:
            translator = requests.answer_translator(self.target)
            if translator is not None:  # its body changes, and so its length
                headers = [item for item in headers if item[0] != b"content-length"]
                dropped = requests.for_target(self.target).dropped
        http11, close_after = self.downstream.http11, self.downstream.close_after
        head = plan_head(status, headers, self.request_id, self._x_cache, http11, close_after, dropped)
        is_sse, self._framing = head.is_sse, head.framing
        if (
            self._x_cache is not None
            and self.cache_key is not None
            and status == 200
            and not head.event_stream
        ):
            self._capture = bytearray()
            self._headers_out = head.headers
        reader = self.usage_reader
        if reader is not None:
            if status >= 300:
                self.usage_reader = None  # an error or a redirect reports no usage
            elif is_sse and self._strip_usage and translator is None:
                strip = self._usage_filter = UsageChunkFilter(reader, self.route.buffer_size)
                # the rest of this read (usually all of a short answer), judged with the filter
                self._scan_pieces = read_mode(reader, strip, self._read_found)
        if translator is not None:  # the answer is in the other API: every piece is translated
            translator.start(status, head.event_stream)
            self._translator, self._scan_pieces = translator, TRANSLATE
        self._out.append(head.raw)
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
            if self._translator is None:  # else every piece goes through it (TRANSLATE)
                self._scan_pieces = read_mode(reader, self._usage_filter, found)

    def upstream_body(self, data: bytes) -> None:
        """The hot path: one call per body piece of an upstream read; allocates only the chunk header."""
        mode = self._scan_pieces
        if mode:  # else nothing in this read concerns the usage chunk (the usual read)
            if mode == TRANSLATE:
                self._filtered_body(self._translator.feed(data))  # type: ignore[union-attr]
                return
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
        if self._resent_on_a_fresh_connection():
            return
        error = connection_lost_error(exc, phase is Phase.STREAMING, str(self.target.origin))
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
        # call_later: uvloop's call_at is call_later(at - time()) behind a keyword call of its own
        loop = self.loop
        self._timer = loop.call_later(at - loop.time(), self._on_timer)

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
        at = deadline if next_check is None else min(deadline, next_check)
        self._timer = self.loop.call_later(at - now, self._on_timer)
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
            conn, self.conn = self.conn, None
            if conn is not None:  # the backend's first: it works on for nobody until it sees the close
                conn.close()
            self.downstream.abort()
        else:
            strip, translator = self._usage_filter, self._translator
            if strip is not None and ending.reason == "completed":
                held = strip.finish()  # an unfinished last event: forwarded as it came
                if held:
                    self.state.data(held)
                    self.upstream_body_write(held)
            if translator is not None and ending.reason == "completed":
                self._filtered_body(translator.finish())  # a held JSON answer, translated
            if ending.trailer:
                self.upstream_body_write(ending.trailer)
            if self._framing is Framing.CHUNKED:
                self._out.append(LAST_CHUNK)
            self.transport.writelines(self._out)
            self._out = []
            keep_alive = self._framing is not Framing.CLOSE and self._body_complete
        self._cancel_timers()
        self._let_go(ending)
        capture = self._capture
        if capture is not None and ending.reason == "completed" and self.cache_key is not None:
            self.runtime.cache_store(self.cache_key, self.status, self._headers_out, bytes(capture))
        if ending.reason == "client_disconnect":  # many may leave in one poll: every upstream is
            # closed first (bench disconnect). uvloop closes a socket in a call_soon of its own
            # (abort() → _call_connection_lost), so the record waits one loop turn more: else
            # the 100th close of a poll waited for 99 records (~10 µs each).
            self.loop.call_soon(self.loop.call_soon, self._record, ending.reason)
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

    def __repr__(self) -> str:
        return (
            f"<Forwarder {self.route.path} id={self.request_id.decode()} {self.state!r} conn={self.conn!r}>"
        )
