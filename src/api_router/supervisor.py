"""``--workers N``: N forked serving processes sharing one port (SO_REUSEPORT), restarted if they die.

Metrics: prometheus_client's multiprocess mode. ``PROMETHEUS_MULTIPROC_DIR`` must be set before
prometheus_client is imported, so the CLI sets it (``prepare_metrics_dir``) before it imports the
server; each worker's ``/metrics`` then reports the totals of all workers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType

import uvloop

from api_router import logs
from api_router.config import Config

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_RESTART_BACKOFF_SECS = 0.5


def prepare_metrics_dir() -> str:
    path = tempfile.mkdtemp(prefix="api-router-metrics-")
    os.environ[METRICS_DIR_ENV] = path
    return path


def run(
    config: Config,
    *,
    start_mock: bool,
    workers: int,
    reload: Callable[[], Config] | None,
    watch_path: str | None,
) -> int:
    from api_router.server import serve  # noqa: PLC0415 - server imports prometheus_client

    metrics_dir = os.environ.get(METRICS_DIR_ENV) or prepare_metrics_dir()
    pinned: dict[str, object] = {}
    mock = None
    if start_mock:
        mock = _start_mock_process()
        pinned["base_url"] = mock[1]
    # Reserve the port (port 0 → pick one) so every worker binds the same one.
    reservation = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reservation.bind((config.host, config.port))
    pinned["port"] = reservation.getsockname()[1]
    config = config.with_overrides(pinned)

    def start_worker() -> int:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            reservation.close()
            code = 1
            try:
                code = uvloop.run(
                    serve(
                        config,
                        start_mock=False,
                        reload=reload,
                        watch_path=watch_path,
                        pinned=pinned,
                        reuse_port=True,
                    )
                )
            finally:
                os._exit(code)
        return pid

    children = {start_worker() for _ in range(workers)}
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    logs.log.info("supervisor %d: %d workers on port %d", os.getpid(), workers, pinned["port"])
    exit_code = 0
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            if pid not in children:
                continue
            children.discard(pid)
            _mark_dead(pid)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                exit_code = exit_code or max(code, 0)
                continue
            logs.log.error("worker %d died (exit %d); starting a new one", pid, code)
            time.sleep(_RESTART_BACKOFF_SECS)  # a worker that dies at start must not spin the CPU
            children.add(start_worker())
    finally:
        reservation.close()
        if mock is not None:
            mock[0].terminate()
            mock[0].wait(timeout=5)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return exit_code


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(pid)


def _start_mock_process() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "api_router.mock_upstream", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError("the built-in mock upstream did not start")
    return proc, line.split()[1]
