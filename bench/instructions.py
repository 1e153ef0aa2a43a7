"""python -m bench.instructions: instructions a proxy executes per request, counted by callgrind.

The timed benchmark moves by ±30 % between runs on a shared 2-CPU machine; an instruction count
does not: the same code, requests and environment give the same count whatever else the machine
does. So this is the A/B measure for changes to the request path (compare two commits with it),
and the way to see what the interpreter costs next to nginx. It counts user-space instructions
only (not the kernel's work in system calls), under valgrind, so it says nothing of latency.

The proxy runs under ``valgrind --tool=callgrind`` with counting off; after a warm-up, counting
is switched on for N sequential streaming requests (the shape of workload 3, TTFT) and off again.
Needs Debian's ``valgrind`` (and nginx for ``--nginx``).

``--rps`` counts non-streamed requests instead, driven by wrk at 64 connections as workload 9
(``rps``) drives them: many requests per read and per loop turn, so the per-request path is
counted under the batching it meets in production, not one request at a time.

``--floor`` also counts ``bench/pump.py``, the least a Python proxy on uvloop does: as a byte
pump (``pump``) and parsing every message both ways with httptools (``pump+parse``). What the
router costs over ``pump+parse`` is its own code; what ``pump+parse`` costs over nginx, no Python
proxy on this loop and parser can remove.

``--per-event N`` also counts requests of N token events and prints what one more event costs
(the difference over the difference in events); ``--set KEY=JSON`` overrides a top-level router
config key, e.g. ``--set 'streamUsage="passthrough"'`` against the default ``force`` for what
usage accounting costs; ``--keep DIR`` keeps the callgrind files for ``callgrind_annotate``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.loadgen import run_sequential
from bench.targets import BENCH_MODEL, Fleet, Target, nginx_available, raise_fd_limit
from bench.wrk import WRK, WRK_HINT, run_wrk

VALGRIND_READY_S = 180.0  # Python under valgrind takes tens of seconds to import the router
RPS_WARM_S = 3.0  # wrk's warm-up run under valgrind (a few hundred requests)
RPS_COUNT_S = 10.0  # wrk's counted run: a few thousand requests under valgrind
RPS_TIMEOUT_S = 60.0  # at 64 connections, a request through a proxy under valgrind can take a second
_TOTAL = re.compile(rb"^totals:\s+(\d+)", re.MULTILINE)


def valgrind_available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], capture_output=True, timeout=60, check=True)


def measure(
    fleet: Fleet,
    name: str,
    requests: int,
    tokens: int,
    warmup: int,
    overrides: dict[str, object] | None = None,
    keep: Path | None = None,
    interval_ms: float = 0.0,
    rps: bool = False,
) -> float:
    """Instructions per request for one proxy ("router", "router+features", "nginx", "pump"...);
    ``rps``: non-streamed requests from wrk (``requests`` and ``warmup`` are then unused)."""
    out = fleet.dir / f"{name}-{tokens}.callgrind"
    wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}")
    if name == "nginx":
        target = fleet.start_nginx(name, wrapper=wrapper, ready_timeout=VALGRIND_READY_S)
    elif name in ("pump", "pump+parse"):
        target = fleet.start_pump(name, wrapper=wrapper, ready_timeout=VALGRIND_READY_S)
    else:
        features = name in ("router+features", "router+traces")
        target = fleet.start_router(
            name,
            features,
            wrapper=wrapper,
            ready_timeout=VALGRIND_READY_S,
            traces=name == "router+traces",
            translated=name == "router+translated",
            overrides=overrides,
        )
    assert target.pid is not None
    if rps:
        requests = _count_wrk(target, tokens)
    else:
        run_sequential(target.host, target.port, name, warmup, tokens, f"{name}-warm", interval_ms)
        _control(target.pid, "-i", "on")
        run_sequential(target.host, target.port, name, requests, tokens, f"{name}-count", interval_ms)
        _control(target.pid, "-i", "off")
    _control(target.pid, "-d")  # write the counts now: a proxy killed at stop would not
    fleet.stop(name)
    total = 0
    for dump in fleet.dir.glob(out.name + "*"):  # the dump (and the exit's, with nothing counted since)
        match = _TOTAL.search(dump.read_bytes())
        total += int(match.group(1)) if match else 0
        if keep is not None:
            shutil.copy(dump, keep / dump.name)
    if not total:
        raise RuntimeError(f"no instructions counted in {out}*")
    return total / requests


def _count_wrk(target: Target, tokens: int) -> int:
    """wrk's warm-up, then its counted run with callgrind counting: the requests it completed."""
    assert target.pid is not None
    asyncio.run(run_wrk(target, BENCH_MODEL, tokens, RPS_WARM_S, timeout_s=RPS_TIMEOUT_S))
    _control(target.pid, "-i", "on")
    result = asyncio.run(run_wrk(target, BENCH_MODEL, tokens, RPS_COUNT_S, timeout_s=RPS_TIMEOUT_S))
    _control(target.pid, "-i", "off")
    if result["non_2xx"] or result["socket_errors"] or not result["requests"]:
        raise RuntimeError(f"requests through {target.name} failed under wrk: {result}")
    return int(result["requests"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="counted requests (default 300)")
    ap.add_argument("--tokens", type=int, default=5, help="token events per request (default 5)")
    ap.add_argument("--warmup", type=int, default=50, help="requests before counting starts (default 50)")
    ap.add_argument("--features", action="store_true", help="also the router with every feature on")
    ap.add_argument("--traces", action="store_true", help="also every feature on plus OpenTelemetry traces")
    ap.add_argument("--nginx", action="store_true", help="also nginx (one worker, no master)")
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also bench/pump.py, as a byte pump and parsing every message: a Python proxy's floor",
    )
    ap.add_argument(
        "--translated",
        action="store_true",
        help="also the router translating to an Anthropic-speaking backend",
    )
    ap.add_argument(
        "--rps",
        action="store_true",
        help="non-streamed requests from wrk at 64 connections (workload 9's shape) instead",
    )
    ap.add_argument("--per-event", type=int, metavar="N", help="also N-token requests: the cost of one event")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        type=_override,
        help="a top-level router config key, e.g. 'streamUsage=\"passthrough\"' (repeatable)",
    )
    ap.add_argument(
        "--interval-ms",
        type=float,
        default=0.0,
        help="between token events (default 0: the upstream's reads then carry many events each; "
        "a few ms give one event per read, as a model streams)",
    )
    ap.add_argument("--keep", type=Path, metavar="DIR", help="copy the callgrind files to DIR")
    args = ap.parse_args(argv)
    overrides = dict(args.set)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    if not valgrind_available():
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    if args.rps and (WRK is None or args.per_event):
        print(WRK_HINT if WRK is None else "--rps counts whole requests: no --per-event", file=sys.stderr)
        return 2
    names = [
        "router",
        *(["router+features"] if args.features else []),
        *(["router+traces"] if args.traces else []),
        *(["router+translated"] if args.translated else []),
    ]
    if args.nginx:
        if not nginx_available():
            print("nginx is not installed: apt-get install -y nginx-light", file=sys.stderr)
            return 2
        names.append("nginx")
    names += ["pump", "pump+parse"] if args.floor else []
    fleet = Fleet(raise_fd_limit())
    try:
        fleet.start_mock()
        counts = {
            name: measure(
                fleet,
                name,
                args.requests,
                args.tokens,
                args.warmup,
                overrides,
                args.keep,
                args.interval_ms,
                args.rps,
            )
            for name in names
        }
        long = {}
        if args.per_event:  # fewer requests: each is N events long, and counts are stable per event
            requests = max(10, args.requests * args.tokens // args.per_event)
            long = {
                name: measure(
                    fleet,
                    name,
                    requests,
                    args.per_event,
                    args.warmup // 5,
                    overrides,
                    args.keep,
                    args.interval_ms,
                )
                for name in names
            }
    finally:
        fleet.close()
    if overrides:
        print("config:", json.dumps(overrides))
    if args.interval_ms:
        print(f"{args.interval_ms} ms between token events")
    shape = "non-streamed, wrk at 64 connections" if args.rps else f"streaming, {args.requests} counted"
    print(f"instructions per request ({args.tokens} tokens, {shape}, user space):")
    for name, count in counts.items():
        print(f"  {name:<16} {count:>12,.0f}")
    if long:
        extra = args.per_event - args.tokens
        print(
            f"instructions per request of {args.per_event} tokens, and per event (the difference / {extra}):"
        )
        for name, count in long.items():
            per_event = (count - counts[name]) / extra
            print(f"  {name:<16} {count:>12,.0f}   {per_event:>8,.0f} per event")
    return 0


def _override(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"not KEY=JSON: {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{key}: the value is not JSON ({exc})") from exc


if __name__ == "__main__":
    sys.exit(main())
