"""Config for OpenTelemetry traces (``tracing.py``): off unless ``telemetry.otlpEndpoint`` is set."""

from __future__ import annotations

from pydantic import Field, field_validator

from api_router.config_backends import ConfigModel, Headers, http_url


class TelemetryConfig(ConfigModel):
    """Where spans go (OTLP over HTTP, protobuf) and what names this service in them."""

    otlp_endpoint: str  # the collector's base URL; spans are POSTed to its /v1/traces
    service_name: str = Field(default="api-router", min_length=1)
    headers: Headers = Field(default_factory=dict)  # sent with every export (a collector's auth)
    # The fraction of exchanges with no sampled parent that are traced (a parent's decision wins).
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return http_url(value, "otlp_endpoint").rstrip("/")
