"""The WebSocket tunnel's relay (net/tunnel.py) driven through fake transports: backpressure each
way, early bytes both ways around the 101, an upstream's refusal answered, a close on either end
closing the other (a peer that does not read is aborted after the linger)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from api_router.errors import ApiFlavor, GatewayError
from api_router.net.tunnel import LINGER_SECS, Tunnel
from tests.net.fakes import FakeTransport, parse_responses

SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


class FakeLoop:
    def __init__(self) -> None:
        self.later: list[tuple[float, Any]] = []

    def time(self) -> float:
        return 0.0

    def call_later(self, delay: float, callback: Any) -> Any:
        self.later.append((delay, callback))
        return SimpleNamespace(cancel=lambda: None)


class FakeMetrics:
    def __init__(self) -> None:
        self.responses: list[tuple[str, int]] = []

    def local_response(self, path: str, status: int) -> None:
        self.responses.append((path, status))

    def backend_result(self, backend: str, success: bool | None, seconds: float) -> None:
        pass


class FakeClient:
    """The client connection as the tunnel sees it (a DownstreamProtocol)."""

    def __init__(self) -> None:
        self.app = SimpleNamespace(loop=FakeLoop(), metrics=FakeMetrics())
        self.peer = "127.0.0.1"
        self.transport = FakeTransport()
        self.fetching = True
        self.lost = False

    def send_error(
        self, error: GatewayError, flavor: ApiFlavor, request_id: bytes, keep_alive: bool = True
    ) -> int:
        body = error.body(flavor)
        head = b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n\r\n" % (error.status, len(body))
        self.transport.write(head + body)
        self.close()
        return len(body)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True

    def close(self) -> None:
        self.transport.close()


def tunnel() -> tuple[Tunnel, FakeClient, FakeTransport]:
    client = FakeClient()
    req: Any = SimpleNamespace(client_name="anonymous", request_id=b"rid-1", started_at=0.0)
    route: Any = SimpleNamespace(path="/v1/realtime", buffer_size=8192, flavor=ApiFlavor.OPENAI)
    made = Tunnel(client, req, route)
    upstream = FakeTransport()
    made.upstream.connection_made(upstream)  # as pool.open_raw's create_connection does
    return made, client, upstream


def test_early_bytes_wait_for_the_101_both_ways() -> None:
    made, client, upstream = tunnel()
    made.client.data_received(b"early client frame")
    assert upstream.written == []  # nothing but the head would go before the 101
    made.upstream.data_received(SWITCH + b"early server frame")
    written = b"".join(client.transport.written)
    head, _, rest = written.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    assert b"x-request-id: rid-1" in head
    assert rest == b"early server frame"
    assert upstream.written == [b"early client frame"]
    assert client.transport.reading


def test_each_ends_pause_writing_pauses_reading_the_other() -> None:
    made, client, upstream = tunnel()
    made.upstream.data_received(SWITCH)
    made.client.pause_writing()  # the client does not read
    assert not upstream.reading and client.transport.reading
    made.client.resume_writing()
    assert upstream.reading
    made.upstream.pause_writing()  # the upstream does not read
    assert not client.transport.reading and upstream.reading
    made.upstream.resume_writing()
    assert client.transport.reading
    made.client.data_received(b"frame")
    made.upstream.data_received(b"echo")
    assert upstream.written[-1] == b"frame" and client.transport.written[-1] == b"echo"


def test_early_bytes_are_bounded_by_the_buffer_size() -> None:
    made, client, upstream = tunnel()
    made.client.data_received(b"x" * 8000)
    assert client.transport.reading  # still read: a client leaving during the handshake is seen
    made.client.data_received(b"x" * 192)  # 8192 bytes wait: the route's bufferSize
    assert not client.transport.reading
    made.upstream.data_received(SWITCH)
    assert client.transport.reading and upstream.written == [b"x" * 8192]


def test_an_upstream_that_stops_reading_before_the_101_keeps_the_client_paused_after_it() -> None:
    made, client, _ = tunnel()
    made.upstream.pause_writing()
    assert client.transport.reading  # early bytes wait in the tunnel, bounded (above)
    made.upstream.data_received(SWITCH)
    assert not client.transport.reading
    made.upstream.resume_writing()
    assert client.transport.reading


def test_an_upstream_refusal_is_forwarded_then_both_close() -> None:
    made, client, upstream = tunnel()
    made.upstream.data_received(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5\r\nX-Why: key\r\n\r\n")
    assert client.transport.written == []  # the body is not in yet
    made.upstream.data_received(b"nope!")
    (response,) = parse_responses(b"".join(client.transport.written))
    assert (response.status, response.body, response.headers[b"x-why"]) == (401, b"nope!", b"key")
    assert response.headers[b"connection"] == b"close" and response.headers[b"x-request-id"] == b"rid-1"
    assert client.transport.closed and upstream.closed and not client.fetching
    assert client.app.metrics.responses == [("/v1/realtime", 401)]


def test_an_upstream_close_closes_the_client_and_the_reverse() -> None:
    made, client, upstream = tunnel()
    made.upstream.data_received(SWITCH)
    made.upstream.connection_lost(None)
    assert client.transport.closed and not client.fetching
    assert client.app.metrics.responses == [("/v1/realtime", 101)]
    made.client.connection_lost(None)  # then the client's transport reports its end
    assert client.lost  # the connection's own bookkeeping ran (app.connections)

    made, client, upstream = tunnel()
    made.upstream.data_received(SWITCH)
    made.client.connection_lost(None)
    assert client.lost and upstream.closed


def test_a_closing_end_that_does_not_take_its_bytes_is_aborted_after_the_linger() -> None:
    made, client, upstream = tunnel()
    made.upstream.data_received(SWITCH)
    upstream.get_write_buffer_size = lambda: 65536  # type: ignore[method-assign]  # not reading
    made.client.connection_lost(None)
    assert upstream.closed and not upstream.aborted
    (abort,) = [callback for delay, callback in client.app.loop.later if delay == LINGER_SECS]
    abort()
    assert upstream.aborted


def test_an_upstream_that_closes_before_answering_is_a_502() -> None:
    made, client, _ = tunnel()
    made.upstream.connection_lost(None)
    (response,) = parse_responses(b"".join(client.transport.written))
    assert response.status == 502 and response.json()["error"]["code"] == "upstream_unreachable"
    assert client.transport.closed
