"""core/usage.py against provider-shaped answers: whole, streamed, split at every byte offset."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_router.core.usage import MAX_USAGE_BYTES, Price, Usage, UsageReader, cost_usd, read_json

HYPOTHESIS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


# -- whole JSON answers, as the providers document them ----------------------------------------
OPENAI_CHAT = {
    "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
    "object": "chat.completion",
    "created": 1741570283,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": 'The word "usage" is a noun.', "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 1117,
        "completion_tokens": 46,
        "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 12,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_fc9f1d7035",
}
OPENAI_COMPLETION = {
    "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
    "object": "text_completion",
    "created": 1589478378,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [
        {"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None, "finish_reason": "length"}
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
}
EMBEDDINGS = {
    "object": "list",
    "data": [{"object": "embedding", "embedding": [0.0023064255, -0.009327292], "index": 0}],
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 8, "total_tokens": 8},
}
ANTHROPIC = {
    "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-20250514",
    "content": [{"type": "text", "text": "Hi! My name is Claude."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 2095,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 3000,
        "output_tokens": 503,
        "service_tier": "standard",
    },
}
RESPONSES = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "object": "response",
    "created_at": 1741476542,
    "status": "completed",
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {
            "type": "message",
            "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "In a peaceful grove...", "annotations": []}],
        }
    ],
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 4},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 123,
    },
}


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (OPENAI_CHAT, Usage(1117, 46, 1024, 12, False)),
        (OPENAI_COMPLETION, Usage(5, 7, 0, 0, False)),
        (EMBEDDINGS, Usage(8, 0, 0, 0, False)),
        # Anthropic's input_tokens leaves out cache reads and writes: input counts them all
        (ANTHROPIC, Usage(2095 + 100 + 3000, 503, 3000, 0, False)),
        (RESPONSES, Usage(36, 87, 4, 20, False)),
    ],
    ids=["chat", "completion", "embeddings", "anthropic", "responses"],
)
def test_whole_answers(answer: dict[str, Any], expected: Usage) -> None:
    assert read_json(_dumps(answer)) == expected
    assert read_json(json.dumps(answer, indent=2).encode()) == expected  # spacing does not matter


@pytest.mark.parametrize(
    "answer", [OPENAI_CHAT, ANTHROPIC, RESPONSES], ids=["chat", "anthropic", "responses"]
)
def test_a_json_answer_split_anywhere_reads_as_whole(answer: dict[str, Any]) -> None:
    """The reader of a non-streamed answer (``sse=False``, no event counting) over two reads cut
    at every offset: the same usage as the whole body, and as the stream reader finds."""
    body = json.dumps(answer, indent=1).encode()
    whole = read_json(body)
    for cut in range(len(body) + 1):
        for sse in (False, True):
            reader = UsageReader(sse)
            reader.feed(body[:cut])
            reader.feed(body[cut:])
            assert reader.usage(True) == whole, (cut, sse)


def test_a_json_answer_is_not_searched_after_its_usage_object() -> None:
    """A JSON answer has one usage object (Rule 3): once read, neither the rest of its read nor a
    later read is searched, nor is its tail kept. A stream's later objects still override."""
    first, later = (
        b'{"usage":{"prompt_tokens":3,"completion_tokens":4}',
        b'"x":{"usage":{"prompt_tokens":9}}}',
    )
    reader = UsageReader(sse=False)
    reader.feed(first + b"," + later)
    assert reader.usage(True) == Usage(3, 4, 0, 0, False)
    reader.feed(b'"usage":{"completion_tokens":8}}')
    reader.feed(b'"us')
    assert reader.usage(True) == Usage(3, 4, 0, 0, False) and "carry=0 tail=0" in repr(reader)
    stream = UsageReader(sse=True)
    stream.feed(b"data: " + first + b"," + later + b"\n\n")
    assert stream.usage(True) == Usage(9, 4, 0, 0, False)


def test_an_answer_without_usage_reports_none() -> None:
    assert read_json(b'{"id":"x","choices":[]}') is None
    assert read_json(b'{"usage":null,"choices":[]}') is None
    assert read_json(b'{"text":"usage","choices":["usage"]}') is None  # the word, not the key


