"""The mock's Responses API shapes parse as the official SDK parses them (mock/responses.py)."""

from __future__ import annotations

import json
import re

from openai.types.responses import Response, ResponseCompletedEvent, ResponseStreamEvent
from pydantic import TypeAdapter

from api_router.mock.responses import ResponsesEvents, responses_body


def unchunk(framed: list[bytes]) -> bytes:
    out = b""
    for chunk in framed:
        size, _, rest = chunk.partition(b"\r\n")
        assert int(size, 16) == len(rest) - 2
        out += rest[:-2]
    return out


def test_a_streamed_response_is_the_sdks_event_sequence() -> None:
    events = ResponsesEvents("gpt-4o", 12, 7, 3)
    raw = (
        unchunk(events.before()) + b"".join(events.event(i) for i in range(3)) + unchunk(events.after(False))
    )
    adapter: TypeAdapter[object] = TypeAdapter(ResponseStreamEvent)
    parsed = []
    for block in raw.decode().split("\n\n")[:-1]:
        name = re.match(r"event: (\S+)", block).group(1)  # type: ignore[union-attr]
        data = json.loads(block.split("data: ", 1)[1])
        assert data["type"] == name
        parsed.append(adapter.validate_python(data))
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    deltas = [e.delta for e in parsed if e.type == "response.output_text.delta"]  # type: ignore[attr-defined]
    assert deltas == ["t00000000xxx", "t00000001xxx", "t00000002xxx"]
    completed = parsed[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert completed.response.usage is not None and completed.response.usage.output_tokens == 3
    assert completed.response.output_text == "".join(deltas)


def test_a_plain_response_is_the_sdks_response() -> None:
    answer = Response.model_validate(responses_body("gpt-4o", 2, 9, 1))
    assert answer.output_text == "t00000000t00000001" and answer.usage is not None
    assert answer.usage.input_tokens == 10 and answer.status == "completed"
