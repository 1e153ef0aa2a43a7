"""OpenTelemetry traces (tracing.py) through a real router, exported by the real SDK to an OTLP/HTTP
receiver on loopback that decodes them; the upstream records the traceparent it got."""

from __future__ import annotations

import openai
import pytest

from tests.integration.test_usage import MESSAGES, MOCK_INPUT
from tests.otlp_receiver import OtlpReceiver, attributes
from tests.router_process import RouterProcess

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # the SDK's batch delay, ms (default 5 s)


@pytest.fixture
def receiver():
    with OtlpReceiver() as running:
        yield running


def traced_router(make_router, receiver: OtlpReceiver, **extra: object) -> RouterProcess:
    config = {
        "telemetry": {"otlpEndpoint": receiver.url, "serviceName": "router-under-test"},
        "modelMapping": {"fast": "gpt-4o-mini"},
        **extra,
    }
    return make_router(config, env=FAST_EXPORT)


def upstream_headers(upstream, request_id: str) -> dict[str, str]:
    found = [r for r in upstream.requests() if dict(r["headers"]).get("x-request-id") == request_id]
    assert len(found) == 1, found
    return dict(found[0]["headers"])


def test_a_stream_is_one_span_under_the_clients_trace_and_the_upstream_continues_it(
    make_router, upstream, receiver
):
    router = traced_router(make_router, receiver)
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "x-request-id": "trace-stream-1"}
    with openai.OpenAI(
        base_url=router.url + "/v1", api_key="k", max_retries=0, default_headers=headers
    ) as client:
        chunks = list(
            client.chat.completions.create(
                model="fast", messages=MESSAGES, stream=True, extra_body={"mock": {"tokens": 4}}
            )
        )
    assert chunks
    resource, span = receiver.next_span()
    assert receiver.paths[0] == "/v1/traces"
    assert resource["service.name"] == "router-under-test"
    assert span.name == "chat fast"
    assert span.trace_id.hex() == CLIENT_TRACE and span.parent_span_id.hex() == CLIENT_SPAN
    tags = attributes(span)
    assert tags["gen_ai.operation.name"] == "chat" and tags["gen_ai.system"] == "openai"
    assert tags["gen_ai.request.model"] == "fast" and tags["gen_ai.response.model"] == "gpt-4o-mini"
    assert tags["gen_ai.usage.input_tokens"] == MOCK_INPUT and tags["gen_ai.usage.output_tokens"] == 4
    assert tags["api_router.outcome"] == "completed" and tags["http.response.status_code"] == 200
    assert tags["api_router.ttfb_ms"] > 0
    assert [event.name for event in span.events] == ["first_byte"]
    assert span.start_time_unix_nano < span.events[0].time_unix_nano <= span.end_time_unix_nano
    assert span.kind == span.SPAN_KIND_CLIENT
    sent = upstream_headers(upstream, "trace-stream-1")["traceparent"]
    assert sent == f"00-{CLIENT_TRACE}-{span.span_id.hex()}-01"  # the router's span is the parent


def test_without_a_traceparent_the_router_starts_the_trace_and_marks_errors(make_router, upstream, receiver):
    router = traced_router(make_router, receiver)
    with (
        openai.OpenAI(
            base_url=router.url + "/v1",
            api_key="k",
            max_retries=0,
            default_headers={"x-request-id": "trace-err-1"},
        ) as client,
        pytest.raises(openai.APIStatusError),
    ):
        client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, extra_body={"mock": {"status": 500}}
        )
    _, span = receiver.next_span()
    assert len(span.parent_span_id) == 0  # a root span
    tags = attributes(span)
    assert tags["http.response.status_code"] == 500 and tags["error.type"] == "500"
    assert span.status.code == span.status.STATUS_CODE_ERROR
    sent = upstream_headers(upstream, "trace-err-1")["traceparent"]
    assert sent.split("-")[1:3] == [span.trace_id.hex(), span.span_id.hex()]


def test_an_unsampled_parent_is_passed_on_and_not_exported(make_router, upstream, receiver):
    router = traced_router(make_router, receiver)
    unsampled = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00", "x-request-id": "trace-off-1"}
    with openai.OpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers=unsampled)
        sent = upstream_headers(upstream, "trace-off-1")["traceparent"]
        assert sent.startswith(f"00-{CLIENT_TRACE}-") and sent.endswith("-00")
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # sampled: it is exported
    _, span = receiver.next_span()
    assert span.trace_id.hex() != CLIENT_TRACE  # the unsampled exchange, ended first, was not
    assert receiver.spans.empty()
