"""``--workers N``: N forked serving processes sharing one port (SO_REUSEPORT), restarted if they die.

Metrics: prometheus_client's multiprocess mode. ``PROMETHEUS_MULTIPROC_DIR`` must be set before
prometheus_client is imported, so the CLI sets it (``prepare_metrics_dir``) before it imports the
server; each worker's ``/metrics`` then reports the totals of all workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Mapping
from types import FrameType
from typing import Any, Protocol

import uvloop

from api_router import logs
from api_router.config import Config
from api_router.startup import (
    EXIT_STARTUP,
    Listening,
    StartupError,
    announce,
    check_upstream_ca,
    describe_upstream,
    reserve,
    server_tls,
)


class Serve(Protocol):
    """``server.serve``, given by the caller (cli): the supervisor runs it in each worker and
    imports no server code itself, so server → supervisor is not a circle."""

    def __call__(
        self,
        config: Config,
        *,
        mock_reason: str | None,
        on_ready: Callable[[Listening], None],
        reload: Callable[[], Config] | None = None,
        watch_path: str | None = None,
        pinned: Mapping[str, Any] | None = None,
        reuse_port: bool = False,
        mock_url: str | None = None,
    ) -> Coroutine[Any, Any, int]: ...


METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_RESTART_BACKOFF_SECS = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PIPE_MESSAGE_MAX = 4000  # under PIPE_BUF (4096): a write that size is never interleaved with another


def prepare_metrics_dir() -> str:
    path = tempfile.mkdtemp(prefix="api-router-metrics-")
    os.environ[METRICS_DIR_ENV] = path
    return path


def run(
    config: Config,
    *,
    serve: Serve,
    mock_reason: str | None,
    workers: int,
    reload: Callable[[], Config] | None,
    watch_path: str | None,
) -> int:
    """Start ``workers`` and supervise them; StartupError (nothing left running) if they cannot start."""
    metrics_dir = os.environ.get(METRICS_DIR_ENV) or prepare_metrics_dir()
    mock: subprocess.Popen[str] | None = None
    reservation: socket.socket | None = None
    try:
        # What can fail is tried before anything is started, so a failure leaves nothing behind:
        # the port (port 0 → pick one, so every worker binds the same one), then the certificates.
        reservation = reserve(config.host, config.port)
        pinned: dict[str, object] = {"port": reservation.getsockname()[1]}
        server_tls(config)
        check_upstream_ca(config)
        mock_url = None
        if mock_reason is not None:
            mock, mock_url = _start_mock_process()
            pinned["base_url"] = mock_url
        config = config.with_overrides(pinned)
        # A worker must not hold the mock's stdin open: the mock stops when the supervisor's end closes.
        not_for_workers = [reservation.close, *([mock.stdin.close] if mock and mock.stdin else [])]
        return _supervise(
            config, serve, workers, not_for_workers, mock_reason, mock_url, reload, watch_path, pinned
        )
    finally:
        if reservation is not None:
            reservation.close()
        if mock is not None:
            mock.terminate()
            try:
                mock.wait(timeout=5)
            except subprocess.TimeoutExpired:
                mock.kill()
                mock.wait()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(
    config: Config,
    serve: Serve,
    workers: int,
    not_for_workers: list[Callable[[], None]],
    mock_reason: str | None,
    mock_url: str | None,
    reload: Callable[[], Config] | None,
    watch_path: str | None,
    pinned: dict[str, object],
) -> int:
    def start_worker(ready_fd: int | None) -> int:
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            _stop_with(supervisor)
            for close in not_for_workers:
                close()
            if ready_fd is not None:
                os.close(read_end)  # only the supervisor reads; later workers never had it open
            code = 1
            try:
                code = uvloop.run(
                    serve(
                        config,
                        mock_reason=mock_reason,
                        mock_url=mock_url,
                        on_ready=lambda _: _report(ready_fd, b"ready"),
                        reload=reload,
                        watch_path=watch_path,
                        pinned=pinned,
                        reuse_port=True,
                    )
                )
            except StartupError as exc:  # the supervisor prints it, once for all workers
                _report(ready_fd, b"error " + str(exc).encode(), fallback=str(exc))
                code = EXIT_STARTUP
            finally:
                os._exit(code)
        return pid

    supervisor = os.getpid()
    read_end, write_end = os.pipe()
    children = {start_worker(write_end) for _ in range(workers)}
    os.close(write_end)  # now the pipe ends (EOF) when every worker has reported or died
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
    failure = _await_workers(read_end, workers)
    if failure is not None or stopping:
        forward(signal.SIGTERM, None)  # the workers that did start stop too: all or nothing
        while children:
            try:
                pid, _ = os.wait()
            except ChildProcessError:
                break
            children.discard(pid)
            _mark_dead(pid)
        if failure is not None and not stopping:
            raise StartupError(failure)
        return 0
    scheme = "https" if config.tls is not None else "http"
    upstream = describe_upstream(config, mock_url, mock_reason)
    pids = ", ".join(str(pid) for pid in sorted(children))
    announce(Listening(scheme, config.host, config.port, upstream), f"{workers} workers: pids {pids}")
    exit_code = 0
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
        children.add(start_worker(None))
    return exit_code


def _stop_with(supervisor: int) -> None:
    """A worker gets SIGTERM (and drains) when the supervisor dies, even by SIGKILL, when no
    ``finally`` of the supervisor runs: Linux's PR_SET_PDEATHSIG; elsewhere, nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux
        return
    if os.getppid() != supervisor:  # it died before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def _report(fd: int | None, message: bytes, fallback: str | None = None) -> None:
    """A worker tells the supervisor it is ready (or why it cannot be), in one write (atomic in a pipe)."""
    if fd is None:  # a worker started after start-up: nobody waits on it
        if fallback is not None:
            print(fallback, file=sys.stderr, flush=True)
        return
    os.write(fd, message[:PIPE_MESSAGE_MAX].replace(b"\n", b" ") + b"\n")
    os.close(fd)


def _await_workers(read_end: int, workers: int) -> str | None:
    """None once every worker is ready; else the first failure's line (a worker that died silently
    has printed its own traceback)."""
    ready = 0
    with os.fdopen(read_end, "rb") as pipe:
        for line in pipe:
            if line.startswith(b"error "):
                return line[len(b"error ") :].decode(errors="replace").rstrip("\n")
            ready += 1
            if ready == workers:
                return None
    return "api-router: a worker exited before it was ready"


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(pid)


def _start_mock_process() -> tuple[subprocess.Popen[str], str]:
    """The mock in its own process, shared by the workers; it exits when its stdin closes, which
    happens when the supervisor dies however it dies (even SIGKILL: no finally runs then)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "api_router.mock", "--port", "0", "--exit-on-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        proc.wait()
        raise StartupError("api-router: the built-in mock upstream did not start")
    return proc, line.split()[1]
