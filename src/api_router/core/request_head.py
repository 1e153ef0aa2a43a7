"""A client request's head: the few fields the router itself reads, and the heads it refuses.

Pure: fed the parsed head, returns values; net/downstream.py acts on them. A refused head is
answered and its connection closed, since nothing after it may be read as a request.
"""

from __future__ import annotations

from typing import Final

from api_router.core.http import HeaderList
from api_router.errors import BadRequest, GatewayError, VersionNotSupported

_READ_HERE: Final = frozenset(
    {b"content-length", b"x-request-id", b"transfer-encoding", b"expect", b"connection"}
)


def read_head(headers: HeaderList) -> tuple[bytes | None, bytes | None, bytes | None, bool, bool]:
    """One pass for (Content-Length, the first X-Request-ID, Expect, whether a Transfer-Encoding
    other than chunked was sent, whether a Connection header was)."""
    length = request_id = expect = None
    bad_coding = connection = False
    for name, value in headers:
        if name in _READ_HERE:
            if name == b"content-length":
                length = value
            elif name == b"x-request-id":
                request_id = request_id or value
            elif name == b"transfer-encoding":
                bad_coding = bad_coding or value.strip().lower() != b"chunked"
            elif name == b"connection":
                connection = True
            else:
                expect = value
    return length, request_id, expect, bad_coding, connection


def surely_http11(keep_alive: bool, connection: bool) -> bool:
    """The request line said HTTP/1.1, known without asking the parser (httptools' version is a
    ``str.format``, ~2k instructions a request): llhttp takes only 0.9, 1.0, 1.1 and 2.0, and
    keeps alive only 1.1, or a request whose Connection header asked (tests/core/test_request_head.py
    checks it against the parser)."""
    return keep_alive and not connection


def offers_only_h2c(headers: HeaderList) -> bool:
    """The request offers an upgrade to HTTP/2 over cleartext and nothing else (``curl --http2``),
    with a body it frames by Content-Length (or none): such an offer may be ignored and the request
    answered in HTTP/1.1 (RFC 9110 §7.8: a server may ignore Upgrade), as nginx does."""
    offered = chunked = False
    for name, value in headers:
        if name == b"upgrade":
            tokens = [token.strip().lower() for token in value.split(b",")]
            if any(token != b"h2c" for token in tokens):
                return False
            offered = True
        elif name == b"transfer-encoding":
            chunked = True
    return offered and not chunked


def offers_websocket(headers: HeaderList) -> bool:
    """The request's Upgrade offers WebSocket and nothing else (RFC 6455 §4.1)."""
    offers = [value.strip().lower() for name, value in headers if name == b"upgrade"]
    return offers == [b"websocket"]


def refusal(version: str, upgrade: bool, method: str, bad_coding: bool) -> GatewayError | None:
    """The error a head is refused with, or None when it may be routed."""
    if version not in ("1.0", "1.1"):  # HTTP/2.0 or 3.0 in an HTTP/1 request line
        return VersionNotSupported(f"HTTP/{version} is not supported here; use HTTP/1.1")
    if upgrade or method == "CONNECT":
        return BadRequest("protocol upgrades and CONNECT are not supported", code="upgrade_not_supported")
    if bad_coding:  # we decode no transfer coding but chunked: anything else must not go upstream
        return BadRequest("unsupported Transfer-Encoding", code="unsupported_transfer_encoding")
    return None
