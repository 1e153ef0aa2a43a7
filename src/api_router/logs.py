"""Logging: one access line per request, as text or JSON. Headers are never logged, so no key is."""

from __future__ import annotations

import atexit
import json
import logging
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Protocol

from api_router.access_log import AccessWriter

if TYPE_CHECKING:
    from api_router.core.usage import Usage


class _Routed(Protocol):
    @property
    def path(self) -> str: ...


class _Progress(Protocol):
    @property
    def bytes_forwarded(self) -> int: ...
    @property
    def sse(self) -> bool: ...


class Logged(Protocol):
    """What the access line reads off an exchange (a Forwarder); a Protocol keeps this module
    below net/, as metrics.Exchange does."""

    @property
    def request_id(self) -> bytes: ...
    @property
    def route(self) -> _Routed: ...
    @property
    def status(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def ttfb(self) -> float | None: ...
    @property
    def state(self) -> _Progress: ...
    @property
    def own_bytes(self) -> int: ...
    @property
    def client_name(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def backend_name(self) -> str | None: ...
    @property
    def usage(self) -> Usage | None: ...
    @property
    def cost_usd(self) -> float | None: ...


access = logging.getLogger("api_router.access")
log = logging.getLogger("api_router")
writer: AccessWriter | None = None  # access_log.py: set by configure


class _Handler(logging.StreamHandler[IO[str]]):
    """stderr, where buffered access lines go out before any other line (access_log.py, rule 3)."""

    def emit(self, record: logging.LogRecord) -> None:
        if writer is not None:
            writer.flush()
        super().emit(record)


def _process(record: logging.LogRecord, supervisor_pid: int) -> str:
    return "supervisor" if record.process == supervisor_pid else "worker"


class JsonFormatter(logging.Formatter):
    def __init__(self, supervisor_pid: int | None = None) -> None:
        super().__init__()
        self._supervisor_pid = supervisor_pid

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._supervisor_pid is not None:
            entry["process"] = _process(record, self._supervisor_pid)
            entry["pid"] = record.process
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self, supervisor_pid: int | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(process_tag)s %(message)s")
        self._supervisor_pid = supervisor_pid

    def format(self, record: logging.LogRecord) -> str:
        pid = self._supervisor_pid  # with workers: "... api_router [worker 4242] message"
        record.process_tag = "" if pid is None else f" [{_process(record, pid)} {record.process}]"
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


def configure(level: str, fmt: str, supervisor_pid: int | None = None) -> None:
    """``supervisor_pid`` (``--workers``): each line names its process, supervisor or worker, and pid;
    records carry the pid of the process that made them, so forked workers need no new set-up."""
    global writer
    if writer is not None:
        writer.flush()
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter(supervisor_pid) if fmt == "json" else TextFormatter(supervisor_pid))
    root = logging.getLogger("api_router")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    writer = AccessWriter(handler, fmt, supervisor_pid)


def flush() -> None:
    """Write out buffered access lines now (the end of a drain, the process's exit)."""
    if writer is not None:
        writer.flush()


atexit.register(flush)


def _write_access(fields: dict[str, Any]) -> None:
    if writer is not None and writer.usable(access):
        writer.write(fields)
    else:  # logging configured some other way (access_log.py, rule 2)
        access.info("request", extra={"fields": fields})


def access_line(forwarder: Logged, outcome: str) -> None:
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
        # The body the client got: the upstream's bytes and the router's own (heartbeats, the
        # SSE error event, an error response), as nginx's $body_bytes_sent; no head, no framing.
        "bytes": forwarder.state.bytes_forwarded + forwarder.own_bytes,
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
    _write_access(fields)


def local_access_line(
    request_id: bytes,
    route: str,
    status: int,
    started_at: float | None,
    body_bytes: int,
    outcome: str,
    **extra: Any,
) -> None:
    """A response the router wrote itself (a refusal, /health, a cache hit): the same fields;
    ``extra`` adds some (a WebSocket tunnel's client, backend and bytes sent upstream)."""
    if not access.isEnabledFor(logging.INFO):
        return
    latency = 0.0 if started_at is None else time.perf_counter() - started_at
    fields = {
        "request_id": request_id.decode(),
        "route": route,
        "status": status,
        "latency_ms": round(latency * 1000, 2),
        "upstream_latency_ms": None,
        "bytes": body_bytes,
        "outcome": outcome,
        "stream": False,
        **extra,
    }
    _write_access(fields)
