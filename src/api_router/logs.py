"""Logging: one access line per request, as text or JSON. Headers are never logged, so no key is."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api_router.net.forward import Forwarder

access = logging.getLogger("api_router.access")
log = logging.getLogger("api_router")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("api_router")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def access_line(forwarder: Forwarder, outcome: str) -> None:
    if not access.isEnabledFor(logging.INFO):
        return
    now = time.perf_counter()
    ttfb = forwarder.ttfb
    usage = forwarder.usage
    backend = forwarder.backend_name
    cost = forwarder.cost_usd
    fields = {
        "request_id": forwarder.request_id.decode(),
        "route": forwarder.route.path,
        "status": forwarder.status or 499,
        "latency_ms": round((now - forwarder.started_at) * 1000, 2),
        "upstream_latency_ms": round(ttfb * 1000, 2) if ttfb is not None else None,
        "bytes": forwarder.state.bytes_forwarded,
        "outcome": outcome,
        "stream": forwarder.state.sse,
        "client": forwarder.client_name,
        "model": forwarder.model,
        "backend": backend,
        "input_tokens": usage.input if usage is not None else None,
        "output_tokens": usage.output if usage is not None else None,
        "cost_usd": round(cost, 8) if cost is not None else None,
    }
    if usage is not None and usage.estimated:
        fields["usage_estimated"] = True
    access.info("request", extra={"fields": fields})
