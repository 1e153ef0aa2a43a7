"""DownstreamProtocol on a fake transport (as uvicorn tests its httptools protocol): bytes go in
through ``data_received``, the answers are read back from what it wrote, and the transport's
calls (close, pause/resume reading) are what the protocol decided.

The App is a real one, made from a real Config through its public constructor only, on a real
event loop that is never given a socket: each step runs as one callback of that loop, as the
transport's callbacks do. Requests the router answers itself (/health, /metrics, refusals) need
no upstream; a request that must go upstream is followed only until its Forwarder started, and
the client leaves in the same step, so the connection it would open is never attempted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from api_router.app import App
from api_router.config import from_dict
from api_router.net.downstream import DownstreamProtocol
from api_router.net.upstream import UpstreamConnection
from tests.net.fakes import FakeTransport, ParsedResponse, parse_responses

MAX_BODY_BYTES = 1024
MAX_HEADER_BYTES = 2048
MAX_HEADERS = 20
CONFIG = {
    "baseUrl": "http://127.0.0.1:9",  # never connected to: see the module docstring
    "maxBodyBytes": MAX_BODY_BYTES,
    "limits": {"maxHeaderBytes": MAX_HEADER_BYTES, "maxHeaders": MAX_HEADERS},
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CHAT_BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


def get(path: str, request_id: str | None = None, extra: bytes = b"") -> bytes:
    rid = b"X-Request-ID: %s\r\n" % request_id.encode() if request_id else b""
    return b"GET %s HTTP/1.1\r\nHost: router\r\n%s%s\r\n" % (path.encode(), rid, extra)


def post(path: str, body: bytes, *, length: int | None = None, extra: bytes = b"") -> bytes:
    """A POST with a Content-Length header (``length``, else the body's); ``body`` is what follows."""
    size = len(body) if length is None else length
    head = b"POST %s HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n" % path.encode()
    return head + b"Content-Length: %d\r\n%s\r\n%s" % (size, extra, body)


class Client:
    """One client connection: a DownstreamProtocol of ``app`` on a FakeTransport."""

    def __init__(self, app: App, loop: asyncio.AbstractEventLoop) -> None:
        self.app, self.loop = app, loop
        self.transport = FakeTransport()
        self.transport.extra["peername"] = ("127.0.0.1", 50000)
        self.protocol = DownstreamProtocol(app)
        self.step(lambda: self.protocol.connection_made(self.transport))  # type: ignore[arg-type]
        self.lost = False

    def step(self, action: Callable[[], None]) -> None:
        """Run ``action`` as one callback of the loop (then whatever it scheduled with call_soon)."""

        async def callback() -> None:
            action()

        self.loop.run_until_complete(callback())

    def send(self, data: bytes) -> None:
        self.step(lambda: self.protocol.data_received(data))

    def lose(self) -> None:
        """The peer is gone: what the transport reports once, whichever side closed."""
        self.lost = True
        self.step(lambda: self.protocol.connection_lost(None))

    def pause_writing(self) -> None:
        self.step(self.protocol.pause_writing)

    def resume_writing(self) -> None:
        self.step(self.protocol.resume_writing)

    @property
    def raw(self) -> bytes:
        return b"".join(self.transport.written)

    def responses(self) -> list[ParsedResponse]:
        return parse_responses(self.raw)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    failures: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    yield loop
    loop.run_until_complete(asyncio.sleep(0))  # callbacks the last step scheduled
    loop.close()
    assert not failures, f"errors reported to the loop: {failures}"


@pytest.fixture
def app(loop: asyncio.AbstractEventLoop) -> Iterator[App]:
    made: list[App] = []

    async def build() -> None:  # as server.serve does: inside the loop
        made.append(App(from_dict(CONFIG), loop))

    loop.run_until_complete(build())
    yield made[0]
    made[0].runtime.backends.stop()


@pytest.fixture
def connect(app: App, loop: asyncio.AbstractEventLoop) -> Iterator[Callable[[], Client]]:
    clients: list[Client] = []

    def make() -> Client:
        clients.append(Client(app, loop))
        return clients[-1]

    yield make
    for client in clients:
        if not client.lost:
            client.lose()
    assert not app.connections


def scrape(connect: Callable[[], Client]) -> list[str]:
    """The app's /metrics, read on a connection of its own."""
    client = connect()
    client.send(get("/metrics"))
    [metrics] = client.responses()
    return metrics.body.decode().splitlines()


def assert_openai_error(response: ParsedResponse, status: int, code: str) -> dict[str, Any]:
    """The OpenAI error shape: {"error": {"message", "type", "code"}}, and nothing else."""
    assert response.status == status
    assert response.headers[b"content-type"] == b"application/json"
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "code"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    return body


def assert_closed_after(client: Client, responses: list[ParsedResponse]) -> None:
    """The last answer said it closes, the protocol closed the transport, and wrote nothing after."""
    assert responses[-1].headers.get(b"connection") == b"close"
    assert client.transport.closed
    assert client.transport.written_after_close == []


# -- local answers and keep-alive ----------------------------------------------------------


def test_health_then_metrics_on_one_kept_alive_connection(connect, app):
    client = connect()
    client.send(get("/health", "first"))
    [health] = client.responses()
    assert health.status == 200 and health.headers[b"x-request-id"] == b"first"
    assert b"connection" not in health.headers
    assert health.json()["status"] == "ok"
    assert health.json()["connections"] == 1  # this one, counted by the app
    assert not client.transport.closed

    client.send(get("/metrics", "second"))
    first, metrics = client.responses()
    assert first.headers[b"x-request-id"] == b"first"
    assert metrics.status == 200 and metrics.headers[b"x-request-id"] == b"second"
    assert metrics.headers[b"content-type"].startswith(b"text/plain")
    assert 'requests_total{route="/health",status="200"} 1.0' in metrics.body.decode().splitlines()
    assert not client.transport.closed and client.transport.reading
    assert client.protocol in app.connections


def test_connection_close_is_honoured_after_the_answer(connect):
    client = connect()
    client.send(get("/health", "only", extra=b"Connection: close\r\n"))
    [health] = client.responses()
    assert health.status == 200
    assert_closed_after(client, [health])


def test_nothing_is_answered_after_a_connection_close_answer(connect):
    client = connect()
    client.send(get("/health", "last", extra=b"Connection: close\r\n") + get("/health", "ignored"))
    assert client.transport.written_after_close == []
    [health] = client.responses()  # RFC 9112 9.6: no further request on it is processed
    assert health.headers[b"x-request-id"] == b"last"
    assert_closed_after(client, [health])


def test_nothing_is_answered_after_a_refusal_that_closes(connect):
    client = connect()
    client.send(get("/no-such-route", "last", extra=b"Connection: close\r\n") + get("/health", "ignored"))
    assert client.transport.written_after_close == []
    [refused] = client.responses()
    assert_openai_error(refused, 404, "not_found")
    assert_closed_after(client, [refused])


# -- pipelining ------------------------------------------------------------------------------


def test_pipelined_requests_in_one_read_are_answered_in_order(connect):
    client = connect()
    paths = ["/health", "/metrics", "/health", "/metrics", "/health"]
    client.send(b"".join(get(path, f"r{i}") for i, path in enumerate(paths)))
    answers = client.responses()
    assert [a.headers[b"x-request-id"] for a in answers] == [b"r%d" % i for i in range(len(paths))]
    kinds = [a.headers[b"content-type"].split(b";")[0] for a in answers]
    assert kinds == [b"application/json", b"text/plain"] * 2 + [b"application/json"]
    assert all(a.status == 200 for a in answers)
    assert not client.transport.closed


def test_more_than_16_queued_requests_pause_reading_until_the_queue_drains(connect):
    client = connect()
    client.pause_writing()  # the client reads nothing: every request waits in the queue
    client.send(b"".join(get("/health", f"q{i}") for i in range(16)))
    assert client.transport.written == []
    assert client.transport.reading  # 16 may wait
    client.send(get("/health", "q16"))
    assert client.transport.written == []
    assert not client.transport.reading  # the 17th: stop reading the client

    client.resume_writing()
    answers = client.responses()
    assert [a.headers[b"x-request-id"] for a in answers] == [b"q%d" % i for i in range(17)]
    assert client.transport.reading  # the queue drained
    client.send(get("/health", "after"))
    assert client.responses()[-1].headers[b"x-request-id"] == b"after"


# -- write backpressure ----------------------------------------------------------------------


def test_pause_writing_holds_queued_answers_until_resume_writing(connect):
    client = connect()
    client.send(get("/health", "before"))
    assert len(client.responses()) == 1
    client.pause_writing()
    client.send(get("/health", "held-1") + get("/metrics", "held-2"))
    assert len(client.responses()) == 1  # nothing more written while the client does not read
    client.resume_writing()
    ids = [a.headers[b"x-request-id"] for a in client.responses()]
    assert ids == [b"before", b"held-1", b"held-2"]


# -- malformed input -------------------------------------------------------------------------


def test_a_bad_request_line_is_a_400_in_openai_shape_and_closes(connect):
    client = connect()
    client.send(b"NOT A REQUEST\r\n\r\n")
    [answer] = client.responses()
    body = assert_openai_error(answer, 400, "malformed_request")
    assert body["error"]["message"].startswith("malformed HTTP request")
    assert answer.headers[b"x-request-id"]  # refusals carry an id too
    assert_closed_after(client, [answer])


def test_junk_after_a_valid_request_is_answered_after_it(connect):
    client = connect()
    client.send(get("/health", "valid") + b"\x01\x02 junk\r\n\r\n")
    valid, refused = client.responses()
    assert valid.status == 200 and valid.headers[b"x-request-id"] == b"valid"
    assert_openai_error(refused, 400, "malformed_request")
    assert_closed_after(client, [valid, refused])


def test_junk_behind_a_queued_request_waits_for_its_answer(connect):
    client = connect()
    client.pause_writing()
    client.send(get("/health", "queued") + b"\x01\x02 junk\r\n\r\n")
    assert client.transport.written == [] and not client.transport.closed
    assert not client.transport.reading  # nothing after the junk is read
    client.resume_writing()
    queued, refused = client.responses()
    assert queued.status == 200 and queued.headers[b"x-request-id"] == b"queued"
    assert_openai_error(refused, 400, "malformed_request")
    assert_closed_after(client, [queued, refused])


def test_headers_over_the_byte_limit_are_a_431_and_close(connect):
    client = connect()
    client.send(get("/health", extra=b"X-Big: %s\r\n" % (b"a" * MAX_HEADER_BYTES)))
    [answer] = client.responses()
    assert_openai_error(answer, 431, "headers_too_large")
    assert_closed_after(client, [answer])


def test_more_headers_than_the_limit_are_a_431_and_close(connect):
    client = connect()
    client.send(get("/health", extra=b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 1))))
    [answer] = client.responses()
    assert_openai_error(answer, 431, "headers_too_large")
    assert_closed_after(client, [answer])


