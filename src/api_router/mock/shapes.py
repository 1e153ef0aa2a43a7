"""Stats records, response bodies and request parsing for the simulated upstream (``server.py``).

Everything here is pure: it builds bytes / dicts and parses request bodies, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from api_router.errors import ANTHROPIC_TYPES
from api_router.mock.responses import ResponsesEvents, responses_body
from api_router.mock.shape import MockSpecError, Shape

MODELS = ("mock-large", "mock-small", "mock-embed")
KEEP_STREAMS = 10_000
KEEP_REQUESTS = 200


class StreamRecord:
    """What happened to one model request (streamed or not). Times are ``time.monotonic()``."""

    __slots__ = (
        "bytes_written", "conn_id", "end_reason", "ended_at", "first_token_at", "headers_sent_at",
        "id", "path", "paused_s", "pauses", "req_id", "started_at", "stream", "tokens_sent",
    )  # fmt: skip

    def __init__(self, stream_id: int, path: str, conn_id: int) -> None:
        self.id, self.path, self.conn_id = stream_id, path, conn_id
        self.req_id: str | None = None
        self.stream = False
        self.started_at = time.monotonic()
        self.headers_sent_at: float | None = None
        self.first_token_at: float | None = None
        self.ended_at: float | None = None
        self.end_reason = "active"  # completed | peer_closed | error_status | died | active
        self.tokens_sent = self.bytes_written = self.pauses = 0
        self.paused_s = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class MockStats:
    """Counters of one running mock; ``snapshot()`` is what ``GET /_stats`` answers."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.active: set[StreamRecord] = set()  # survives reset(): these are really running
        self.reset()

    def reset(self) -> None:
        self.connections_opened = 0
        self.connections_closed = 0
        self.streams: deque[StreamRecord] = deque(maxlen=KEEP_STREAMS)
        self.requests: deque[dict[str, Any]] = deque(maxlen=KEEP_REQUESTS)

    def begin(self, path: str, conn_id: int) -> StreamRecord:
        rec = StreamRecord(next(self._ids), path, conn_id)
        self.streams.append(rec)
        self.active.add(rec)
        return rec

    def end(self, rec: StreamRecord, reason: str) -> None:
        if rec.end_reason == "active":
            rec.ended_at, rec.end_reason = time.monotonic(), reason
            self.active.discard(rec)

    def snapshot(self, with_streams: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "now": time.monotonic(),
            "connections_opened": self.connections_opened,
            "connections_closed": self.connections_closed,
            "active_streams": len(self.active),
        }
        if with_streams:
            out["streams"] = [rec.as_dict() for rec in self.streams]
        return out


def stream_events(
    kind: str, model: str, shape: Shape, stream_id: int, body: dict[str, Any]
) -> tuple[list[bytes], int, Callable[[int], bytes], list[bytes]]:
    """(framed events before the content, number of content events, content event i, framed events after)."""
    if shape.raw_events is not None:
        return [], len(shape.raw_events), shape.raw_events.__getitem__, []
    options = body.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    enc: OpenAIEvents | AnthropicEvents | ResponsesEvents
    if kind == "messages":
        enc = AnthropicEvents(model, shape.payload, stream_id, shape.tokens)
    elif kind == "responses":
        enc = ResponsesEvents(model, shape.payload, stream_id, shape.tokens)
    else:
        enc = OpenAIEvents(model, kind == "chat", shape.payload, stream_id, shape.tokens)
    return enc.before(), shape.tokens, enc.event, enc.after(usage)