# -- streams -------------------------------------------------------------------------------
def _sse(obj: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + _dumps(obj) + b"\n\n"


def openai_stream(tokens: int, *, usage_null: bool = True) -> list[bytes]:
    """What OpenAI sends with ``stream_options.include_usage``: ``"usage":null`` on every chunk."""
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    tail: dict[str, Any] = {"usage": None} if usage_null else {}
    events = [
        _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], **tail})
    ]
    events += [
        _sse({**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "}}], **tail})
        for i in range(tokens)
    ]
    events.append(_sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], **tail}))
    usage = {
        "prompt_tokens": 19,
        "completion_tokens": tokens,
        "total_tokens": 19 + tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }
    events.append(_sse({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def anthropic_stream(tokens: int) -> list[bytes]:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-3-5-haiku-latest",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 472,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 128,
                "output_tokens": 2,
            },
        },
    }
    events = [
        _sse(start, "message_start"),
        _sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
        _sse({"type": "ping"}, "ping"),
    ]
    events += [
        _sse(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f"w{i}"}},
            "content_block_delta",
        )
        for i in range(tokens)
    ]
    events.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 15},
    }
    events.append(_sse(delta, "message_delta"))
    events.append(_sse({"type": "message_stop"}, "message_stop"))
    return events


def responses_stream() -> list[bytes]:
    created = {"type": "response.created", "response": {**RESPONSES, "status": "in_progress", "usage": None}}
    return [
        _sse(created, "response.created"),
        _sse(
            {
                "type": "response.output_text.delta",
                "item_id": "msg_1",
                "output_index": 0,
                "content_index": 0,
                "delta": "In",
            },
            "response.output_text.delta",
        ),
        _sse({"type": "response.completed", "response": RESPONSES}, "response.completed"),
    ]


STREAMS = {
    "openai": (b"".join(openai_stream(5)), Usage(19, 5, 0, 0, False)),
    "anthropic": (b"".join(anthropic_stream(4)), Usage(472 + 128, 15, 128, 0, False)),
    "responses": (b"".join(responses_stream()), Usage(36, 87, 4, 20, False)),
}


def _read(pieces: list[bytes], complete: bool = True) -> Usage:
    reader = UsageReader()
    for piece in pieces:
        reader.feed(piece)
    return reader.usage(complete)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_streams_read_whole_and_per_event(name: str) -> None:
    stream, expected = STREAMS[name]
    assert _read([stream]) == expected
    events = stream.split(b"\n\n")
    assert _read([event + b"\n\n" for event in events[:-1]]) == expected


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_streams_split_at_every_offset_of_the_usage_event(name: str) -> None:
    """Every cut inside (and around) each usage object, in two and in three pieces."""
    stream, expected = STREAMS[name]
    last = stream.rfind(b'"usage":{')
    first = stream.find(b'"usage"')
    start, end = max(0, first - 20), min(len(stream), last + 300)
    for cut in range(start, end):
        assert _read([stream[:cut], stream[cut:]]) == expected, cut
        assert _read([stream[:cut], stream[cut : cut + 3], stream[cut + 3 :]]) == expected, cut


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_streams_fed_one_byte_at_a_time(name: str) -> None:
    stream, expected = STREAMS[name]
    assert _read([stream[i : i + 1] for i in range(len(stream))]) == expected


@HYPOTHESIS
@given(st.sampled_from(sorted(STREAMS)), st.lists(st.integers(min_value=0), max_size=30))
def test_streams_split_anywhere(name: str, cuts: list[int]) -> None:
    stream, expected = STREAMS[name]
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert _read(pieces) == expected


def test_an_abandoned_stream_is_estimated_from_the_events_forwarded() -> None:
    events = anthropic_stream(10)
    reader = UsageReader()
    for event in events[:8]:  # message_start, block start, ping, five deltas: the client left
        reader.feed(event)
    usage = reader.usage(complete=False)
    assert usage.estimated
    assert usage.input == 472 + 128  # known from message_start
    assert usage.output == 8  # one per data: line forwarded, more than the start's placeholder


def test_a_stream_that_reports_no_usage_is_estimated() -> None:
    usage = _read([*openai_stream(7, usage_null=False)[:-2], b"data: [DONE]\n\n"])
    assert usage == Usage(0, 10, 0, 0, True)  # role, 7 tokens, finish, [DONE]


