"""python -m bench.soak: mixed hostile traffic against one router, then check nothing leaked.

The mix (per request, drawn with a seeded RNG):

    stream     a normal SSE stream; every token index in order, then ``data: [DONE]``
    plain      a non-streamed answer; every token present
    abort      the client closes mid-stream (FIN) after a random number of chunks (maybe none)
    abort_rst  the same with SO_LINGER 0: the client's close is a RST
    reset      the upstream resets its connection mid-stream (mock ``die_after``); the stream
               must end (error event + last chunk, or a close), never with ``[DONE]``; the
               outcomes count how (reset_error_event / reset_ended_silently / reset_closed /
               reset_502)
    slow       a slow reader: small SO_RCVBUF and read buffer, a sleep after every read

``stream`` and ``plain`` requests sometimes reuse the worker's previous keep-alive connection.
Before the run the router is warmed up and settled; its open fds (minus idle pooled upstream
connections), RSS and counters are recorded, and again after the run once it has settled
(``streaming_active`` 0, one downstream connection, no stream open at the upstream).

    python -m bench.soak --requests 100000 --concurrency 100   # prints the figures as JSON

``tests/integration/test_soak.py`` runs the same code at a CI size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import socket
import struct
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

KINDS = ("stream", "plain", "abort", "abort_rst", "reset", "slow")
WEIGHTS = (40, 15, 12, 8, 10, 15)
TOKEN_RE = re.compile(rb'"content":"t(\d{8})')
DONE = b"data: [DONE]"
REQUEST_TIMEOUT = 30.0  # one request, however slow its reader: a bound, not an expectation
SETTLE_TIMEOUT = 30.0
FD_SLACK = 5
ROUTER_CONFIG: dict[str, Any] = {
    # Mid-stream upstream resets are part of the mix: keep the breaker from turning them into
    # 503s for everyone (the soak is about leaks, not about the breaker's policy).
    "healthCheck": {"failureThreshold": 1_000_000, "intervalSecs": 3600},
}

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> bytes:
    with _opener.open(url, timeout=10) as resp:
        data: bytes = resp.read()
        return data


def metric(url: str, name: str) -> float:
    total = 0.0
    for line in _get(url + "/metrics").decode().splitlines():
        if line.startswith(name) and line[len(name)] in " {":
            total += float(line.rsplit(" ", 1)[1])
    return total


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- one request -----------------------------------------------------------------------------


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def close(self, rst: bool = False) -> None:
        if rst:
            self.writer.transport.abort()
        else:
            self.writer.close()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            await self.writer.wait_closed()


async def connect(port: int, *, rcvbuf: int | None = None, rst: bool = False, limit: int = 65536) -> Conn:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
    except BaseException:
        sock.close()
        raise
    return Conn(reader, writer)


def request_bytes(request_id: str, stream: bool, mock: dict[str, Any]) -> bytes:
    body = json.dumps(
        {
            "model": "gpt-4o",
            "stream": stream,
            "messages": [{"role": "user", "content": "soak"}],
            "mock": mock,
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: %s\r\nContent-Length: %d\r\n\r\n%s" % (request_id.encode(), len(body), body)
    )


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


async def read_body(
    reader: asyncio.StreamReader,
    headers: dict[str, str],
    on_chunk: Callable[[int], Any] | None = None,
) -> bytes:
    """The whole body (chunked, Content-Length or until close); ``on_chunk(i)`` after each chunk
    may return "stop" (return early) or an awaitable (awaited: a slow reader's sleep)."""
    if headers.get("transfer-encoding") == "chunked":
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append((await reader.readexactly(size + 2))[:-2])
            if on_chunk is not None:
                action = on_chunk(len(parts))
                if action == "stop":
                    return b"".join(parts)
                if action is not None:
                    await action
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()


def tokens_in(body: bytes) -> list[int]:
    return [int(m) for m in TOKEN_RE.findall(body)]


def plain_tokens(body: bytes) -> list[int]:
    content = json.loads(body)["choices"][0]["message"]["content"]
    return [int(m) for m in re.findall(r"t(\d{8})", content)]


@dataclass
class Job:
    kind: str
    index: int
    rng: random.Random
    run_id: str

    @property
    def request_id(self) -> str:
        return f"soak-{self.run_id}-{self.index}"


async def run_job(port: int, job: Job, held: Conn | None) -> tuple[str, str | None, Conn | None]:
    """(outcome, failure detail, a connection to keep for the next job)."""
    rng, kind = job.rng, job.kind
    if kind in ("stream", "plain"):
        conn = held or await connect(port)
        reused = held is not None
        try:
            tokens = rng.randint(1, 40)
            stream = kind == "stream"
            mock = {"tokens": tokens, "interval_ms": rng.choice([0, 0, 1]), "req_id": job.request_id}
            conn.writer.write(request_bytes(job.request_id, stream, mock))
            status, headers = await read_head(conn.reader)
            body = await read_body(conn.reader, headers)
            problem = None
            if status != 200:
                problem = f"status {status}: {body[:200]!r}"
            elif (got := tokens_in(body) if stream else plain_tokens(body)) != list(range(tokens)):
                problem = f"tokens {got[:50]} != range({tokens})"
            elif stream and DONE not in body:
                problem = "no [DONE]"
            if problem is not None:
                await conn.close()
                return "failed", f"{kind}{' (reused conn)' if reused else ''}: {problem}", None
            if headers.get("connection", "").lower() != "close" and rng.random() < 0.5:
                return "ok", None, conn
            await conn.close()
            return "ok", None, None
        except (OSError, asyncio.IncompleteReadError, ValueError, KeyError, IndexError) as exc:
            await conn.close()
            return "failed", f"{kind}{' (reused conn)' if reused else ''}: {exc!r}", None
    if held is not None:
        await held.close()
    if kind in ("abort", "abort_rst"):
        rst = kind == "abort_rst"
        conn = await connect(port, rst=rst)
        try:
            mock = {"tokens": rng.randint(50, 300), "interval_ms": rng.choice([0, 1, 2])}
            conn.writer.write(request_bytes(job.request_id, True, mock))
            after = rng.choice([-1, 0, 1, 2, 5, 10, 20, 40])
            if after >= 0:  # else: gone before the response head
                _, headers = await read_head(conn.reader)
                if after > 0:
                    await read_body(conn.reader, headers, lambda n: "stop" if n >= after else None)
            else:
                await asyncio.sleep(rng.choice([0, 0.001, 0.005]))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            await conn.close(rst)
            return "failed", f"{kind}: {exc!r}", None
        await conn.close(rst)
        return "aborted", None, None
    if kind == "reset":
        conn = await connect(port)
        ending = "reset_closed"  # the router closed the connection instead of ending the stream
        problem = None
        try:
            tokens, die_after = 30, rng.randint(2, 10)
            mock = {"tokens": tokens, "interval_ms": rng.choice([0, 1]), "die_after": die_after}
            conn.writer.write(request_bytes(job.request_id, True, mock))
            status, headers = await read_head(conn.reader)
            body = await read_body(conn.reader, headers)
            got = tokens_in(body)
            if status == 200 and (DONE in body or got != list(range(len(got))) or len(got) > die_after):
                problem = f"a reset stream looked complete or wrong: tokens {got}, [DONE] {DONE in body}"
            elif status == 200:
                ending = "reset_error_event" if b"event: error" in body else "reset_ended_silently"
            elif status == 502:
                ending = "reset_502"
            else:
                problem = f"status {status}: {body[:200]!r}"
        except (OSError, asyncio.IncompleteReadError, ValueError):
            pass
        await conn.close()
        if problem is not None:
            return "failed", f"reset: {problem}", None
        return ending, None, None
    # slow reader
    conn = await connect(port, rcvbuf=4096, limit=2048)
    try:
        tokens = rng.randint(20, 60)
        mock = {"tokens": tokens, "interval_ms": 0, "payload": 1000}
        conn.writer.write(request_bytes(job.request_id, True, mock))
        status, headers = await read_head(conn.reader)
        pause = rng.choice([0.001, 0.002, 0.005])
        body = await read_body(conn.reader, headers, lambda n: asyncio.sleep(pause))
        problem = None
        if status != 200:
            problem = f"status {status}"
        elif tokens_in(body) != list(range(tokens)) or DONE not in body:
            problem = f"incomplete: {len(tokens_in(body))}/{tokens} tokens, [DONE] {DONE in body}"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        problem = repr(exc)
    await conn.close()
    if problem is not None:
        return "failed", f"slow: {problem}", None
    return "ok", None, None


@dataclass
class LoadResult:
    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def run_load(port: int, requests: int, concurrency: int, seed: int, run_id: str) -> LoadResult:
    result = LoadResult()
    master = random.Random(seed)
    kinds = master.choices(KINDS, WEIGHTS, k=requests)
    seeds = [master.randrange(2**32) for _ in range(requests)]
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        held: Conn | None = None
        try:
            while next_index < requests:
                index = next_index
                next_index += 1
                job = Job(kinds[index], index, random.Random(seeds[index]), run_id)
                result.by_kind[job.kind] += 1
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT):
                        outcome, detail, held = await run_job(port, job, held)
                except TimeoutError:
                    outcome, detail, held = "failed", f"{job.kind}: no end in {REQUEST_TIMEOUT} s", None
                result.outcomes[outcome] += 1
                result.requests += 1
                if detail is not None and len(result.failures) < 50:
                    result.failures.append(f"#{index} {detail}")
        finally:
            if held is not None:
                await held.close()

    started = time.monotonic()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    result.seconds = time.monotonic() - started
    return result


