"""What one load is: the stream shape asked of the mock upstream, the load's parameters, the
per-request record, and the request bytes (the mock's shape travels in the body twice)."""

from __future__ import annotations

import json
from dataclasses import dataclass

GOOD = ("ok", "aborted", "cut")  # outcomes that are not failures


@dataclass(frozen=True)
class Shape:
    """The stream the mock upstream is asked for (see api_router.mock)."""

    tokens: int
    interval_ms: float = 0.0
    payload: int = 16


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    shape: Shape
    run_id: str
    streams: int = 1  # concurrent connections
    requests_per_conn: int = 1  # sequential keep-alive requests on each
    abort_after: int = 0  # close the connection after K token events
    slow_bps: float = 0.0  # read each response at about this many bytes/s
    hold_s: float = 0.0  # hold all streams open this long once all have a token, then cut
    duration_s: float = 120.0  # bound for the whole run; streams still open then fail ("timeout")
    cut_at_deadline: bool = False  # ... or count as cut (the slow reader stops after duration_s)
    connect_parallel: int = 256
    path: str = "/v1/chat/completions"
    model: str = "bench-gpt"
    api_key: str = "sk-bench"


class Req:
    __slots__ = ("aborted_at", "detail", "outcome", "req_id", "status", "t_write", "tokens", "ttft")

    def __init__(self, req_id: str) -> None:
        self.req_id = req_id
        self.outcome = "pending"  # ok | aborted | cut | <failure reason>
        self.status = 0
        self.t_write = 0.0
        self.ttft: float | None = None
        self.tokens = 0
        self.aborted_at: float | None = None
        self.detail = ""


def request_bytes(spec: LoadSpec, req_id: str) -> bytes:
    s = spec.shape
    mock = {"tokens": s.tokens, "interval_ms": s.interval_ms, "payload": s.payload, "req_id": req_id}
    text = "Say hello. MOCK" + json.dumps(mock, separators=(",", ":"))
    messages = [{"role": "user", "content": text}]
    body = {"model": spec.model, "stream": True, "messages": messages, "mock": mock}
    raw = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nAuthorization: Bearer {spec.api_key}\r\n"
        f"Content-Length: {len(raw)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + raw
