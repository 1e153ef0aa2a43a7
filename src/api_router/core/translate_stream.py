"""Streams translated one event at a time: Anthropic's message events become OpenAI chat chunks,
and OpenAI chunks become Anthropic events. Pure: bytes in, bytes out, no I/O, no clock.

Rule 1. ``SseEvents`` cuts the upstream's bytes into whole events (blank line: LF LF, CRLF CRLF
        or CR CR) and keeps only the unfinished tail, at most ``MAX_EVENT_BYTES``: memory per
        stream is bounded whatever the upstream sends. A longer event is an error.
Rule 2. Each translator's ``feed(data)`` returns the client's bytes for the events that ``data``
        completed, nothing held back beyond an unfinished event: the translated stream is as
        incremental as the upstream's. ``end()`` says whether the stream ended as its API ends
        one (``message_stop``, ``data: [DONE]``).
Rule 3. Anthropic → OpenAI: ``message_start`` gives the role chunk, text deltas content chunks,
        ``tool_use`` blocks and their ``input_json_delta`` tool-call chunks (indexed in block
        order), ``message_delta`` the ``finish_reason`` chunk; ``message_stop`` the usage chunk
        (if the client asked for ``include_usage``) and ``data: [DONE]``. ``ping`` and thinking
        deltas have no counterpart and are dropped. An ``error`` event becomes OpenAI's.
Rule 4. OpenAI → Anthropic: the first chunk gives ``message_start``; content opens a text block,
        each new tool call a ``tool_use`` block (the previous one is stopped first); a
        ``finish_reason`` stops the open block; the usage chunk, or ``[DONE]``, gives
        ``message_delta`` (stop reason and output tokens) and ``message_stop``.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from api_router.core.translate import FINISH_REASONS, STOP_REASONS, openai_usage

MAX_EVENT_BYTES = 1 << 20
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class StreamTranslationError(ValueError):
    pass


class SseEvents:
    """Rule 1: whole events (``event`` name, ``data`` bytes) from an SSE byte stream."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        return [event for raw in self.split(data) if (event := _parse(raw)) is not None]

    def split(self, data: bytes) -> list[bytes]:
        """The whole events ``data`` completed, unparsed."""
        buffer = self._tail + data if self._tail else data
        # the usual LF-only stream: a split, not a regex. find, not "in": for bytes, "in" first
        # tries its operand as an int and formats the TypeError it swallows (~4k instructions)
        if buffer.find(b"\r") < 0:
            events = buffer.split(b"\n\n")
            self._tail = events.pop()
        else:
            events, start = [], 0
            for boundary in _BOUNDARY.finditer(buffer):
                events.append(buffer[start : boundary.start()])
                start = boundary.end()
            self._tail = buffer[start:]
        if len(self._tail) > MAX_EVENT_BYTES:
            raise StreamTranslationError(f"an upstream event longer than {MAX_EVENT_BYTES} bytes")
        return events


def _parse(raw: bytes) -> tuple[str, bytes] | None:
    # fast paths: "event: NAME\ndata: JSON" (Anthropic) and "data: JSON" (OpenAI), one line each
    if raw.startswith(b"event: "):
        at = raw.find(b"\ndata: ")
        if at > 0 and raw.find(b"\n", at + 1) < 0:
            return raw[7:at].decode("utf-8", "replace"), raw[at + 7 :]
    elif raw.startswith(b"data: ") and raw.find(b"\n") < 0:
        return "message", raw[6:]
    name, data = "message", []
    for line in raw.decode("utf-8", "replace").splitlines():
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return (name, "\n".join(data).encode()) if data else None


def _json(text: bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        raise StreamTranslationError("an upstream event is not JSON") from None


# Anthropic's text delta of its first block, as Anthropic lays it out, up to the text's string
_TEXT_DELTA = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":'
)
_NO_FINISH = b',"logprobs":null,"finish_reason":null}]}\n\n'