def load(port: int, requests: int, concurrency: int, seed: int, run_id: str) -> LoadResult:
    try:
        import uvloop  # noqa: PLC0415

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_load(port, requests, concurrency, seed, run_id))


# -- the soak --------------------------------------------------------------------------------


def snapshot(router: Any, upstream: Any) -> dict[str, Any]:
    health = json.loads(_get(router.url + "/health"))
    return {
        "fds": open_fds(router.pid),
        "pool_idle": health["upstream_pool"]["idle"],
        "rss_kb": router.rss_kb(),
        "connections": health["connections"],
        "streaming_active": metric(router.url, "streaming_active"),
        "upstream_active_streams": upstream.stats(streams=False)["active_streams"],
    }


def settle(router: Any, upstream: Any, timeout: float = SETTLE_TIMEOUT) -> tuple[dict[str, Any], float]:
    """Poll (bounded) until no stream is open anywhere and only our probe is connected."""
    started = time.monotonic()
    while True:
        snap = snapshot(router, upstream)
        quiet = (
            snap["streaming_active"] == 0
            and snap["connections"] <= 1
            and snap["upstream_active_streams"] == 0
        )
        waited = time.monotonic() - started
        if quiet or waited > timeout:
            return snap, waited
        time.sleep(0.1)


def soak(
    router: Any,
    upstream: Any,
    *,
    requests: int,
    concurrency: int,
    seed: int,
    warmup: int = 500,
) -> dict[str, Any]:
    """Warm up, settle, measure; run the mix; settle (bounded, waiting for fds too), measure."""
    run_id = f"{seed:x}"
    load(router.port, warmup, concurrency, seed ^ 0x5EED, run_id + "w")
    before, _ = settle(router, upstream)
    result = load(router.port, requests, concurrency, seed, run_id)
    after, waited = settle(router, upstream)
    deadline = time.monotonic() + 10
    while abs(_net_fds(after) - _net_fds(before)) > FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.2)  # closes may still be in flight
        after = snapshot(router, upstream)
    return {
        "requests": result.requests,
        "concurrency": concurrency,
        "seed": seed,
        "seconds": round(result.seconds, 1),
        "requests_per_second": round(result.requests / result.seconds, 1) if result.seconds else None,
        "by_kind": dict(result.by_kind),
        "outcomes": dict(result.outcomes),
        "aborts": result.outcomes["aborted"],
        "resets": sum(n for outcome, n in result.outcomes.items() if outcome.startswith("reset")),
        "failures": result.failures,
        "settle_seconds": round(waited, 1),
        "before": before,
        "after": after,
        "net_fds_before": _net_fds(before),
        "net_fds_after": _net_fds(after),
        "rss_growth_kb": after["rss_kb"] - before["rss_kb"],
    }


