"""python -m bench: the router against nginx, LiteLLM and no proxy at all, on one machine.

Starts the repo's mock LLM upstream, the router (plain, and with every feature on), nginx
(if installed) and, with --with-litellm, LiteLLM's proxy; runs the workloads against each and
against the upstream directly, interleaved, several repetitions; prints median tables, ratios
to nginx and the targets table; writes everything to bench/results/. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any

from bench import report
from bench.measure import ProcTree
from bench.targets import NGINX_HINT, Fleet, Target, nginx_available, raise_fd_limit
from bench.workloads import ALL, FRESH, FULL, SMOKE, STEADY, Outcome, Sizes, Upstream, Workloads
from bench.wrk import WRK, WRK_HINT

try:
    import uvloop

    LOOP_FACTORY: Any = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is a dependency of the router
    LOOP_FACTORY = None

HERE = Path(__file__).resolve().parent
FD_MARGIN = 256  # descriptors a proxy needs besides two per stream
IDLE_CPU_S = 0.02  # a proxy that used at most this much CPU in 0.5 s is idle
ROUTER_TARGETS = ("direct", "router", "router+features", "router+traces", "router-2w")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="quick correctness run, tiny sizes")
    ap.add_argument("--with-litellm", action="store_true", help="also LiteLLM (installs bench/.litellm-venv)")
    ap.add_argument("--no-nginx", action="store_true", help="leave nginx out even if installed")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of workloads 1, 2, 3, 6, 7 (default 3)")
    ap.add_argument("--fresh-reps", type=int, default=1, help="repetitions of 4 and 5, fresh proxy each (1)")
    ap.add_argument("--workloads", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    ap.add_argument("--hold-sizes", default="5000,10000", help="streams held open in workload 4")
    ap.add_argument("--slow-seconds", type=float, default=FULL.slow_seconds, help="slow reader run length")
    ap.add_argument("--paced-streams", type=int, default=FULL.paced_streams, help="streams in workload 2")
    ap.add_argument(
        "--litellm-scale",
        type=float,
        default=FULL.litellm_scale,
        help="events per stream for LiteLLM in 1 and 2, as a fraction of the others' (default 0.1)",
    )
    ap.add_argument(
        "--litellm-hold", type=int, default=FULL.litellm_hold, help="most streams LiteLLM holds in 4 (1000)"
    )
    ap.add_argument(
        "--traces", action="store_true", help="workload 7 also with OpenTelemetry traces on (to a sink)"
    )
    ap.add_argument("--results-dir", type=Path, default=HERE / "results", help="where the JSON goes")
    ap.add_argument("--markdown", type=Path, help="also write the machine line and tables to this file")
    args = ap.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(ALL)
    if unknown:
        ap.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.smoke and args.with_litellm:
        ap.error("--smoke runs the router and direct (and nginx if installed) only")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _summary(workload: str, figures: dict[str, Any], rep: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={report.fmt(v)}" for k, v in figures.items())
    bad = f"  FAILED {rep['failed']}: {rep['errors']} {rep['first_errors'][:1]}" if rep["failed"] else ""
    return shown + bad


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, nofile: int) -> None:
        self.args, self.sizes, self.nofile = args, sizes, nofile
        self.fleet = Fleet(nofile)
        self.results = report.Results()
        self.runner = asyncio.Runner(loop_factory=LOOP_FACTORY)
        self.live: dict[str, Target] = {}
        self.work: Workloads | None = None
        self.proxies = ["router"]
        self.traces = bool(args.traces)
        if not args.no_nginx:
            if nginx_available():
                self.proxies.append("nginx")
            else:
                print(NGINX_HINT, flush=True)
        if args.with_litellm:
            self.proxies.append("litellm")

    def targets_for(self, workload: str, rep: int) -> list[str]:
        if workload == "features":
            return ["router+features", *(["router+traces"] if self.traces else [])]
        if workload == "workers":  # nginx's own two workers: how much of the cost is the machine's
            return ["router-2w", *(["nginx-2w"] if "nginx" in self.proxies else [])]
        if workload == "rps":  # the access line's cost and two workers' are part of what it measures
            nginx = ["nginx-nolog", "nginx-2w"] if "nginx" in self.proxies else []
            names = [
                "direct",
                "router",
                "router+access",
                "router+keys",
                "router+translated",
                "router+features",
                "router-2w",
                "pump",  # the floor of a Python proxy on uvloop, with and without parsing HTTP
                "pump+parse",
                *nginx,
            ]
            names += self.proxies[1:]
            k = rep % len(names)
            return names[k:] + names[:k]
        names = list(self.proxies) if workload in FRESH else ["direct", *self.proxies]
        k = rep % len(names)
        return names[k:] + names[:k]  # rotate, so that no target always runs first

    def record(self, workload: str, target: str, rep: int, outcome: Outcome) -> None:
        figures, rep_ = outcome
        self.results.add(workload, target, rep, figures, rep_)
        print(f"  {workload:<11} {target:<16} {_summary(workload, figures, rep_)}", flush=True)

    def settle(self, upstream: Upstream, target: Target | None = None) -> None:
        """Before the next run: no stream active upstream, and the proxy just measured is idle
        (LiteLLM goes on working for a while after its clients are gone)."""
        if not self.runner.run(upstream.wait_idle(self.sizes.settle_s)):
            print("  (warning: upstream streams still active; the next run may be skewed)", flush=True)
        if target is not None and target.pid is not None and not self.args.smoke:
            tree = ProcTree([target.pid])
            deadline = time.monotonic() + self.sizes.settle_s
            cpu = tree.sample()[0]
            while time.monotonic() < deadline:
                time.sleep(0.5)
                now = tree.sample()[0]
                if now - cpu <= IDLE_CPU_S:
                    return
                cpu = now
            print(f"  (warning: {target.name} still busy; the next run may be skewed)", flush=True)

    def run(self) -> int:
        wl = self.args.workloads
        reps = 1 if self.args.smoke else self.args.reps
        fresh_reps = 1 if self.args.smoke else self.args.fresh_reps
        self.live["direct"] = self.fleet.start_mock()
        upstream = Upstream(self.live["direct"])
        self.work = work = Workloads(self.sizes, upstream)
        steady = [w for w in STEADY if w in wl]
        if "rps" in steady and WRK is None:
            print(WRK_HINT, flush=True)
            steady.remove("rps")
        if steady:
            for name in {t for w in steady for t in self.targets_for(w, 0)} - {"direct"}:
                self.live[name] = self.fleet.start(name)
        for rep in range(reps):
            for workload in steady:
                print(f"[rep {rep + 1}/{reps}] {workload}", flush=True)
                for name in self.targets_for(workload, rep):
                    target = self.live[name]
                    self.record(workload, name, rep, self.runner.run(work.get(workload)(target)))
                    self.settle(upstream, target)
        for name in list(self.live):
            if name != "direct":
                self.fleet.stop(name)
        if "hold" in wl:
            sizes = self.hold_sizes()
            for size in sizes:
                for rep in range(fresh_reps):
                    print(f"[rep {rep + 1}/{fresh_reps}] hold {size} streams (fresh proxies)", flush=True)
                    for name in self.targets_for("hold", rep):
                        if name == "litellm" and size != sizes[0]:
                            continue  # it holds at most --litellm-hold streams: once is enough
                        target = self.start_fresh(name)
                        self.record(f"hold{size}", name, rep, self.runner.run(work.hold(target, size)))
                        self.fleet.stop(name)
                        self.settle(upstream)
        if "slow" in wl:
            for rep in range(fresh_reps):
                print(f"[rep {rep + 1}/{fresh_reps}] slow reader (fresh proxies)", flush=True)
                for name in self.targets_for("slow", rep):
                    target = self.start_fresh(name)
                    self.record("slow", name, rep, self.runner.run(work.slow(target)))
                    self.fleet.stop(name)  # LiteLLM would go on reading the abandoned stream
                    self.settle(upstream)
        return self.finish()

    def start_fresh(self, name: str) -> Target:
        assert self.work is not None
        target = self.fleet.start(name)
        self.runner.run(self.work.warmup(target))
        time.sleep(1.0)  # let the warm-up's connections close before the "before" sample
        return target

    def hold_sizes(self) -> list[int]:
        sizes = list(self.sizes.hold_sizes)
        if not self.args.smoke:
            sizes = [int(s) for s in self.args.hold_sizes.split(",") if s.strip()]
        most = (self.nofile - FD_MARGIN) // 2
        for n in sizes:
            if n > most:
                print(
                    f"note: {n} held streams need {2 * n + FD_MARGIN} descriptors in the proxy, the hard "
                    f"RLIMIT_NOFILE is {self.nofile}: holding {most} instead",
                    flush=True,
                )
        return list(dict.fromkeys(min(n, most) for n in sizes))

    def finish(self) -> int:
        sizes = asdict(self.sizes)
        info = report.machine()
        text = report.render(self.results, sizes, with_checks=not self.args.smoke)
        head = f"Machine: {report.machine_line(info)}"
        print("\n" + head + "\n\n" + text, flush=True)
        failed_router = self.results.total_failed(ROUTER_TARGETS)
        failed_all = self.results.total_failed()
        payload = {
            "machine": info,
            "args": {k: str(v) for k, v in vars(self.args).items()},
            "sizes": sizes,
            "records": self.results.records,
            "checks": [asdict(c) for c in report.checks(self.results)],
            "markdown": text,
        }
        path = report.write_json(self.args.results_dir, payload)
        print(f"\nresults: {path}", flush=True)
        if self.args.markdown:
            self.args.markdown.write_text(head + "\n\n" + text + "\n")
        if failed_all:
            print(f"\n{failed_all} failed requests ({failed_router} router or direct); the first ones:")
            for r in self.results.records:
                if r["report"]["failed"]:
                    print(f"  {r['workload']} {r['target']} rep {r['rep'] + 1}: {r['report']['errors']}")
                for line in r["report"]["first_errors"]:
                    print(f"    {line}")
        if self.args.smoke:
            print("smoke: " + ("FAILED" if failed_all else "ok (correctness only; timings not checked)"))
            return 1 if failed_all else 0
        return 1 if failed_router else 0

    def close(self) -> None:
        try:
            self.runner.close()
        finally:
            self.fleet.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    nofile = raise_fd_limit()
    sizes = SMOKE
    if not args.smoke:
        sizes = replace(
            FULL,
            slow_seconds=args.slow_seconds,
            paced_streams=args.paced_streams,
            litellm_scale=args.litellm_scale,
            litellm_hold=args.litellm_hold,
        )
    bench = Bench(args, sizes, nofile)
    try:
        return bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr)
        return 130
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
