"""python -m bench.floor: what a proxy adds to time to first token, against a Python floor.

Workload 3's shape (sequential streaming requests on one keep-alive connection) against the
mock directly, a bare Python byte pump on uvloop (``bench/pump.py``: no parsing, no routing, the
least any Python proxy on this loop can add), the same pump parsing every message both ways with
httptools (``pump+parse``: the least an HTTP-aware one can add), nginx and the router,
interleaved, several repetitions. If the pumps add what nginx adds, the event loop and the parser
are not what the router pays for; its own per-request code is. TTFT is what moves between runs
here, so compare rows of one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from bench.loadgen import run_sequential
from bench.targets import Fleet, nginx_available, raise_fd_limit


def run(reps: int, requests: int, tokens: int, with_nginx: bool) -> dict[str, list[tuple[float, float]]]:
    """(p50, p99) TTFT in ms per target and repetition."""
    fleet = Fleet(raise_fd_limit())
    try:
        targets = [fleet.start_mock(), fleet.start_pump(), fleet.start_pump("pump+parse")]
        if with_nginx:
            targets.append(fleet.start_nginx())
        targets.append(fleet.start_router())
        results: dict[str, list[tuple[float, float]]] = {t.name: [] for t in targets}
        for rep in range(reps):
            for target in targets:
                run_id = f"{target.name}-{rep}"
                report = run_sequential(target.host, target.port, target.name, requests, tokens, run_id)
                results[target.name].append((report["ttft_ms"]["p50"], report["ttft_ms"]["p99"]))
        return results
    finally:
        fleet.close()


def table(results: dict[str, list[tuple[float, float]]]) -> str:
    def median(name: str, i: int) -> float:
        return statistics.median(r[i] for r in results[name])

    lines = ["| target | TTFT p50 ms | TTFT p99 ms | p50 added ms | p99 added ms |", "|---|---|---|---|---|"]
    base50, base99 = median("direct", 0), median("direct", 1)
    for name in results:
        p50, p99 = median(name, 0), median(name, 1)
        added = "— | —" if name == "direct" else f"{p50 - base50:.3f} | {p99 - base99:.3f}"
        lines.append(f"| {name} | {p50:.3f} | {p99:.3f} | {added} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="interleaved repetitions (default 7)")
    ap.add_argument("--requests", type=int, default=300, help="sequential requests per repetition (300)")
    ap.add_argument("--tokens", type=int, default=5, help="token events per request (default 5)")
    ap.add_argument("--no-nginx", action="store_true", help="leave nginx out even if installed")
    args = ap.parse_args(argv)
    results = run(args.reps, args.requests, args.tokens, nginx_available() and not args.no_nginx)
    print(f"TTFT, {args.requests} sequential streaming requests, median of {args.reps} repetitions:\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
