"""The workloads: what each sends, and the figures each returns (see README.md).

Every workload function takes a target and returns ``(figures, report)``: a flat dict of the
numbers the tables show, and loadgen's full report. Failures (a token missing or out of order,
an HTTP error, a timeout, an upstream that never saw a close) are in ``report["failed"]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from bench.loadgen import run_load
from bench.measure import pct
from bench.spec import LoadSpec, Shape
from bench.targets import BENCH_MODEL, Target
from bench.wrk import run_wrk

Figures = dict[str, Any]
Outcome = tuple[Figures, dict[str, Any]]


@dataclass(frozen=True)
class Sizes:
    chunk_streams: int = 100
    chunk_events: int = 1000
    chunk_payload: int = 120
    paced_streams: int = 1000
    paced_events: int = 250  # 5 s at 20 ms
    paced_interval_ms: float = 20.0
    paced_payload: int = 120
    ttft_requests: int = 300
    ttft_tokens: int = 5
    hold_sizes: tuple[int, ...] = (5000, 10000)
    hold_interval_ms: float = 2000.0
    hold_s: float = 6.0
    slow_bytes: int = 200_000_000
    slow_payload: int = 65536
    slow_bps: float = 2_000_000
    slow_seconds: float = 20.0
    disconnect_streams: int = 100
    disconnect_after: int = 3
    disconnect_tokens: int = 200
    disconnect_interval_ms: float = 50.0
    rps_seconds: float = 10.0  # workload 9: wrk's run length
    rps_tokens: int = 5
    settle_s: float = 15.0  # how long the upstream may take to see every stream end
    timeout_s: float = 180.0  # bound for any one run
    litellm_scale: float = 0.1  # LiteLLM forwards ~1000 events/s here: fewer events per stream in 1, 2
    litellm_hold: int = 1000  # ... and it needs ~20 ms of CPU to start a stream: fewer held in 4


FULL = Sizes()
SMOKE = Sizes(
    chunk_streams=4,
    chunk_events=200,
    paced_streams=10,
    paced_events=10,
    ttft_requests=10,
    hold_sizes=(20,),
    hold_interval_ms=200.0,
    hold_s=1.0,
    slow_bytes=8_000_000,
    slow_payload=16384,
    slow_seconds=1.0,
    disconnect_streams=5,
    rps_seconds=1.0,
    timeout_s=30.0,
)

# long-lived proxies, interleaved per rep
STEADY = ("chunk", "features", "workers", "paced", "ttft", "disconnect", "rps")
FRESH = ("hold", "slow")  # the proxy is started fresh before each run and stopped after it
ALL = (*STEADY, *FRESH)


async def http_json(host: str, port: int, method: str, path: str, limit_s: float = 30.0) -> Any:
    """A tiny HTTP/1.1 client for the mock's control endpoints (Connection: close)."""

    async def go() -> Any:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
        try:
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    return await asyncio.wait_for(go(), limit_s)


class Upstream:
    """Control calls to the mock upstream (``/_stats``, ``/_reset``)."""

    def __init__(self, target: Target) -> None:
        self.host, self.port = target.host, target.port

    async def stats(self, streams: bool = True) -> dict[str, Any]:
        result: dict[str, Any] = await http_json(
            self.host, self.port, "GET", "/_stats" if streams else "/_stats?streams=0"
        )
        return result

    async def reset(self) -> None:
        await http_json(self.host, self.port, "POST", "/_reset")

    async def wait_idle(self, limit_s: float) -> bool:
        """Until no stream is active upstream (a proxy may still be draining the last run)."""
        deadline = time.monotonic() + limit_s
        while True:
            if (await self.stats(streams=False))["active_streams"] == 0:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.1)

    async def streams_of(self, run_id: str, want: int, limit_s: float) -> dict[str, dict[str, Any]]:
        """This run's stream records by req_id, once ``want`` of them have ended (or after limit_s)."""
        deadline = time.monotonic() + limit_s
        while True:
            mine = {
                s["req_id"]: s
                for s in (await self.stats())["streams"]
                if str(s.get("req_id") or "").startswith(run_id + "-")
            }
            ended = sum(s["ended_at"] is not None for s in mine.values())
            if ended >= want or time.monotonic() > deadline:
                return mine
            await asyncio.sleep(0.1)


