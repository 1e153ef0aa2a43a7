"""net/request.py's split of a request target, against httptools.parse_url, which it replaces on
the request path: for every target llhttp lets through, the same path and query."""

from __future__ import annotations

import httptools
import pytest

from api_router.net.request import split_target

SHAPES = [b"/a%sb", b"/a?%s", b"/a?b=%s&c", b"/a#%s", b"/a?b#%s", b"/%s?%s#%s"]


class _Target:
    url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url


def accepted_by_llhttp(target: bytes) -> bytes | None:
    """The target as the request parser hands it to the router, None if it refuses the line."""
    seen = _Target()
    try:
        httptools.HttpRequestParser(seen).feed_data(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    except httptools.HttpParserError:
        return None
    return seen.url


def parse_url(target: bytes) -> tuple[bytes, bytes]:
    url = httptools.parse_url(target)
    return url.path, url.query or b""


@pytest.mark.parametrize("shape", SHAPES)
def test_every_byte_llhttp_accepts_splits_as_parse_url_splits_it(shape: bytes) -> None:
    accepted = 0
    for byte in range(256):
        value = bytes([byte])
        target = accepted_by_llhttp(shape.replace(b"%s", value))
        if target is None:
            continue
        accepted += 1
        assert split_target(target) == parse_url(target), target
    assert accepted > 64  # the shapes are requests llhttp takes: the comparison was made


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/v1/chat/completions", b"/v1/chat/completions", b""),
        (b"/v1/models?limit=2", b"/v1/models", b"limit=2"),
        (b"/v1/x?", b"/v1/x", b""),
        (b"/a?b?c", b"/a", b"b?c"),
        (b"/a#f?b", b"/a", b""),
        (b"/a?b#f", b"/a", b"b"),
        (b"//x", b"//x", b""),
    ],
)
def test_a_target_is_its_path_then_its_query_without_a_fragment(
    target: bytes, path: bytes, query: bytes
) -> None:
    assert split_target(target) == (path, query) == parse_url(target)
