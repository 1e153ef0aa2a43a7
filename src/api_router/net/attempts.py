"""The request side of an exchange: admission, a backend picked, a connection used or opened, the
request sent (a whole JSON body, or a streamed one as it arrives), and failover to the next
backend while nothing has reached the client.

``Forwarder`` (forward.py) is this class plus the response side; this part calls four of its
methods (``_bind``: the response side listens on the connection; ``_apply``, ``_arm``,
``_cancel_timers``), declared here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from random import random
from typing import TYPE_CHECKING, Any, Final

from api_router.core.backoff import retry_after_secs, retry_delay
from api_router.core.flow_control import UPSTREAM_FULL
from api_router.core.http import HeaderList, header_value
from api_router.core.stream import Ending, Phase, StreamState
from api_router.errors import BadRequest, GatewayError, UpstreamUnreachable
from api_router.net.streamed_body import StreamedBody
from api_router.net.tasks import spawn
from api_router.net.upstream import ResponseListener
from api_router.routing import Route
from api_router.targets import Target

if TYPE_CHECKING:
    from api_router.core.balancer import Backend
    from api_router.core.multipart import MultipartModelRewriter
    from api_router.net.ports import BackendGroup, ClientSide, Gateway, Runtime
    from api_router.net.upstream import UpstreamConnection
    from api_router.translation import BackendRequests

RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
RETRY_BODY_LIMIT: Final = 1024 * 1024  # bodies above this are not held for failover


def _no_head(target: Target, length: int | None) -> bytes:
    """Stands in for the request-head builder once the response started (it held the client's headers)."""
    raise AssertionError("the request head is sent only before the response starts")


class Attempts(ResponseListener):
    """One exchange's request, on its way to a backend (and to the next one, on failover)."""

    # Slots: thousands of these live at once; a dict per exchange would cost ~0.7 KB each.
    __slots__ = (
        "_body",
        "_body_complete",
        "_client_key",
        "_connect_task",
        "_head",
        "_head_sent",
        "_last_error",
        "_read_timeout",
        "_requests",
        "_retried",
        "_reused",
        "_streamed",
        "_tried",
        "_upstream_full",
        "app",
        "backend",
        "client_name",
        "conn",
        "downstream",
        "group",
        "last_read",
        "loop",
        "quota_ticket",
        "request_id",
        "reserve_tokens",
        "route",
        "runtime",
        "slot_key",
        "started_at",
        "state",
        "status",
        "streaming",
        "target",
        "transport",
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
        rewriter: MultipartModelRewriter | None,
        body_length: int | None,
        group: BackendGroup,
        client_key: str | None,
        client_name: str,
        reserve_tokens: int,
        requests: BackendRequests | None,
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
        # a multipart or pass-through body, sent as it arrives (streamed_body.py)
        self._streamed = StreamedBody(body_length, rewriter) if body is None else None
        self._body_complete = body is not None
        self._head_sent = False
        self._reused = False
        self._retried = False
        self._connect_task: asyncio.Task[None] | None = None
        self.status = 0
        self.last_read = self.loop.time()  # loop clock (timers); started_at is perf_counter (latency)
        self._upstream_full = False  # the upstream's write buffer is over its high-water mark
        self.group = group
        self.backend: Backend | None = None
        self.target: Target = group.targets[group.backends[0].name]  # replaced at each pick
        self._tried: list[str] = []  # backends this request went to, in order (failover)
        self._last_error: GatewayError | None = None
        self._client_key = client_key  # set when the request must pass the limits first
        self.slot_key: str | None = None  # a concurrent-stream slot this exchange holds
        self.client_name = client_name  # who is calling (core/access.py), for accounting
        self.reserve_tokens = reserve_tokens  # its tokens-per-minute estimate (core/reserve.py)
        self._requests = requests  # each backend's own form of the request (translation.py), if any
        self.quota_ticket: object | None = None  # what quota.py reserved, settled at the end

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

    def _go(self, again: bool = False) -> None:
        """Pick a backend (failover excludes those tried, unless ``again``: none else is left)
        and use or open a connection to it."""
        backend = self.group.pick(self.loop.time(), [] if again else self._tried)
        if backend is None:
            self._apply(self.state.upstream_failed(self._last_error or self.group.unavailable()))
            return
        self.backend = backend
        backend.in_flight += 1
        self._tried.append(backend.name)
        self.target = self.group.targets[backend.name]
        if self._requests is not None:
            try:  # its own form of the request (translation.py): one it cannot take is skipped
                self._requests.for_target(self.target)
            except GatewayError as refused:
                self._backend_failed(refused, breaker_failure=False)
                return
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

    def _can_fail_over(self) -> bool:
        """Only before the first byte went to the client, with the whole body held, within budget."""
        body = self._body
        return (
            self.state.phase is Phase.AWAITING_UPSTREAM
            and body is not None
            and len(body) <= RETRY_BODY_LIMIT
            and len(self._tried) <= self.group.retries
            and self.group.has_alternative(self.loop.time(), [])  # one tried may serve again, later
        )

    def _next_attempt(self, retry_after: float | None) -> None:
        """Another backend at once; else one already tried, after a back-off (core/backoff.py)."""
        group = self.group
        if group.has_alternative(self.loop.time(), self._tried):
            self._go()
            return
        wait = retry_delay(len(self._tried), retry_after, group.retry_backoff, group.max_retry_wait, random())
        self._spawn(self._go_after(wait))

    async def _go_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        if self.state.phase is Phase.AWAITING_UPSTREAM:
            self._go(again=True)

    def _backend_failed(
        self, error: GatewayError, *, breaker_failure: bool = True, retry_after: float | None = None
    ) -> None:
        """This backend failed before answering: try the next one, or give the client the error."""
        self._release_backend(False if breaker_failure else None)
        self._last_error = error
        self._cancel_timers()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        self._head_sent = False
        self.status = 0
        untranslatable = isinstance(error, BadRequest)  # only another backend may take it
        if self._can_fail_over() and (
            not untranslatable or self.group.has_alternative(self.loop.time(), self._tried)
        ):
            self.app.metrics.failovers.inc()
            self._next_attempt(retry_after)
        else:
            self._apply(self.state.upstream_failed(error))

    def _release_backend(self, success: bool | None) -> None:
        """Give the backend its verdict: True/False feed its breaker, None (client left) abandons."""
        backend, self.backend = self.backend, None
        if backend is None:
            return
        backend.in_flight -= 1
        backend.breaker.record(success, self.loop.time())
        self.app.metrics.backend_result(backend.name, success, time.perf_counter() - self.started_at)

    def _send_request(self) -> None:
        conn = self.conn
        if conn is None or self._head_sent:
            return
        if self._body is not None:
            self._head_sent = True
            body = self._body if self._requests is None else self._requests.for_target(self.target).body
            conn.write(self._head(self.target, len(body)) + body)
            return
        streamed = self._streamed
        if streamed is None or not streamed.ready:
            return
        self._head_sent = True
        conn.write(self._head(self.target, streamed.upstream_length()))
        self._flush_pending()

    def request_body(self, data: bytes) -> None:
        """A piece of a streamed (multipart or pass-through) client body."""
        streamed = self._streamed
        assert streamed is not None
        streamed.feed(data)
        if self._head_sent:
            self._flush_pending()
        elif streamed.ready:
            self._send_request()  # the rewriter just decided (or it was waiting for a connection)
        if not self._head_sent and streamed.held_bytes > self.route.buffer_size:
            self.downstream.pause_reading(UPSTREAM_FULL)  # hold at most bufferSize until it is ready

    def request_body_end(self) -> None:
        self._body_complete = True
        streamed = self._streamed
        assert streamed is not None
        streamed.end()
        if self._head_sent:
            self._flush_pending()
        else:
            self._send_request()

    def _flush_pending(self) -> None:
        conn, streamed = self.conn, self._streamed
        if conn is None or conn.closed or streamed is None:
            return
        streamed.flush(conn)
        if self._body_complete:
            self.last_read = self.loop.time()  # the upstream's silence clock starts now
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

    def _no_more_attempts(self) -> None:
        """The response started: from here on there is no retry, so neither body nor head is needed."""
        self._body = None
        self._head = _no_head

    def _failed_over_on(self, status: int, headers: HeaderList) -> bool:
        """A status worth another attempt, while the budget lasts and nothing reached the client."""
        if status not in RETRY_STATUSES or not self._can_fail_over():
            return False
        error = UpstreamUnreachable(f"backend {self.target.origin} answered {status}", code="backend_status")
        wait = retry_after_secs(header_value(headers, b"retry-after"), time.time())
        self._backend_failed(error, breaker_failure=status != 429, retry_after=wait)  # busy is not broken
        return True

    @property
    def backend_name(self) -> str | None:
        """The backend that answered (the last one tried), for the access line."""
        return self._tried[-1] if self._tried else None

    def _resent_on_a_fresh_connection(self) -> bool:
        """A pooled connection the server had already closed: the request is resent, once."""
        if (
            self.state.phase is not Phase.AWAITING_UPSTREAM
            or not self._reused
            or self._retried
            or self._body is None
            or self.status != 0
        ):
            return False
        self._retried = True
        self.conn = None
        self._head_sent = False
        self._cancel_timers()
        self._spawn(self._connect_new())
        return True

    def _let_go(self, ending: Ending) -> None:
        """The exchange ended: its connect task, connection, backend and stream slot are let go."""
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
            self.runtime.stream_slots.release(self.slot_key)  # the runtime it was taken from
            self.slot_key = None

    # -- the response side's, in forward.py -------------------------------------------------
    def _bind(self, conn: UpstreamConnection, *, reused: bool) -> None:
        raise NotImplementedError

    def _apply(self, ending: Ending) -> None:
        raise NotImplementedError

    def _arm(self, at: float) -> None:
        raise NotImplementedError

    def _cancel_timers(self) -> None:
        raise NotImplementedError