def _net_fds(snap: dict[str, Any]) -> int:
    return int(snap["fds"]) - int(snap["pool_idle"])


def violations(figures: dict[str, Any], rss_limit_kb: int) -> list[str]:
    """The promises of a soak, as a list of what broke (empty: all kept)."""
    out = []
    if figures["outcomes"].get("failed"):
        out.append(f"{figures['outcomes']['failed']} requests failed: {figures['failures'][:10]}")
    after = figures["after"]
    if after["streaming_active"] != 0:
        out.append(f"streaming_active is {after['streaming_active']} after the run")
    if after["upstream_active_streams"] != 0:
        out.append(f"{after['upstream_active_streams']} streams still open at the upstream")
    if after["connections"] > 1:
        out.append(f"{after['connections']} downstream connections still open")
    if abs(figures["net_fds_after"] - figures["net_fds_before"]) > FD_SLACK:
        out.append(
            f"fds (minus idle pooled upstream connections) {figures['net_fds_before']} -> "
            f"{figures['net_fds_after']} (raw {figures['before']['fds']} -> {after['fds']})"
        )
    if figures["rss_growth_kb"] > rss_limit_kb:
        out.append(f"RSS grew {figures['rss_growth_kb']} KB (limit {rss_limit_kb} KB)")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--rss-limit-mb", type=float, default=50.0)
    args = ap.parse_args(argv)
    from bench.targets import raise_fd_limit  # noqa: PLC0415
    from tests.router_process import RouterProcess  # noqa: PLC0415
    from tests.upstream_process import UpstreamProcess  # noqa: PLC0415

    raise_fd_limit()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    with (
        UpstreamProcess(tokens_per_second=1000) as upstream,
        RouterProcess({"baseUrl": upstream.url, **ROUTER_CONFIG}) as router,
    ):
        figures = soak(
            router,
            upstream,
            requests=args.requests,
            concurrency=args.concurrency,
            seed=seed,
            warmup=args.warmup,
        )
        figures["router_alive"] = router.proc.poll() is None
        figures["tracebacks_in_router_log"] = router.logs().count("Traceback")
    broken = violations(figures, int(args.rss_limit_mb * 1024))
    if not figures["router_alive"]:
        broken.append("the router died")
    if figures["tracebacks_in_router_log"]:
        broken.append(f"{figures['tracebacks_in_router_log']} tracebacks in the router's log")
    figures["violations"] = broken
    print(json.dumps(figures, indent=2))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
