"""access_log.py writes the lines logs.TextFormatter / JsonFormatter would, buffered (rule 1-3)."""

from __future__ import annotations

import asyncio
import io
import logging
import os
from typing import Any

import pytest

from api_router import access_log, logs
from api_router.access_log import AccessWriter

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
        assert logs.writer is not None and logs.writer.usable(logs.access)

        async def main() -> None:
            logs.local_access_line(b"r1", "/health", 200, None, 10, "answered")
            assert stream.getvalue() == ""
            logs.log.warning("something else")
            lines = stream.getvalue().splitlines()
            assert "request_id=r1" in lines[0] and "something else" in lines[1]  # order kept

        asyncio.run(main())
        extra = logging.StreamHandler(io.StringIO())
        logs.access.addHandler(extra)  # configured another way: logging writes the line
        assert not logs.writer.usable(logs.access)
        logs.local_access_line(b"r2", "/health", 200, None, 10, "answered")
        assert extra.stream.getvalue() == "request\n"  # type: ignore[attr-defined]
        assert "request_id=r2" in stream.getvalue().splitlines()[-1]  # and on, through logging
        logs.access.removeHandler(extra)
    finally:
        logs.flush()
        logging.getLogger("api_router").handlers[:] = []
        logs.writer = None
