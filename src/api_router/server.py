"""Lifecycle of one serving process: bind, serve, reload on SIGHUP or file change, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

from api_router import logs
from api_router.app import App
from api_router.config import Config
from api_router.net.downstream import DownstreamProtocol
from api_router.startup import (
    Listening,
    bind_error,
    check_upstream_ca,
    describe_upstream,
    server_tls,
)

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
    mock_reason: str | None,
    on_ready: Callable[[Listening], None],
    reload: Callable[[], Config] | None = None,
    watch_path: str | None = None,
    pinned: Mapping[str, Any] | None = None,
    reuse_port: bool = False,
    mock_url: str | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT. ``mock_reason``: start the built-in mock in this process (why);
    ``mock_url``: one already running (the supervisor's). Raises StartupError if it cannot start."""
    loop = asyncio.get_running_loop()
    pinned = dict(pinned or {})
    mock = None
    if mock_reason is not None and mock_url is None:
        from api_router.mock import server as mock_upstream  # noqa: PLC0415 - only when asked for

        mock = await mock_upstream.start("127.0.0.1", 0)
        mock_url = pinned["base_url"] = f"http://127.0.0.1:{mock.port}"
    try:
        if pinned:
            config = config.with_overrides(pinned)
        tls = server_tls(config)
        check_upstream_ca(config)
        app = App(config, loop, reload=reload, pinned=pinned)
        try:
            server = await loop.create_server(
                lambda: DownstreamProtocol(app),
                config.host,
                config.port,
                backlog=4096,
                reuse_address=True,
                reuse_port=reuse_port or None,
                ssl=tls,
            )
        except OSError as exc:
            app.runtime.retire(None)
            raise bind_error(exc, config.host, config.port) from None
    except BaseException:
        if mock is not None:
            mock.close()
        raise
    port = server.sockets[0].getsockname()[1]
    tune_gc()
    scheme = "https" if tls is not None else "http"
    stop = asyncio.Event()
    # Before the ready line: a SIGHUP sent as soon as the router says it listens found no
    # handler and its default action ended the process.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, app.reload, "SIGHUP")
    on_ready(Listening(scheme, config.host, port, describe_upstream(config, mock_url, mock_reason)))
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