def test_usage_seen_but_the_stream_broke_is_estimated() -> None:
    events = openai_stream(3)
    usage = _read(events[:-1], complete=False)  # the usage chunk came, [DONE] did not
    assert usage.estimated and usage.input == 19 and usage.output >= 3


def test_an_oversized_object_after_the_key_is_not_held() -> None:
    reader = UsageReader()
    reader.feed(b'data: {"usage":{"note":"' + b"x" * (2 * MAX_USAGE_BYTES))
    assert "carry=0 tail=0" in repr(reader)  # nothing: the read does not end with a marker's start
    reader.feed(b'"}}\n\n')
    assert not reader.found


def test_reads_without_usage_keep_at_most_the_marker_length() -> None:
    reader = UsageReader()
    reader.feed(b'data: {"choices":[{"delta":{"content":"abc')  # a read that ends mid-event
    assert "carry=0 tail=0" in repr(reader)
    reader.feed(b'"}}]}\n\ndata: {"id":"1","us')  # this one may end with the marker's start
    assert "carry=0 tail=3" in repr(reader)
    reader.feed(b'age":{"prompt_tokens":3}}\n\n')
    assert reader.found and "carry=0 tail=0" in repr(reader)


def test_cost() -> None:
    usage = Usage(input=1_000_000, output=500_000, cached_input=200_000, reasoning=0, estimated=False)
    assert cost_usd(usage, Price(2.5, 10.0, 1.25)) == pytest.approx(0.8 * 2.5 + 0.2 * 1.25 + 0.5 * 10)
    assert cost_usd(usage, Price(2.5, 10.0)) == pytest.approx(2.5 + 5)  # no cached rate: as input


# -- read by read, as the Forwarder does: the raw read decides, pieces are scanned only then ----
class _Pieces:
    """httptools' body pieces of one read (what the Forwarder's upstream_body gets)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def on_body(self, body: bytes) -> None:
        self.pieces.append(bytes(body))


def _chunked(events: list[bytes]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events) + b"0\r\n\r\n"


def _read_as_forwarded(raw: bytes, cuts: list[int]) -> tuple[Usage, int]:
    """Raw reads, HTTP framing and all, as the Forwarder hands them over: (usage, reads that
    held a usage object)."""
    reader = UsageReader()
    found = 0
    for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True):
        buffer = bytearray(raw[a:b]) + bytearray(16)  # a shared buffer is longer than the read
        found += reader.read(buffer, b - a)
    return reader.usage(True), found


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_read_by_read_only_reads_with_usage_are_looked_at(name: str) -> None:
    events = openai_stream(30) if name == "openai" else anthropic_stream(30)
    raw = _chunked(events)
    expected = Usage(19, 30, 0, 0, False) if name == "openai" else Usage(600, 15, 128, 0, False)
    body_at = raw.index(b"\r\n\r\n") + 4
    sizes = [len(b"%x\r\n%b\r\n" % (len(e), e)) for e in events]
    cuts = [body_at + sum(sizes[: i + 1]) for i in range(len(events))]  # one read per event
    usage, found = _read_as_forwarded(raw, cuts)
    assert usage == expected
    assert found == sum(1 for e in events if b'"usage":{' in e)  # OpenAI's "usage":null does not count


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_read_by_read_split_at_every_offset(name: str) -> None:
    events = openai_stream(3) if name == "openai" else anthropic_stream(3)
    raw = _chunked(events)
    expected, _ = _read_as_forwarded(raw, [])
    assert not expected.estimated
    for cut in range(1, len(raw)):
        assert _read_as_forwarded(raw, [cut])[0] == expected, cut
        assert _read_as_forwarded(raw, [cut, min(len(raw), cut + 7)])[0] == expected, cut


def test_read_by_read_one_byte_at_a_time() -> None:
    raw = _chunked(openai_stream(2))
    expected, _ = _read_as_forwarded(raw, [])
    assert _read_as_forwarded(raw, list(range(1, len(raw))))[0] == expected


def test_the_event_estimate_extrapolates_past_the_sample() -> None:
    reader = UsageReader()
    event = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    for _ in range(2000):  # ~94 KB: counted in the first 8 KiB only
        reader.feed(event)
    assert reader.usage(complete=False).output == pytest.approx(2000, rel=0.02)
