"""core/translate*.py: OpenAI ⇄ Anthropic requests, answers, errors and streams, each output
checked with the official SDKs' own models (what a client would parse)."""

from __future__ import annotations

import json
from typing import Any

import anthropic.types as at
import openai.types.chat as ot
import pytest
from pydantic import TypeAdapter

from api_router.core.translate import (
    DEFAULT_MAX_TOKENS,
    TranslationError,
    anthropic_error_to_openai,
    anthropic_message_to_openai,
    openai_to_anthropic,
)
from api_router.core.translate_reverse import (
    anthropic_to_openai,
    openai_completion_to_anthropic,
    openai_error_to_anthropic,
)
from api_router.core.translate_stream import (
    MAX_EVENT_BYTES,
    AnthropicToOpenAI,
    OpenAIToAnthropic,
    SseEvents,
    StreamTranslationError,
)

IMAGE = "data:image/png;base64,iVBORw0KGgo="
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def test_an_openai_chat_request_becomes_an_anthropic_one() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": IMAGE}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "4 C"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        "max_completion_tokens": 300,
        "stop": "END",
        "temperature": 1.7,
        "top_p": 0.9,
        "stream": True,
        "user": "u-1",
        "tools": [TOOL],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "seed": 7,
        "presence_penalty": 0.1,
    }
    out, dropped = openai_to_anthropic(body, model="claude-sonnet-4-5")
    assert dropped == ("presence_penalty", "seed")
    assert out["model"] == "claude-sonnet-4-5" and out["system"] == "Be brief.\n\nUse metric."
    assert out["max_tokens"] == 300 and out["stop_sequences"] == ["END"] and out["temperature"] == 1.0
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["tools"][0]["input_schema"]["properties"] == {"city": {"type": "string"}}
    assert out["metadata"] == {"user_id": "u-1"} and out["stream"] is True
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["user", "assistant", "user"]  # the tool result and the next user turn merged
    assert out["messages"][0]["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "iVBORw0KGgo=",
    }
    assert out["messages"][1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    ]
    assert out["messages"][2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "call_1",
        "content": "4 C",
    }
    assert openai_to_anthropic({"messages": []}).body["max_tokens"] == DEFAULT_MAX_TOKENS


@pytest.mark.parametrize(
    "change",
    [
        {"n": 2},
        {"logprobs": True},
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
        {"messages": [{"role": "function", "content": "x"}]},
        {"tools": [{"type": "code_interpreter"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
    ],
)
def test_what_would_change_the_answer_is_refused(change: dict[str, Any]) -> None:
    with pytest.raises(TranslationError):
        openai_to_anthropic({"model": "m", "messages": [{"role": "user", "content": "hi"}], **change})


def test_an_anthropic_answer_is_an_openai_chat_completion() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 4,
            "cache_creation_input_tokens": 2,
        },
    }
    at.Message.model_validate(message)  # the fixture is what Anthropic sends
    answer = ot.ChatCompletion.model_validate(anthropic_message_to_openai(message, "gpt-4o", 1_700_000_000))
    assert answer.model == "gpt-4o" and answer.choices[0].finish_reason == "tool_calls"
    assert answer.choices[0].message.content == "Calling."
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}  # type: ignore[union-attr]
    assert (
        answer.usage is not None and answer.usage.prompt_tokens == 16 and answer.usage.completion_tokens == 5
    )
    assert (
        answer.usage.prompt_tokens_details is not None
        and answer.usage.prompt_tokens_details.cached_tokens == 4
    )


def test_an_openai_answer_is_an_anthropic_message_and_requests_go_back() -> None:
    completion = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "qwen",
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {
                    "role": "assistant",
                    "content": "Hi",
                    "tool_calls": [
                        {
                            "id": "call_9",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'},
                        }
                    ],
                },
            }
        ],
        "usage": {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 2},
        },
    }
    ot.ChatCompletion.model_validate(completion)
    message = at.Message.model_validate(openai_completion_to_anthropic(completion, "claude-x"))
    assert message.stop_reason == "max_tokens" and message.model == "claude-x"
    assert message.usage.input_tokens == 10 and message.usage.cache_read_input_tokens == 2
    assert message.content[1].type == "tool_use" and message.content[1].input == {"a": 1}
    request = {
        "model": "claude-x",
        "max_tokens": 50,
        "system": [{"type": "text", "text": "Sys"}],
        "stream": True,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Q"},
                    {"type": "image", "source": {"type": "url", "url": "https://x/i.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "42"}]},
                    {"type": "text", "text": "so?"},
                ],
            },
        ],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
        "top_k": 3,
    }
    out, dropped = anthropic_to_openai(request, "qwen")
    assert dropped == ("top_k",) and out["stream_options"] == {"include_usage": True}
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert out["messages"][2]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    assert out["tool_choice"] == "required" and out["tools"][0]["function"]["parameters"] == {
        "type": "object"
    }


