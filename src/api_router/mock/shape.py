"""The mock upstream's request shapes: how a request tells the simulated LLM how to answer.

A request carries its shape as a ``"mock"`` object in the JSON body, or, for clients and proxies
that drop unknown fields, as ``MOCK{...}`` (the same JSON object) in the text of the last message
or in the prompt. ``SHAPE_FIELDS`` is the one list of the fields: ``Shape`` reads them through it
(an unknown field is a 400, so a typo is not silently ignored), and the ``--help`` text and the
docs' table are made from it, so none of them can name a field the others do not.

Plain Python, no I/O: imported by the CLI for its help, and by the mock server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_decoder = json.JSONDecoder()


class MockSpecError(ValueError):
    """The request's mock control object is unusable (answered with 400)."""


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MockSpecError(f"mock.{name} must be a number")
    return float(value)


def _integer(name: str, value: Any) -> int:
    return int(_number(name, value))


def _flag(_name: str, value: Any) -> bool:
    return bool(value)


def _text(_name: str, value: Any) -> str:
    return str(value)


def _strings(name: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise MockSpecError(f"mock.{name} must be a list of strings")
    return value


def _numbers(name: str, value: Any) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(item, int | float) and not isinstance(item, bool) for item in value
    ):
        raise MockSpecError(f"mock.{name} must be a list of numbers")
    return [float(item) for item in value]


@dataclass(frozen=True, slots=True)
class ShapeField:
    name: str
    kind: str  # as the help says it
    default: str  # as the help says it
    meaning: str
    read: Callable[[str, Any], Any]


SHAPE_FIELDS: tuple[ShapeField, ...] = (
    ShapeField("tokens", "integer", "20", "content events (tokens) in the answer", _integer),
    ShapeField("payload", "integer", "9", "characters of text in each token", _integer),
    ShapeField(
        "interval_ms",
        "number",
        "1000 / --tokens-per-second",
        "time between tokens (0: none)",
        _number,
    ),
    ShapeField("header_delay_ms", "number", "0", "wait before the response head", _number),
    ShapeField("first_token_delay_ms", "number", "0", "wait after the head, before the first event", _number),
    ShapeField("stall_after", "integer", "none", "after N tokens, go silent for stall_s seconds", _integer),
    ShapeField("stall_s", "number", "0", "how long that stall lasts (seconds)", _number),
    ShapeField(
        "stall_mid_event",
        "bool",
        "false",
        "the stall splits the next event: half goes first",
        _flag,
    ),
    ShapeField(
        "die_after",
        "integer",
        "none",
        "after N tokens, drop the connection (TCP reset, no end of body); unstreamed: die unanswered",
        _integer,
    ),
    ShapeField(
        "status", "integer", "none", "answer this HTTP status with an OpenAI/Anthropic error body", _integer
    ),
    ShapeField(
        "raw_events",
        "list of strings",
        "none",
        'send exactly these SSE events (each as given, with its "\\n\\n"), streamed even without "stream"',
        _strings,
    ),
    ShapeField(
        "event_delays_ms", "list of numbers", "none", "with raw_events: the wait before each event", _numbers
    ),
    ShapeField("req_id", "string", "none", "a label to find this request's stream in /_stats", _text),
)
_BY_NAME = {field.name: field for field in SHAPE_FIELDS}

# The routes that answer with a shape (what the mock server dispatches on).
LLM_ROUTES = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/messages": "messages",
    "/v1/responses": "responses",
}
AUDIO_ROUTES = ("/v1/audio/transcriptions", "/v1/audio/translations")
JSON_ROUTES = (*LLM_ROUTES, "/v1/embeddings")


