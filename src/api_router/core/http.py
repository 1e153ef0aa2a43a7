"""HTTP/1.1 message heads, built once per request. Pure: bytes in, bytes out.

Rule: hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy in either direction, nor do
the headers named in ``Connection``; body framing is always the proxy's own decision.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from http import HTTPStatus

HeaderList = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
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
LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"


class Framing(enum.Enum):
    """How the proxy delimits a body it sends."""

    LENGTH = "content-length"
    CHUNKED = "chunked"
    CLOSE = "close"  # HTTP/1.0 peer: the end of the body is the end of the connection
    NONE = "none"  # no body (HEAD, 204, 304)


def end_to_end(
    headers: Iterable[tuple[bytes, bytes]], also_drop: frozenset[bytes] = frozenset()
) -> HeaderList:
    """Headers that may be forwarded, names lower-cased; drops hop-by-hop ones and ``also_drop``."""
    items = [(name.lower(), value) for name, value in headers]
    named = {
        token.strip().lower() for name, value in items if name == b"connection" for token in value.split(b",")
    }
    dropped = HOP_BY_HOP | named | also_drop
    return [(name, value) for name, value in items if name not in dropped]


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


def response_head(
    status: int, headers: Iterable[tuple[bytes, bytes]], framing: Framing, length: int = 0
) -> bytes:
    """A status line and headers; ``headers`` must already be end-to-end and framing-free."""
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b"Unknown"
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    lines.extend(name + b": " + value for name, value in headers)
    if framing is Framing.LENGTH:
        lines.append(b"content-length: %d" % length)
    elif framing is Framing.CHUNKED:
        lines.append(b"transfer-encoding: chunked")
    elif framing is Framing.CLOSE:
        lines.append(b"connection: close")
    lines.append(b"")
    lines.append(b"")
    return CRLF.join(lines)


def request_head(method: bytes, target: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines.extend(name + b": " + value for name, value in headers)
    lines.append(b"")
    lines.append(b"")
    return CRLF.join(lines)


def chunk_header(size: int) -> bytes:
    return b"%x\r\n" % size
