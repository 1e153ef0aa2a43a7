"""The response head the client gets for an upstream's head: which headers pass, which the router
adds, and how the body is framed.

Rules:
1. Hop-by-hop headers (and any a ``Connection`` header names), ``Content-Length`` and
   ``X-Request-ID`` are the router's own: dropped from the upstream's head, then written anew.
2. An event stream is forwarded as SSE (heartbeats, error events written between events) only
   when it is not compressed: inside a compressed body (an upstream that ignored our
   ``Accept-Encoding: identity``) they would corrupt it, so such a stream is an opaque body.
3. Framing: HTTP/1.0 clients get the body until the close; a length the upstream gave is kept
   for non-SSE bodies; everything else is chunked. A client that asked to close is told so,
   unless the framing already says it.

Pure: one pass over the upstream's headers, read by net/forward.py.
"""

from __future__ import annotations

from typing import Final

from api_router.core.http import HOP_BY_HOP, PLAIN_CONNECTION, Framing, HeaderList, end_to_end, response_head

_OURS: Final = frozenset({b"content-length", b"x-request-id"})  # the framing and the id are ours
_DROP: Final = HOP_BY_HOP | _OURS
_READ: Final = frozenset(
    {b"content-type", b"content-length", b"cache-control", b"connection", b"content-encoding"}
)
# What ``plan`` does with a header, by name (a bit each): one lookup a header, not a set test for
# each of the two (bench.instructions --rps: ~1k instructions a request less)
_READS: Final = 1
_DROPS: Final = 2
_ROLES: Final = {name: _READS * (name in _READ) + _DROPS * (name in _DROP) for name in _READ | _DROP}


class ResponseHead:
    """What ``plan`` decided: the head's bytes, its headers (kept for a cached copy) and framing."""

    __slots__ = ("event_stream", "framing", "headers", "is_sse", "raw")

    def __init__(
        self, raw: bytes, headers: HeaderList, framing: Framing, event_stream: bool, is_sse: bool
    ) -> None:
        self.raw = raw
        self.headers = headers
        self.framing = framing
        self.event_stream = event_stream  # text/event-stream, compressed or not
        self.is_sse = is_sse  # forwarded as events (rule 2)


def plan(
    status: int,
    headers: HeaderList,
    request_id: bytes,
    x_cache: bytes | None,
    http11: bool,
    close_after: bool,
    dropped: tuple[str, ...] | None = None,
) -> ResponseHead:
    content_type = length = None
    cache_control = listed = encoded = False
    out: HeaderList = []
    for item in headers:  # one pass: what the router reads, and what it forwards
        name = item[0]
        role = _ROLES.get(name, 0)
        if role & _READS:
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
        if not role & _DROPS:
            out.append(item)
    if listed:  # Connection names other headers (rare): they are hop-by-hop too (rule 1)
        out = end_to_end(headers, _OURS)
    event_stream = content_type is not None and content_type.startswith(b"text/event-stream")
    is_sse = event_stream and not encoded
    out.append((b"x-request-id", request_id))
    if x_cache is not None:
        out.append((b"x-cache", x_cache))
    if dropped:  # request fields a translation left out (translation.py, rule 2)
        out.append((b"x-api-router-dropped", ",".join(dropped).encode()))
    if event_stream:
        if not cache_control:
            out.append((b"cache-control", b"no-cache"))
        out.append((b"x-accel-buffering", b"no"))
    if not http11:
        framing = Framing.CLOSE
    elif length is not None and not is_sse and length.isdigit():
        framing = Framing.LENGTH
    else:
        framing = Framing.CHUNKED
    if close_after and framing is not Framing.CLOSE:
        out.append((b"connection", b"close"))
    raw = response_head(status, out, framing, int(length) if framing is Framing.LENGTH and length else 0)
    return ResponseHead(raw, out, framing, event_stream, is_sse)