def chunked(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def token_text(i: int, payload: int) -> str:
    return f"t{i:08d}".ljust(payload, "x")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class OpenAIEvents:
    """OpenAI SSE events (``chat.completion.chunk`` or ``text_completion``). ``event(i)`` is the
    bytes of content event i, built from a precomputed prefix and suffix; ``before``/``after``
    are the surrounding events, already framed as one HTTP chunk each."""

    def __init__(self, model: str, chat: bool, payload: int, stream_id: int, tokens: int) -> None:
        self.chat, self.model, self.tokens = chat, model, tokens
        self.rid = f"{'chatcmpl' if chat else 'cmpl'}-mock{stream_id}"
        self.created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        self.head = (
            f'data: {{"id":"{self.rid}","object":"{obj}","created":{self.created},'
            f'"model":{json.dumps(model)},"choices":[{{"index":0,'
        )
        self._prefix = (self.head + ('"delta":{"content":"t' if chat else '"text":"t')).encode()
        suffix = (
            b'"},"finish_reason":null}]}\n\n' if chat else b'","logprobs":null,"finish_reason":null}]}\n\n'
        )
        self._suffix = b"x" * max(0, payload - 9) + suffix

    def event(self, i: int) -> bytes:
        return self._prefix + b"%08d" % i + self._suffix

    def before(self) -> list[bytes]:
        if not self.chat:
            return []
        role = '"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n'
        return [chunked((self.head + role).encode())]

    def after(self, include_usage: bool) -> list[bytes]:
        tail = '"delta":{},' if self.chat else '"text":"","logprobs":null,'
        out = [chunked((self.head + tail + '"finish_reason":"stop"}]}\n\n').encode())]
        if include_usage:
            obj: dict[str, Any] = {
                "id": self.rid,
                "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage(self.tokens),
            }
            out.append(chunked(b"data: " + _dumps(obj) + b"\n\n"))
        out.append(chunked(b"data: [DONE]\n\n"))
        return out


def _sse(event: str, obj: dict[str, Any]) -> bytes:
    return chunked(b"event: " + event.encode() + b"\ndata: " + _dumps(obj) + b"\n\n")


class AnthropicEvents:
    """The Anthropic Messages SSE sequence; same interface as ``OpenAIEvents``."""

    def __init__(self, model: str, payload: int, stream_id: int, tokens: int) -> None:
        self.model, self.tokens = model, tokens
        self.mid = f"msg_mock{stream_id}"
        self._prefix = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"t'
        )
        self._suffix = b"x" * max(0, payload - 9) + b'"}}\n\n'

    def event(self, i: int) -> bytes:
        return self._prefix + b"%08d" % i + self._suffix

    def before(self) -> list[bytes]:
        message: dict[str, Any] = {
            "id": self.mid,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self.model,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        return [
            _sse("message_start", {"type": "message_start", "message": message}),
            _sse("content_block_start", block),
            _sse("ping", {"type": "ping"}),
        ]

    def after(self, include_usage: bool) -> list[bytes]:
        end = {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}
        return [
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse("message_delta", {**end, "usage": {"output_tokens": self.tokens}}),
            _sse("message_stop", {"type": "message_stop"}),
        ]


def usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": 10 + tokens}


def completion_body(model: str, kind: str, tokens: int, payload: int, stream_id: int) -> dict[str, Any]:
    """A complete non-streamed answer; ``kind`` is "chat", "completions" or "messages"."""
    text = "".join(token_text(i, payload) for i in range(tokens))
    if kind == "responses":
        return responses_body(model, tokens, payload, stream_id)
    if kind == "messages":
        return {
            "id": f"msg_mock{stream_id}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": tokens},
        }
    chat = kind == "chat"
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-mock{stream_id}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(tokens),
    }


def embeddings_body(body: dict[str, Any], model: str) -> dict[str, Any]:
    """One 8-float vector per input (derived from the input), float or base64 encoded."""
    raw = body.get("input", "")
    many = isinstance(raw, list) and raw and not all(isinstance(x, int) for x in raw)
    inputs = raw if many else [raw]  # else a string, or one token array
    as_b64 = body.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(inputs):
        digest = hashlib.sha256(json.dumps(item).encode()).digest()
        vector = [round(b / 255.0 - 0.5, 6) for b in digest[:8]]
        emb: Any = base64.b64encode(struct.pack("<8f", *vector)).decode() if as_b64 else vector
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = len(inputs)
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": n, "total_tokens": n}}


def models_body() -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": m, "object": "model", "created": 0, "owned_by": "mock"} for m in MODELS],
    }


def error_body(status: int, message: str, anthropic: bool = False, code: str | None = None) -> dict[str, Any]:
    if anthropic:
        kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = (
        "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": kind, "code": code or str(status)}}