def test_headers_just_under_the_limit_are_accepted(connect):
    client = connect()
    client.send(get("/health", extra=b"X-Big: %s\r\n" % (b"a" * (MAX_HEADER_BYTES // 2))))
    [answer] = client.responses()
    assert answer.status == 200 and not client.transport.closed


# -- the request-body limit ------------------------------------------------------------------


def test_a_content_length_over_max_body_bytes_is_a_413_and_closes(connect):
    client = connect()
    client.send(post("/v1/chat/completions", b"", length=MAX_BODY_BYTES + 1))  # the head is enough
    [answer] = client.responses()
    assert_openai_error(answer, 413, "request_too_large")
    assert_closed_after(client, [answer])
    assert client.protocol.exchange is None  # nothing went upstream


def test_a_chunked_body_over_max_body_bytes_is_a_413_and_closes(connect):
    client = connect()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n%s\r\n" % (MAX_BODY_BYTES // 2, b"x" * (MAX_BODY_BYTES // 2))
    client.send(head + chunk + chunk)
    assert client.transport.written == []  # exactly at the limit: still reading
    client.send(b"1\r\nx\r\n")
    [answer] = client.responses()
    assert_openai_error(answer, 413, "request_too_large")
    assert_closed_after(client, [answer])


def test_a_refused_body_is_counted_once(connect):
    client = connect()
    client.send(post("/v1/chat/completions", b"x" * (MAX_BODY_BYTES + 1)))  # head and body in one read
    [answer] = client.responses()
    assert answer.status == 413
    assert 'requests_total{route="/v1/chat/completions",status="413"} 1.0' in scrape(connect)


def test_an_anthropic_route_refuses_a_large_body_in_anthropic_shape(connect):
    client = connect()
    client.send(post("/v1/messages", b"", length=MAX_BODY_BYTES + 1))
    [answer] = client.responses()
    assert answer.status == 413
    body = answer.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == "request_too_large"  # Anthropic's name for it, not OpenAI's code
    assert_closed_after(client, [answer])


# -- disconnects in every phase ----------------------------------------------------------------


def test_disconnect_while_idle(connect, app):
    client = connect()
    assert client.protocol in app.connections
    client.lose()
    assert client.protocol not in app.connections
    assert client.transport.written == []


def test_disconnect_between_kept_alive_requests(connect, app):
    client = connect()
    client.send(get("/health"))
    client.lose()
    assert client.protocol not in app.connections
    assert len(client.responses()) == 1


def test_disconnect_mid_head(connect, app):
    client = connect()
    client.send(b"GET /health HTTP/1.1\r\nHost: rou")
    client.lose()
    assert client.protocol not in app.connections
    assert client.transport.written == []


def test_disconnect_mid_body(connect, app):
    client = connect()
    client.send(post("/v1/chat/completions", CHAT_BODY[:10], length=len(CHAT_BODY)))
    assert client.protocol.exchange is None  # a JSON body is read whole before anything starts
    client.lose()
    assert client.protocol not in app.connections
    assert client.transport.written == []


def test_disconnect_while_queued_answers_wait(connect, app):
    client = connect()
    client.pause_writing()
    client.send(get("/health") + get("/health"))
    client.lose()
    assert client.protocol not in app.connections
    assert client.transport.written == []


def test_disconnect_while_a_forwarded_request_is_pending(connect, app, loop):
    client = connect()
    started: list[object] = []

    def request_then_leave() -> None:  # one step: the upstream connect never gets to run
        client.protocol.data_received(post("/v1/chat/completions", CHAT_BODY) + get("/health", "behind"))
        started.append(client.protocol.exchange)
        client.protocol.connection_lost(None)

    client.lost = True
    client.step(request_then_leave)
    assert started[0] is not None  # a Forwarder was started for the chat request
    loop.run_until_complete(asyncio.sleep(0))  # let the cancelled connect task end
    assert client.protocol.exchange is None
    assert client.protocol not in app.connections
    assert app.pool.opened == 0  # its connect was cancelled before it ran
    assert client.transport.written == []  # neither the chat nor the queued /health answered
    lines = scrape(connect)  # the exchange ended as a client that left, and was counted so
    assert "stream_client_disconnects_total 1.0" in lines
    assert 'requests_total{route="/v1/chat/completions",status="499"} 1.0' in lines


@pytest.mark.parametrize("stream", [True, False])
def test_a_streamed_answer_holds_no_parser_and_a_whole_one_keeps_its_own(connect, loop, stream):
    """While a stream is forwarded the connection holds no parser (~0.5 KB a held stream): a new
    one is made if the client sends again. A whole answer ends soon: its parser is kept."""
    client = connect()
    body = json.dumps({"model": "gpt-4o", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
    seen: list[object] = []

    def request_then_leave() -> None:  # one step: the upstream connect never gets to run
        parser = client.protocol.parser
        client.protocol.data_received(post("/v1/chat/completions", body.encode()))
        seen.extend([client.protocol.exchange, client.protocol.parser, parser])
        client.protocol.connection_lost(None)

    client.lost = True
    client.step(request_then_leave)
    loop.run_until_complete(asyncio.sleep(0))  # let the cancelled connect task end
    exchange, parser, parser_before = seen
    assert exchange is not None and exchange.streaming is stream  # type: ignore[attr-defined]
    assert parser is (None if stream else parser_before)


def test_a_half_close_ends_the_exchange_at_once_and_is_counted_once(connect, app, loop):
    """The client's FIN (eof_received) ends its exchange there and then: connection_lost, which
    the loop runs after the poll's other callbacks, comes later and finds nothing left to end."""
    client = connect()
    seen: list[object] = []

    def request_then_half_close() -> None:
        client.protocol.data_received(post("/v1/chat/completions", CHAT_BODY))
        seen.append(client.protocol.exchange)
        seen.append(client.protocol.eof_received())
        seen.append(client.protocol.exchange)

    client.step(request_then_half_close)
    assert seen[0] is not None  # a Forwarder was started
    assert seen[1] is False  # the transport is to close
    assert seen[2] is None  # the exchange ended in eof_received itself
    assert client.transport.is_closing()
    client.lose()
    loop.run_until_complete(asyncio.sleep(0))
    assert client.transport.written == []
    lines = scrape(connect)
    assert "stream_client_disconnects_total 1.0" in lines
    assert 'requests_total{route="/v1/chat/completions",status="499"} 1.0' in lines


def test_a_client_that_leaves_has_its_upstream_closed_first(connect, app, loop):
    """On the client's FIN the backend's connection is dropped before the client's own: the
    backend is what goes on working for nobody (bench disconnect measures that close)."""
    origin = (
        app.runtime.backends.group(None).targets[app.runtime.backends.group(None).backends[0].name].origin
    )
    upstream = UpstreamConnection(app.pool, origin)
    upstream_transport = FakeTransport()
    closed: list[str] = []
    upstream_transport.abort = lambda: closed.append("upstream")  # type: ignore[method-assign]
    client = connect()
    client.transport.abort = lambda: closed.append("client")  # type: ignore[method-assign]

    def pooled_then_request_then_leave() -> None:
        upstream.connection_made(upstream_transport)  # type: ignore[arg-type]
        app.pool.release(upstream)  # an idle pooled connection: the request goes on it at once
        client.protocol.data_received(post("/v1/chat/completions", CHAT_BODY))
        assert upstream_transport.written  # the request was sent on it
        client.protocol.eof_received()

    client.step(pooled_then_request_then_leave)
    assert closed == ["upstream", "client"]
    client.lose()


def test_clients_that_leave_in_one_poll_have_every_upstream_closed_before_any_record(connect, app, loop):
    """uvloop closes a socket in a call_soon of its own (abort → _call_connection_lost): the
    fakes do the same, and every upstream that lost its client in one poll must be closed before
    any of the exchanges is recorded (bench disconnect: else close N waits for N - 1 records)."""
    group = app.runtime.backends.group(None)
    origin = group.targets[group.backends[0].name].origin
    closes: list[int] = []  # client disconnects counted when each upstream socket closed

    def abort_later() -> None:
        loop.call_soon(lambda: closes.append(app.metrics._disconnects))

    clients, upstreams = [connect() for _ in range(3)], []
    for _ in clients:
        transport = FakeTransport()
        transport.abort = abort_later  # type: ignore[method-assign]
        upstreams.append((UpstreamConnection(app.pool, origin), transport))

    def requests_then_all_leave() -> None:
        for (upstream, transport), client in zip(upstreams, clients, strict=True):
            upstream.connection_made(transport)  # type: ignore[arg-type]
            app.pool.release(upstream)  # idle and pooled: the request goes on it at once
            client.protocol.data_received(post("/v1/chat/completions", CHAT_BODY))
            assert transport.written
        for client in clients:  # one poll's FINs
            client.protocol.eof_received()

    clients[0].step(requests_then_all_leave)
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    assert closes == [0, 0, 0]
    assert app.metrics._disconnects == 3  # and then each was recorded
    for client in clients:
        client.lose()


def test_disconnect_mid_body_of_a_streamed_upload(connect, app, loop):
    client = connect()
    started: list[object] = []
    head = (
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: router\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 500\r\n\r\n"
    )

    def upload_then_leave() -> None:  # a multipart body streams upstream: its Forwarder starts at the head
        client.protocol.data_received(head + b"--b\r\nContent-Disposition: form-data; name=")
        started.append(client.protocol.exchange)
        client.protocol.connection_lost(None)

    client.lost = True
    client.step(upload_then_leave)
    assert started[0] is not None
    loop.run_until_complete(asyncio.sleep(0))
    assert client.protocol.exchange is None and client.protocol not in app.connections
    assert app.pool.opened == 0
    assert 'requests_total{route="/v1/audio/transcriptions",status="499"} 1.0' in scrape(connect)


# -- Expect: 100-continue --------------------------------------------------------------------


def test_expect_100_continue_gets_the_interim_response(connect):
    client = connect()
    client.send(post("/v1/chat/completions", b"", length=len(CHAT_BODY), extra=b"Expect: 100-continue\r\n"))
    assert client.raw == CONTINUE
    assert client.protocol.exchange is None and not client.transport.closed


def test_the_interim_response_waits_for_the_answers_before_it(connect):
    client = connect()
    client.pause_writing()
    expecting = post("/v1/chat/completions", b"", length=len(CHAT_BODY), extra=b"Expect: 100-continue\r\n")
    client.send(get("/health", "earlier") + expecting)
    assert client.raw == b""  # the client is not reading: nothing goes out, the 100 neither
    client.resume_writing()
    first = client.responses()[0]
    assert first.status == 200 and first.headers[b"x-request-id"] == b"earlier"  # not the 100


def test_no_interim_response_for_http_1_0(connect):
    client = connect()
    head = post("/v1/chat/completions", b"", length=len(CHAT_BODY), extra=b"Expect: 100-continue\r\n")
    client.send(head.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    assert client.raw == b""


def test_no_interim_response_for_a_body_that_will_be_refused(connect):
    client = connect()
    client.send(
        post("/v1/chat/completions", b"", length=MAX_BODY_BYTES + 1, extra=b"Expect: 100-continue\r\n")
    )
    assert CONTINUE not in client.raw
    [answer] = client.responses()
    assert answer.status == 413


# -- versions and upgrades -----------------------------------------------------------------------


def test_http_2_in_the_request_line_is_a_505(connect):
    client = connect()
    client.send(b"GET /health HTTP/2.0\r\nHost: router\r\n\r\n" + get("/health", "after"))
    [answer] = client.responses()  # nothing after that head is read as a request
    assert answer.status == 505
    assert answer.json()["error"]["code"] == "http_version_not_supported"
    assert_closed_after(client, [answer])


def test_an_upgrade_request_is_a_400_upgrade_not_supported(connect):
    client = connect()
    upgrade = get("/health", extra=b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    client.send(upgrade + get("/health", "after"))
    [answer] = client.responses()
    assert_openai_error(answer, 400, "upgrade_not_supported")
    assert_closed_after(client, [answer])


def test_connect_is_a_400_upgrade_not_supported(connect):
    client = connect()
    client.send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    [answer] = client.responses()
    assert_openai_error(answer, 400, "upgrade_not_supported")
    assert_closed_after(client, [answer])


# -- requests that go upstream -------------------------------------------------------------------


def test_a_chat_request_starts_a_forwarder_and_a_pipelined_one_waits(connect):
    client = connect()
    seen: list[object] = []

    def request_then_leave() -> None:
        client.protocol.data_received(post("/v1/chat/completions", CHAT_BODY) + get("/health", "behind"))
        seen.append(client.protocol.exchange)
        seen.append(bytes(b"".join(client.transport.written)))
        client.protocol.connection_lost(None)

    client.lost = True
    client.step(request_then_leave)
    exchange, written = seen
    assert exchange is not None
    assert written == b""  # /health waits for the chat's answer: answers go out in order
