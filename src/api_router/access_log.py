"""The access line: its fields, taken off an exchange, and its own writer, which writes the same
lines as ``logging`` would at a fraction of the cost. Compiled (setup.py): it runs once per request.

Measured (issue 15): through ``logging``, the access line cost ~60 µs per request, most of it a
LogRecord, the handler's lock and one ``write`` + ``flush`` system call per line. Here a line is
formatted straight from its fields (the timestamp text is made once per second) and lines are
buffered, written together at most ``FLUSH_SECS`` later or once ``MAX_LINES`` are waiting. That
was still 57k instructions per request interpreted (``bench.instructions --rps --set
'logLevel="info"'``), most of them the generator joining the text fields; compiled, ~26k.

Rule 1. The lines are byte for byte those of ``logs.TextFormatter`` / ``logs.JsonFormatter``
        (same fields, order and formats); tests/test_access_writer.py checks it against them.
Rule 2. It is used only while the access logger writes through the handler ``logs.configure``
        installed (no handler, filter or level of another's): configure ``logging`` otherwise,
        and access lines go through ``logging`` as before. The level is always ``logging``'s.
Rule 3. No line is lost or reordered at a clean end: whatever else the handler writes (a
        warning, the shutdown lines) flushes the buffer first, and so does the process's exit
        (``atexit``) and the end of a drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import IO, TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    from api_router.core.usage import Usage

FLUSH_SECS: Final = 0.1
MAX_LINES: Final = 256
INFO: Final = logging.INFO
access: Final = logging.getLogger("api_router.access")
_writer: AccessWriter | None = None  # install(): the writer for logs.configure's handler


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


def access_line(forwarder: Logged, outcome: str) -> None:
    """A forwarded exchange's line. As text through our writer (the default), it is formatted
    from the values at once; else they become the fields dict that the JSON line and ``logging``
    take (the same names, order and values: tests/test_access_writer.py). Measured: the dict and
    its generic formatting were ~30k of the 48k instructions the compiled line cost."""
    if not access.isEnabledFor(INFO):
        return
    ttfb = forwarder.ttfb
    usage = forwarder.usage
    cost = forwarder.cost_usd
    state = forwarder.state
    request_id = forwarder.request_id.decode()
    route = forwarder.route.path
    status = forwarder.status or 499
    latency = _hundredths((time.perf_counter() - forwarder.started_at) * 1000)  # of a ms
    upstream = _hundredths(ttfb * 1000) if ttfb is not None else None
    # The body the client got: the upstream's bytes and the router's own (heartbeats, the SSE
    # error event, an error response), as nginx's $body_bytes_sent; no head, no framing.
    body_bytes = state.bytes_forwarded + forwarder.own_bytes
    client, model, backend = forwarder.client_name, forwarder.model, forwarder.backend_name
    input_tokens = usage.input if usage is not None else None
    output_tokens = usage.output if usage is not None else None
    cost_usd = round(cost, 8) if cost is not None else None
    estimated = usage is not None and usage.estimated
    writer = _writer
    if writer is not None and writer.text and writer.usable(access):
        writer.write_text(
            f"request_id={request_id} route={route} status={status} latency_ms={_two_places(latency)} "
            f"upstream_latency_ms={'None' if upstream is None else _two_places(upstream)} "
            f"bytes={body_bytes} outcome={outcome} "
            f"stream={state.sse} client={client} model={model} backend={backend} "
            f"input_tokens={input_tokens} output_tokens={output_tokens} cost_usd={cost_usd}"
            + (" usage_estimated=True" if estimated else "")
        )
        return
    fields: dict[str, Any] = {
        "request_id": request_id,
        "route": route,
        "status": status,
        "latency_ms": latency / 100,
        "upstream_latency_ms": None if upstream is None else upstream / 100,
        "bytes": body_bytes,
        "outcome": outcome,
        "stream": state.sse,
        "client": client,
        "model": model,
        "backend": backend,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": cost_usd,
    }
    if estimated:
        fields["usage_estimated"] = True
    _write(fields)


def local_access_line(
    request_id: bytes,
    route: str,
    status: int,
    started_at: float | None,
    body_bytes: int,
    outcome: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """A response the router wrote itself (a refusal, /health, a cache hit): the same fields;
    ``extra`` adds some (a WebSocket tunnel's client, backend and bytes sent upstream)."""
    if not access.isEnabledFor(INFO):
        return
    latency = 0.0 if started_at is None else time.perf_counter() - started_at
    fields: dict[str, Any] = {
        "request_id": request_id.decode(),
        "route": route,
        "status": status,
        "latency_ms": _hundredths(latency * 1000) / 100,
        "upstream_latency_ms": None,
        "bytes": body_bytes,
        "outcome": outcome,
        "stream": False,
    }
    if extra:
        fields.update(extra)
    _write(fields)


def _write(fields: dict[str, Any]) -> None:
    writer = _writer
    if writer is not None and writer.usable(access):
        writer.write(fields)
    else:  # logging configured some other way (rule 2)
        access.info("request", extra={"fields": fields})


def install(writer: AccessWriter | None) -> None:
    """The writer for the handler ``logs.configure`` installed (None: every line through ``logging``)."""
    global _writer
    flush()
    _writer = writer


def installed() -> AccessWriter | None:
    return _writer


def flush() -> None:
    """Write out buffered access lines now (another line is written, a drain ends, the process exits)."""
    if _writer is not None:
        _writer.flush()


class AccessWriter:
    __slots__ = ("_lines", "_second", "_stamp", "_timer", "fmt", "handler", "supervisor_pid", "text")

    def __init__(self, handler: logging.StreamHandler[IO[str]], fmt: str, supervisor_pid: int | None) -> None:
        self.handler = handler
        self.fmt = fmt
        self.text = fmt != "json"
        self.supervisor_pid = supervisor_pid
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def usable(self, logger: logging.Logger) -> bool:
        """Rule 2: ``logger`` (the access logger) writes through our handler and nothing else."""
        parent = logger.parent
        return (
            not logger.handlers
            and not logger.filters
            and logger.propagate
            and parent is not None
            and parent.handlers == [self.handler]
            and not parent.filters
            and not self.handler.filters
            and self.handler.level <= logging.INFO
        )

    def write(self, fields: dict[str, Any]) -> None:
        msecs = self._clock()
        if self.text:
            self._add(self._text(" ".join([f"{key}={value}" for key, value in fields.items()]), msecs))
        else:
            self._add(self._json(fields, msecs))

    def write_text(self, parts: str) -> None:
        """A text line whose fields are formatted already (``key=value`` joined by spaces)."""
        self._add(self._text(parts, self._clock()))

    def _clock(self) -> int:
        """The milliseconds of now; the timestamp text is made again once a second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            if self.text:
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            else:
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return int((now - second) * 1000)

    def _add(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= MAX_LINES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a test, the CLI): write now
                self.flush()
                return
            self._timer = loop.call_later(FLUSH_SECS, self.flush)

    def _text(self, parts: str, msecs: int) -> str:
        # logging.Formatter's default asctime is "%Y-%m-%d %H:%M:%S,mmm" in local time
        pid = self.supervisor_pid
        tag = "" if pid is None else f" [{'supervisor' if _pid() == pid else 'worker'} {_pid()}]"
        return f"{self._stamp},{_three_digits(msecs)} INFO api_router.access{tag} request {parts}\n"

    def _json(self, fields: dict[str, Any], msecs: int) -> str:
        entry: dict[str, Any] = {
            "ts": f"{self._stamp}.{_three_digits(msecs)}Z",
            "level": "info",
            "logger": "api_router.access",
            "message": "request",
        }
        pid = self.supervisor_pid
        if pid is not None:
            entry["process"] = "supervisor" if _pid() == pid else "worker"
            entry["pid"] = _pid()
        entry.update(fields)
        return json.dumps(entry, separators=(",", ":")) + "\n"

    def flush(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        stream = self.handler.stream
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):  # stderr closed: as logging does, do not crash the router
            pass


def _three_digits(msecs: int) -> str:
    """``f"{msecs:03d}"`` for 0-999. A format spec makes mypyc build the whole f-string with
    ``str.format``, one generic call per piece (~6.7k instructions a line); this is two ops."""
    return str(1000 + msecs)[1:]


def _hundredths(value: float) -> int:
    """``value`` (>= 0) in hundredths, rounded: the line's milliseconds have two places."""
    return int(max(value, 0.0) * 100.0 + 0.5)


def _two_places(hundredths: int) -> str:
    """``str(hundredths / 100)``, from integers: a float's repr cost ~2.5k instructions, two a
    line (bench.instructions --rps). The same text: ``hundredths / 100`` is the float nearest
    that two-place decimal, and below 2**53 no shorter string than the decimal's digits (a
    trailing zero dropped) reads back as it (tests/test_access_writer.py checks against ``str``)."""
    whole, part = divmod(hundredths, 100)
    if part % 10 == 0:
        return f"{whole}.{part // 10}"
    return f"{whole}.{str(100 + part)[1:]}"


def _pid() -> int:
    return os.getpid()  # not cached: a worker forked after configure has its own
