"""Workers, hot reload and graceful drain, on real processes and signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import chat
from tests.integration.test_streaming import metric, wait_for
from tests.router_process import RouterProcess

TOKENS = 20


async def _stream(client: httpx.AsyncClient, url: str, index: int, started: asyncio.Queue[int]) -> int:
    """One streaming request; returns the number of tokens received (must end with [DONE])."""
    body = chat({"tokens": TOKENS, "interval_ms": 50, "req_id": f"s{index}"})
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        done = False
        async for line in resp.aiter_lines():
            if '"content":"t' in line:
                tokens += 1
                if tokens == 1:
                    started.put_nowait(index)
            done = done or line == "data: [DONE]"
        assert done, f"stream {index} ended without [DONE]"
    return tokens


async def _many_streams(url: str, n: int, during: Any) -> list[int]:
    started: asyncio.Queue[int] = asyncio.Queue()
    limits = httpx.Limits(max_connections=n + 5)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        tasks = [asyncio.ensure_future(_stream(client, url, i, started)) for i in range(n)]
        for _ in range(n):  # every stream has its first token: all are in flight
            await asyncio.wait_for(started.get(), timeout=20)
        await asyncio.to_thread(during)
        return await asyncio.gather(*tasks)


def _write_config(path: Path, config: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, path)  # atomic: the watcher never sees half a file


def _upstream_model_for(upstream: Any, request_id: str) -> str | None:
    for r in upstream.requests():
        if ["x-request-id", request_id] in r["headers"]:
            return r["model"]
    return None


def test_reload_on_sighup_keeps_open_streams_and_refuses_bad_config(upstream):
    config = {"baseUrl": upstream.url, "modelMapping": {"gpt-4o": "before"}}
    with RouterProcess(config) as router:

        def reload_mid_stream() -> None:
            _write_config(router.config_path, {**config, "modelMapping": {"gpt-4o": "after"}})
            router.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "config reloaded (SIGHUP)" in router.logs(), what="reload log line")

        counts = asyncio.run(_many_streams(router.url, 50, reload_mid_stream))
        assert counts == [TOKENS] * 50
        httpx.post(
            router.url + "/v1/chat/completions", json=chat(stream=False), headers={"x-request-id": "r-after"}
        )
        assert _upstream_model_for(upstream, "r-after") == "after"

        router.config_path.write_text('{"baseUrl": "http://x", "streamConfig": {"bufferSize": -5}}')
        router.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "refused" in router.logs(), what="refusal log line")
        assert "streamConfig.bufferSize" in router.logs()
        httpx.post(
            router.url + "/v1/chat/completions", json=chat(stream=False), headers={"x-request-id": "r-bad"}
        )
        assert _upstream_model_for(upstream, "r-bad") == "after", "the old config stays in force"


def test_reload_when_the_file_changes(upstream):
    config = {"baseUrl": upstream.url, "modelMapping": {"gpt-4o": "v1"}}
    with RouterProcess(config) as router:
        time.sleep(0.01)  # distinct mtime from the first write on coarse-mtime filesystems
        _write_config(router.config_path, {**config, "modelMapping": {"gpt-4o": "v2"}})
        wait_for(lambda: "config reloaded (file changed)" in router.logs(), what="file-change reload")
        httpx.post(
            router.url + "/v1/chat/completions", json=chat(stream=False), headers={"x-request-id": "f-1"}
        )
        assert _upstream_model_for(upstream, "f-1") == "v2"


def test_sigterm_lets_open_streams_finish_and_exits_0(upstream):
    with RouterProcess({"baseUrl": upstream.url}) as router:

        def terminate() -> None:
            router.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "draining" in router.logs(), what="drain log line")

        counts = asyncio.run(_many_streams(router.url, 50, terminate))
        assert counts == [TOKENS] * 50
        assert router.proc.wait(timeout=10) == 0


def test_drain_timeout_ends_remaining_streams_with_an_error_event(upstream):
    with RouterProcess({"baseUrl": upstream.url, "drainTimeoutSecs": 0.3}) as router:
        with httpx.stream(
            "POST",
            router.url + "/v1/chat/completions",
            json=chat({"tokens": 200, "interval_ms": 50}),
            timeout=20,
        ) as resp:
            lines = resp.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))
            router.proc.send_signal(signal.SIGTERM)
            rest = list(lines)
        assert "event: error" in rest
        assert any('"code":"service_unavailable"' in line for line in rest)
        assert router.proc.wait(timeout=10) == 0


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def test_two_workers_share_the_port_and_metrics_sum_both(upstream):
    with RouterProcess({"baseUrl": upstream.url}, args=("--workers", "2")) as router:
        workers = wait_for(lambda: (c := _children(router.pid)) and len(c) >= 2 and c, what="two workers")
        for i in range(40):  # new connection each time: the kernel spreads them over both workers
            httpx.post(
                router.url + "/v1/chat/completions",
                json=chat(stream=False),
                headers={"x-request-id": f"w{i}"},
            )
        served = 'requests_total{route="/v1/chat/completions",status="200"}'
        # Each worker publishes its tallies within metrics.FLUSH_SECS; after that, whichever
        # worker answers the scrape reports the total.
        wait_for(lambda: metric(router.url, served) == 40, what="both workers' counts published")
        for _ in range(6):
            assert metric(router.url, served) == 40

        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(_children(router.pid) - {victim}) >= 2, what="a replacement worker")
        assert httpx.post(router.url + "/v1/chat/completions", json=chat(stream=False)).status_code == 200
        router.proc.send_signal(signal.SIGTERM)
        assert router.proc.wait(timeout=15) == 0
