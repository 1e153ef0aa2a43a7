"""Token usage through the router, read from the mock upstream's answers, seen in /metrics and
the access line: official SDKs, streamed and plain, with and without ``include_usage``, aborts."""

from __future__ import annotations

import hashlib
import json
import socket
from typing import Any

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_streaming import wait_for
from tests.router_process import RouterProcess

MOCK_INPUT = 10  # what the mock reports as prompt/input tokens for any chat or messages request
MESSAGES = [{"role": "user", "content": "hi"}]


def metrics(router: RouterProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(router.url + "/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def tokens(router: RouterProcess, model: str, client: str = "anonymous") -> dict[str, float]:
    found = metrics(router)
    return {
        kind: found.get(("llm_tokens_total", (("client", client), ("kind", kind), ("model", model))), 0.0)
        for kind in ("input", "output", "cached_input", "reasoning")
    }


def value(router: RouterProcess, name: str, **labels: str) -> float:
    return metrics(router).get((name, tuple(sorted(labels.items()))), 0.0)


def _openai(router: RouterProcess, key: str = "client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key=key, max_retries=0, timeout=20)


def test_a_stream_that_did_not_ask_sees_no_usage_chunk_and_is_counted(make_router):
    router = make_router()
    chunks = list(
        _openai(router).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, extra_body={"mock": {"tokens": 6}}
        )
    )
    assert chunks
    for chunk in chunks:
        assert chunk.choices[0] is not None  # user code that reads choices[0] never fails
        assert chunk.usage is None
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(f"t{i:08d}" for i in range(6))
    # the router asked for the usage itself, so it is exact, not estimated
    assert tokens(router, "gpt-4o") == {"input": MOCK_INPUT, "output": 6, "cached_input": 0, "reasoning": 0}
    assert value(router, "llm_requests_total", client="anonymous", model="gpt-4o", status="200") == 1
    assert value(router, "llm_usage_estimated_total", client="anonymous", model="gpt-4o") == 0
    expected_cost = (MOCK_INPUT * 2.50 + 6 * 10.00) / 1e6  # the shipped gpt-4o price
    assert value(router, "llm_cost_usd_total", client="anonymous", model="gpt-4o") == pytest.approx(
        expected_cost
    )


def test_a_stream_that_asked_gets_the_usage_chunk(make_router):
    router = make_router()
    chunks = list(
        _openai(router).chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"mock": {"tokens": 4}},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens == 4
    assert tokens(router, "gpt-4o-mini")["output"] == 4


def test_passthrough_leaves_the_body_alone(make_router):
    router = make_router({"streamUsage": "passthrough"})
    chunks = list(
        _openai(router).chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, extra_body={"mock": {"tokens": 3}}
        )
    )
    assert all(c.choices for c in chunks)
    # no usage was reported: the output is estimated from the events forwarded
    assert value(router, "llm_usage_estimated_total", client="anonymous", model="gpt-4o") == 1
    assert tokens(router, "gpt-4o")["input"] == 0
    assert tokens(router, "gpt-4o")["output"] >= 3


def test_plain_chat_completions_and_embeddings(make_router):
    router = make_router({"modelMapping": {"my-alias": "mock-small"}})
    client = _openai(router)
    completion = client.chat.completions.create(
        model="my-alias", messages=MESSAGES, extra_body={"mock": {"tokens": 7}}
    )
    assert completion.usage is not None and completion.usage.completion_tokens == 7
    assert tokens(router, "my-alias")["output"] == 7  # the name the client asked for, a mapping key
    client.completions.create(model="gpt-4.1", prompt="Once", stream=True, extra_body={"mock": {"tokens": 2}})
    assert tokens(router, "gpt-4.1")["output"] == 2
    client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"])
    assert tokens(router, "text-embedding-3-small") == {
        "input": 3,
        "output": 0,
        "cached_input": 0,
        "reasoning": 0,
    }


def test_unknown_models_share_one_label(make_router):
    router = make_router()
    client = _openai(router)
    for name in ("made-up-1", "made-up-2"):
        client.chat.completions.create(model=name, messages=MESSAGES, extra_body={"mock": {"tokens": 2}})
    assert tokens(router, "other")["output"] == 4
    assert "made-up" not in httpx.get(router.url + "/metrics").text


def test_anthropic_sdk_streamed_and_plain(make_router):
    router = make_router()
    client = anthropic.Anthropic(base_url=router.url, api_key="k", max_retries=0, timeout=20)
    with client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES, extra_body={"mock": {"tokens": 5}}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens == 5
    message = client.messages.create(
        model="claude-sonnet-4-5", max_tokens=64, messages=MESSAGES, extra_body={"mock": {"tokens": 3}}
    )
    assert message.usage.output_tokens == 3
    counted = tokens(router, "claude-sonnet-4-5")
    assert counted["input"] == 2 * MOCK_INPUT and counted["output"] == 8
    expected_cost = (2 * MOCK_INPUT * 3.00 + 8 * 15.00) / 1e6
    assert value(
        router, "llm_cost_usd_total", client="anonymous", model="claude-sonnet-4-5"
    ) == pytest.approx(expected_cost)


def _abort_after(router: RouterProcess, path: str, body: dict[str, Any], events: int) -> None:
    """A raw client that reads ``events`` SSE events and goes away mid-stream."""
    payload = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        seen = b""
        while seen.count(b"\n\n") < events + 1:  # the head's blank line, then the events
            data = sock.recv(65536)
            assert data, "the router closed first"
            seen += data


def test_a_client_that_aborts_is_counted_as_estimated(make_router):
    router = make_router()
    body = {"model": "claude-haiku-4-5", "max_tokens": 500, "stream": True, "messages": MESSAGES}
    body["mock"] = {"tokens": 400, "interval_ms": 20}
    _abort_after(router, "/v1/messages", body, 6)

    def estimated() -> bool:
        return value(router, "llm_usage_estimated_total", client="anonymous", model="claude-haiku-4-5") == 1

    wait_for(estimated, what="the aborted stream's usage in /metrics")
    counted = tokens(router, "claude-haiku-4-5")
    assert counted["input"] == MOCK_INPUT  # message_start said so
    assert 3 <= counted["output"] < 400  # the content events forwarded, not the 400 never sent
    assert (
        value(router, "llm_requests_total", client="anonymous", model="claude-haiku-4-5", status="200") == 1
    )


def test_the_access_line_carries_client_model_tokens_and_cost(make_router, upstream):
    key = "gw-key-for-team-a"
    config = {
        "logFormat": "json",
        "clients": [{"name": "team-a", "keySha256": hashlib.sha256(key.encode()).hexdigest()}],
        "prices": {"house-model": {"inputPer1M": 1.0, "outputPer1M": 2.0}},
    }
    router = make_router(config)
    client = _openai(router, key)
    list(
        client.chat.completions.create(
            model="house-model", messages=MESSAGES, stream=True, extra_body={"mock": {"tokens": 5}}
        )
    )

    def line() -> dict[str, Any] | None:
        for text in router.logs().splitlines():
            if '"request_id"' in text:
                return json.loads(text[text.index("{") :])  # type: ignore[no-any-return]
        return None

    entry = wait_for(line, what="the access line")
    assert entry["client"] == "team-a"
    assert entry["model"] == "house-model"
    assert entry["backend"]
    assert entry["input_tokens"] == MOCK_INPUT and entry["output_tokens"] == 5
    assert entry["cost_usd"] == pytest.approx((MOCK_INPUT * 1.0 + 5 * 2.0) / 1e6)
    assert tokens(router, "house-model", client="team-a")["output"] == 5
    assert key not in router.logs()


def test_the_text_access_line_carries_them_too(make_router):
    router = make_router({"logFormat": "text"})
    _openai(router).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, extra_body={"mock": {"tokens": 2}}
    )

    def line() -> str | None:
        return next((t for t in router.logs().splitlines() if "request_id=" in t), None)

    text = wait_for(line, what="the access line")
    for field in (
        "client=anonymous",
        "model=gpt-4o",
        "input_tokens=10",
        "output_tokens=2",
        "cost_usd=",
        "backend=",
    ):
        assert field in text, (field, text)
