"""The Containerfile, built and run for real: the openai SDK streams through the image, the process
is not root, and SIGTERM during a stream lets it finish before the container exits 0.

Slow (the build compiles with mypyc; ~2 min the first time, seconds from podman's layer cache),
still run by scripts/test. Images are built with ../shared/containers/podman-build where it exists
(no registry here: it makes the Debian base with debootstrap and installs podman and runc); skipped
only where podman is absent and cannot be installed.
"""

from __future__ import annotations

import queue
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPER = ROOT.parent / "shared" / "containers" / "podman-build"
TAG = "localhost/api-router:test"
RUNC = "/usr/sbin/runc"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
_READY = re.compile(r"api-router listening on http://127\.0\.0\.1:(\d+)")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _podman() -> list[str]:
    # Where cgroups are in hybrid mode (these machines) crun refuses to start; runc works.
    return ["podman", "--runtime", RUNC] if Path(RUNC).exists() else ["podman"]


@pytest.fixture(scope="module")
def image() -> str:
    if HELPER.exists():
        build = subprocess.run(
            [str(HELPER), str(ROOT), TAG], capture_output=True, text=True, timeout=840, check=False
        )
    elif shutil.which("podman"):
        # As the helper does: the registries may need this machine's CA bundle (ARG PIP_CERT).
        ca = ["-v", f"{HOST_CA}:/run/host-ca.crt:ro", "--build-arg", "PIP_CERT=/run/host-ca.crt"]
        limits = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
        argv = [*_podman(), "build", "--network", "host", *limits]
        argv += [*(ca if Path(HOST_CA).exists() else []), "-t", TAG, str(ROOT)]
        build = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=840,
            check=False,
        )
    else:
        pytest.skip("podman is not installed and there is no podman-build helper to install it")
    if build.returncode != 0 and shutil.which("podman") is None:
        pytest.skip(f"podman cannot be installed here: {build.stderr[-500:]}")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return TAG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Container:
    """``podman run`` in the foreground (its stdout is the router's), on the host's loopback."""

    def __init__(self, image: str) -> None:
        self.name = f"api-router-test-{uuid.uuid4().hex[:8]}"
        self.port = _free_port()
        argv = [
            *_podman(), "run", "--rm", "--name", self.name, "--network", "host",
            "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
            # Config from the environment, as in Kubernetes; the image's default command (`serve`).
            "-e", "API_ROUTER_HOST=127.0.0.1", "-e", f"API_ROUTER_PORT={self.port}",
            image,
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        try:
            while True:
                line = lines.get(timeout=60)
                if line is None:
                    raise RuntimeError("container exited before ready:\n" + "".join(self.stderr))
                match = _READY.search(line)
                if match:
                    assert int(match.group(1)) == self.port
                    break
        except BaseException:
            self.close()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _pump(stream: Any, into: queue.Queue[str | None] | list[str]) -> None:
        for line in stream:
            if isinstance(into, list):
                into.append(line)
            else:
                into.put(line)
        if not isinstance(into, list):
            into.put(None)

    def podman(self, *args: str) -> str:
        done = subprocess.run([*_podman(), *args], capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            subprocess.run([*_podman(), "kill", self.name], capture_output=True, timeout=60, check=False)
            self.proc.wait(timeout=60)
        for pump in self._pumps:
            pump.join(timeout=10)  # the pipes reach EOF once podman has exited
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def container(image: str) -> Iterator[Container]:
    running = Container(image)
    try:
        yield running
    finally:
        running.close()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_image_streams_as_non_root_and_drains_on_sigterm(container: Container) -> None:
    # The built-in mock upstream (no config mounted), through the SDK.
    stream = _client(container.url).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"mock": {"tokens": 5}},
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "".join(f"t{i:08d}" for i in range(5))

    # Not root: inside the container, and as the kernel sees the process from the host.
    assert container.podman("exec", container.name, "id", "-u") == "10001"
    host_pid = container.podman("inspect", "--format", "{{.State.Pid}}", container.name)
    status = Path(f"/proc/{host_pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert "0" not in uids, uids
    # The runtime stage has no compiler.
    assert container.podman("exec", container.name, "sh", "-c", "command -v gcc cc || echo none") == "none"

    # SIGTERM mid-stream: the stream runs to its end, then the container exits 0.
    tokens = 40
    long_stream = _client(container.url).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_body={"mock": {"tokens": tokens, "interval_ms": 50}},
    )
    chunks = iter(long_stream)
    received = [next(chunks), next(chunks)]  # the stream is under way
    container.podman("kill", "--signal", "TERM", container.name)
    received += list(chunks)
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert text == "".join(f"t{i:08d}" for i in range(tokens))
    assert received[-1].choices[0].finish_reason == "stop"
    assert container.proc.wait(timeout=60) == 0, "".join(container.stderr)
    logs = "".join(container.stderr)
    assert "shutting down: no new connections; draining" in logs
    assert "outcome=completed" in logs