def test_errors_keep_their_status_and_take_the_clients_shape() -> None:
    openai_error = anthropic_error_to_openai(
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}, 529
    )
    assert openai_error == {"error": {"message": "busy", "type": "server_error", "code": None}}
    assert anthropic_error_to_openai({"x": 1}, 429)["error"]["type"] == "rate_limit_error"
    assert openai_error_to_anthropic({"error": {"message": "slow down"}}, 429) == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


ANTHROPIC_STREAM = b"".join(
    f"event: {json.loads(d)['type']}\ndata: {d}\n\n".encode()
    for d in [
        '{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"c","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":1}}}',
        '{"type":"ping"}',
        '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hel"}}',
        '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lo"}}',
        '{"type":"content_block_stop","index":0}',
        '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"tu_1","name":"f","input":{}}}',
        '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"a\\":"}}',
        '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"1}"}}',
        '{"type":"content_block_stop","index":1}',
        '{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":7}}',
        '{"type":"message_stop"}',
    ]
)


def openai_chunks(data: bytes) -> list[Any]:
    return [json.loads(text) for _, text in SseEvents().feed(data) if text != b"[DONE]"]


@pytest.mark.parametrize("piece", [len(ANTHROPIC_STREAM), 1, 7, 64])
def test_an_anthropic_stream_becomes_openai_chunks_in_any_read_sizes(piece: int) -> None:
    translator = AnthropicToOpenAI("gpt-4o", 1_700_000_000, include_usage=True)
    out = b"".join(
        translator.feed(ANTHROPIC_STREAM[i : i + piece]) for i in range(0, len(ANTHROPIC_STREAM), piece)
    )
    assert translator.done and out.endswith(b"data: [DONE]\n\n")
    chunks = [ot.ChatCompletionChunk.model_validate(c) for c in openai_chunks(out)]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert (
        calls[0].id == "tu_1"
        and "".join(t.function.arguments or "" for t in calls if t.function) == '{"a":1}'
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 10 and chunks[-1].usage.completion_tokens == 7


def test_without_include_usage_there_is_no_usage_chunk() -> None:
    out = AnthropicToOpenAI("gpt-4o", 1, include_usage=False).feed(ANTHROPIC_STREAM)
    assert all(c["choices"] for c in openai_chunks(out))


OPENAI_STREAM = b"".join(
    b"data: " + d.encode() + b"\n\n"
    for d in [
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"q","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}',
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"q","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}',
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"q","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}',
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"q","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":null}]}',
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"q","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
        '{"id":"c1","object":"chat.completion.chunk","created":1,"model":"q","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}',
        "[DONE]",
    ]
)


@pytest.mark.parametrize("piece", [len(OPENAI_STREAM), 1, 13])
def test_an_openai_stream_becomes_anthropic_events_in_any_read_sizes(piece: int) -> None:
    translator = OpenAIToAnthropic("claude-x")
    out = b"".join(translator.feed(OPENAI_STREAM[i : i + piece]) for i in range(0, len(OPENAI_STREAM), piece))
    assert translator.done
    adapter: TypeAdapter[Any] = TypeAdapter(at.RawMessageStreamEvent)
    events = [(name, adapter.validate_python(json.loads(text))) for name, text in SseEvents().feed(out)]
    assert all(name == event.type for name, event in events)
    assert [e.type for _, e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    delta = events[-2][1]
    assert delta.delta.stop_reason == "tool_use" and delta.usage.output_tokens == 4


def test_an_upstream_error_event_takes_the_clients_shape() -> None:
    out = AnthropicToOpenAI("m", 1, False).feed(
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"busy"}}\n\n'
    )
    assert (
        out.startswith(b"event: error\n")
        and json.loads(out.split(b"data: ", 1)[1])["error"]["message"] == "busy"
    )
    out = OpenAIToAnthropic("m").feed(b'data: {"error":{"message":"bad"}}\n\n')
    assert json.loads(out.split(b"data: ", 1)[1]) == {
        "type": "error",
        "error": {"type": "api_error", "message": "bad"},
    }


def test_memory_is_bounded_by_the_longest_event() -> None:
    events = SseEvents()
    assert events.feed(b"data: x\r\n\r\ndata: y\r\rdata: " + b"z" * 100) == [
        ("message", b"x"),
        ("message", b"y"),
    ]
    with pytest.raises(StreamTranslationError):
        events.feed(b"z" * MAX_EVENT_BYTES)
