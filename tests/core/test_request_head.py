"""core/request_head.py: what the router reads of a request head, and which heads it refuses."""

from __future__ import annotations

import httptools
import pytest

from api_router.core.request_head import read_head, refusal, surely_http11
from api_router.errors import BadRequest, VersionNotSupported


def test_read_head_takes_the_first_request_id_and_flags_a_foreign_coding() -> None:
    headers = [
        (b"content-length", b"12"),
        (b"x-request-id", b"first"),
        (b"x-request-id", b"second"),
        (b"expect", b"100-continue"),
        (b"transfer-encoding", b" Chunked "),
    ]
    assert read_head(headers) == (b"12", b"first", b"100-continue", False, False)
    assert read_head([(b"transfer-encoding", b"gzip, chunked")])[3] is True
    assert read_head([(b"connection", b"close")])[4] is True
    assert read_head([]) == (None, None, None, False, False)


@pytest.mark.parametrize("version", ["0.9", "1.0", "1.1", "1.2", "2.0", "2.1", "3.0", "9.9"])
@pytest.mark.parametrize("connection", [None, b"keep-alive", b"close", b"Keep-Alive, Upgrade", b"x"])
def test_surely_http11_agrees_with_the_parser(version: str, connection: bytes | None) -> None:
    """Every request line llhttp takes, with every kind of Connection header: where the shortcut
    says HTTP/1.1, the parser says so too."""
    head = b"GET / HTTP/%s\r\nHost: x\r\n" % version.encode()
    if connection is not None:
        head += b"Connection: " + connection + b"\r\n"
    headers: list[tuple[bytes, bytes]] = []

    class Callbacks:
        def on_header(self, name: bytes, value: bytes) -> None:
            headers.append((name.lower(), value))

    parser = httptools.HttpRequestParser(Callbacks())
    try:
        parser.feed_data(head + b"\r\n")
    except httptools.HttpParserError:
        return  # refused by the parser: never reaches the router's head
    if surely_http11(parser.should_keep_alive(), read_head(headers)[4]):
        assert parser.get_http_version() == "1.1"
    if parser.get_http_version() == "1.1" and connection is None:
        assert surely_http11(parser.should_keep_alive(), False)  # the usual request takes the shortcut


def test_refusals() -> None:
    assert refusal("1.1", False, "POST", False) is None
    assert refusal("1.0", False, "GET", False) is None
    assert isinstance(refusal("2.0", False, "GET", False), VersionNotSupported)
    upgrade = refusal("1.1", True, "GET", False)
    assert isinstance(upgrade, BadRequest) and upgrade.code == "upgrade_not_supported"
    connect = refusal("1.1", False, "CONNECT", False)
    assert isinstance(connect, BadRequest) and connect.code == "upgrade_not_supported"
    coding = refusal("1.1", False, "POST", True)
    assert isinstance(coding, BadRequest) and coding.code == "unsupported_transfer_encoding"
