"""Start and stop what the benchmark measures: the mock upstream, the router (two configs),
nginx and LiteLLM. Each runs as a child process in its own session, on 127.0.0.1 only, with
its output in a temp directory; ``Fleet.close()`` (also run at exit) stops every one of them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NGINX_BIN = os.environ.get("BENCH_NGINX", "/usr/sbin/nginx")  # override to test without nginx
LITELLM_VENV = HERE / ".litellm-venv"
LITELLM_KEY = "sk-bench-master"
BENCH_MODEL = "bench-gpt"  # what clients ask for
MOCK_MODEL = "mock-large"  # what the router with features maps it to
READY_TIMEOUT_S = 30.0
LITELLM_READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0
NGINX_HINT = "nginx is not installed: apt-get install -y nginx-light (or nginx) to add it to the comparison"


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Target:
    """An HTTP endpoint the load generator drives; ``pid`` roots the process tree sampled."""

    name: str
    host: str
    port: int
    pid: int | None = None
    api_key: str = "sk-bench"


class Service:
    """A child process (own session: stopping it stops its whole tree)."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=workdir,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run while children start
        )
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"{self.name} exited ({code}) before {what}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no {what} after {timeout:.0f} s:\n{self.tail()}")
            time.sleep(0.02)

    def wait_for_line(self, pattern: str, timeout: float = READY_TIMEOUT_S) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def ready() -> bool:
            match = re.search(pattern, self.tail(1 << 16))
            if match:
                found.append(match)
            return bool(match)

        self.wait_for(ready, timeout, f"line /{pattern}/")
        return found[0]

    def wait_for_port(
        self, port: int, timeout: float = READY_TIMEOUT_S, http_path: str | None = None
    ) -> None:
        def ready() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
                    if http_path is None:
                        return True
                    s.sendall(f"GET {http_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
                    return s.recv(64).startswith(b"HTTP/1.1 200")
            except OSError:
                time.sleep(0.2)
                return False

        self.wait_for(ready, timeout, f"answer on port {port}")
        self.port = port

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group (nginx workers)
        self.log.close()


def router_config(
    upstream_port: int,
    features: bool,
    otlp_port: int | None = None,
    translated: bool = False,
    overrides: dict[str, object] | None = None,
) -> dict[str, object]:
    """The router's config: plain (warnings only), or every feature on (access log at info,
    model mapping; metrics are always collected), and with ``otlp_port`` traces to that sink
    too; ``translated``: the mock is an Anthropic-speaking backend, so every chat request and
    its stream are translated. All without the per-process stream caps; ``overrides``:
    top-level keys set last."""
    config: dict[str, object] = {
        "baseUrl": f"http://127.0.0.1:{upstream_port}",
        "streamConfig": {"bufferSize": 8192, "heartbeatIntervalSecs": 30},
        "logLevel": "warning",
        # the hardening caps (5000 streams, 10000 connections by default) would stop workload 4
        "limits": {"maxStreams": 100_000, "maxConnections": 100_000},
    }
    if features:
        config.update(logLevel="info", logFormat="text", modelMapping={BENCH_MODEL: MOCK_MODEL})
    if otlp_port is not None:
        config["telemetry"] = {"otlpEndpoint": f"http://127.0.0.1:{otlp_port}"}
    if translated:
        config["backends"] = [{"url": config.pop("baseUrl"), "api": "anthropic"}]
    config.update(overrides or {})
    return config


def nginx_conf(
    workdir: Path,
    port: int,
    upstream_port: int,
    nofile: int,
    access_log: bool = True,
    name: str = "nginx",
    workers: int = 1,
) -> str:
    log = f"{workdir}/{name}-access.log" if access_log else "off"
    return f"""
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {workdir}/{name}.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections {nofile + 8192}; }}  # more slots than fds: it needs some spare
http {{
    access_log {log};
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    upstream mock {{
        server 127.0.0.1:{upstream_port};
        keepalive 1024;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def litellm_config(upstream_port: int) -> str:
    return f"""model_list:
  - model_name: {BENCH_MODEL}
    litellm_params:
      model: openai/{MOCK_MODEL}
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-mock
general_settings:
  master_key: {LITELLM_KEY}
"""


def ensure_litellm() -> Path:
    """LiteLLM's proxy in its own venv (bench/.litellm-venv), installed on first use."""
    exe = LITELLM_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    print(f"installing LiteLLM into {LITELLM_VENV} (once; a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, timeout=300)
    pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, timeout=600)
    subprocess.run([*pip, "litellm[proxy]"], check=True, timeout=1800)
    if not exe.exists():
        raise RuntimeError(f"pip installed litellm[proxy] but {exe} is missing")
    return exe


class Fleet:
    """Every child process of one benchmark run, by name; all stopped by ``close()``."""

    def __init__(self, nofile: int) -> None:
        self.nofile = nofile
        self.tmp = tempfile.TemporaryDirectory(prefix="api-router-bench-")
        self.dir = Path(self.tmp.name)
        self.dir.chmod(0o755)  # nginx workers may run as another user
        self.services: dict[str, Service] = {}
        self.upstream_port = 0
        atexit.register(self.close)

    def start_mock(self) -> Target:
        argv = [sys.executable, "-m", "api_router.mock", "--port", "0"]
        svc = self._add(Service("mock", argv, self.dir))
        self.upstream_port = int(svc.wait_for_line(r"READY http://127\.0\.0\.1:(\d+)").group(1))
        svc.port = self.upstream_port
        return Target("direct", "127.0.0.1", svc.port)

    def start_pump(
        self, name: str = "pump", wrapper: tuple[str, ...] = (), ready_timeout: float = READY_TIMEOUT_S
    ) -> Target:
        """bench.pump in front of the mock, the floor of a Python proxy on uvloop: ``pump`` moves
        bytes, ``pump+parse`` also parses every message both ways (bench.floor, workload rps)."""
        pump = Path(__file__).with_name("pump.py")  # run as a script: the child's cwd is self.dir
        argv = [*wrapper, sys.executable, str(pump), "--upstream-port", str(self.upstream_port)]
        argv += ["--parse"] if name == "pump+parse" else []
        svc = self._add(Service(name, argv, self.dir))
        pattern = r"READY http://127\.0\.0\.1:(\d+)"
        svc.port = int(svc.wait_for_line(pattern, ready_timeout).group(1))
        return Target(name, "127.0.0.1", svc.port, svc.pid)

    def start_otlp_sink(self) -> int:
        """bench.otlp_sink, once per fleet: where the traced router sends its spans."""
        if "otlp-sink" not in self.services:
            sink = Path(__file__).with_name("otlp_sink.py")
            svc = self._add(Service("otlp-sink", [sys.executable, str(sink)], self.dir))
            svc.port = int(svc.wait_for_line(r"READY http://127\.0\.0\.1:(\d+)").group(1))
        return self.services["otlp-sink"].port

    def start_router(
        self,
        name: str = "router",
        features: bool = False,
        workers: int = 1,
        wrapper: tuple[str, ...] = (),
        ready_timeout: float = READY_TIMEOUT_S,
        traces: bool = False,
        translated: bool = False,
        overrides: dict[str, object] | None = None,
    ) -> Target:
        """``wrapper``: a command the router runs under (valgrind, for bench.instructions);
        ``overrides``: top-level config keys (``router_config``)."""
        path = self.dir / f"{name}.json"
        otlp_port = self.start_otlp_sink() if traces else None
        config = router_config(self.upstream_port, features, otlp_port, translated, overrides)
        path.write_text(json.dumps(config))
        exe = Path(sys.executable).parent / "api-router"
        argv = [str(exe), "serve", "--config", str(path), "--host", "127.0.0.1", "--port", "0"]
        argv += ["--workers", str(workers)] if workers > 1 else []
        if wrapper or not exe.exists():
            argv = [*wrapper, sys.executable, "-m", "api_router", *argv[1:]]
        clean = {k: "" for k in os.environ if k.startswith("API_ROUTER_")}
        svc = self._add(Service(name, argv, self.dir, env=clean))
        pattern = r"api-router listening on http://127\.0\.0\.1:(\d+)"
        svc.port = int(svc.wait_for_line(pattern, ready_timeout).group(1))
        return Target(name, "127.0.0.1", svc.port, svc.pid)

    def start_nginx(
        self,
        name: str = "nginx",
        wrapper: tuple[str, ...] = (),
        ready_timeout: float = READY_TIMEOUT_S,
        access_log: bool = True,
        workers: int = 1,
    ) -> Target:
        """With a ``wrapper``, nginx runs its one worker in the master process (no fork)."""
        port = free_port()
        conf = self.dir / f"{name}.conf"
        text = nginx_conf(self.dir, port, self.upstream_port, self.nofile, access_log, name, workers)
        conf.write_text(text.replace("worker_processes 1;", "master_process off;") if wrapper else text)
        argv = [NGINX_BIN, "-p", str(self.dir), "-e", str(self.dir / "nginx-error.log"), "-c", str(conf)]
        svc = self._add(Service(name, [*wrapper, *argv, "-g", "daemon off;"], self.dir))
        svc.wait_for_port(port, ready_timeout)
        return Target(name, "127.0.0.1", port, svc.pid)

    def start_litellm(self, name: str = "litellm") -> Target:
        exe = ensure_litellm()
        port = free_port()
        conf = self.dir / f"{name}.yaml"
        conf.write_text(litellm_config(self.upstream_port))
        env = {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_TELEMETRY": "False",
            "AIOHTTP_CONNECTOR_LIMIT": "30000",
            "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": "30000",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        argv = [str(exe), "--config", str(conf), "--host", "127.0.0.1", "--port", str(port)]
        svc = self._add(Service(name, [*argv, "--num_workers", "1"], self.dir, env=env))
        svc.wait_for_port(port, LITELLM_READY_TIMEOUT_S, http_path="/health/liveliness")
        return Target(name, "127.0.0.1", port, svc.pid, api_key=LITELLM_KEY)

    def start(self, name: str) -> Target:
        """(Re)start a proxy by target name, fresh."""
        self.stop(name)
        if name == "router":
            return self.start_router()
        if name == "router+keys":  # gateway keys on: each request authenticated, accounted to its client
            key_hash = hashlib.sha256(Target.api_key.encode()).hexdigest()  # the key every target is sent
            return self.start_router(name, overrides={"clients": [{"name": "bench", "keySha256": key_hash}]})
        if name == "router+translated":  # every chat request translated to an Anthropic backend
            return self.start_router(name, translated=True)
        if name == "router+access":  # the access line at info, and nothing else
            return self.start_router(name, overrides={"logLevel": "info", "logFormat": "text"})
        if name == "router+features":
            return self.start_router(name, features=True)
        if name == "router+traces":
            return self.start_router(name, features=True, traces=True)
        if name == "router-2w":
            return self.start_router(name, workers=2)
        if name == "nginx":
            return self.start_nginx()
        if name == "nginx-nolog":
            return self.start_nginx(name, access_log=False)
        if name == "nginx-2w":  # what two workers cost nginx on this machine, beside router-2w
            return self.start_nginx(name, workers=2)
        if name in ("pump", "pump+parse"):
            return self.start_pump(name)
        if name == "litellm":
            return self.start_litellm()
        raise ValueError(f"unknown target {name!r}")

    def _add(self, svc: Service) -> Service:
        self.services[svc.name] = svc
        return svc

    def stop(self, name: str) -> None:
        svc = self.services.pop(name, None)
        if svc is not None:
            svc.stop()

    def close(self) -> None:
        for name in list(self.services):
            with contextlib.suppress(Exception):
                self.stop(name)
        with contextlib.suppress(Exception):
            self.tmp.cleanup()


def nginx_available() -> bool:
    return os.access(NGINX_BIN, os.X_OK)
