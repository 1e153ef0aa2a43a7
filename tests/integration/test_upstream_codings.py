"""Compressed upstream bodies are refused or passed whole, never relabelled (hardening issue, defect 8).

The router asks every upstream for ``Accept-Encoding: identity``. One that ignores it must not
lead to a body the client cannot decode: a transfer-coding other than chunked is refused (502,
before any byte reaches the client), and a content-coded event stream is forwarded byte for byte,
without heartbeats or error events written into the compressed bytes.
"""

from __future__ import annotations

import socket
import threading
import zlib

import httpx
import pytest

EVENTS = b"".join(b'data: {"n": %d}\n\n' % n for n in range(20))


def gzip_bytes(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=31)  # gzip framing
    return compressor.compress(data) + compressor.flush()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunked_gzip_transfer(conn: socket.socket, stop: threading.Event) -> None:
    body = gzip_bytes(b'{"object": "list", "data": []}')
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        + chunk(body)
        + b"0\r\n\r\n"
    )


def gzip_transfer_to_close(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip\r\n\r\n")
    conn.sendall(gzip_bytes(b'{"object": "list", "data": []}'))


def two_transfer_coding_lines(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"x") + b"0\r\n\r\n"
    )


def slow_gzip_event_stream(conn: socket.socket, stop: threading.Event) -> None:
    """A gzip SSE body in pieces, with pauses well past the heartbeat interval before and between them.

    The wait before the first piece is where the old code wrote a heartbeat (nothing sent yet is
    an event boundary); between gzip pieces its boundary tracker saw no blank line, by chance.
    """
    body = gzip_bytes(EVENTS)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    if stop.wait(0.5):
        return
    third = len(body) // 3
    for piece in (body[:third], body[third : 2 * third], body[2 * third :]):
        conn.sendall(chunk(piece))
        if stop.wait(0.5):
            return
    conn.sendall(b"0\r\n\r\n")


CLIENT_HAS_BYTES = threading.Event()  # set by the test once the first body bytes reached it


def gzip_event_stream_then_dies(conn: socket.socket, stop: threading.Event) -> None:
    body = gzip_bytes(EVENTS)
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunk(body[: len(body) // 2])
    )
    # Break only after the client holds bytes: a break in the head's own read is a plain 502.
    CLIENT_HAS_BYTES.wait(10)
    conn.sendall(b"zz\r\n")  # not a chunk size: the upstream broke mid-body


@pytest.mark.parametrize("behave", [chunked_gzip_transfer, gzip_transfer_to_close, two_transfer_coding_lines])
def test_a_transfer_coding_other_than_chunked_is_a_502(router_for, behave):
    router = router_for(behave)
    resp = httpx.post(router.url + "/v1/embeddings", json={"model": "m", "input": "x"}, timeout=15)
    assert resp.status_code == 502, resp.content
    assert "transfer-coding" in resp.json()["error"]["message"]
    assert "Traceback" not in router.logs()


def test_a_gzip_event_stream_is_forwarded_byte_for_byte_without_heartbeats(router_for):
    router = router_for(slow_gzip_event_stream, streamConfig={"heartbeatIntervalSecs": 0.1})
    body = {"model": "m", "stream": True, "messages": []}
    with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=15) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-encoding"] == "gzip"
        raw = b"".join(resp.iter_raw())
    assert zlib.decompress(raw, wbits=31) == EVENTS  # would fail with ": heartbeat" in the gzip bytes


def test_a_gzip_event_stream_that_breaks_gets_no_error_event_inside_it(router_for):
    CLIENT_HAS_BYTES.clear()
    router = router_for(gzip_event_stream_then_dies)
    body = {"model": "m", "stream": True, "messages": []}
    sent = gzip_bytes(EVENTS)
    raw = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),  # the body is cut: the client learns it broke
        httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=15) as resp,
    ):
        assert resp.status_code == 200
        for piece in resp.iter_raw():
            raw += piece
            CLIENT_HAS_BYTES.set()
    assert sent.startswith(raw), "bytes other than the upstream's were written into the compressed body"
