"""The bodies and SSE events each API the mock speaks answers with, for a request's shape: OpenAI
chat and completions, Anthropic messages (the Responses API in ``responses.py``), embeddings, the
model list and the error bodies.

Everything here is pure: it builds bytes and dicts, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
from collections.abc import Callable
from typing import Any

from api_router.errors import ANTHROPIC_TYPES
from api_router.mock.responses import ResponsesEvents, responses_body
from api_router.mock.shape import Shape

MODELS = ("mock-large", "mock-small", "mock-embed")


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
