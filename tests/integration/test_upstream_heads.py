"""A broken upstream's response head, and upstream silence (hardening issue, defects 4 and 7).

Real sockets on both sides: a raw upstream that never finishes its head (fast, without end; or
one line at a time, slowly), and an upload that outlasts ``timeouts.readSecs``.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.raw_upstream import Behaviour
from tests.router_process import RouterProcess


def endless_head(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    for _ in range(20_000):  # 20 MB of header lines, bounded
        if stop.is_set():
            return
        conn.sendall(line)


def dripped_head(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    for n in range(100):  # one header line every 0.2 s: each arrives well inside readSecs
        if stop.wait(0.2):
            return
        conn.sendall(b"X-Drip-%d: x\r\n" % n)


def switches_protocols(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    stop.wait(10)


def test_an_endless_response_head_is_a_502_and_memory_stays_bounded(router_for):
    router = router_for(endless_head)
    before = router.rss_kb()
    resp = httpx.post(router.url + "/v1/embeddings", json={"model": "m", "input": "x"}, timeout=20)
    assert resp.status_code == 502, resp.text
    assert "response head" in resp.json()["error"]["message"]
    assert (router.rss_kb() - before) / 1024 < 16


def test_a_response_head_dripped_line_by_line_gets_the_504_readsecs_promises(router_for):
    router = router_for(dripped_head, timeouts={"readSecs": 1})
    started = time.monotonic()
    resp = httpx.post(router.url + "/v1/embeddings", json={"model": "m", "input": "x"}, timeout=15)
    assert resp.status_code == 504, resp.text
    assert time.monotonic() - started < 5  # readSecs 1, with the timer's granularity: not 20 s


def test_an_upload_longer_than_readsecs_is_not_upstream_silence(upstream):
    config = {"baseUrl": upstream.url, "timeouts": {"readSecs": 1}}

    def body() -> Iterator[bytes]:
        yield b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        yield b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        yield b"Content-Type: audio/wav\r\n\r\nRIFF"
        for _ in range(10):  # the client uploads for ~2.5 s, longer than readSecs
            time.sleep(0.25)
            yield b"." * 1024
        yield b"\r\n--XyZ--\r\n"

    with RouterProcess(config) as router:
        resp = httpx.post(
            router.url + "/v1/audio/transcriptions",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=XyZ"},
            timeout=20,
        )
    assert resp.status_code == 200, resp.text


def test_an_upstream_101_is_a_502_and_one_log_line(router_for):
    router = router_for(switches_protocols)
    resp = httpx.post(router.url + "/v1/embeddings", json={"model": "m", "input": "x"}, timeout=15)
    assert resp.status_code == 502, resp.text
    assert "switched protocols" in resp.json()["error"]["message"]
    assert "Traceback" not in router.logs() and "Fatal error" not in router.logs()


def negative_chunk_after_head(content_type: bytes) -> Behaviour:
    def behave(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: "
            + content_type
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\n"
        )
        stop.wait(10)

    return behave


@pytest.mark.parametrize("content_type", [b"application/json", b"text/event-stream"])
def test_a_body_broken_before_any_byte_went_out_is_a_502(router_for, content_type):
    """The head and a negative chunk size in one read: the client has seen nothing, so it gets a 502
    (the old router dropped the JSON client's connection with 0 bytes, and sent SSE a 200)."""
    router = router_for(negative_chunk_after_head(content_type))
    body = {"model": "m", "stream": content_type == b"text/event-stream", "messages": []}
    resp = httpx.post(router.url + "/v1/chat/completions", json=body, timeout=15)
    assert resp.status_code == 502, resp.text
    assert "invalid HTTP" in resp.json()["error"]["message"]
