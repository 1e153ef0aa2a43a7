"""HTTP/1.1 message heads, built once per request. Pure: bytes in, bytes out.

Rule: hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy in either direction, nor do
the headers named in ``Connection``; body framing is always the proxy's own decision.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

HeaderList = list[tuple[bytes, bytes]]

HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Final (here and below): compiled code inlines these or holds them in C statics; a plain module
# constant is a globals-dict lookup at each use (CRLF: once per forwarded event in net/forward.py)
LAST_CHUNK: Final = b"0\r\n\r\n"
CRLF: Final = b"\r\n"


class Framing(enum.Enum):
    """How the proxy delimits a body it sends."""

    LENGTH = "content-length"
    CHUNKED = "chunked"
    CLOSE = "close"  # HTTP/1.0 peer: the end of the body is the end of the connection
    NONE = "none"  # no body (HEAD, 204, 304)


def connection_tokens(headers: HeaderList) -> frozenset[bytes]:
    """The header names ``Connection`` lists (hop-by-hop for this message); usually none."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection" and value not in PLAIN_CONNECTION:
            tokens.update(token.strip() for token in value.lower().split(b","))
    return frozenset(tokens) if tokens else _NONE


_NONE: Final[frozenset[bytes]] = frozenset()
# The usual values name no header (keep-alive is hop-by-hop already): skip the split.
PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})


def end_to_end(headers: HeaderList, also_drop: frozenset[bytes] = _NONE) -> HeaderList:
    """Headers that may be forwarded: drops hop-by-hop ones, those ``Connection`` names, and
    ``also_drop``. Names must be lower-case already (both parsers lower-case them)."""
    dropped = HOP_BY_HOP | also_drop | connection_tokens(headers)
    return [item for item in headers if item[0] not in dropped]


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


_STATUS_LINES: Final = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


def response_head(status: int, headers: HeaderList, framing: Framing, length: int = 0) -> bytes:
    """A status line and headers; ``headers`` must already be end-to-end and framing-free."""
    parts = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status]
    add_headers(parts, headers)
    if framing is Framing.LENGTH:
        parts.append(b"content-length: %d\r\n" % length)
    elif framing is Framing.CHUNKED:
        parts.append(b"transfer-encoding: chunked\r\n")
    elif framing is Framing.CLOSE:
        parts.append(b"connection: close\r\n")
    parts.append(CRLF)
    return b"".join(parts)


def request_head(method: bytes, target: bytes, headers: HeaderList) -> bytes:
    parts = [b"%s %s HTTP/1.1\r\n" % (method, target)]  # as routing.Router.upstream_head writes it
    add_headers(parts, headers)
    parts.append(CRLF)
    return b"".join(parts)


def add_headers(parts: list[bytes], headers: HeaderList, drop: frozenset[bytes] = _NONE) -> None:
    """Header lines, but those named in ``drop``, for a head that is joined once: one formatted
    line a header (a bytes ``%s`` format is one copy in compiled code, where ``name + b": " +
    value`` made two objects; four pieces a header cost more in the join, ~70 instructions a
    piece)."""
    for name, value in headers:
        if name in drop:
            continue
        parts.append(b"%s: %s\r\n" % (name, value))


def header_lines(headers: HeaderList) -> bytes:
    """Header lines, worked out once (``routing._HeadPlan``'s configured headers)."""
    parts: list[bytes] = []
    add_headers(parts, headers)
    return b"".join(parts)


def chunk_header(size: int) -> bytes:
    return b"%x\r\n" % size


# Chunk-size lines by size, made once: formatting one per event cost more than the lookup.
_CHUNK_HEADS: Final[dict[int, bytes]] = {}
_CHUNK_HEADS_UP_TO: Final = 4096  # bounds the cache (~150 KB at most); SSE events are mostly smaller


def chunk_head(size: int) -> bytes:
    """The size line of an HTTP/1.1 chunk of ``size`` bytes."""
    head = _CHUNK_HEADS.get(size)
    if head is None:
        head = b"%x\r\n" % size
        if size <= _CHUNK_HEADS_UP_TO:
            _CHUNK_HEADS[size] = head
    return head
