"""A simulated LLM upstream: a real HTTP/1.1 server (asyncio Protocol + httptools) on loopback.

Used by ``api-router serve`` with no config, the tests and the bench. It speaks OpenAI chat,
completions, responses, embeddings, models, files and audio and Anthropic messages, streaming SSE
shaped per request (a ``"mock"`` object in the body, or ``MOCK{...}`` in the last message):
tokens, pacing, delays, stalls, mid-stream death, error statuses or raw events. It counts
backpressure and records when and why each stream ended (``/_stats``).

This module is the listening server (``start``, ``MockUpstream``) and the process (``run``,
``main``); one connection's HTTP/1.1 is ``connection.py``'s, what it answers ``handler.py``'s.

    python -m api_router.mock --port 0   # prints "READY http://127.0.0.1:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl as ssl_module
import sys
from typing import Any

from api_router.mock.connection import Connection
from api_router.mock.handler import MockConnection
from api_router.mock.shape import shapes_help
from api_router.mock.stats import MockStats, StreamRecord

__all__ = ["MockStats", "MockUpstream", "StreamRecord", "main", "run", "start"]


class MockUpstream:
    """A running simulated upstream. ``close()`` stops listening and drops open connections."""

    def __init__(self, tokens_per_second: float, scheme: str) -> None:
        self.tokens_per_second = tokens_per_second
        self.stats = MockStats()
        self.connections: set[Connection] = set()
        self.server: asyncio.Server | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.scheme = scheme

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.closed = True
                conn.transport.abort()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()


async def start(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tokens_per_second: float = 20.0,
    ssl: ssl_module.SSLContext | None = None,
) -> MockUpstream:
    """Bind and start serving; returns once listening (``.port`` is the bound port)."""
    mock = MockUpstream(tokens_per_second, "https" if ssl is not None else "http")
    loop = asyncio.get_running_loop()
    mock.server = await loop.create_server(
        lambda: MockConnection(mock.stats, mock.connections, mock.tokens_per_second),
        host,
        port,
        ssl=ssl,
        backlog=4096,
        reuse_address=True,
    )
    mock.host, mock.port = host, mock.server.sockets[0].getsockname()[1]
    return mock


def run(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tokens_per_second: float = 20.0,
    certfile: str | None = None,
    keyfile: str | None = None,
    exit_on_stdin_eof: bool = False,
) -> int:
    """Serve until SIGINT/SIGTERM (uvloop when importable); prints one ``READY <url>`` line.

    ``exit_on_stdin_eof``: also stop when stdin ends, i.e. when the process that started us with
    a pipe there is gone (the router's supervisor), so the mock never outlives it."""
    context = None
    if certfile is not None:
        context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certfile, keyfile)

    async def main() -> int:
        mock = await start(host, port, tokens_per_second=tokens_per_second, ssl=context)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if exit_on_stdin_eof:
            fd = sys.stdin.fileno()

            def stdin_readable() -> None:
                if not os.read(fd, 4096):  # EOF: the parent closed its end or died
                    loop.remove_reader(fd)
                    stop.set()

            loop.add_reader(fd, stdin_readable)
        print(f"READY {mock.url}", flush=True)
        try:
            await stop.wait()
        finally:
            mock.close()
        return 0

    try:
        import uvloop  # noqa: PLC0415 - optional

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep working without it
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m api_router.mock",
        description="simulated LLM upstream",
        epilog=shapes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tokens-per-second", type=float, default=20.0)
    ap.add_argument("--certfile")
    ap.add_argument("--keyfile")
    ap.add_argument("--exit-on-stdin-eof", action="store_true", help="also stop when stdin ends")
    a = ap.parse_args(argv)
    return run(
        a.host,
        a.port,
        tokens_per_second=a.tokens_per_second,
        certfile=a.certfile,
        keyfile=a.keyfile,
        exit_on_stdin_eof=a.exit_on_stdin_eof,
    )
