"""errors.py: each API's own error shape, in a body and as a stream's last event."""

from __future__ import annotations

import json

from openai._models import construct_type
from openai.types.responses import ResponseErrorEvent, ResponseStreamEvent

from api_router.errors import ApiFlavor, UpstreamBroken


def event_data(event: bytes) -> dict[str, object]:
    lines = event.decode().split("\n")
    assert lines[0] == "event: error" and event.endswith(b"\n\n")
    data: dict[str, object] = json.loads(lines[1].removeprefix("data: "))
    return data


def test_each_flavor_has_its_own_error_event() -> None:
    error = UpstreamBroken("upstream went away", code="upstream_disconnected")
    assert event_data(error.sse_event(ApiFlavor.OPENAI)) == {
        "error": {"message": "upstream went away", "type": "upstream_error", "code": "upstream_disconnected"}
    }
    assert event_data(error.sse_event(ApiFlavor.ANTHROPIC)) == {
        "type": "error",
        "error": {"type": "api_error", "message": "upstream went away"},
    }
    responses = event_data(error.sse_event(ApiFlavor.RESPONSES, 7))
    assert responses == {
        "type": "error",
        "code": "upstream_disconnected",
        "message": "upstream went away",
        "param": None,
        "sequence_number": 7,
    }
    parsed = construct_type(type_=ResponseStreamEvent, value=responses)  # as the SDK reads a stream
    assert isinstance(parsed, ResponseErrorEvent) and parsed.code == "upstream_disconnected"


def test_a_responses_error_body_is_openais() -> None:
    error = UpstreamBroken("bad gateway")
    assert error.body(ApiFlavor.RESPONSES) == error.body(ApiFlavor.OPENAI)
    assert ApiFlavor.RESPONSES.system == ApiFlavor.OPENAI.system == "openai"
    assert ApiFlavor.ANTHROPIC.system == "anthropic"
