"""Lifecycle of one serving process: bind, serve, reload on SIGHUP or file change, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl
import sys
from collections.abc import Callable, Mapping
from typing import Any

import uvloop

from api_router import __version__, logs
from api_router.app import App
from api_router.config import Config
from api_router.net.downstream import DownstreamProtocol

WATCH_INTERVAL_SECS = 1.0


GC_YOUNG_THRESHOLD = 10_000  # CPython's default is 700


def tune_gc() -> None:
    """No collection walks what start-up built, and young collections are rarer.

    A request frees nearly everything it allocates by reference counting (the router breaks
    its own cycles), yet the collector still runs now and then, and each run lands on one
    request: ~0.1 ms for a young one, ~2 ms for a middle one, ~12 ms for a full one over the
    ~36k objects of start-up (config, modules), measured here at the default thresholds.
    Frozen, those objects are never walked again.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve(
    config: Config,
    *,
    start_mock: bool,
    reload: Callable[[], Config] | None = None,
    watch_path: str | None = None,
    pinned: Mapping[str, Any] | None = None,
    reuse_port: bool = False,
) -> int:
    loop = asyncio.get_running_loop()
    pinned = dict(pinned or {})
    mock = None
    if start_mock:
        from api_router import mock_upstream  # noqa: PLC0415 - only when asked for

        mock = await mock_upstream.start("127.0.0.1", 0)
        pinned["base_url"] = f"http://127.0.0.1:{mock.port}"
    if pinned:
        config = config.with_overrides(pinned)
    app = App(config, loop, reload=reload, pinned=pinned)
    tls = None
    if config.tls is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(config.tls.cert_file, config.tls.key_file)
    server = await loop.create_server(
        lambda: DownstreamProtocol(app),
        config.host,
        config.port,
        backlog=4096,
        reuse_address=True,
        reuse_port=reuse_port or None,
        ssl=tls,
    )
    port = server.sockets[0].getsockname()[1]
    tune_gc()
    if mock is not None:
        print(_mock_banner(config.host, port, mock.port), file=sys.stderr, flush=True)
    logs.log.info(
        "api-router %s listening on %s:%d, upstream %s",
        __version__,
        config.host,
        port,
        app.backends.describe(),
    )
    scheme = "https" if tls is not None else "http"
    print(f"api-router listening on {scheme}://{config.host}:{port}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload, "SIGHUP")
    watcher = _FileWatcher(loop, watch_path, lambda: app.reload("file changed")) if watch_path else None
    try:
        await stop.wait()
        grace = app.config.drain_timeout_secs  # the reloaded config's, if there was a reload
        logs.log.info("shutting down: no new connections; draining for up to %gs", grace)
        server.close()
        await app.drain(grace)
    finally:
        if watcher is not None:
            watcher.stop()
        server.close()
        for protocol in list(app.connections):
            protocol.abort()
        app.pool.close_all()
        if mock is not None:
            mock.close()
    return 0


class _FileWatcher:
    """Polls the config file's mtime; cheap, and works on every filesystem."""

    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, changed: Callable[[], object]) -> None:
        self._loop = loop
        self._path = path
        self._changed = changed
        self._mtime = self._stat()
        self._handle = loop.call_later(WATCH_INTERVAL_SECS, self._check)

    def _stat(self) -> float | None:
        try:
            return os.stat(self._path).st_mtime
        except OSError:
            return None

    def _check(self) -> None:
        mtime = self._stat()
        if mtime is not None and mtime != self._mtime:
            self._mtime = mtime
            self._changed()
        self._handle = self._loop.call_later(WATCH_INTERVAL_SECS, self._check)

    def stop(self) -> None:
        self._handle.cancel()


def run(
    config: Config,
    *,
    start_mock: bool,
    workers: int = 1,
    reload: Callable[[], Config] | None = None,
    watch_path: str | None = None,
) -> int:
    logs.configure(config.log_level, config.log_format)
    if workers > 1:
        from api_router import supervisor  # noqa: PLC0415

        return supervisor.run(
            config, start_mock=start_mock, workers=workers, reload=reload, watch_path=watch_path
        )
    return uvloop.run(serve(config, start_mock=start_mock, reload=reload, watch_path=watch_path))


def _mock_banner(host: str, port: int, mock_port: int) -> str:
    return (
        "\n  api-router is using its BUILT-IN MOCK UPSTREAM (no config given, or --provider mock):\n"
        f"  simulated LLM at http://127.0.0.1:{mock_port}; no network or API key needed.\n"
        "  Stream tokens through the router with:\n"
        f"    curl -N http://{host}:{port}/v1/chat/completions -H 'content-type: application/json' \\\n"
        '      -d \'{"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "hi"}]}\'\n'
        "  Point it at a real provider with --provider openai (and OPENAI_API_KEY) or --config FILE.\n"
    )
