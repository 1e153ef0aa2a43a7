"""core/http: which headers cross the proxy, and the heads it writes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from api_router.core.http import (
    HOP_BY_HOP,
    Framing,
    HeaderList,
    connection_tokens,
    end_to_end,
    request_head,
    response_head,
)

NAMES = [b"content-type", b"x-a", b"x-b", b"keep-alive", b"te", b"connection", b"upgrade", b"authorization"]
CONNECTION_VALUES = [b"keep-alive", b"close", b"Keep-Alive", b"x-a", b"X-A, x-b", b"close, x-b", b"upgrade"]


def reference_end_to_end(headers: HeaderList, also_drop: frozenset[bytes]) -> HeaderList:
    """RFC 9110 §7.6.1 spelled out: hop-by-hop names, every name Connection lists, and also_drop."""
    named = set()
    for name, value in headers:
        if name == b"connection":
            named |= {token.strip().lower() for token in value.split(b",")}
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named and n not in also_drop]


headers_strategy = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(NAMES), st.sampled_from([b"1", b"v"])),
        st.tuples(st.just(b"connection"), st.sampled_from(CONNECTION_VALUES)),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(headers_strategy, st.sampled_from([frozenset(), frozenset({b"x-b"}), frozenset({b"content-type"})]))
def test_end_to_end_matches_the_rfc_reference(headers: HeaderList, also_drop: frozenset[bytes]) -> None:
    assert end_to_end(headers, also_drop) == reference_end_to_end(headers, also_drop)


def test_connection_tokens_skips_the_plain_values_but_reads_listed_names() -> None:
    assert connection_tokens([(b"connection", b"keep-alive")]) == frozenset()
    assert connection_tokens([(b"connection", b"Close")]) == frozenset()
    assert connection_tokens([(b"connection", b"close, X-Secret ,x-b")]) == {b"close", b"x-secret", b"x-b"}
    assert connection_tokens([(b"x-a", b"1")]) == frozenset()


def test_response_head_status_line_framing_and_unknown_status() -> None:
    head = response_head(200, [(b"content-type", b"text/event-stream")], Framing.CHUNKED)
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    not_found = response_head(404, [], Framing.LENGTH, 12)
    assert not_found == b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n"
    assert response_head(599, [], Framing.CLOSE).startswith(b"HTTP/1.1 599 Unknown\r\nconnection: close\r\n")
    assert response_head(204, [(b"x-a", b"1")], Framing.NONE) == b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n"


def test_request_head() -> None:
    head = request_head(b"POST", b"/v1/x?a=1", [(b"host", b"h")])
    assert head == b"POST /v1/x?a=1 HTTP/1.1\r\nhost: h\r\n\r\n"
