"""OpenTelemetry traces (issue 14): one span per exchange, named and tagged by the GenAI semantic
conventions, exported in batches over OTLP/HTTP by the OpenTelemetry SDK.

Rule 1. Off unless ``telemetry.otlpEndpoint`` is set; then the SDK is imported (it is the
        ``otel`` extra) and nothing else changes. With it off, no request pays anything.
Rule 2. A span starts when the router begins an exchange (``start``) and ends when the exchange
        ends (``finish``, from ``Runtime.account``). Its parent is the client's W3C ``traceparent``
        when it sent one, else it starts a trace; the upstream gets a ``traceparent`` naming
        this span, so the provider's spans (or a self-hosted backend's) hang under the router's.
        The sampling decision is the parent's, else ``sampleRatio``; an unsampled exchange still
        passes its trace on.
Rule 3. The span is ``{gen_ai.operation.name} {gen_ai.request.model}`` (``chat gpt-4o``), kind
        CLIENT, with ``gen_ai.system``, ``gen_ai.request.model``, ``gen_ai.response.model`` (the
        model the upstream was asked for, after ``modelMapping``), ``gen_ai.usage.input_tokens``
        / ``output_tokens`` when the answer reported them, the time to the upstream's first byte
        (attribute ``api_router.ttfb_ms`` and event ``first_byte``), the outcome, the status and
        the backend. Status ERROR for an outcome other than ``completed`` or a 5xx.
Rule 4. Export never blocks the loop: spans go to the SDK's ``BatchSpanProcessor`` (a queue and
        its own thread); a collector that is down loses spans, never requests. Keys and request
        bodies are never put in a span.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from api_router.config_telemetry import TelemetryConfig
    from api_router.core.usage import Usage

# gen_ai.operation.name by route (the semantic conventions' values); other routes: their path
_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


class _Routed(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def flavor(self) -> Any: ...


class Traced(Protocol):
    """What a span reads off an exchange when it ends (a Forwarder)."""

    span: Any

    @property
    def route(self) -> _Routed: ...
    @property
    def status(self) -> int: ...
    @property
    def ttfb(self) -> float | None: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def backend_name(self) -> str | None: ...
    @property
    def client_name(self) -> str: ...


class Tracing:
    """The SDK's provider, exporter and tracer, built once per telemetry config."""

    def __init__(self, config: TelemetryConfig) -> None:
        # The SDK is optional (rule 1): imported only when traces are on.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415
        from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: PLC0415
        from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
            TraceContextTextMapPropagator,
        )

        self.config = config
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        headers = {name: value for name, value in config.headers.items()}
        exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint + "/v1/traces", headers=headers)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("api_router")
        self._propagator = TraceContextTextMapPropagator()
        self._client_kind = SpanKind.CLIENT
        self._error = Status(StatusCode.ERROR)

    def start(
        self,
        route_path: str,
        system: str,
        model: str | None,
        mapped: str | None,
        headers: list[tuple[bytes, bytes]],
        started_at: float,
    ) -> Any:
        """Begin an exchange's span, dated from ``started_at`` (the request's perf_counter
        start); ``headers`` (the client's, sent upstream) get its traceparent."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in headers
            if name in (b"traceparent", b"tracestate")
        }
        parent = self._propagator.extract(carrier) if carrier else None
        operation = _OPERATIONS.get(route_path, route_path)
        attributes: dict[str, str] = {"gen_ai.operation.name": operation, "gen_ai.system": system}
        if model is not None:
            attributes["gen_ai.request.model"] = model
        if mapped is not None:
            attributes["gen_ai.response.model"] = mapped
        name = f"{operation} {model}" if model else operation
        start_ns = time.time_ns() - int((time.perf_counter() - started_at) * 1e9)
        span = self._tracer.start_span(
            name, context=parent, kind=self._client_kind, attributes=attributes, start_time=start_ns
        )
        context = span.get_span_context()
        traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        headers[:] = [(n, v) for n, v in headers if n != b"traceparent"]
        headers.append((b"traceparent", traceparent.encode()))
        return span

    def finish(self, exchange: Traced, outcome: str) -> None:
        end_span(exchange, outcome, self._error)

    def shutdown(self) -> None:
        """Flush what is queued (blocking: call it off the loop) and stop the export thread."""
        self._provider.shutdown()


def end_span(exchange: Traced, outcome: str, error_status: Any = None) -> None:
    """Tag and end an exchange's span (rule 3); also for a span begun before a reload turned
    traces off (then ``error_status`` is None and the span only ends)."""
    span = exchange.span
    if span is None:
        return
    exchange.span = None
    if span.is_recording():
        attributes: dict[str, str | int | float] = {
            "http.response.status_code": exchange.status or 499,
            "api_router.outcome": outcome,
            "api_router.client": exchange.client_name,
            "api_router.route": exchange.route.path,
        }
        if exchange.backend_name is not None:
            attributes["api_router.backend"] = exchange.backend_name
        usage = exchange.usage
        if usage is not None:
            attributes["gen_ai.usage.input_tokens"] = usage.input
            attributes["gen_ai.usage.output_tokens"] = usage.output
            attributes["api_router.usage_estimated"] = usage.estimated
        if exchange.ttfb is not None:
            attributes["api_router.ttfb_ms"] = round(exchange.ttfb * 1000, 3)
            start_ns = span.start_time
            if start_ns is not None:
                span.add_event("first_byte", timestamp=start_ns + int(exchange.ttfb * 1e9))
        if outcome != "completed" or (exchange.status or 0) >= 500:
            attributes["error.type"] = outcome if outcome != "completed" else str(exchange.status)
            if error_status is not None:
                span.set_status(error_status)
        span.set_attributes(attributes)
    span.end()
