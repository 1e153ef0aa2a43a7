"""What the simulated upstream records (``GET /_stats``): one ``StreamRecord`` per model request
(when and why it ended, backpressure met), the connection counters and the recent requests."""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any

KEEP_STREAMS = 10_000
KEEP_REQUESTS = 200


class StreamRecord:
    """What happened to one model request (streamed or not). Times are ``time.monotonic()``."""

    __slots__ = (
        "bytes_written", "conn_id", "end_reason", "ended_at", "first_token_at", "headers_sent_at",
        "id", "path", "paused_s", "pauses", "req_id", "started_at", "stream", "tokens_sent",
    )  # fmt: skip

    def __init__(self, stream_id: int, path: str, conn_id: int) -> None:
        self.id, self.path, self.conn_id = stream_id, path, conn_id
        self.req_id: str | None = None
        self.stream = False
        self.started_at = time.monotonic()
        self.headers_sent_at: float | None = None
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason = "active"  # completed | peer_closed | error_status | died | active
        self.tokens_sent = self.bytes_written = self.pauses = 0
        self.paused_s = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class MockStats:
    """Counters of one running mock; ``snapshot()`` is what ``GET /_stats`` answers."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.active: set[StreamRecord] = set()  # survives reset(): these are really running
        self.reset()

    def reset(self) -> None:
        self.connections_opened = 0
        self.connections_closed = 0
        self.streams: deque[StreamRecord] = deque(maxlen=KEEP_STREAMS)
        self.requests: deque[dict[str, Any]] = deque(maxlen=KEEP_REQUESTS)

    def begin(self, path: str, conn_id: int) -> StreamRecord:
        rec = StreamRecord(next(self._ids), path, conn_id)
        self.streams.append(rec)
        self.active.add(rec)
        return rec

    def end(self, rec: StreamRecord, reason: str) -> None:
        if rec.end_reason == "active":
            rec.ended_at, rec.end_reason = time.monotonic(), reason
            self.active.discard(rec)

    def snapshot(self, with_streams: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "now": time.monotonic(),
            "connections_opened": self.connections_opened,
            "connections_closed": self.connections_closed,
            "active_streams": len(self.active),
        }
        if with_streams:
            out["streams"] = [rec.as_dict() for rec in self.streams]
        return out