def _text_literal(raw: bytes) -> bytes | None:
    """A text delta event's ``text`` as the JSON string it was sent as (quotes and escapes kept),
    when the event has Anthropic's own layout: it goes into the OpenAI chunk as it is, so the
    event is neither parsed nor its text re-encoded (a parse, a dump and the method calls of a
    general parse were 4/5 of a translated stream's cost per event). Any other layout: None, and
    the event is parsed."""
    size = len(_TEXT_DELTA)
    if raw[:size] != _TEXT_DELTA or raw[-3:] != b'"}}':
        return None
    literal = raw[size:-2]
    if literal[:1] == b'"' and literal.find(b'"', 1) == len(literal) - 1 and literal[-2:-1] != b"\\":
        return literal  # no quote inside it, and the last one closes it: one string (the usual text)
    try:  # quotes inside: exactly one JSON string? (one not escaped would end it before the event does)
        if isinstance(orjson.loads(literal), str):
            return literal
    except orjson.JSONDecodeError:
        pass
    return None


def _sse(data: dict[str, Any], event: str | None = None) -> bytes:
    body = orjson.dumps(data)
    return b"event: %s\ndata: %s\n\n" % (event.encode(), body) if event else b"data: %s\n\n" % body


class AnthropicToOpenAI:
    """Rule 3, for an OpenAI client on an Anthropic backend."""

    __slots__ = ("_events", "_head", "_id", "_tools", "_usage", "created", "done", "include_usage", "model")

    def __init__(self, model: str, created: int, include_usage: bool) -> None:
        self.model, self.created, self.include_usage = model, created, include_usage
        self._events = SseEvents()
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._usage: dict[str, Any] = {}
        self.done = False
        self._set_id("chatcmpl-")

    def _set_id(self, chunk_id: str) -> None:
        self._id = chunk_id
        # every chunk's bytes up to its delta, made once per stream: a chunk is then one dumps of
        # the delta (the whole dict serialised per event cost several times more)
        self._head = (
            b'data: {"id":%b,"object":"chat.completion.chunk","created":%d,"model":%b,'
            b'"choices":[{"index":0,"delta":'
            % (
                orjson.dumps(chunk_id),
                self.created,
                orjson.dumps(self.model),
            )
        )

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        if finish is None:
            return self._head + orjson.dumps(delta) + _NO_FINISH
        return (
            self._head
            + orjson.dumps(delta)
            + b',"logprobs":null,"finish_reason":%b}]}\n\n' % orjson.dumps(finish)
        )

    def feed(self, data: bytes) -> bytes:
        out = []
        for raw in self._events.split(data):
            literal = _text_literal(raw)  # nearly every event: its text, without a JSON parse
            if literal is not None:
                out.append(self._head + b'{"content":' + literal + b"}" + _NO_FINISH)
                continue
            parsed = _parse(raw)
            if parsed is None:
                continue
            name, text = parsed
            if name == "ping":
                continue
            event = _json(text)
            kind = event.get("type", name) if isinstance(event, dict) else name
            if kind == "message_start":
                message = event.get("message") or {}
                self._set_id("chatcmpl-" + str(message.get("id") or ""))
                self._usage.update(message.get("usage") or {})
                out.append(self._chunk({"role": "assistant", "content": ""}))
            elif kind == "content_block_start":
                block = event.get("content_block") or {}
                if block.get("type") == "tool_use":
                    index = self._tools[event.get("index", 0)] = len(self._tools)
                    call = {
                        "index": index,
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""},
                    }
                    out.append(self._chunk({"tool_calls": [call]}))
            elif kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta":
                    out.append(self._chunk({"content": delta.get("text", "")}))
                elif delta.get("type") == "input_json_delta" and event.get("index", 0) in self._tools:
                    call = {
                        "index": self._tools[event.get("index", 0)],
                        "function": {"arguments": delta.get("partial_json", "")},
                    }
                    out.append(self._chunk({"tool_calls": [call]}))
            elif kind == "message_delta":
                self._usage.update(event.get("usage") or {})
                reason = (event.get("delta") or {}).get("stop_reason") or ""
                out.append(self._chunk({}, STOP_REASONS.get(reason, "stop")))
            elif kind == "message_stop":
                if self.include_usage:
                    out.append(
                        _sse(
                            {
                                "id": self._id,
                                "object": "chat.completion.chunk",
                                "created": self.created,
                                "model": self.model,
                                "choices": [],
                                "usage": openai_usage(self._usage),
                            }
                        )
                    )
                out.append(b"data: [DONE]\n\n")
                self.done = True
            elif kind == "error":
                error = event.get("error") or {}
                out.append(
                    _sse(
                        {
                            "error": {
                                "message": error.get("message", "upstream error"),
                                "type": error.get("type", "api_error"),
                                "code": None,
                            }
                        },
                        "error",
                    )
                )
                self.done = True
        return b"".join(out)