class Workloads:
    """Runs one workload against one target; ``upstream`` is the shared mock."""

    def __init__(self, sizes: Sizes, upstream: Upstream) -> None:
        self.sizes = sizes
        self.upstream = upstream
        self._runs = 0

    def _events(self, target: Target, events: int) -> int:
        scale = self.sizes.litellm_scale if target.name == "litellm" else 1.0
        return max(1, round(events * scale))

    def _spec(self, target: Target, shape: Shape, **kw: Any) -> LoadSpec:
        self._runs += 1
        run_id = f"b{int(time.time()) % 100000}r{self._runs}"
        kw.setdefault("duration_s", self.sizes.timeout_s)
        return LoadSpec(target.host, target.port, shape, run_id, api_key=target.api_key, **kw)

    async def _load(self, target: Target, spec: LoadSpec) -> dict[str, Any]:
        await self.upstream.reset()
        pids = [target.pid] if target.pid is not None else None
        load = os.getloadavg()[0]
        report = await run_load(spec, pids)
        report["loadavg_before"] = round(load, 2)
        return report

    async def warmup(self, target: Target) -> None:
        """A few small streams through a freshly started proxy (lazy imports, first connections),
        so that a fresh proxy's RSS figures are not its start-up costs."""
        report = await self._load(target, self._spec(target, Shape(5, 0.0, 16), streams=10, duration_s=60))
        if report["failed"]:
            raise RuntimeError(f"warm-up through {target.name} failed: {report['first_errors']}")

    def get(self, name: str) -> Callable[[Target], Coroutine[Any, Any, Outcome]]:
        return {
            "chunk": self.chunk,
            "features": self.chunk,
            "workers": self.chunk,
            "paced": self.paced,
            "ttft": self.ttft,
            "disconnect": self.disconnect,
            "slow": self.slow,
            "rps": self.rps,
        }[name]

    async def chunk(self, target: Target) -> Outcome:
        """1 and 7: 100 streams x 1000 events as fast as possible: proxy CPU per event."""
        z = self.sizes
        shape = Shape(self._events(target, z.chunk_events), 0.0, z.chunk_payload)
        report = await self._load(target, self._spec(target, shape, streams=z.chunk_streams))
        proc = report.get("proc", {})
        writes = proc.get("write_syscalls")
        return {
            "cpu_us_per_event": proc.get("cpu_us_per_event"),
            "events_per_s": report["events_per_s"],
            "cpu_s": proc.get("cpu_s"),
            "writes_per_event": None if writes is None else round(writes / max(1, report["events"]), 3),
        }, report

    async def paced(self, target: Target) -> Outcome:
        """2: 1000 streams, one event every 20 ms: CPU % and inter-event gaps."""
        z = self.sizes
        shape = Shape(self._events(target, z.paced_events), z.paced_interval_ms, z.paced_payload)
        report = await self._load(target, self._spec(target, shape, streams=z.paced_streams))
        proc = report.get("proc", {})
        return {
            "cpu_pct": proc.get("cpu_pct_steady", proc.get("cpu_pct")),
            "gap_p50_ms": report["gap_ms"]["p50"],
            "gap_p99_ms": report["gap_ms"]["p99"],
            "events_per_s": report["events_per_s"],
        }, report

    async def ttft(self, target: Target) -> Outcome:
        """3: 300 sequential streaming requests on one keep-alive connection."""
        z = self.sizes
        spec = self._spec(target, Shape(z.ttft_tokens, 0.0, 16), requests_per_conn=z.ttft_requests)
        report = await self._load(target, spec)
        cpu = report.get("proc", {}).get("cpu_s")
        return {
            "ttft_p50_ms": report["ttft_ms"]["p50"],
            "ttft_p99_ms": report["ttft_ms"]["p99"],
            "cpu_ms_per_request": None if cpu is None else round(cpu * 1000 / z.ttft_requests, 3),
        }, report

    async def disconnect(self, target: Target) -> Outcome:
        """6: 100 paced streams closed by the client after 3 events: when does the upstream see it?"""
        z = self.sizes
        shape = Shape(z.disconnect_tokens, z.disconnect_interval_ms, 16)
        spec = self._spec(target, shape, streams=z.disconnect_streams, abort_after=z.disconnect_after)
        report = await self._load(target, spec)
        aborted: dict[str, float] = report.pop("aborted_at")
        mine = await self.upstream.streams_of(spec.run_id, len(aborted), z.settle_s)
        latencies, never = [], 0
        for req_id, closed_at in aborted.items():
            rec = mine.get(req_id)
            if rec is not None and rec["end_reason"] == "peer_closed" and rec["ended_at"] is not None:
                latencies.append(max(0.0, rec["ended_at"] - closed_at))
            else:
                never += 1
        if never:
            report["failed"] += never
            report["errors"]["upstream_never_saw_close"] = never
        report["upstream"] = {"saw_close": len(latencies), "never_saw_close": never}

        def ms(q: float) -> float | None:
            v = pct(latencies, q)
            return None if v is None else round(v * 1000, 3)

        return {"close_p50_ms": ms(50), "close_p99_ms": ms(99), "never_closed": never}, report

    async def rps(self, target: Target) -> Outcome:
        """9: non-streamed chat completions at 64 connections, driven by wrk (bench/wrk.py)."""
        z = self.sizes
        await self.upstream.reset()
        result = await run_wrk(target, BENCH_MODEL, z.rps_tokens, z.rps_seconds)
        requests, failed = result["requests"], result["socket_errors"] + result["non_2xx"]
        cpu = result["cpu_s"]
        report = {
            "failed": failed,
            "errors": {"socket": result["socket_errors"], "non_2xx": result["non_2xx"]} if failed else {},
            "first_errors": [],
            "wrk": result,
        }
        return {
            "requests_per_s": round(requests / (result["duration_us"] / 1e6)),
            "cpu_us_per_request": None if cpu is None else round(cpu * 1e6 / max(1, requests), 1),
            "p50_ms": round(result["p50_us"] / 1000, 3),
            "p99_ms": round(result["p99_us"] / 1000, 3),
        }, report

    async def hold(self, target: Target, streams: int) -> Outcome:
        """4: N streams held open, one event every 2 s: RSS per stream (start the proxy fresh)."""
        z = self.sizes
        if target.name == "litellm":
            streams = min(streams, z.litellm_hold)
        tokens = int((z.timeout_s + z.hold_s) * 1000 / z.hold_interval_ms) + 10
        spec = self._spec(target, Shape(tokens, z.hold_interval_ms, 16), streams=streams, hold_s=z.hold_s)
        report = await self._load(target, spec)
        hold = report.get("hold", {})
        if hold.get("established", 0) < streams:
            report["failed"] += streams - hold.get("established", 0)
            report["errors"]["not_established"] = streams - hold.get("established", 0)
        return {
            "streams": hold.get("established"),
            "established_s": hold.get("established_s"),
            "rss_mb_before": _mb(hold.get("rss_kb_before")),
            "rss_mb_held": _mb(hold.get("rss_kb_held")),
            "kb_per_stream": hold.get("kb_per_stream"),
        }, report

    async def slow(self, target: Target) -> Outcome:
        """5: one ~200 MB stream read at 2 MB/s: does the proxy buffer it (RSS) or push back?"""
        z = self.sizes
        shape = Shape(max(1, z.slow_bytes // z.slow_payload), 0.0, z.slow_payload)
        spec = self._spec(target, shape, slow_bps=z.slow_bps, cut_at_deadline=True, duration_s=z.slow_seconds)
        report = await self._load(target, spec)
        mine = await self.upstream.streams_of(spec.run_id, 0, 0)
        rec = next(iter(mine.values()), {})
        proc = report.get("proc", {})
        return {
            "client_mb": round(report["bytes"] / 1e6, 1),
            "upstream_mb": round(rec.get("bytes_written", 0) / 1e6, 1),
            "upstream_pauses": rec.get("pauses", 0),
            "rss_growth_kb": proc.get("rss_growth_kb"),
        }, report


def _mb(kb: float | None) -> float | None:
    return None if kb is None else round(kb / 1024, 1)
