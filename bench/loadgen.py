"""Async SSE load generator on raw asyncio Protocols + httptools (run it on uvloop).

Each connection sends OpenAI-style streaming requests whose body carries the mock upstream's
stream shape (as a ``"mock"`` field and as ``MOCK{...}`` in the message text, for proxies that
drop unknown fields). Every response is parsed (chunked HTTP/1.1, then SSE) and every token
index must arrive exactly once, in order, followed by ``data: [DONE]``. Measures TTFT, gaps
between token events, abort times, and samples CPU and RSS of a process tree from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from array import array
from typing import Any, cast

import httptools

from bench.measure import ProcTree, ms_summary
from bench.spec import GOOD, LoadSpec, Req, Shape, request_bytes

TOKEN_RE = re.compile(rb'"(?:content|text)": ?"t(\d{8})')
SLOW_RCVBUF = 64 * 1024


class _Run:
    """What all connections of one run share."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.reqs: list[Req] = []
        self.gaps = array("d")
        self.bytes = 0
        self.started = 0  # streams that got their first token
        self.lost = 0  # streams that ended without one
        self.finished = 0
        self.all_started = asyncio.Event()
        self.first_finished = asyncio.Event()
        self.stopping = False
        self.live: set[SSEConnection] = set()

    def mark_started(self) -> None:
        self.started += 1
        if self.started + self.lost >= self.spec.streams:
            self.all_started.set()

    def mark_finished(self, tokens: int) -> None:
        self.finished += 1
        self.first_finished.set()
        if not tokens and self.spec.requests_per_conn == 1:
            self.lost += 1
            if self.started + self.lost >= self.spec.streams:
                self.all_started.set()


class SSEConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection running one streaming request at a time."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.abort_after = run.spec.abort_after
        self.slow_bps = run.spec.slow_bps
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.req: Req | None = None
        self.done: asyncio.Future[None] | None = None
        self.partial = b""
        self.expect = 0
        self.last_at = 0.0
        self.saw_done = False
        self.snippet = b""
        self.read_started = 0.0
        self.read_bytes = 0
        self.resume_handle: asyncio.TimerHandle | None = None

    # --- transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.req is None:
            return
        self.run.bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as err:
            self._finish("http_parse_error", str(err))
            self.close()
            return
        if self.slow_bps and not self.closed:
            self._pace(len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.resume_handle is not None:
            self.resume_handle.cancel()
        req = self.req
        if req is not None and req.outcome == "pending":
            self._finish("closed_early", f"peer closed after {req.tokens} tokens ({exc!r})")

    # --- httptools callbacks
    def on_headers_complete(self) -> None:
        assert self.req is not None
        self.req.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        req = self.req
        assert req is not None
        if req.status != 200:
            self.snippet = (self.snippet + body)[:300]
            return
        now = time.monotonic()
        buf = self.partial + body if self.partial else body
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events = buf.split(b"\n\n")
        self.partial = events.pop()
        for ev in events:
            match = TOKEN_RE.search(ev)
            if match is None:
                if b"[DONE]" in ev:
                    self.saw_done = True
                continue
            idx = int(match.group(1))
            if idx != self.expect:
                self._finish("order_error", f"expected token {self.expect}, got {idx}")
                self.close()
                return
            self.expect = idx + 1
            req.tokens += 1
            if idx == 0:
                req.ttft = now - req.t_write
                self.run.mark_started()
            else:
                self.run.gaps.append(now - self.last_at)
            self.last_at = now
            if self.abort_after and req.tokens >= self.abort_after:
                req.aborted_at = time.monotonic()
                self._finish("aborted")
                self.close()
                return

    def on_message_complete(self) -> None:
        req = self.req
        if req is None or req.outcome != "pending":
            return
        want = self.run.spec.shape.tokens
        if req.status != 200:
            self._finish(f"http_{req.status}", self.snippet.decode("utf-8", "replace")[:200])
        elif not self.saw_done:
            self._finish("no_done", f"stream ended after {req.tokens} tokens without [DONE]")
        elif req.tokens != want:
            self._finish("missing_tokens", f"{req.tokens}/{want} tokens")
        else:
            self._finish("ok")

    # --- slow reader
    def _pace(self, n: int) -> None:
        now = time.monotonic()
        if not self.read_started:
            self.read_started = now
        self.read_bytes += n
        ahead = self.read_bytes / self.slow_bps - (now - self.read_started)
        if ahead > 0.005 and self.transport is not None:
            self.transport.pause_reading()
            self.resume_handle = asyncio.get_running_loop().call_later(ahead, self._resume)

    def _resume(self) -> None:
        self.resume_handle = None
        if not self.closed and self.transport is not None:
            self.transport.resume_reading()

    # --- driving
    async def request(self, req: Req, payload: bytes, limit_s: float) -> None:
        assert self.transport is not None
        self.req = req
        self.done = asyncio.get_running_loop().create_future()
        self.partial, self.expect, self.saw_done, self.snippet = b"", 0, False, b""
        req.t_write = time.monotonic()
        if self.closed or self.transport.is_closing():
            self._finish("closed_early", "the connection was closed before the request was sent")
            return
        self.transport.write(payload)
        try:
            await asyncio.wait_for(asyncio.shield(self.done), limit_s)
        except TimeoutError:
            self._finish("timeout", f"no end after {limit_s:.0f} s, {req.tokens} tokens")
            self.close()

    def stop(self, outcome: str = "cut") -> None:
        """End the current request from outside (hold or duration over)."""
        req = self.req
        if req is not None and req.outcome == "pending":
            if outcome == "cut" and not req.tokens:
                outcome = "cut_before_first_token"
            self._finish(outcome, f"stopped after {req.tokens} tokens")
        self.close()

    def _finish(self, outcome: str, detail: str = "") -> None:
        req = self.req
        if req is not None and req.outcome == "pending":
            req.outcome, req.detail = outcome, detail
            self.run.mark_finished(req.tokens)
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.close()


async def _connect(run: _Run) -> SSEConnection:
    spec = run.spec
    loop = asyncio.get_running_loop()
    if not spec.slow_bps:
        _, proto = await loop.create_connection(lambda: SSEConnection(run), spec.host, spec.port)
        return proto
    # a small receive buffer set before connecting, so that the kernel does not hide the slowness
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        sock.setblocking(False)
        await loop.sock_connect(sock, (spec.host, spec.port))
    except BaseException:
        sock.close()
        raise
    _, proto = await loop.create_connection(lambda: SSEConnection(run), sock=sock)
    return proto


async def _worker(run: _Run, wid: int, sem: asyncio.Semaphore, deadline: float) -> None:
    spec = run.spec
    conn: SSEConnection | None = None
    for r in range(spec.requests_per_conn):
        req = Req(f"{spec.run_id}-{wid}-{r}")
        if run.stopping:
            break
        if conn is None or conn.closed:
            try:
                async with sem:
                    conn = await asyncio.wait_for(_connect(run), 30.0)
            except (TimeoutError, OSError) as err:
                req.outcome, req.detail = "connect_error", repr(err)
                run.reqs.append(req)
                run.mark_finished(0)
                return
            if run.stopping:
                break
        run.reqs.append(req)
        run.live.add(conn)
        await conn.request(req, request_bytes(spec, req.req_id), max(0.1, deadline + 5.0 - time.monotonic()))
        run.live.discard(conn)
        if req.outcome != "ok":
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def run_load(spec: LoadSpec, pids: list[int] | None = None, sample_s: float = 0.2) -> dict[str, Any]:
    """Run one load and return its report (see the keys below); never raises for request failures."""
    run = _Run(spec)
    tree = ProcTree(pids) if pids else None
    marks: dict[str, tuple[float, float, int]] = {}

    def mark(name: str) -> None:
        if tree is not None:
            marks[name] = (time.monotonic(), *tree.sample())

    async def sampler() -> None:
        while tree is not None:
            await asyncio.sleep(sample_s)
            tree.sample()

    writes0 = tree.write_syscalls() if tree is not None else None
    mark("before")
    t0 = time.monotonic()
    deadline = t0 + spec.duration_s
    sem = asyncio.Semaphore(spec.connect_parallel)
    hold: dict[str, Any] = {}
    async with asyncio.TaskGroup() as tg:
        sampling = tg.create_task(sampler())
        workers = [tg.create_task(_worker(run, w, sem, deadline)) for w in range(spec.streams)]
        all_done = asyncio.gather(*workers)
        all_done.add_done_callback(_retrieve)  # cancelled on Ctrl-C: nothing to log

        async def watch_window() -> None:
            await run.all_started.wait()
            mark("steady_from")
            await run.first_finished.wait()
            mark("steady_to")

        window = tg.create_task(watch_window())
        if spec.hold_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.all_started.wait(), max(0.1, deadline - time.monotonic()))
            hold["established"] = run.started
            hold["established_s"] = round(time.monotonic() - t0, 2)
            await asyncio.sleep(min(1.0, spec.hold_s))
            mark("hold_start")
            await asyncio.sleep(max(0.0, spec.hold_s - 1.0))
            mark("hold_end")
            run.stopping = True
            for conn in list(run.live):
                conn.stop()
        try:
            await asyncio.wait_for(asyncio.shield(all_done), max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            run.stopping = True
            for conn in list(run.live):
                conn.stop("cut" if spec.cut_at_deadline else "timeout")
            await all_done
        wall = time.monotonic() - t0
        mark("after")
        writes1 = tree.write_syscalls() if tree is not None else None
        sampling.cancel()
        window.cancel()
    report = _report(spec, run, wall, tree, marks, hold)
    if writes0 is not None and writes1 is not None and "proc" in report:
        report["proc"]["write_syscalls"] = writes1 - writes0
    return report


def _report(
    spec: LoadSpec,
    run: _Run,
    wall: float,
    tree: ProcTree | None,
    marks: dict[str, tuple[float, float, int]],
    hold: dict[str, Any],
) -> dict[str, Any]:
    reqs = run.reqs
    events = sum(r.tokens for r in reqs)
    errors: dict[str, int] = {}
    for r in reqs:
        if r.outcome not in GOOD:
            errors[r.outcome] = errors.get(r.outcome, 0) + 1
    out: dict[str, Any] = {
        "requests": len(reqs),
        "ok": sum(r.outcome == "ok" for r in reqs),
        "aborted": sum(r.outcome == "aborted" for r in reqs),
        "cut": sum(r.outcome == "cut" for r in reqs),
        "failed": sum(errors.values()),
        "errors": errors,
        "first_errors": [f"{r.req_id} {r.outcome}: {r.detail}" for r in reqs if r.outcome not in GOOD][:3],
        "events": events,
        "bytes": run.bytes,
        "wall_s": round(wall, 3),
        "events_per_s": round(events / wall, 1) if wall > 0 else None,
        "ttft_ms": ms_summary([r.ttft for r in reqs if r.ttft is not None]),
        "gap_ms": ms_summary(run.gaps),
        "aborted_at": {r.req_id: r.aborted_at for r in reqs if r.aborted_at is not None},
    }
    if tree is not None:
        _, cpu0, rss0 = marks["before"]
        _, cpu1, rss1 = marks["after"]
        cpu = cpu1 - cpu0
        proc: dict[str, Any] = {
            "cpu_s": round(cpu, 3),
            "cpu_pct": round(100 * cpu / wall, 1),
            "cpu_us_per_event": round(cpu / events * 1e6, 2) if events else None,
            "rss_kb_before": rss0,
            "rss_kb_peak": tree.peak_rss_kb,
            "rss_kb_after": rss1,
            "rss_growth_kb": tree.peak_rss_kb - rss0,
        }
        if "steady_from" in marks and "steady_to" in marks:
            (ta, ca, _), (tb, cb, _) = marks["steady_from"], marks["steady_to"]
            if tb - ta > 0.5:
                proc["cpu_pct_steady"] = round(100 * (cb - ca) / (tb - ta), 1)
                proc["steady_s"] = round(tb - ta, 2)
        out["proc"] = proc
        if hold and "hold_end" in marks:
            n = max(1, hold["established"])
            hold.update(
                rss_kb_before=rss0,
                rss_kb_held=marks["hold_end"][2],
                kb_per_stream=round((marks["hold_end"][2] - rss0) / n, 2),
                cpu_s_in_hold=round(marks["hold_end"][1] - marks["hold_start"][1], 3),
            )
    if hold:
        out["hold"] = hold
    return out


def run_sequential(
    host: str, port: int, name: str, count: int, tokens: int, run_id: str, interval_ms: float = 0.0
) -> dict[str, Any]:
    """Workload 3's shape: ``count`` streaming requests one after another on one keep-alive
    connection. Returns the report; raises if any failed (bench.instructions and bench.floor
    measure, they do not count failures)."""
    spec = LoadSpec(host, port, Shape(tokens, interval_ms, 16), run_id, requests_per_conn=count)
    report = asyncio.run(run_load(spec))
    if report["failed"] or report["ok"] != count:
        raise RuntimeError(f"requests through {name} failed: {report['first_errors']}")
    return report
