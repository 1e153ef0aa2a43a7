"""What the simulated upstream answers each request with: its control routes (``/_stats``,
``/_requests``, ``/_reset``), the fixed answers, and the model requests, whole or streamed as SSE
paced to the request's shape (tokens, delays, stalls, mid-stream death, error statuses).
The HTTP/1.1 under it is ``connection.py``'s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from api_router.mock.answers import simple_answer
from api_router.mock.connection import Connection, Request
from api_router.mock.shape import AUDIO_ROUTES, JSON_ROUTES, LLM_ROUTES, MockSpecError, Shape, parse_mock
from api_router.mock.shapes import chunked, completion_body, embeddings_body, error_body, stream_events
from api_router.mock.stats import MockStats, StreamRecord

YIELD_EVERY = 16  # at interval 0, let the loop run every N events
Events = tuple[list[bytes], int, Callable[[int], bytes], list[bytes]]


class MockConnection(Connection):
    """A connection of the mock: answers as the APIs it simulates would."""

    def __init__(self, stats: MockStats, connections: set[Connection], tokens_per_second: float) -> None:
        super().__init__(stats, connections)
        self.tokens_per_second = tokens_per_second

    def _error(self, status: int, message: str, req: Request, code: str | None = None) -> None:
        self._json(status, error_body(status, message, req.path == "/v1/messages", code), req)

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
        # the parsed JSON body too, when small: tests check what a translation sent
        json_body = body if isinstance(body, dict) and req.body_bytes <= 65536 else None
        self.stats.requests.append(
            {**seen, "body_bytes": req.body_bytes, "conn_id": self.conn_id, "json": json_body}
        )
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
        tps = self.tokens_per_second
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
