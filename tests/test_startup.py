"""Start-up failures, as a user meets them: `api-router serve` run as a real process.

Every failure to start prints one line naming the problem (no traceback) and exits 2, and leaves
no process behind: the mock upstream that ``--workers`` starts in its own process included
(issue 17, defect 5: it was started before the port was bound and outlived the supervisor).
Processes are found by a tag in their environment, which children inherit, so an orphan shows
up even after it has been re-parented.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.router_process import RouterProcess
from tests.test_mock_upstream import wait_for

_TAG = "API_ROUTER_STARTUP_TEST_TAG"


def _tagged(tag: str) -> list[int]:
    """Pids of live processes whose environment carries ``tag``."""
    needle = f"{_TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``serve`` to its end; assert that nothing it started is still alive."""
    tag = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith(("API_ROUTER_", "DEFAULT_API_KEY"))}
    env[_TAG] = tag
    proc = subprocess.Popen(
        [sys.executable, "-m", "api_router", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        proc.wait(timeout=30)  # not communicate(): an orphan holding the pipes would block it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    survivors = _tagged(tag)
    for pid in survivors:  # clean up before failing, so one failure does not leak into the next test
        os.kill(pid, 9)
    assert survivors == [], f"processes left behind by serve: {survivors}"
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


WORKERS = pytest.mark.parametrize("workers", [(), ("--workers", "2")], ids=["one-process", "workers"])


@WORKERS
def test_port_in_use(busy_port: int, workers: tuple[str, ...]) -> None:
    line = one_line(serve("--host", "127.0.0.1", "--port", str(busy_port), *workers))
    assert line == f"api-router: cannot listen on 127.0.0.1:{busy_port}: address already in use"


@WORKERS
def test_port_in_use_with_a_configured_upstream(busy_port: int, workers: tuple[str, ...]) -> None:
    args = ("--provider", "openai", "--host", "127.0.0.1", "--port", str(busy_port), *workers)
    line = one_line(serve(*args))
    assert line == f"api-router: cannot listen on 127.0.0.1:{busy_port}: address already in use"


@WORKERS
def test_unknown_host(workers: tuple[str, ...]) -> None:
    line = one_line(serve("--host", "no-such-host.invalid", "--port", "0", *workers))
    assert line.startswith("api-router: cannot listen on no-such-host.invalid:0: unknown host")


@WORKERS
def test_address_not_on_this_machine(workers: tuple[str, ...]) -> None:
    # TEST-NET-1 (RFC 5737): never assigned to a local interface.
    line = one_line(serve("--host", "192.0.2.1", "--port", "0", *workers))
    assert line == "api-router: cannot listen on 192.0.2.1:0: the address is not on this machine"


@WORKERS
def test_unreadable_and_invalid_config(tmp_path: Path, workers: tuple[str, ...]) -> None:
    line = one_line(serve("--config", str(tmp_path), *workers))
    assert line == f"{tmp_path}: is a directory, not a config file"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"baseUrl": "ftp://x"}))
    assert one_line(serve("--config", str(bad), *workers)).startswith(f"{bad}: baseUrl: ")
    broken = tmp_path / "broken.json"
    broken.write_bytes(b"\xff\xfe{")
    assert one_line(serve("--config", str(broken), *workers)).startswith(f"{broken}: not UTF-8 text")


@WORKERS
def test_unreadable_tls_certificate(tmp_path: Path, workers: tuple[str, ...]) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    path = tmp_path / "tls.json"
    config = {"baseUrl": "http://127.0.0.1:0", "tls": {"certFile": str(cert), "keyFile": str(key)}}
    path.write_text(json.dumps(config))
    line = one_line(serve("--config", str(path), "--host", "127.0.0.1", "--port", "0", *workers))
    assert line.startswith(f"api-router: cannot use the TLS certificate {cert} / key {key}: ")


def test_nothing_outlives_a_killed_supervisor() -> None:
    """SIGKILL runs no cleanup: workers and the mock must notice the supervisor is gone themselves."""
    tag = uuid.uuid4().hex
    router = RouterProcess(args=("--workers", "2"), env={_TAG: tag})
    try:
        assert len(_tagged(tag)) == 4  # the supervisor, two workers, the mock upstream
        os.kill(router.pid, signal.SIGKILL)
        wait_for(lambda: not _tagged(tag), timeout=15, what="the workers and the mock to exit")
    finally:
        for pid in _tagged(tag):  # first: a survivor holds the router's pipes, and close() reads them to EOF
            os.kill(pid, signal.SIGKILL)
        router.close()


@WORKERS
def test_upstream_ca_file_that_is_not_a_certificate(tmp_path: Path, workers: tuple[str, ...]) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    path = tmp_path / "ca.json"
    path.write_text(json.dumps({"baseUrl": "https://127.0.0.1:9", "upstreamTls": {"caFile": str(ca)}}))
    line = one_line(serve("--config", str(path), "--host", "127.0.0.1", "--port", "0", *workers))
    assert line.startswith(f"api-router: cannot use upstreamTls.caFile {ca}: ")


def test_worker_reports_through_the_ready_pipe() -> None:
    """The supervisor's side of start-up, in one process: ready lines, the first error, EOF."""
    from api_router.supervisor import _await_workers, _report  # noqa: PLC0415 - the pipe protocol

    def conversation(*reports: bytes, workers: int = 2) -> str | None:
        read_end, write_end = os.pipe()
        for message in reports:
            _report(os.dup(write_end), message)  # each worker holds its own copy of the write end
        os.close(write_end)
        return _await_workers(read_end, workers)

    assert conversation(b"ready", b"ready") is None
    assert conversation(b"ready", b"error api-router: cannot listen on h:1: x\ny") == (
        "api-router: cannot listen on h:1: x y"  # one line, whatever the message held
    )
    assert conversation(b"ready") == "api-router: a worker exited before it was ready"
