"""Run the simulated upstream (``python -m api_router.mock``) as a subprocess for a test."""

from __future__ import annotations

import json
import os
import selectors
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from types import TracebackType
from typing import Any

READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class UpstreamProcess:
    """Context manager: starts the mock on a free loopback port and waits for its READY line.

    ``url`` / ``port`` / ``pid`` describe the running process; ``stats()``, ``requests()`` and
    ``reset()`` call its ``/_stats``, ``/_requests`` and ``/_reset`` endpoints.
    """

    def __init__(
        self,
        *extra_args: str,
        tokens_per_second: float = 50.0,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        self.args = [sys.executable, "-m", "api_router.mock", "--port", "0"]
        self.args += ["--tokens-per-second", str(tokens_per_second)]
        if certfile is not None:
            self.args += ["--certfile", certfile]
        if keyfile is not None:
            self.args += ["--keyfile", keyfile]
        self.args += list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = 0
        self.pid = 0
        # Loopback test server with a throwaway certificate: do not verify it for control calls,
        # and never route them through a proxy from the environment.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def __enter__(self) -> UpstreamProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        try:
            line = self._read_ready_line()
        except BaseException:
            self.close()
            raise
        self.url = line.split(" ", 1)[1]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _read_ready_line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + READY_TIMEOUT_S
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"mock upstream gave no READY line in {READY_TIMEOUT_S} s: {buf!r}")
                if not sel.select(left):
                    continue
                data = os.read(fd, 4096)
                if not data:
                    code = self.proc.wait(timeout=STOP_TIMEOUT_S)
                    raise RuntimeError(f"mock upstream exited ({code}) before READY: {buf!r}")
                buf += data
        line = buf.split(b"\n", 1)[0].decode().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"unexpected first line from mock upstream: {line!r}")
        return line

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if proc.stdout is not None:
            proc.stdout.close()

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with self._opener.open(req, timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self, streams: bool = True) -> dict[str, Any]:
        """``GET /_stats``: connection counters and, unless ``streams=False``, the per-stream list."""
        result: dict[str, Any] = self._call("GET", "/_stats" if streams else "/_stats?streams=0")
        return result

    def requests(self) -> list[dict[str, Any]]:
        """``GET /_requests``: the last 200 requests (method, path, headers, model, body_bytes, conn_id)."""
        result: list[dict[str, Any]] = self._call("GET", "/_requests")
        return result

    def websocket_ended(self, request_id: str, within_secs: float = 10.0) -> dict[str, Any] | None:
        """``GET /_websocket``: once the echo session of ``request_id`` has ended, its record
        (headers, messages, bytes_in, end_reason); None if there is none or it is still open
        after ``within_secs`` (the mock waits, so this awaits the end rather than polling)."""
        query = urllib.parse.urlencode({"request_id": request_id, "timeout": within_secs})
        req = urllib.request.Request(f"{self.url}/_websocket?{query}")
        try:
            with self._opener.open(req, timeout=within_secs + 10) as resp:
                record: dict[str, Any] = json.loads(resp.read())
                return record
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def reset(self) -> None:
        """``POST /_reset``: forget stats and recorded requests."""
        self._call("POST", "/_reset")
