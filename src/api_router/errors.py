"""Every error a client can see, and the one place where they are rendered.

The tree is small on purpose::

    GatewayError                 status, OpenAI ``type`` and ``code``
      ├── BadRequest             400 invalid_request_error
      ├── NotFound               404
      ├── MethodNotAllowed       405
      ├── RequestTimeout         408 (slow headers or body: slowloris)
      ├── PayloadTooLarge        413
      ├── UpgradeRequired        426 (a WebSocket route asked without an upgrade)
      ├── HeadersTooLarge        431
      ├── UpstreamUnreachable    502 (connect refused/reset, TLS failure, bad upstream HTTP)
      ├── UpstreamBroken         502 mid-stream: the upstream died after the response started
      ├── ServiceUnavailable     503 (shutting down; a limiter backend down and failing closed)
      └── UpstreamTimeout        504

Bodies use OpenAI's shape ``{"error": {"message", "type", "code"}}`` except on Anthropic
routes, which get Anthropic's ``{"type": "error", "error": {"type", "message"}}`` so that
each SDK raises its own typed exception.
"""

from __future__ import annotations

import enum
import json


class ApiFlavor(enum.Enum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    # OpenAI's Responses API: errors as OpenAI's, but a stream's error event is its own type
    RESPONSES = "responses"

    @property
    def system(self) -> str:
        """The provider API, as the GenAI conventions name it (``gen_ai.system``)."""
        return "anthropic" if self is ApiFlavor.ANTHROPIC else "openai"


# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers

    def payload(self, flavor: ApiFlavor) -> dict[str, object]:
        if flavor is ApiFlavor.ANTHROPIC:
            kind = ANTHROPIC_TYPES.get(self.status, "api_error")
            return {"type": "error", "error": {"type": kind, "message": self.message}}
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}

    def body(self, flavor: ApiFlavor = ApiFlavor.OPENAI) -> bytes:
        return json.dumps(self.payload(flavor), separators=(",", ":")).encode()

    def sse_event(self, flavor: ApiFlavor = ApiFlavor.OPENAI, sequence_number: int = 0) -> bytes:
        """One complete SSE ``error`` event; both SDKs raise on it, except on the Responses API,
        whose streams end with an ``error`` event of that API's own shape (the SDK yields it as
        ``ResponseErrorEvent``). Its ``sequence_number`` is the number of events the client was
        sent before it (core/stream.py counts their ``data:`` lines; one split across two reads
        may be missed), so it continues the upstream's numbering (from 0, one per event). Typed
        clients require the field: the Vercel AI SDK rejected the event without it."""
        if flavor is ApiFlavor.RESPONSES:
            event = {
                "type": "error",
                "code": self.code,
                "message": self.message,
                "param": None,
                "sequence_number": sequence_number,
            }
            return b"event: error\ndata: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
        return b"event: error\ndata: " + self.body(flavor) + b"\n\n"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.status} {self.code}: {self.message}>"


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "bad_request"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class UpgradeRequired(GatewayError):
    status = 426
    type = "invalid_request_error"
    code = "upgrade_required"


class VersionNotSupported(GatewayError):
    status = 505
    type = "invalid_request_error"
    code = "http_version_not_supported"


class HeadersTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "headers_too_large"


class UpstreamUnreachable(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class UpstreamBroken(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_disconnected"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class InsufficientQuota(GatewayError):
    """A client's spending budget is used up (quota.py): OpenAI's own status, type and code."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


def connection_lost_error(exc: BaseException | None, streaming: bool, target: str) -> GatewayError:
    """What the client is told when the upstream connection was lost (``exc``: why, if known)."""
    if isinstance(exc, GatewayError):
        return exc
    if streaming:
        return UpstreamBroken("the upstream connection closed in the middle of the response")
    if exc is None:
        return UpstreamUnreachable(f"upstream {target} closed the connection without answering")
    return from_os_error(exc, target)


def from_os_error(exc: BaseException, target: str) -> GatewayError:
    """Map a connect/read failure to the client-facing error (httpx's ``map_exceptions`` seam)."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"upstream {target} did not answer in time")
    reason = type(exc).__name__
    detail = str(exc) or reason
    return UpstreamUnreachable(f"upstream {target} is unreachable: {detail}")
