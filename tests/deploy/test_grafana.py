"""deploy/grafana/api-router.json against a real Prometheus: it scrapes a router under a little
load (streams, errors, disconnects, heartbeats, 429s, a dead backend), and every panel's query
returns data, the token and cost panels included. Panels on metrics named in ``PENDING`` (none
now) would be left out; any other unknown metric name fails the test."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.router_process import RouterProcess
from tests.upstream_process import UpstreamProcess

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "api-router.json"
JOB = "api-router"
# Grafana's variables, as Grafana would expand them for this scrape interval (1 s).
VARIABLES = {"$__rate_interval": "15s", "$job": JOB, "${datasource}": "prometheus"}
PENDING: set[str] = set()  # metrics panels may name before the router exports them (none now)
DEADLINE_S = 90.0
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in dashboard["templating"]["list"]}
    assert names == {"datasource", "job"}
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])
            assert _SELECTOR.findall(target["expr"]), target["expr"]
    # Every promise of the issue has a panel.
    titles = " / ".join(p["title"] for p in panels()).lower()
    for needed in (
        "streams active", "time to first byte", "latency", "errors", "disconnects", "heartbeats",
        "health", "circuit", "rate-limit", "tokens", "cost", "cpu", "rss",
    ):  # fmt: skip
        assert needed in titles, needed


class Prometheus:
    def __init__(self, target: str) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="api-router-prom-")
        config = Path(self._dir.name) / "prometheus.yml"
        config.write_text(
            json.dumps(  # YAML is a superset of JSON
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={self._dir.name}/data",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            self._await_ready()
        except BaseException:
            self.close()
            raise

    def _await_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            try:
                if httpx.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)  # poll interval, not synchronisation: readiness is what we await
        raise RuntimeError("prometheus not ready in 30 s")

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = answer.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._dir.cleanup()


def _load(router_url: str, stop: threading.Event, errors: list[BaseException]) -> None:
    """Every kind of event the dashboard shows, over and over, until told to stop."""

    def chat(mock: dict[str, Any], stream: bool = True) -> dict[str, Any]:
        return {
            "model": "gpt-4o",
            "stream": stream,
            "messages": [{"role": "user", "content": "hi"}],
            "mock": mock,
        }

    url = router_url + "/v1/chat/completions"
    try:
        with httpx.Client(timeout=20) as client:
            while not stop.is_set():
                with client.stream("POST", url, json=chat({"tokens": 3})) as r:
                    r.read()  # completed
                with client.stream("POST", url, json=chat({"tokens": 5, "die_after": 1})) as r:
                    r.read()  # upstream died mid-stream: an error event, counted by reason
                with client.stream("POST", url, json=chat({"tokens": 50, "interval_ms": 50})) as r:
                    next(r.iter_raw())  # then hang up: a client disconnect
                with client.stream("POST", url, json=chat({"tokens": 2, "interval_ms": 300})) as r:
                    r.read()  # idle gaps: heartbeats
                client.post(url, json=chat({"tokens": 2}, stream=False))
                client.post(router_url + "/v1/embeddings", json={"model": "e", "input": "x"})  # 429s
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)


@pytest.fixture
def scraped_router() -> Iterator[tuple[RouterProcess, Prometheus]]:
    dead = f"http://127.0.0.1:{_free_port()}"  # nothing listens there: failovers, a down backend
    with UpstreamProcess(tokens_per_second=200) as upstream:
        config = {
            "backends": [{"url": upstream.url}, {"url": dead}],
            "healthCheck": {"intervalSecs": 0.5, "timeoutSecs": 0.5},
            "streamConfig": {"heartbeatIntervalSecs": 0.1},
            "endpoints": {
                "/v1/chat/completions": {},
                "/v1/embeddings": {"rateLimit": {"requestsPerMinute": 1}},
            },
        }
        with RouterProcess(config) as router:
            prometheus = Prometheus(f"127.0.0.1:{router.port}")
            try:
                yield router, prometheus
            finally:
                prometheus.close()


def _exported(router_url: str) -> set[str]:
    text = httpx.get(router_url + "/metrics", timeout=10).text
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _expand(expr: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (scripts/test installs it)"
)
@pytest.mark.timeout(180)
def test_every_panel_query_returns_data(scraped_router: tuple[RouterProcess, Prometheus]) -> None:
    router, prometheus = scraped_router
    exported = _exported(router.url)
    queries: dict[str, str] = {}
    left_out: set[str] = set()
    for panel in panels():
        for target in panel["targets"]:
            metrics = set(_SELECTOR.findall(target["expr"]))
            unknown = metrics - exported
            assert unknown <= PENDING, f"{panel['title']}: the router exports no {sorted(unknown - PENDING)}"
            if unknown:
                left_out |= unknown
                continue
            queries[f"{panel['title']} [{target['refId']}]"] = _expand(target["expr"])
    assert len(queries) >= 20

    stop, errors = threading.Event(), []
    load = threading.Thread(target=_load, args=(router.url, stop, errors), daemon=True)
    load.start()
    try:
        waiting = dict(queries)
        deadline = time.monotonic() + DEADLINE_S
        while waiting and time.monotonic() < deadline and not errors:
            for name, expr in list(waiting.items()):
                if _has_data(prometheus.query(expr)):
                    del waiting[name]
            if waiting:
                time.sleep(0.5)  # poll interval of the await below, which has a deadline
    finally:
        stop.set()
        load.join(timeout=30)
    assert not errors, errors
    assert not waiting, f"no data after {DEADLINE_S:g} s for: {sorted(waiting)} (usage left out: {left_out})"
