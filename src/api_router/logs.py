"""Logging set-up: the ``api_router`` loggers, as text or JSON lines on stderr. The access line
itself (one per request) is made and written by access_log.py. Headers are never logged, so no
key is."""

from __future__ import annotations

import atexit
import json
import logging
import sys
import time
from typing import IO, Any

from api_router import access_log
from api_router.access_log import AccessWriter

log = logging.getLogger("api_router")


class _Handler(logging.StreamHandler[IO[str]]):
    """stderr, where buffered access lines go out before any other line (access_log.py, rule 3)."""

    def emit(self, record: logging.LogRecord) -> None:
        access_log.flush()
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
    records carry the pid of the process that made them, so forked workers need no new set-up.
    The previous writer's buffered lines go out when the new one is installed."""
    handler = _Handler(sys.stderr)
    handler.setFormatter(JsonFormatter(supervisor_pid) if fmt == "json" else TextFormatter(supervisor_pid))
    root = logging.getLogger("api_router")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    access_log.install(AccessWriter(handler, fmt, supervisor_pid))


flush = access_log.flush  # the buffered access lines, written now (the end of a drain)
atexit.register(flush)  # and at the process's exit
