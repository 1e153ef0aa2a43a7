"""A simulated LLM upstream: a real HTTP/1.1 server (asyncio Protocol + httptools) on loopback.

Used by ``api-router serve`` with no config, the tests and the bench. It speaks OpenAI chat,
completions, responses, embeddings, models, files and audio and Anthropic messages, streaming SSE
shaped per request (a ``"mock"`` object in the body, or ``MOCK{...}`` in the last message):
tokens, pacing, delays, stalls, mid-stream death, error statuses or raw events. It counts
backpressure and records when and why each stream ended (``/_stats``).

    python -m api_router.mock --port 0   # prints "READY http://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import http
import itertools
import json
import os
import signal
import ssl as ssl_module
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, cast
from urllib.parse import parse_qs

import httptools

from api_router.mock.answers import simple_answer
from api_router.mock.shape import (
    AUDIO_ROUTES,
    JSON_ROUTES,
    LLM_ROUTES,
    MockSpecError,
    Shape,
    parse_mock,
    shapes_help,
)
from api_router.mock.shapes import (
    MockStats,
    MultipartCounter,
    Request,
    StreamRecord,
    chunked,
    completion_body,
    embeddings_body,
    error_body,
    stream_events,
)

__all__ = ["MockStats", "MockUpstream", "StreamRecord", "main", "run", "start"]

WRITE_HIGH_WATER = 64 * 1024
WRITE_LOW_WATER = 16 * 1024
YIELD_EVERY = 16  # at interval 0, let the loop run every N events
Events = tuple[list[bytes], int, Callable[[int], bytes], list[bytes]]

# The loop keeps only weak references to tasks: the running ones are held here (as net/tasks.py
# does for the router, which this package does not import).
_running: set[asyncio.Task[Any]] = set()


def _spawn(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


class _Connection(asyncio.Protocol):
    """One client connection: requests are parsed as bytes arrive and answered in order."""

    _ids = itertools.count(1)

    def __init__(self, server: MockUpstream) -> None:
        self.server, self.stats = server, server.stats
        self.conn_id = next(self._ids)
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = self.broken = False
        self.req: Request | None = None
        self.pending: deque[Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.current: StreamRecord | None = None
        self._drained: asyncio.Future[None] | None = None

    # --- transport callbacks --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self.stats.connections_opened += 1
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.broken = True  # answer what was parsed before the bad bytes, then close
            if self.worker is None or self.worker.done():
                self._write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.close()

    def eof_received(self) -> bool:
        return False  # the peer is gone: close, connection_lost follows at once

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.stats.connections_closed += 1
        self.server.connections.discard(self)
        if self.current is not None:
            self.stats.end(self.current, "peer_closed")
        self._wake()
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()  # stop generating now

    def pause_writing(self) -> None:
        if self.current is not None:
            self.current.pauses += 1
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake()

    # --- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.req = Request()

    def on_url(self, url: bytes) -> None:
        assert self.req is not None
        self.req.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.req is not None
        self.req.headers.append([name.decode("latin-1").lower(), value.decode("latin-1")])

    def on_headers_complete(self) -> None:
        req = self.req
        assert req is not None
        req.method = self.parser.get_method().decode()
        parsed = httptools.parse_url(req.url)
        req.path, req.query = parsed.path.decode("latin-1"), (parsed.query or b"").decode("latin-1")
        if req.path in AUDIO_ROUTES:
            req.multipart = MultipartCounter.from_content_type(req.header("content-type"))
        idle = not self.pending and (self.worker is None or self.worker.done())
        if idle and req.header("expect").lower() == "100-continue":
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        req = self.req
        assert req is not None
        req.body_bytes += len(body)
        if req.multipart is not None:
            req.multipart.feed(body)
        else:
            req.body.append(body)

    def on_message_complete(self) -> None:
        req = self.req
        assert req is not None
        req.keep_alive = self.parser.should_keep_alive()
        self.req = None
        self.pending.append(req)
        if self.worker is None or self.worker.done():
            self.worker = _spawn(self._serve())

    # --- writing --------------------------------------------------------------------------
    def _wake(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(data)
        if self.current is not None:
            self.current.bytes_written += len(data)

    async def _drain(self) -> None:
        if self._drained is not None:
            started = time.monotonic()
            try:
                await self._drained
            finally:
                if self.current is not None:
                    self.current.paused_s += time.monotonic() - started

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()

    def _send(self, status: int, body: bytes, req: Request, ctype: bytes = b"application/json") -> None:
        try:
            reason = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Mock Status"
        conn = b"keep-alive" if req.keep_alive else b"close"
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status,
            reason,
            ctype,
            len(body),
        )
        self._write(head + b"Connection: %s\r\nx-mock-conn-id: %d\r\n\r\n%s" % (conn, self.conn_id, body))

    def _json(self, status: int, obj: Any, req: Request) -> None:
        self._send(status, json.dumps(obj).encode(), req)

    def _error(self, status: int, message: str, req: Request, code: str | None = None) -> None:
        self._json(status, error_body(status, message, req.path == "/v1/messages", code), req)

    # --- request handling -----------------------------------------------------------------
    async def _serve(self) -> None:
        while self.pending and not self.closed:
            req = self.pending.popleft()
            await self._handle(req)
            if not req.keep_alive:
                self.close()
        if self.broken:
            self.close()

    async def _handle(self, req: Request) -> None:
        method, path = req.method, req.path
        if path.startswith("/_"):
            return self._control(req)
        body: Any = None
        model = None
        if req.multipart is not None:
            model = req.multipart.fields.get("model")
        elif method == "POST" and (path in JSON_ROUTES or path.startswith("/v1/messages/")):
            try:
                body = json.loads(b"".join(req.body) or b"{}")
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                model = body["model"]
        seen = {"method": method, "path": path, "headers": req.headers, "model": model}
        self.stats.requests.append({**seen, "body_bytes": req.body_bytes, "conn_id": self.conn_id})
        if method == "GET" and path == "/health":
            return self._json(200, {"status": "ok"}, req)
        if (simple := simple_answer(method, path, body)) is not None:  # mock/answers.py
            return self._json(200, simple, req)
        if method == "POST" and (path in JSON_ROUTES or path in AUDIO_ROUTES):
            rec = self.stats.begin(path, self.conn_id)
            self.current = rec
            try:
                await self._model_request(req, rec, body)
            except MockSpecError as err:
                self.stats.end(rec, "error_status")
                self._error(400, str(err), req)
            except Exception:
                self._die(rec)  # a bug here: drop the connection, let the loop log it
                raise
            finally:
                self.stats.end(rec, "completed")  # no-op: every path above ends the record
                self.current = None
            return None
        return self._error(404, f"no route for {method} {path}", req, "not_found")

    def _control(self, req: Request) -> None:
        if req.path == "/_stats" and req.method == "GET":
            query = parse_qs(req.query)
            return self._json(200, self.stats.snapshot(query.get("streams", ["1"])[0] != "0"), req)
        if req.path == "/_requests" and req.method == "GET":
            return self._json(200, list(self.stats.requests), req)
        if req.path == "/_reset" and req.method == "POST":
            self.stats.reset()
            return self._json(200, {"reset": True}, req)
        return self._error(404, f"no route for {req.method} {req.path}", req, "not_found")

    async def _model_request(self, req: Request, rec: StreamRecord, body: Any) -> None:
        parts = req.multipart
        if req.path in AUDIO_ROUTES:
            if parts is None:
                raise MockSpecError("expected a multipart/form-data body")
            body = parts.as_body()
        if not isinstance(body, dict):
            raise MockSpecError("request body must be a JSON object")
        tps = self.server.tokens_per_second
        shape = Shape(parse_mock(body), 1000 / tps if tps > 0 else 0.0)
        rec.req_id = shape.req_id
        if shape.header_delay > 0:
            await asyncio.sleep(shape.header_delay)
        if shape.status is not None:
            self.stats.end(rec, "error_status")
            return self._error(int(shape.status), f"mock error status {int(shape.status)}", req)
        model = str(body.get("model") or "mock-large")
        kind = LLM_ROUTES.get(req.path)
        if kind is not None and (body.get("stream") is True or shape.raw_events is not None):
            return await self._stream(req, rec, shape, stream_events(kind, model, shape, rec.id, body))
        if shape.die_after is not None:
            return self._die(rec)
        answer: dict[str, Any] | bytes
        if parts is not None:
            answer = parts.answer(model)
        elif kind is None:
            answer = embeddings_body(body, model)
        else:
            answer = completion_body(model, kind, shape.tokens, shape.payload, rec.id)
            rec.tokens_sent = shape.tokens
        if isinstance(answer, bytes):
            self._send(200, answer, req, b"text/plain; charset=utf-8")
        else:
            self._json(200, answer, req)
        rec.headers_sent_at = rec.first_token_at = time.monotonic()
        return self.stats.end(rec, "completed")

    def _die(self, rec: StreamRecord) -> None:
        self.stats.end(rec, "died")
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # RST, no terminating chunk

    async def _stream(self, req: Request, rec: StreamRecord, shape: Shape, events: Events) -> None:
        before, count, event, after = events
        rec.stream = True
        conn = b"keep-alive" if req.keep_alive else b"close"
        self._write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: %s\r\nx-mock-conn-id: %d\r\n\r\n"
            % (conn, self.conn_id)
        )
        rec.headers_sent_at = time.monotonic()
        if shape.first_token_delay > 0:
            await asyncio.sleep(shape.first_token_delay)
        if before:
            self._write(b"".join(before))
            await self._drain()
        interval, delays, stall_after, die_after = (
            shape.interval,
            shape.event_delays,
            shape.stall_after,
            shape.die_after,
        )
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for i in range(count):
            if delays is not None and i < len(delays):
                if delays[i] > 0:
                    await asyncio.sleep(delays[i])
                next_at = loop.time()
            elif i > 0 and interval > 0:
                next_at += interval
                delay = next_at - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif delay < -interval:  # far behind (the peer was slow): no burst to catch up
                    next_at = loop.time()
            elif i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
            if die_after is not None and i >= die_after:
                return self._die(rec)
            data = event(i)
            if i == stall_after:
                if shape.stall_mid:  # the first half of the event as its own chunk, then silence
                    self._write(chunked(data[: len(data) // 2]))
                    data = data[len(data) // 2 :]
                await asyncio.sleep(shape.stall_s)
                next_at = loop.time()
            if data:
                self._write(chunked(data))
            rec.tokens_sent = i + 1
            if i == 0:
                rec.first_token_at = time.monotonic()
            if self._drained is not None:  # paused: the peer is not reading
                await self._drain()
        if die_after == count:
            return self._die(rec)
        if stall_after == count:
            await asyncio.sleep(shape.stall_s)
        self._write(b"".join(after) + b"0\r\n\r\n")
        await self._drain()
        return self.stats.end(rec, "completed")


class MockUpstream:
    """A running simulated upstream. ``close()`` stops listening and drops open connections."""

    def __init__(self, tokens_per_second: float, scheme: str) -> None:
        self.tokens_per_second = tokens_per_second
        self.stats = MockStats()
        self.connections: set[_Connection] = set()
        self.server: asyncio.Server | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.scheme = scheme

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.closed = True
                conn.transport.abort()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()


async def start(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tokens_per_second: float = 20.0,
    ssl: ssl_module.SSLContext | None = None,
) -> MockUpstream:
    """Bind and start serving; returns once listening (``.port`` is the bound port)."""
    mock = MockUpstream(tokens_per_second, "https" if ssl is not None else "http")
    loop = asyncio.get_running_loop()
    mock.server = await loop.create_server(
        lambda: _Connection(mock), host, port, ssl=ssl, backlog=4096, reuse_address=True
    )
    mock.host, mock.port = host, mock.server.sockets[0].getsockname()[1]
    return mock


def run(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tokens_per_second: float = 20.0,
    certfile: str | None = None,
    keyfile: str | None = None,
    exit_on_stdin_eof: bool = False,
) -> int:
    """Serve until SIGINT/SIGTERM (uvloop when importable); prints one ``READY <url>`` line.

    ``exit_on_stdin_eof``: also stop when stdin ends, i.e. when the process that started us with
    a pipe there is gone (the router's supervisor), so the mock never outlives it."""
    context = None
    if certfile is not None:
        context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certfile, keyfile)

    async def main() -> int:
        mock = await start(host, port, tokens_per_second=tokens_per_second, ssl=context)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if exit_on_stdin_eof:
            fd = sys.stdin.fileno()

            def stdin_readable() -> None:
                if not os.read(fd, 4096):  # EOF: the parent closed its end or died
                    loop.remove_reader(fd)
                    stop.set()

            loop.add_reader(fd, stdin_readable)
        print(f"READY {mock.url}", flush=True)
        try:
            await stop.wait()
        finally:
            mock.close()
        return 0

    try:
        import uvloop  # noqa: PLC0415 - optional

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep working without it
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m api_router.mock",
        description="simulated LLM upstream",
        epilog=shapes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tokens-per-second", type=float, default=20.0)
    ap.add_argument("--certfile")
    ap.add_argument("--keyfile")
    ap.add_argument("--exit-on-stdin-eof", action="store_true", help="also stop when stdin ends")
    a = ap.parse_args(argv)
    return run(
        a.host,
        a.port,
        tokens_per_second=a.tokens_per_second,
        certfile=a.certfile,
        keyfile=a.keyfile,
        exit_on_stdin_eof=a.exit_on_stdin_eof,
    )