class OpenAIToAnthropic:
    """Rule 4, for an Anthropic client on an OpenAI-compatible backend."""

    __slots__ = (
        "_block",
        "_events",
        "_next",
        "_open",
        "_output",
        "_started",
        "_stop",
        "_tools",
        "done",
        "model",
    )

    def __init__(self, model: str) -> None:
        self.model = model
        self._events = SseEvents()
        self._started = False
        self._open: str | None = None  # "text" or "tool": the block now open
        self._block = -1  # its Anthropic index
        self._next = 0
        self._tools: dict[int, int] = {}  # OpenAI tool_calls index -> Anthropic block index
        self._stop: str | None = None
        self._output = 0
        self.done = False

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(_sse({"type": "content_block_stop", "index": self._block}, "content_block_stop"))
            self._open = None

    def _begin(self, out: list[bytes], kind: str, block: dict[str, Any]) -> int:
        self._close(out)
        self._block, self._next, self._open = self._next, self._next + 1, kind
        out.append(
            _sse(
                {"type": "content_block_start", "index": self._block, "content_block": block},
                "content_block_start",
            )
        )
        return self._block

    def _finish(self, out: list[bytes], usage: dict[str, Any] | None) -> None:
        self._close(out)
        if usage is not None:
            self._output = int(usage.get("completion_tokens") or 0)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop or "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": self._output},
        }
        out.append(_sse(delta, "message_delta"))
        out.append(_sse({"type": "message_stop"}, "message_stop"))
        self.done = True

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for _, text in self._events.feed(data):
            if self.done:
                continue
            if text.strip() == b"[DONE]":
                self._finish(out, None)
                continue
            chunk = _json(text)
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                error = chunk.get("error") or {}
                body = {
                    "type": "error",
                    "error": {"type": "api_error", "message": str(error.get("message", ""))},
                }
                out.append(_sse(body, "error"))
                self.done = True
                continue
            if not self._started:
                self._started = True
                message: dict[str, Any] = {
                    "id": "msg_" + str(chunk.get("id") or ""),
                    "type": "message",
                    "role": "assistant",
                    "model": self.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 0, "output_tokens": 0},
                }
                out.append(_sse({"type": "message_start", "message": message}, "message_start"))
            for choice in chunk.get("choices") or []:
                self._choice(out, choice)
            if chunk.get("usage") and not chunk.get("choices"):
                self._finish(out, chunk["usage"])
        return b"".join(out)

    def _choice(self, out: list[bytes], choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if content:
            if self._open != "text":
                self._begin(out, "text", {"type": "text", "text": ""})
            body = {
                "type": "content_block_delta",
                "index": self._block,
                "delta": {"type": "text_delta", "text": content},
            }
            out.append(_sse(body, "content_block_delta"))
        for call in delta.get("tool_calls") or []:
            function = call.get("function") or {}
            index = call.get("index", 0)
            if index not in self._tools:
                block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
                self._tools[index] = self._begin(out, "tool", block)
            arguments = function.get("arguments")
            if arguments:
                body = {
                    "type": "content_block_delta",
                    "index": self._tools[index],
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                }
                out.append(_sse(body, "content_block_delta"))
        reason = choice.get("finish_reason")
        if reason:
            self._stop = FINISH_REASONS.get(reason, "end_turn")
            self._close(out)
