"""access_log.py writes the lines logs.TextFormatter / JsonFormatter would, buffered (rule 1-3)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api_router import access_log, logs
from api_router.access_log import AccessWriter
from api_router.core.usage import Usage

FIELDS: dict[str, Any] = {
    "request_id": "abc123",
    "route": "/v1/chat/completions",
    "status": 200,
    "latency_ms": 12.34,
    "upstream_latency_ms": None,
    "bytes": 1024,
    "outcome": "completed",
    "stream": True,
    "client": "team-ä",
    "model": "gpt-4o",
    "cost_usd": 1e-05,
}
NOW = 1_764_700_000.042  # a fixed instant, with milliseconds


def reference(fmt: str, supervisor_pid: int | None) -> str:
    formatter = logs.JsonFormatter(supervisor_pid) if fmt == "json" else logs.TextFormatter(supervisor_pid)
    record = logging.LogRecord("api_router.access", logging.INFO, __file__, 1, "request", None, None)
    record.created, record.msecs = NOW, (NOW - int(NOW)) * 1000
    record.fields = FIELDS
    return formatter.format(record) + "\n"


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("supervisor_pid", [None, os.getpid(), os.getpid() + 1])
def test_the_lines_are_the_formatters_lines(
    monkeypatch: pytest.MonkeyPatch, fmt: str, supervisor_pid: int | None
) -> None:
    monkeypatch.setattr(access_log.time, "time", lambda: NOW)
    stream = io.StringIO()
    writer = AccessWriter(logging.StreamHandler(stream), fmt, supervisor_pid)
    writer.write(dict(FIELDS))  # no running loop: written at once
    assert stream.getvalue() == reference(fmt, supervisor_pid)


def test_lines_are_buffered_until_the_timer_or_a_full_buffer() -> None:
    async def main() -> None:
        stream = io.StringIO()
        writer = AccessWriter(logging.StreamHandler(stream), "text", None)
        writer.write(dict(FIELDS))
        assert stream.getvalue() == ""  # buffered
        for _ in range(access_log.MAX_LINES - 1):
            writer.write(dict(FIELDS))
        assert stream.getvalue().count("\n") == access_log.MAX_LINES  # a full buffer goes at once
        writer.write(dict(FIELDS))
        await asyncio.sleep(access_log.FLUSH_SECS * 3)  # the timer under test
        assert stream.getvalue().count("\n") == access_log.MAX_LINES + 1

    asyncio.run(main())


def test_another_line_flushes_the_buffer_first_and_logging_config_is_respected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    logs.configure("info", "text")
    try:
        writer = access_log.installed()
        assert writer is not None and writer.usable(access_log.access)

        async def main() -> None:
            access_log.local_access_line(b"r1", "/health", 200, None, 10, "answered")
            assert stream.getvalue() == ""
            logs.log.warning("something else")
            lines = stream.getvalue().splitlines()
            assert "request_id=r1" in lines[0] and "something else" in lines[1]  # order kept

        asyncio.run(main())
        extra = logging.StreamHandler(io.StringIO())
        access_log.access.addHandler(extra)  # configured another way: logging writes the line
        assert not writer.usable(access_log.access)
        access_log.local_access_line(b"r2", "/health", 200, None, 10, "answered")
        assert extra.stream.getvalue() == "request\n"  # type: ignore[attr-defined]
        assert "request_id=r2" in stream.getvalue().splitlines()[-1]  # and on, through logging
        access_log.access.removeHandler(extra)
    finally:
        logs.flush()
        logging.getLogger("api_router").handlers[:] = []
        access_log.install(None)


class _Exchange:
    """What access_line reads off a Forwarder (access_log.Logged)."""

    def __init__(self, **overrides: Any) -> None:
        self.request_id = b"req-1"
        self.route = type("Route", (), {"path": "/v1/chat/completions"})()
        self.status = 200
        self.started_at = 100.0
        self.ttfb: float | None = 0.0123
        self.state = type("State", (), {"bytes_forwarded": 900, "sse": True})()
        self.own_bytes = 12
        self.client_name = "team-ä"
        self.model: str | None = "gpt-4o"
        self.backend_name: str | None = "primary"
        self.usage: Usage | None = Usage(10, 5, 2, 0, False)
        self.cost_usd: float | None = 0.000123456789
        self.__dict__.update(overrides)


@pytest.mark.parametrize(
    "exchange",
    [
        _Exchange(),
        _Exchange(ttfb=None, usage=None, cost_usd=None, model=None, backend_name=None, status=0),
        _Exchange(usage=Usage(10, 7, 0, 0, True)),
    ],
)
def test_the_text_fast_path_writes_what_logging_writes_from_the_fields(
    monkeypatch: pytest.MonkeyPatch, exchange: _Exchange
) -> None:
    """access_line formats a text line from its values at once (no fields dict); the line must
    be the one the fields dict gives through logging's TextFormatter (rule 1)."""
    stream = io.StringIO()
    monkeypatch.setattr(logs.sys, "stderr", stream)
    monkeypatch.setattr(access_log.time, "perf_counter", lambda: 100.25)
    logs.configure("info", "text")
    try:
        access_log.access_line(exchange, "completed")  # through the writer
        logs.flush()
        access_log.access.addHandler(logging.NullHandler())  # now through logging and its fields
        access_log.access_line(exchange, "completed")
        access_log.access.handlers.clear()
        fast, through_logging = (line.split(" INFO ", 1)[1] for line in stream.getvalue().splitlines())
        assert fast == through_logging
        assert "latency_ms=250.0 " in fast and "request_id=req-1 " in fast
    finally:
        logs.flush()
        logging.getLogger("api_router").handlers[:] = []
        access_log.install(None)


@given(st.integers(0, 10**15))
def test_two_places_is_str_of_hundredths_over_100(hundredths: int) -> None:
    assert access_log._two_places(hundredths) == str(hundredths / 100)
