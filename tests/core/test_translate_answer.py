"""core/translate_answer.py: an answer in the other API, translated as it arrives (its rules)."""

from __future__ import annotations

import json

from api_router.core.translate_answer import MAX_ANSWER_BYTES, AnswerTranslator
from api_router.core.translate_stream import MAX_EVENT_BYTES


def _event(name: str, data: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), json.dumps(data).encode())


def _anthropic_events() -> list[bytes]:
    def delta(text: str) -> bytes:
        return _event(
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        )

    start = {
        "type": "message_start",
        "message": {"id": "m1", "usage": {"input_tokens": 3, "output_tokens": 0}},
    }
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}
    return [
        _event("message_start", start),
        _event("content_block_start", block),
        delta("hel"),
        delta("lo"),
        _event("message_delta", end),
        _event("message_stop", {"type": "message_stop"}),
    ]


def _chunks(out: bytes) -> list[dict]:
    return [json.loads(line[6:]) for line in out.decode().split("\n") if line.startswith("data: {")]


def test_a_stream_is_translated_event_by_event_and_nothing_is_held_past_an_event():
    translator = AnswerTranslator(True, "gpt-4o", 7, include_usage=True)
    translator.start(200, event_stream=True)
    events = _anthropic_events()
    texts = []
    for event in events:
        half = len(event) // 2
        assert translator.feed(event[:half]) == b""  # an unfinished event: held
        out = translator.feed(event[half:])  # its end: out at once (rule 1)
        texts += [c["choices"][0]["delta"].get("content") for c in _chunks(out) if c.get("choices")]
    assert "".join(t for t in texts if t) == "hello"
    assert translator.finish() == b""


def test_a_json_answer_is_held_then_translated_whole():
    translator = AnswerTranslator(True, "gpt-4o", 7, include_usage=False)
    translator.start(200, event_stream=False)
    message = {
        "id": "m1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    raw = json.dumps(message).encode()
    assert translator.feed(raw[:10]) == b"" and translator.feed(raw[10:]) == b""  # rule 2
    answer = json.loads(translator.finish())
    assert answer["object"] == "chat.completion" and answer["model"] == "gpt-4o" and answer["created"] == 7
    assert (
        answer["choices"][0]["message"]["content"] == "hi" and answer["choices"][0]["finish_reason"] == "stop"
    )


def test_an_error_keeps_its_meaning_in_the_clients_shape():
    translator = AnswerTranslator(False, "claude-x", 0, include_usage=False)  # an Anthropic client
    translator.start(429, event_stream=False)
    translator.feed(json.dumps({"error": {"message": "slow down", "type": "rate_limit_error"}}).encode())
    error = json.loads(translator.finish())
    assert error["type"] == "error" and error["error"]["message"] == "slow down"


def test_what_is_not_its_apis_answer_goes_out_as_it_came():
    translator = AnswerTranslator(True, "gpt-4o", 0, include_usage=False)
    translator.start(502, event_stream=False)
    translator.feed(b"<html>bad gateway</html>")
    assert translator.finish() == b"<html>bad gateway</html>"  # rule 3


def test_memory_per_stream_is_bounded_whatever_the_upstream_sends():
    translator = AnswerTranslator(True, "gpt-4o", 0, include_usage=False)
    translator.start(200, event_stream=True)
    piece = b"data: " + b"x" * 65536
    sent = 0
    while sent <= MAX_EVENT_BYTES + len(piece):
        out = translator.feed(piece)
        sent += len(piece)
        if translator.raw:
            break
        assert out == b""
    assert translator.raw and sent <= MAX_EVENT_BYTES + 2 * len(piece)  # no event ever ended: given up
    assert translator.feed(b"more") == b"more"  # from then on, forwarded as it comes (rule 3)


def test_a_json_answer_over_the_cap_is_let_through():
    translator = AnswerTranslator(True, "gpt-4o", 0, include_usage=False)
    translator.start(200, event_stream=False)
    out = translator.feed(b"{" + b" " * MAX_ANSWER_BYTES)
    assert translator.raw and len(out) == MAX_ANSWER_BYTES + 1


def test_the_text_fast_path_keeps_every_escape_and_other_layouts_are_parsed():
    tricky = 'say "hi" \\ there \\"}} ü \n end'
    translator = AnswerTranslator(True, "gpt-4o", 0, include_usage=False)
    translator.start(200, event_stream=True)
    own = _event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tricky}},
    )
    reordered = _event(  # "text" not last: the fast path does not apply, the parse does
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"text": tricky, "type": "text_delta"}},
    )
    extra = (  # ends as the fast path's layout does, yet "text" is not last: the quote check sees it
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"a"},"x":{"y":"b"}}\n\n'
    )
    for event in (own, reordered, extra):
        [chunk] = _chunks(translator.feed(event))
        assert chunk["choices"][0]["delta"]["content"] == (tricky if event is not extra else "a")