def _last_message_texts(messages: Any) -> list[str]:
    """Text of the last message of a list (string content, or the ``text`` of its content parts)."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return []
    content = messages[-1].get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def _texts(body: dict[str, Any]) -> list[str]:
    """Text of the last message (Chat/Messages ``messages`` or Responses ``input`` items), or the
    prompt, or a Responses ``input`` string: clients such as the AI SDK send ``input`` items only."""
    out = _last_message_texts(body.get("messages"))
    given = body.get("input")
    if isinstance(given, str):
        out.append(given)
    else:
        out.extend(_last_message_texts(given))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        out.append(prompt)
    elif isinstance(prompt, list):
        out.extend(p for p in prompt if isinstance(p, str))
    return out


def parse_mock(body: dict[str, Any]) -> dict[str, Any]:
    """The stream-shape object: ``body["mock"]``, else ``MOCK{...}`` in the last message / prompt."""
    mock = body.get("mock")
    if isinstance(mock, dict):
        return mock
    for text in reversed(_texts(body)):
        at = text.rfind("MOCK{")
        if at >= 0:
            try:
                found, _ = _decoder.raw_decode(text, at + 4)
            except ValueError as err:
                raise MockSpecError(f"bad MOCK{{...}} in message text: {err}") from None
            if not isinstance(found, dict):  # pragma: no cover - raw_decode of "{" is a dict
                raise MockSpecError("MOCK{...} must be a JSON object")
            return found
    return {}


class Shape:
    """The validated ``mock`` object of one request (delays in seconds)."""

    def __init__(self, mock: dict[str, Any], default_interval_ms: float) -> None:
        unknown = sorted(set(mock) - _BY_NAME.keys())
        if unknown:
            known = ", ".join(_BY_NAME)
            raise MockSpecError(f"unknown mock field {', '.join(unknown)}; the fields are: {known}")
        given = {name: _BY_NAME[name].read(name, value) for name, value in mock.items() if value is not None}
        self.req_id: str | None = given.get("req_id")
        self.tokens: int = given.get("tokens", 20)
        self.payload: int = given.get("payload", 9)
        self.interval: float = given.get("interval_ms", default_interval_ms) / 1000
        self.header_delay: float = given.get("header_delay_ms", 0.0) / 1000
        self.first_token_delay: float = given.get("first_token_delay_ms", 0.0) / 1000
        self.stall_after: int | None = given.get("stall_after")
        self.stall_s: float = given.get("stall_s", 0.0)
        self.stall_mid: bool = given.get("stall_mid_event", False)
        self.die_after: int | None = given.get("die_after")
        self.status: int | None = given.get("status")
        raw: list[str] | None = given.get("raw_events")
        delays: list[float] | None = given.get("event_delays_ms")
        self.raw_events = None if raw is None else [event.encode() for event in raw]
        self.event_delays = None if delays is None or raw is None else [d / 1000 for d in delays]


def shapes_help() -> str:
    """The shape fields for ``mock-upstream --help`` (an argparse epilog, printed as is)."""
    width = max(len(field.name) for field in SHAPE_FIELDS)
    rows = [
        f"  {field.name:<{width}}  {field.kind}, default {field.default}: {field.meaning}"
        for field in SHAPE_FIELDS
    ]
    return "\n".join(
        [
            'request shapes: a request says how to answer in a "mock" object in its JSON body,',
            "or as MOCK{...} (the same JSON) in the last message's text or the prompt:",
            '  {"model": "m", "stream": true, "messages": [...], "mock": {"tokens": 5, "interval_ms": 0}}',
            '  "content": "hi MOCK{\\"tokens\\": 5, \\"die_after\\": 2}"',
            "fields (an unknown one is answered 400):",
            *rows,
            f"shaped answers: POST {', '.join(JSON_ROUTES)} (JSON; /v1/messages as Anthropic),",
            f"  POST {', '.join(AUDIO_ROUTES)} (multipart: the shape in a mock form field)",
            "also: GET /v1/models, GET /health; what the mock saw: GET /_stats, GET /_requests, POST /_reset",
            "(docs/mock-upstream.md)",
        ]
    )
