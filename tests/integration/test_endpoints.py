"""Every endpoint a client calls (endpoints issue): the Responses API as a first-class streaming
route, /v1/* passed through, each API's error shape, through the official SDKs."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai

from tests.integration.test_usage import MESSAGES, MOCK_INPUT, tokens
from tests.rawhttp import sse_events


def _openai(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0, timeout=20)


def test_responses_create_plain_and_streamed_are_counted(make_router):
    router = make_router({"modelMapping": {"fast": "gpt-4o-mini"}})
    with _openai(router) as client:
        plain = client.responses.create(model="fast", input="hi", extra_body={"mock": {"tokens": 3}})
        assert plain.output_text == "".join(f"t{i:08d}" for i in range(3))
        assert plain.usage is not None and plain.usage.output_tokens == 3
        with client.responses.stream(model="fast", input="hi", extra_body={"mock": {"tokens": 4}}) as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 4
    assert final.output_text == "".join(f"t{i:08d}" for i in range(4))
    counted = tokens(router, "fast")  # usage read from response.completed (core/usage.py)
    assert counted["input"] == 2 * MOCK_INPUT and counted["output"] == 3 + 4


def test_a_responses_stream_that_breaks_ends_with_the_responses_error_event(make_router):
    router = make_router({"retries": 0})
    body = {"model": "gpt-4o", "input": "hi", "stream": True, "mock": {"tokens": 50, "die_after": 2}}
    answer = httpx.post(router.url + "/v1/responses", json=body, timeout=20)
    events = sse_events(answer.content)
    assert answer.status_code == 200 and events[-1].startswith("event: error")
    assert '"type":"error"' in events[-1] and '"code":"upstream_disconnected"' in events[-1]
    numbers = [json.loads(e.split("data: ", 1)[1])["sequence_number"] for e in events if "data: " in e]
    assert numbers == list(range(len(numbers))), numbers  # the error event continues the numbering


def test_v1_paths_pass_through_with_method_query_and_id(make_router, upstream):
    router = make_router()
    with _openai(router) as client:
        assert client.models.retrieve("gpt-4o").id == "gpt-4o"
        assert client.files.list().data == []
        assert client.responses.retrieve("resp_abc").id == "resp_abc"
    answer = httpx.get(router.url + "/v1/batches?limit=2", headers={"x-request-id": "pass-1"})
    assert answer.status_code == 404  # the mock has no batches: its own answer, passed through
    seen = [r for r in upstream.requests() if dict(r["headers"]).get("x-request-id") == "pass-1"]
    assert seen and seen[0]["path"] == "/v1/batches" and seen[0]["method"] == "GET"


def test_anthropic_count_tokens_and_anthropic_errors_on_anthropic_paths(make_router):
    router = make_router()
    with anthropic.Anthropic(base_url=router.url, api_key="k", max_retries=0, timeout=20) as claude:
        count = claude.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
        assert count.input_tokens >= 1
    wrong = httpx.get(router.url + "/v1/messages")  # the router's own 405
    assert wrong.status_code == 405
    assert wrong.json()["type"] == "error" and wrong.json()["error"]["type"] == "invalid_request_error"
    outside = httpx.get(router.url + "/v2/anything")  # no route at all: OpenAI's shape
    assert outside.status_code == 404 and outside.json()["error"]["code"] == "not_found"
