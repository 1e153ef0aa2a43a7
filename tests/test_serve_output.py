"""What `api-router serve` prints, read from a real router process (issue 14, "Config schema and CLI").

One "listening" line, on stdout, in all of the router's output; under ``--workers`` every log line
names the process (supervisor or worker, and its pid); the banner and the listening line say which
upstream is really used: the built-in mock (and why) or the configured one.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.router_process import RouterProcess
from tests.upstream_process import UpstreamProcess

_LISTENING = re.compile(
    r"^api-router listening on http://127\.0\.0\.1:(\d+) \(version [^,]+, (.+)\); upstream: (.+)$"
)
_CHAT = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tokens_per_second=1000) as mock:
        yield mock


def output_of(router: RouterProcess) -> tuple[list[str], str]:
    """Stop the router; (stdout lines, stderr) of its whole life."""
    router.close()
    return [line.rstrip("\n") for line in router.stdout_lines], router.logs()


def listening(stdout: list[str], stderr: str) -> re.Match[str]:
    everything = [*stdout, *stderr.splitlines()]
    said = [line for line in everything if "listening" in line]
    assert len(said) == 1, said
    match = _LISTENING.match(said[0])
    assert match is not None, said[0]
    return match


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_built_in_mock_one_process() -> None:
    router = RouterProcess(args=("--log-level", "info"))
    pid = router.pid
    assert httpx.post(router.url + "/v1/chat/completions", json=_CHAT, timeout=10).status_code == 200
    stdout, stderr = output_of(router)
    match = listening(stdout, stderr)
    assert int(match.group(1)) == router.port
    assert match.group(2) == f"pid {pid}"
    mock_url = re.fullmatch(r"the built-in mock at (http://127\.0\.0\.1:\d+)", match.group(3))
    assert mock_url is not None, match.group(3)
    assert "BUILT-IN MOCK UPSTREAM (no config given)" in stderr
    assert f"simulated LLM at {mock_url.group(1)};" in stderr
    assert "[worker" not in stderr  # one process: lines as before


def test_provider_mock_says_so() -> None:
    router = RouterProcess(args=("--provider", "mock"))
    _, stderr = output_of(router)
    assert "BUILT-IN MOCK UPSTREAM (--provider mock)" in stderr


def test_configured_upstream_no_banner(upstream: UpstreamProcess) -> None:
    router = RouterProcess({"baseUrl": upstream.url})
    assert httpx.post(router.url + "/v1/chat/completions", json=_CHAT, timeout=10).status_code == 200
    stdout, stderr = output_of(router)
    assert listening(stdout, stderr).group(3) == upstream.url
    assert "MOCK" not in stderr


def test_backends_are_named(upstream: UpstreamProcess) -> None:
    other = upstream.url.replace("127.0.0.1", "localhost")
    router = RouterProcess({"backends": [{"url": upstream.url}, {"url": other}]})
    stdout, stderr = output_of(router)
    assert listening(stdout, stderr).group(3) == f"backends {upstream.url}, {other}"


def test_workers_one_listening_line_and_every_log_line_names_its_process() -> None:
    router = RouterProcess(args=("--workers", "2", "--log-level", "info"))
    workers = _children(router.pid)
    for _ in range(6):  # a new connection each: the kernel spreads them over the workers
        with httpx.Client(timeout=10) as client:
            assert client.post(router.url + "/v1/chat/completions", json=_CHAT).status_code == 200
    supervisor = router.pid
    stdout, stderr = output_of(router)
    match = listening(stdout, stderr)
    pids = {int(p) for p in re.fullmatch(r"2 workers: pids (\d+), (\d+)", match.group(2)).groups()}  # type: ignore[union-attr]
    mock_pid = workers - pids  # the supervisor's children: the workers and the shared mock
    assert len(mock_pid) == 1, (workers, pids)
    assert "BUILT-IN MOCK UPSTREAM (no config given)" in stderr
    log_lines = [line for line in stderr.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert log_lines, stderr
    for line in log_lines:
        named = re.search(r" api_router(?:\.\w+)? \[(worker|supervisor) (\d+)\] ", line)
        assert named is not None, line
        role, pid = named.group(1), int(named.group(2))
        assert pid in pids if role == "worker" else pid == supervisor, line
    access = [line for line in log_lines if "api_router.access" in line]
    assert len(access) == 6, access


def test_workers_json_logs_name_the_process(upstream: UpstreamProcess) -> None:
    router = RouterProcess({"baseUrl": upstream.url}, args=("--workers", "2", "--log-format", "json"))
    stdout, stderr = output_of(router)
    assert listening(stdout, stderr).group(3) == upstream.url
    lines = [line for line in stderr.splitlines() if line.startswith("{")]
    assert lines, stderr
    assert all('"process":"worker"' in line and '"pid":' in line for line in lines), lines


def test_ipv6_address_in_brackets() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 on this machine")
    env = {k: v for k, v in os.environ.items() if not k.startswith("API_ROUTER_")}
    argv = [sys.executable, "-m", "api_router", "serve", "--host", "::1", "--port", "0"]
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # the only stdout line; EOF if the router exits first
            match = re.match(r"api-router listening on (http://\[::1\]:\d+) ", line)
            assert match is not None, line
            assert httpx.get(match.group(1) + "/health", timeout=5).status_code == 200  # a URL that works
        finally:
            proc.terminate()
            proc.wait(timeout=10)
