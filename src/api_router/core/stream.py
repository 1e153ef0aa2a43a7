"""The streaming rules: one exchange from request sent to body ended. Pure: no I/O, no clock.

Rule 1. Every upstream read is forwarded at once; this class only counts it and tracks the
        SSE event boundary (``data``). Nothing is buffered here.
Rule 2. A heartbeat comment is due after the heartbeat interval with nothing written, only
        for SSE responses, and only at an event boundary (``tick``).
Rule 3. The upstream ends cleanly: the body is ended and the connection goes back to the
        pool only if the upstream said keep-alive (``upstream_finished``).
Rule 4. The upstream fails before the response started, or before the client saw any byte of
        it (a broken body in the same read as the head): the client gets a plain error response
        (502/504). After that, an SSE response gets one ``error`` event and a clean end; any
        other body cannot be repaired, so the client connection is closed.
        A failed upstream connection is never reused (``upstream_failed``).
Rule 5. The client goes away at any moment: the upstream connection is closed at once and
        never reused, so the backend stops generating (``downstream_lost``).
Rule 6. The first ending wins; later events are ignored (``Phase.DONE``/``ABORTED``).

Phases: AWAITING_UPSTREAM → STREAMING → DONE, or → ABORTED from either of the first two.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

from api_router.core.heartbeat import HEARTBEAT, HeartbeatPolicy
from api_router.core.sse import SseBoundaryTracker
from api_router.errors import ApiFlavor, GatewayError


class Phase(enum.Enum):
    AWAITING_UPSTREAM = "awaiting_upstream"
    STREAMING = "streaming"
    DONE = "done"
    ABORTED = "aborted"


class Ending(NamedTuple):
    """What the I/O layer must do to end the exchange."""

    reason: str  # metrics label: completed | client_disconnect | upstream_died | upstream_unreachable |
    #              upstream_timeout | rate_limited | unavailable | ignored
    reuse_upstream: bool
    error_response: GatewayError | None  # send this as a whole response (nothing was sent yet)
    trailer: bytes  # write this, then end the body (the SSE error event)
    close_downstream: bool  # the body cannot be ended cleanly: drop the client connection


# an enum of an interpreted module: a member read from compiled code is a class attribute lookup
_RESPONSES: Final = ApiFlavor.RESPONSES
_IGNORED: Final = Ending("ignored", False, None, b"", False)
# The usual endings, made once: a NamedTuple's __new__ is interpreted (~3k instructions a request)
_COMPLETED_REUSE: Final = Ending("completed", True, None, b"", False)
_COMPLETED_CLOSE: Final = Ending("completed", False, None, b"", False)
# every abort's (bench disconnect: 100 clients leaving at once)
_CLIENT_LEFT: Final = Ending("client_disconnect", False, None, b"", True)


class StreamState:
    __slots__ = (
        "_count_events",
        "_policy",
        "bytes_forwarded",
        "events",
        "flavor",
        "heartbeats",
        "phase",
        "sse",
        "tracker",
    )

    def __init__(self, heartbeat_interval: float, flavor: ApiFlavor = ApiFlavor.OPENAI) -> None:
        self._policy = HeartbeatPolicy(heartbeat_interval)
        self.flavor = flavor
        self.phase = Phase.AWAITING_UPSTREAM
        self.sse = False
        self.tracker = SseBoundaryTracker()
        self.bytes_forwarded = 0
        self.heartbeats = 0
        self.events = 0  # Responses API events forwarded (the error event's sequence_number)
        # a plain bool: an enum member read per event is a module attribute lookup (bench.instructions)
        self._count_events = flavor is _RESPONSES

    def response_started(self, is_sse: bool) -> None:
        if self.phase is Phase.AWAITING_UPSTREAM:
            self.phase = Phase.STREAMING
            self.sse = is_sse

    def data(self, chunk: bytes) -> None:
        """Rule 1: the hot path, one call per upstream read."""
        self.bytes_forwarded += len(chunk)
        if self.sse:
            if self._count_events:  # one C pass over the piece, on the Responses API only
                self.events += chunk.count(b"\ndata:") + chunk.startswith(b"data:")
            tracker = self.tracker
            if not (tracker.settled and chunk.endswith(b"\n\n")):  # else feed would change nothing
                tracker.feed(chunk)

    def tick(self, last_write_at: float, now: float) -> tuple[bytes | None, float | None]:
        """Rule 2: (bytes to write now or None, when to check again or None for never)."""
        if self.phase is not Phase.STREAMING or not self.sse:
            return None, None
        send, next_check = self._policy.decide(last_write_at, now, self.tracker.at_boundary)
        if send:
            self.heartbeats += 1
            return HEARTBEAT, next_check
        return None, next_check

    def upstream_finished(self, keep_alive: bool) -> Ending:
        """Rule 3."""
        if self.phase is not Phase.STREAMING:
            return _IGNORED
        self.phase = Phase.DONE
        return _COMPLETED_REUSE if keep_alive else _COMPLETED_CLOSE

    def upstream_failed(self, error: GatewayError, *, client_saw_nothing: bool = False) -> Ending:
        """Rule 4."""
        if self.phase is Phase.AWAITING_UPSTREAM or (client_saw_nothing and self.phase is Phase.STREAMING):
            self.phase = Phase.DONE
            return Ending(_reason(error), False, error, b"", False)
        if self.phase is not Phase.STREAMING:
            return _IGNORED
        self.phase = Phase.DONE
        if not self.sse:
            return Ending("upstream_died", False, None, b"", True)
        # Mid-event: end the partial event first, so the error event stands on its own.
        prefix = b"" if self.tracker.at_boundary else b"\n\n"
        return Ending("upstream_died", False, None, prefix + error.sse_event(self.flavor, self.events), False)

    def downstream_lost(self) -> Ending:
        """Rule 5."""
        if self.phase in (Phase.DONE, Phase.ABORTED):
            return _IGNORED
        self.phase = Phase.ABORTED
        return _CLIENT_LEFT

    def __repr__(self) -> str:
        return (
            f"<StreamState {self.phase.value} sse={self.sse} bytes={self.bytes_forwarded} "
            f"heartbeats={self.heartbeats} at_boundary={self.tracker.at_boundary}>"
        )


_REASONS: Final = {504: "upstream_timeout", 429: "rate_limited", 503: "unavailable"}


def _reason(error: GatewayError) -> str:
    return _REASONS.get(error.status, "upstream_unreachable")
