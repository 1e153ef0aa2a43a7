"""The mock upstream's OpenAI Responses API (``POST /v1/responses``): a whole ``response`` object,
or the typed SSE sequence ``response.created`` … N ``response.output_text.delta`` …
``response.completed``, with ``sequence_number`` on every event and usage in the last one.

Same interface as ``mock/shapes.py``'s ``OpenAIEvents``: ``before()`` and ``after()`` are framed
HTTP chunks, ``event(i)`` is content event i built from a prefix and a suffix (no JSON per event).
"""

from __future__ import annotations

import json
import time
from typing import Any

MOCK_INPUT_TOKENS = 10


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    return _chunk(
        b"event: " + kind.encode() + b"\ndata: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    )


def response_object(
    rid: str, model: str, status: str, text: str | None, tokens: int, created: int
) -> dict[str, Any]:
    """A ``response`` as the API returns it; ``text`` None: no output yet (in progress)."""
    output = []
    if text is not None:
        output.append(
            {
                "id": "msg_" + rid,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        )
    usage = None
    if status == "completed":
        usage = {
            "input_tokens": MOCK_INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": MOCK_INPUT_TOKENS + tokens,
        }
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": 1.0,
        "top_p": 1.0,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "usage": usage,
    }


class ResponsesEvents:
    """The typed SSE sequence of one streamed response."""

    def __init__(self, model: str, payload: int, stream_id: int, tokens: int) -> None:
        self.model, self.tokens, self.payload = model, tokens, payload
        self.rid = f"resp_mock{stream_id}"
        self.item = "msg_" + self.rid
        self.created = int(time.time())
        self._prefix = (
            b"event: response.output_text.delta\n"
            b'data: {"type":"response.output_text.delta","sequence_number":'
        )
        self._middle = f',"item_id":"{self.item}","output_index":0,"content_index":0,"delta":"t'.encode()
        self._suffix = b"x" * max(0, payload - 9) + b'","logprobs":[]}\n\n'
        self._first = 4  # sequence numbers of the four events before the content

    def event(self, i: int) -> bytes:
        return self._prefix + b"%d" % (self._first + i) + self._middle + b"%08d" % i + self._suffix

    def before(self) -> list[bytes]:
        started = response_object(self.rid, self.model, "in_progress", None, 0, self.created)
        item = {
            "id": self.item,
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            _event(
                "response.created", {"type": "response.created", "sequence_number": 0, "response": started}
            ),
            _event(
                "response.in_progress",
                {"type": "response.in_progress", "sequence_number": 1, "response": started},
            ),
            _event(
                "response.output_item.added",
                {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0, "item": item},
            ),
            _event(
                "response.content_part.added",
                {
                    "type": "response.content_part.added",
                    "sequence_number": 3,
                    "item_id": self.item,
                    "output_index": 0,
                    "content_index": 0,
                    "part": part,
                },
            ),
        ]

    def after(self, include_usage: bool) -> list[bytes]:
        text = "".join(f"t{i:08d}".ljust(self.payload, "x") for i in range(self.tokens))
        done = response_object(self.rid, self.model, "completed", text, self.tokens, self.created)
        n = self._first + self.tokens
        where = {"item_id": self.item, "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
        return [
            _event(
                "response.output_text.done",
                {
                    "type": "response.output_text.done",
                    "sequence_number": n,
                    **where,
                    "text": text,
                    "logprobs": [],
                },
            ),
            _event(
                "response.content_part.done",
                {"type": "response.content_part.done", "sequence_number": n + 1, **where, "part": part},
            ),
            _event(
                "response.output_item.done",
                {
                    "type": "response.output_item.done",
                    "sequence_number": n + 2,
                    "output_index": 0,
                    "item": done["output"][0],
                },
            ),
            _event(
                "response.completed",
                {"type": "response.completed", "sequence_number": n + 3, "response": done},
            ),
        ]


def responses_body(model: str, tokens: int, payload: int, stream_id: int) -> dict[str, Any]:
    text = "".join(f"t{i:08d}".ljust(payload, "x") for i in range(tokens))
    return response_object(f"resp_mock{stream_id}", model, "completed", text, tokens, int(time.time()))
