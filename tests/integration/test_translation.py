"""More than one provider behind one API (translation issue): OpenAI chat clients on an
Anthropic-speaking backend and Anthropic messages clients on an OpenAI-speaking one, through the
official SDKs against the mock upstream (which serves both APIs); errors translated with their
status; failover to a backend of the other API with its own model name; back-off that honours
an upstream's Retry-After."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import anthropic
import openai
import pytest

from tests.integration.test_streaming import wait_for
from tests.raw_upstream import RawUpstream
from tests.router_process import RouterProcess

KEY_ENV = {"PROVIDER_KEY": "sk-router-own"}
IMAGE = "data:image/png;base64,iVBORw0KGgo="


def _seen(upstream: Any, request_id: str) -> dict[str, Any]:
    [found] = [r for r in upstream.requests() if ["x-request-id", request_id] in r["headers"]]
    return found


def _header(seen: dict[str, Any], name: str) -> str | None:
    return next((v for n, v in seen["headers"] if n == name), None)


def _openai(router: RouterProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="client-key", max_retries=0, timeout=20)


def _claude(router: RouterProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=router.url, api_key="client-key", max_retries=0, timeout=20)


@pytest.fixture
def on_anthropic(upstream: Any) -> Any:
    config = {
        "apiKeyEnv": "PROVIDER_KEY",
        "backends": [{"url": upstream.url, "api": "anthropic", "model": "claude-m"}],
    }
    with RouterProcess(config, env=KEY_ENV) as router:
        yield router


@pytest.fixture
def on_openai(upstream: Any) -> Any:
    config = {
        "apiKeyEnv": "PROVIDER_KEY",
        "backends": [{"url": upstream.url, "api": "openai", "model": "gpt-m"}],
    }
    with RouterProcess(config, env=KEY_ENV) as router:
        yield router


def test_openai_chat_plain_on_an_anthropic_backend(on_anthropic, upstream):
    with _openai(on_anthropic) as client:
        answer = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            max_tokens=50,
            extra_headers={"x-request-id": "tr-plain"},
        )
    assert answer.object == "chat.completion" and answer.model == "gpt-4o"  # the name the client asked for
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    seen = _seen(upstream, "tr-plain")
    assert seen["path"] == "/v1/messages" and seen["model"] == "claude-m"
    assert seen["json"]["system"] == "be brief" and seen["json"]["max_tokens"] == 50
    assert _header(seen, "x-api-key") == "sk-router-own" and _header(seen, "anthropic-version")
    assert _header(seen, "authorization") is None  # the client's key never goes upstream


def test_openai_chat_streamed_on_an_anthropic_backend(on_anthropic, upstream):
    with _openai(on_anthropic) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": 'hi MOCK{"tokens": 6}'}],
                stream=True,
                stream_options={"include_usage": True},
                extra_headers={"x-request-id": "tr-stream"},
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0  # asked for
    assert _seen(upstream, "tr-stream")["json"]["stream"] is True


def test_tools_and_an_image_part_are_translated_and_a_tool_call_comes_back(on_anthropic, upstream):
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "d",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    events = [
        'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message",'
        '"role":"assistant","model":"claude-m","content":[],"usage":{"input_tokens":9,"output_tokens":0}}}\n\n',
        'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        '"content_block":{"type":"tool_use","id":"toolu_1","name":"weather","input":{}}}\n\n',
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"input_json_delta","partial_json":"{\\"city\\": \\"Oslo\\"}"}}\n\n',
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},'
        '"usage":{"output_tokens":7}}\n\n',
        'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]
    content = [
        {"type": "text", "text": "what is this? MOCK" + json.dumps({"raw_events": events})},
        {"type": "image_url", "image_url": {"url": IMAGE}},
    ]
    with _openai(on_anthropic) as client:
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": content}],
                tools=[tool],
                tool_choice="required",
                stream=True,
                extra_headers={"x-request-id": "tr-tools"},
            )
        )
    calls = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert calls[0][0].function.name == "weather" and calls[0][0].id == "toolu_1"
    arguments = "".join(call[0].function.arguments or "" for call in calls)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    sent = _seen(upstream, "tr-tools")["json"]
    assert sent["tools"][0]["name"] == "weather" and "input_schema" in sent["tools"][0]
    assert sent["tool_choice"] == {"type": "any"}
    image = sent["messages"][0]["content"][1]
    assert image["type"] == "image" and image["source"]["type"] == "base64"


def test_anthropic_messages_plain_and_streamed_on_an_openai_backend(on_openai, upstream):
    with _claude(on_openai) as claude:
        message = claude.messages.create(
            model="claude-x",
            max_tokens=40,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-request-id": "tr-ant-plain"},
        )
        with claude.messages.stream(
            model="claude-x",
            max_tokens=40,
            messages=[{"role": "user", "content": 'hi MOCK{"tokens": 5}'}],
            extra_headers={"x-request-id": "tr-ant-stream"},
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
    assert message.type == "message" and message.model == "claude-x"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn" and message.usage.output_tokens > 0
    assert streamed and final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    seen = _seen(upstream, "tr-ant-plain")
    assert seen["path"] == "/v1/chat/completions" and seen["model"] == "gpt-m"
    assert _header(seen, "authorization") == "Bearer sk-router-own" and _header(seen, "x-api-key") is None
    assert _seen(upstream, "tr-ant-stream")["json"]["stream_options"] == {"include_usage": True}


def test_errors_are_translated_with_their_status(on_anthropic, on_openai):
    with _openai(on_anthropic) as client, pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": 'MOCK{"status": 429}'}]
        )
    assert limited.value.status_code == 429
    assert isinstance(limited.value.body, dict) and limited.value.body.get("message")  # OpenAI's shape
    with _claude(on_openai) as claude, pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(
            model="claude-x", max_tokens=5, messages=[{"role": "user", "content": 'MOCK{"status": 400}'}]
        )
    assert bad.value.status_code == 400 and bad.value.body["type"] == "error"  # Anthropic's shape


def test_an_untranslatable_request_is_a_400(on_anthropic):
    with _openai(on_anthropic) as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], n=2)
    assert refused.value.code == "untranslatable"


def _answer_503(conn: Any, stop: threading.Event) -> None:
    body = b'{"error": {"message": "overloaded"}}'
    conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))


def test_failover_from_a_503_backend_to_one_of_the_other_api_with_its_own_model(upstream):
    busy = RawUpstream(_answer_503)
    backends = [{"url": busy.url}, {"url": upstream.url, "api": "anthropic", "model": "claude-fallback"}]
    config = {"backends": backends, "balancing": "round-robin", "retries": 1, "logFormat": "json"}
    try:
        with RouterProcess(config) as router, _openai(router) as client:
            for n in range(2):  # one of the two starts on the busy backend
                answer = client.chat.completions.create(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": "hi"}],
                    extra_headers={"x-request-id": f"fo-{n}"},
                )
                assert answer.choices[0].message.content and answer.model == "gpt-4o"
                assert _seen(upstream, f"fo-{n}")["model"] == "claude-fallback"
            lines = wait_for(
                lambda: [line for line in router.logs().splitlines() if '"fo-' in line], what="access lines"
            )
            assert all(upstream.url in line for line in lines), lines  # the backend that answered
    finally:
        busy.close()


def test_a_retry_on_the_same_backend_waits_for_its_retry_after():
    arrivals: list[float] = []

    def limited_once(conn: Any, stop: threading.Event) -> None:
        arrivals.append(time.monotonic())
        if len(arrivals) == 1:
            conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n")
            return
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        body = json.dumps({"id": "x", "object": "chat.completion", "choices": [choice]}).encode()
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (len(body), body)
        )

    only = RawUpstream(limited_once)
    try:
        config = {"backends": [{"url": only.url}], "retries": 1, "retryBackoffSecs": 0.01}
        with RouterProcess(config) as router, _openai(router) as client:
            answer = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
            )
        assert answer.choices[0].message.content == "ok"
        assert (
            len(arrivals) == 2 and arrivals[1] - arrivals[0] >= 0.95
        )  # Retry-After: 1, not the 0.01 back-off
    finally:
        only.close()