class MultipartCounter:
    """Incremental multipart/form-data parser: counts and sha256-hashes file parts as bytes
    arrive, keeps only small text fields. Feed it body chunks with ``feed``."""

    MAX_FIELD = 64 * 1024
    MAX_HEADERS = 16 * 1024

    def __init__(self, boundary: bytes) -> None:
        self.delim = b"\r\n--" + boundary
        self.buf = b"\r\n"  # so the first delimiter looks like every other one
        self.state = "preamble"  # preamble | after_delim | headers | data | done
        self.fields: dict[str, str] = {}
        self.files: dict[str, tuple[int, Any]] = {}  # name -> (bytes, sha256)
        self.file_order: list[str] = []
        self.error: str | None = None
        self._name = ""
        self._is_file = False
        self._text: list[bytes] = []

    @classmethod
    def from_content_type(cls, content_type: str) -> MultipartCounter | None:
        kind, _, params = content_type.partition(";")
        if kind.strip().lower() != "multipart/form-data":
            return None
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.lower() == "boundary" and value:
                return cls(value.strip('"').encode("latin-1"))
        return None

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.state != "done" and self.error is None and self._step():
            pass

    def _step(self) -> bool:
        buf = self.buf
        if self.state in ("preamble", "data"):
            at = buf.find(self.delim)
            if at < 0:
                keep = len(self.delim) - 1
                if len(buf) > keep:
                    if self.state == "data":
                        self._emit(buf[: len(buf) - keep])
                    self.buf = buf[len(buf) - keep :]
                return False
            if self.state == "data":
                self._emit(buf[:at])
                self._end_part()
            self.buf = buf[at + len(self.delim) :]
            self.state = "after_delim"
            return True
        if self.state == "after_delim":
            if len(buf) < 2:
                return False
            if buf.startswith(b"--"):
                self.state, self.buf = "done", b""
                return False
            end = buf.find(b"\r\n")
            if end < 0:
                return False  # transport padding (spaces) before the line break
            self.buf, self.state = buf[end + 2 :], "headers"
            return True
        # headers
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > self.MAX_HEADERS:
                self.error = "multipart part headers too large"
            return False
        self._start_part(buf[:end].decode("latin-1"))
        self.buf, self.state = buf[end + 4 :], "data"
        return True

    def _start_part(self, head: str) -> None:
        self._name, self._is_file, self._text = "", False, []
        for line in head.split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() != "content-disposition":
                continue
            for param in value.split(";")[1:]:
                pkey, _, pval = param.strip().partition("=")
                pkey = pkey.lower()
                if pkey == "name":
                    self._name = pval.strip('"')
                elif pkey in ("filename", "filename*"):
                    self._is_file = True
        if self._is_file or self._name == "file":
            self._is_file = True
            if self._name not in self.files:
                self.file_order.append(self._name)
            self.files[self._name] = (0, hashlib.sha256())

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        if self._is_file:
            count, digest = self.files[self._name]
            digest.update(data)
            self.files[self._name] = (count + len(data), digest)
        elif sum(map(len, self._text)) < self.MAX_FIELD:
            self._text.append(data)

    def _end_part(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = b"".join(self._text)[: self.MAX_FIELD].decode("utf-8", "replace")

    def as_body(self) -> dict[str, Any]:
        """The request as a JSON-like body: the model field and the optional JSON ``mock`` field."""
        if self.error or self.state != "done":
            raise MockSpecError(self.error or "incomplete multipart/form-data body")
        try:
            return {"model": self.fields.get("model"), "mock": json.loads(self.fields.get("mock") or "{}")}
        except ValueError as err:
            raise MockSpecError(f"bad mock form field: {err}") from None

    def answer(self, model: str) -> dict[str, Any] | bytes:
        """The transcription / translation result (plain text for text/srt/vtt formats)."""
        if self.fields.get("response_format") in ("text", "srt", "vtt"):
            return b"mock transcription\n"
        file_bytes, sha = self.file_facts()
        return {"text": "mock transcription", "model": model, "file_bytes": file_bytes, "file_sha256": sha}

    def file_facts(self) -> tuple[int, str]:
        """(bytes, sha256 hex) of the part named "file", else of the first file part."""
        if not self.file_order:
            return 0, hashlib.sha256().hexdigest()
        count, digest = self.files.get("file") or self.files[self.file_order[0]]
        return count, digest.hexdigest()


class Request:
    """One parsed request: head, and the body as chunks or fed to a multipart counter."""

    __slots__ = ("body", "body_bytes", "headers", "keep_alive", "method", "multipart", "path", "query", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = self.path = self.query = ""
        self.headers: list[list[str]] = []
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.multipart: MultipartCounter | None = None
        self.keep_alive = True

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k == name), "")
