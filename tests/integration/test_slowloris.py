"""Slow clients (issue 6, promise 4): a slowloris flood must not starve anyone, and a request
head that does not arrive in time is answered 408 (or closed) after ``limits.headerTimeoutSecs``.

The flood is 500 connections each sending one byte of a never-ending request head per second,
driven by one thread over non-blocking sockets, while a normal client makes 20 requests that
must each succeed within 2 s.
"""

from __future__ import annotations

import json
import resource
import socket
import threading
import time

import httpx
import pytest

from tests.integration.conftest import chat
from tests.integration.test_streaming import wait_for
from tests.rawhttp import request

FLOOD_CONNECTIONS = 500
FLOOD_SECONDS = 15.0
NORMAL_REQUESTS = 20
NORMAL_LIMIT_S = 2.0
HEADER_TIMEOUT = 2.0
SLOW_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class Flood(threading.Thread):
    """FLOOD_CONNECTIONS sockets, one byte each per second, until ``stop`` or FLOOD_SECONDS."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.connected = threading.Event()
        self.stop = threading.Event()
        self.opened = 0
        self.answered: dict[int, int] = {}  # status → connections the router answered
        self.closed_by_router = 0
        self.bytes_sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        socks: list[socket.socket] = []
        try:
            for _ in range(FLOOD_CONNECTIONS):
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
                sock.setblocking(False)
                socks.append(sock)
            self.opened = len(socks)
            self.connected.set()
            alive = {sock: 0 for sock in socks}
            started = time.monotonic()
            tick = 0
            while not self.stop.is_set() and time.monotonic() - started < FLOOD_SECONDS:
                for sock in list(alive):
                    if self._drip(sock, alive[sock]):
                        alive[sock] += 1
                    else:
                        del alive[sock]
                tick += 1
                self.stop.wait(max(0.0, started + tick - time.monotonic()))
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.connected.set()
            for sock in socks:
                sock.close()

    def _drip(self, sock: socket.socket, offset: int) -> bool:
        """Send the next byte; False once the router has answered or closed this connection."""
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            data = None
        except OSError:
            self.closed_by_router += 1
            return False
        if data is not None:
            if data.startswith(b"HTTP/1.1 "):
                status = int(data[9:12])
                self.answered[status] = self.answered.get(status, 0) + 1
            else:
                self.closed_by_router += 1
            return False
        try:
            self.bytes_sent += sock.send(SLOW_HEAD[offset % len(SLOW_HEAD) : offset % len(SLOW_HEAD) + 1])
        except BlockingIOError:
            pass
        except OSError:
            self.closed_by_router += 1
            return False
        return True


def test_slowloris_flood_does_not_starve_normal_clients(make_router):
    _raise_fd_limit(4 * FLOOD_CONNECTIONS + 256)
    router = make_router()
    flood = Flood(router.port)
    flood.start()
    try:
        assert flood.connected.wait(30)
        assert flood.error is None, flood.error
        assert flood.opened == FLOOD_CONNECTIONS
        # The premise: the router really holds the flood's connections open.
        held = wait_for(
            lambda: (
                (n := httpx.get(router.url + "/health", timeout=5).json()["connections"]) > FLOOD_CONNECTIONS
                and n
            ),
            timeout=10,
            what="the router to accept the flood's connections",
        )
        timings = []
        for i in range(NORMAL_REQUESTS):
            started = time.monotonic()
            resp = request(
                router.port,
                "POST",
                "/v1/chat/completions",
                chat({"tokens": 3, "interval_ms": 0}, stream=i % 2 == 0),
                headers={"X-Request-ID": f"normal-{i}"},
                timeout=NORMAL_LIMIT_S + 3,
            )
            body = resp.body()
            elapsed = time.monotonic() - started
            timings.append(round(elapsed, 3))
            assert resp.status == 200, body[:300]
            if i % 2 == 0:
                assert body.rstrip().endswith(b"data: [DONE]")
            else:
                assert json.loads(body)["choices"]
            assert elapsed < NORMAL_LIMIT_S, f"request {i} took {elapsed:.2f} s during the flood"
            time.sleep(0.6)  # spread over the flood's whole length
        flood.join(FLOOD_SECONDS + 10)
    finally:
        flood.stop.set()
        flood.join(FLOOD_SECONDS + 10)
    assert flood.error is None, flood.error
    print(
        f"\nslowloris: {flood.opened} slow connections, {flood.bytes_sent} bytes dripped; router answered "
        f"{flood.answered} and closed {flood.closed_by_router} of them within {FLOOD_SECONDS:g} s; "
        f"router held {held} connections; normal request times (s) {timings}"
    )
    assert router.proc.poll() is None
    wait_for(
        lambda: httpx.get(router.url + "/health", timeout=5).json()["connections"] <= 1,
        timeout=15,
        what="the router to drop the flood's connections",
    )
    assert "Traceback" not in router.logs(), router.logs()[-3000:]


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float, bool]:
    """Bytes received until the peer closes (or ``limit`` passes); the time of the close; closed?"""
    started = time.monotonic()
    data = b""
    sock.settimeout(limit)
    try:
        while True:
            sock.settimeout(max(0.01, started + limit - time.monotonic()))
            chunk = sock.recv(65536)
            if not chunk:
                return data, time.monotonic() - started, True
            data += chunk
    except ConnectionResetError:
        return data, time.monotonic() - started, True
    except TimeoutError:
        return data, time.monotonic() - started, False


def _check_timeout_answer(data: bytes) -> None:
    if not data:
        return  # closed without an answer: allowed
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), head[:200]
    error = json.loads(body)["error"]
    assert error["message"] and error["type"] and error["code"]


@pytest.fixture
def short_header_timeout_router(make_router):
    return make_router({"limits": {"headerTimeoutSecs": HEADER_TIMEOUT}})


def test_partial_head_gets_408_after_the_header_timeout(short_header_timeout_router):
    router = short_header_timeout_router
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: ab")
        data, elapsed, closed = _read_until_closed(sock, HEADER_TIMEOUT + 3)
    assert closed, f"still open {elapsed:.1f} s after a partial head (headerTimeoutSecs {HEADER_TIMEOUT})"
    assert elapsed > HEADER_TIMEOUT - 0.5, f"cut after {elapsed:.2f} s, before the header timeout"
    _check_timeout_answer(data)
    assert router.proc.poll() is None


def test_trickled_head_is_cut_at_the_header_timeout(short_header_timeout_router):
    """The deadline is for the whole head, from its first byte: a byte every 250 ms (each read
    well inside any idle timeout) must not keep the connection open past headerTimeoutSecs."""
    router = short_header_timeout_router
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        started = time.monotonic()
        closed_at = None
        for i in range(int((HEADER_TIMEOUT + 3) / 0.25)):
            try:
                sock.sendall(SLOW_HEAD[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - started
                break
            data, _, closed = _read_until_closed(sock, 0.25)
            if closed or data:
                closed_at = time.monotonic() - started
                _check_timeout_answer(data)
                break
    assert closed_at is not None, f"a trickled head kept the connection open for {HEADER_TIMEOUT + 3} s"
    assert HEADER_TIMEOUT - 0.5 < closed_at < HEADER_TIMEOUT + 1.5, f"cut after {closed_at:.2f} s"
    assert router.proc.poll() is None


def test_keep_alive_idle_longer_than_the_header_timeout_is_fine(short_header_timeout_router):
    """Keep-alive: the deadline restarts with each request head, so a connection that is reused
    after more than headerTimeoutSecs of (keep-alive) idle time still works."""
    router = short_header_timeout_router
    first = request(router.port, "GET", "/health")
    assert first.status == 200
    first.body_keep_open()
    time.sleep(HEADER_TIMEOUT + 0.5)
    first.sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    second = first.next_response()
    assert second.status == 200
    second.body()


def test_a_head_trickled_after_a_forwarded_exchange_is_cut(short_header_timeout_router):
    """Hardening issue, defect 5: a second head that began while a forwarded response was going
    out lost its head deadline when that exchange finished (the idle keep-alive rule replaced
    it), so a line every 250 ms kept the connection open for good."""
    router = short_header_timeout_router
    body = json.dumps(chat({"tokens": 5, "interval_ms": 100})).encode()
    with socket.create_connection(("127.0.0.1", router.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        started = time.monotonic()
        sock.sendall(SLOW_HEAD[:40])  # the next head begins while the stream is going out
        received, closed_at = b"", None
        for i in range(40, 40 + int((HEADER_TIMEOUT + 6) / 0.25)):
            try:
                sock.sendall(SLOW_HEAD[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - started
                break
            data, _, closed = _read_until_closed(sock, 0.25)
            received += data
            if closed:
                closed_at = time.monotonic() - started
                break
    assert b"data: [DONE]" in received  # the first response was whole
    assert closed_at is not None, "a trickled head after an exchange kept the connection open"
    assert closed_at < HEADER_TIMEOUT + 2, f"cut after {closed_at:.2f} s"
    assert b"HTTP/1.1 408 " in received
