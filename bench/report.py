"""Median tables, ratios to nginx, the targets table, the machine description, results JSON."""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.targets import LITELLM_VENV, NGINX_BIN, nginx_available

TARGET_ORDER = (
    "direct",
    "router",
    "router+access",
    "router+keys",
    "router+translated",
    "router+features",
    "router+traces",
    "router-2w",
    "pump",
    "pump+parse",
    "nginx",
    "nginx-nolog",
    "nginx-2w",
    "litellm",
)
RATIO, MINUS_DIRECT = "ratio", "minus_direct"
REFERENCE = "—"  # a check's target when it is a figure to read the others by, not a target
# workload -> columns (figure key, header, kind): kind "" = the median, "ratio" = the median
# and its ratio to nginx's, "minus_direct" = the median minus the direct run's median
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "chunk": [
        ("cpu_us_per_event", "CPU µs/event", RATIO),
        ("events_per_s", "events/s", RATIO),
        ("cpu_s", "CPU s", ""),
        ("writes_per_event", "write calls/event", RATIO),
    ],
    "paced": [
        ("cpu_pct", "CPU %", RATIO),
        ("gap_p50_ms", "gap p50 ms", ""),
        ("gap_p99_ms", "gap p99 ms", ""),
        ("gap_p99_ms", "gap p99 added ms", MINUS_DIRECT),
        ("events_per_s", "events/s", ""),
    ],
    "ttft": [
        ("ttft_p50_ms", "TTFT p50 ms", ""),
        ("ttft_p99_ms", "TTFT p99 ms", ""),
        ("ttft_p50_ms", "p50 added ms", MINUS_DIRECT),
        ("ttft_p99_ms", "p99 added ms", MINUS_DIRECT),
        ("cpu_ms_per_request", "CPU ms/request", RATIO),
    ],
    "hold": [
        ("streams", "streams", ""),
        ("established_s", "open in s", ""),
        ("rss_mb_before", "RSS before MiB", ""),
        ("rss_mb_held", "RSS held MiB", ""),
        ("kb_per_stream", "KB/stream", RATIO),
    ],
    "slow": [
        ("client_mb", "client read MB", ""),
        ("upstream_mb", "upstream wrote MB", ""),
        ("upstream_pauses", "upstream pauses", ""),
        ("rss_growth_kb", "RSS growth KB", RATIO),
    ],
    "disconnect": [
        ("close_p50_ms", "close p50 ms", ""),
        ("close_p99_ms", "close p99 ms", RATIO),
        ("never_closed", "never closed", ""),
    ],
}
COLUMNS["rps"] = [
    ("requests_per_s", "requests/s", RATIO),
    ("cpu_us_per_request", "CPU µs/request", RATIO),
    ("p50_ms", "latency p50 ms", ""),
    ("p50_ms", "p50 added ms", MINUS_DIRECT),
    ("p99_ms", "p99 added ms", MINUS_DIRECT),
]
COLUMNS["features"] = COLUMNS["chunk"]
COLUMNS["workers"] = COLUMNS["chunk"]
TITLES = {
    "chunk": "1. per-event cost: {chunk_streams} streams x {chunk_events} events, "
    "{chunk_payload}-byte payloads, as fast as possible",
    "paced": "2. realistic pacing: {paced_streams} streams, one event every {paced_interval_ms:g} ms",
    "ttft": "3. TTFT: {ttft_requests} sequential streaming requests (keep-alive)",
    "hold": "4. memory: {n} streams held open, one event every {hold_interval_ms:g} ms (fresh proxy)",
    "slow": "5. slow reader: a {slow_mb} MB stream read at {slow_mbps:g} MB/s for {slow_seconds:g} s "
    "(fresh proxy)",
    "disconnect": "6. disconnect: {disconnect_streams} streams closed after {disconnect_after} events",
    "features": "7. per-event cost, router with every feature on (ratio to nginx's run of 1.)",
    "workers": "8. per-event cost, router and nginx with two workers"
    " (ratio to nginx's run of 1.; {cpus} CPUs)",
    "rps": "9. requests/s: non-streamed chat completions ({rps_tokens} tokens), wrk at 64 connections"
    " for {rps_seconds:g} s (router: no access line; router+access: access line at info, text;"
    " router+keys: gateway keys on (clients), no access line; router+translated: to an Anthropic backend;"
    " router+features: access line and model mapping; pump: bench/pump.py, a Python byte pump on uvloop,"
    " pump+parse: the same parsing every message both ways, a Python proxy's floor;"
    " nginx: access_log on, nginx-nolog: off, nginx-2w: two workers)",
}
BASE = {"features": "chunk", "workers": "chunk"}  # where the nginx / direct baselines of a workload come from


class Results:
    """All run records; medians by (workload, target, figure)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(
        self, workload: str, target: str, rep: int, figures: dict[str, Any], report: dict[str, Any]
    ) -> None:
        self.records.append(
            {"workload": workload, "target": target, "rep": rep, "figures": figures, "report": report}
        )

    def workloads(self) -> list[str]:
        return list(dict.fromkeys(r["workload"] for r in self.records))

    def targets(self, workload: str) -> list[str]:
        found = {r["target"] for r in self.records if r["workload"] == workload}
        return [t for t in TARGET_ORDER if t in found]

    def median(self, workload: str, target: str, key: str) -> float | None:
        values = [r["figures"][key] for r in self._of(workload, target) if r["figures"].get(key) is not None]
        return statistics.median(values) if values else None

    def failed(self, workload: str, target: str) -> int:
        return sum(r["report"]["failed"] for r in self._of(workload, target))

    def reps(self, workload: str, target: str) -> int:
        return len(self._of(workload, target))

    def _of(self, workload: str, target: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["workload"] == workload and r["target"] == target]

    def total_failed(self, targets: tuple[str, ...] | None = None) -> int:
        return sum(r["report"]["failed"] for r in self.records if targets is None or r["target"] in targets)


def fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, int) or abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    if abs(v) >= 100:
        return f"{v:.0f}{unit}"
    if abs(v) >= 10:
        return f"{v:.1f}{unit}"
    return f"{v:.2f}{unit}" if abs(v) >= 0.1 else f"{v:.3f}{unit}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def table(res: Results, workload: str, title: str) -> str:
    kind = "hold" if workload.startswith("hold") else workload
    cols = COLUMNS[kind]
    base = BASE.get(workload, workload)
    headers = ["target"]
    for _, header, how in cols:
        headers += [header, "÷ nginx"] if how == RATIO else [header]
    headers += ["reps", "failed"]
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for target in res.targets(workload):
        row = [target]
        for key, _, how in cols:
            value = res.median(workload, target, key)
            if how == MINUS_DIRECT:
                direct = res.median(base, "direct", key)
                diff = None if direct is None else _diff(value, direct)
                row.append("—" if target == "direct" else fmt(diff))
            else:
                row.append(fmt(value))
            if how == RATIO:
                r = _ratio(value, res.median(base, "nginx", key))
                row.append("—" if r is None else f"{r:.2f}x")
        row += [str(res.reps(workload, target)), str(res.failed(workload, target))]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _diff(a: float | None, b: float) -> float | None:
    return None if a is None else a - b


@dataclass
class Check:
    name: str
    value: str
    target: str
    ok: bool | None  # None: not measured in this run


def checks(res: Results) -> list[Check]:
    m = res.median
    out: list[Check] = []

    def add(
        name: str, value: float | None, target: str, test: Callable[[float], bool], unit: str = ""
    ) -> None:
        out.append(Check(name, fmt(value, unit), target, None if value is None else test(value)))

    add(
        "CPU/event, features on ÷ nginx",
        _ratio(m("features", "router+features", "cpu_us_per_event"), m("chunk", "nginx", "cpu_us_per_event")),
        "≤ 1.0x",
        lambda v: v <= 1.0,
        "x",
    )
    add(
        "CPU/event, traces on ÷ features on",
        _ratio(
            m("features", "router+traces", "cpu_us_per_event"),
            m("features", "router+features", "cpu_us_per_event"),
        ),
        "≤ 1.05x",
        lambda v: v <= 1.05,
        "x",
    )
    add(
        "CPU/request (rps), router+features ÷ nginx",
        _ratio(m("rps", "router+features", "cpu_us_per_request"), m("rps", "nginx", "cpu_us_per_request")),
        "≤ 1.5x",
        lambda v: v <= 1.5,
        "x",
    )
    add(
        "CPU/event, LiteLLM ÷ router",
        _ratio(m("chunk", "litellm", "cpu_us_per_event"), m("chunk", "router", "cpu_us_per_event")),
        "≥ 10x",
        lambda v: v >= 10,
        "x",
    )
    direct50, direct99 = m("ttft", "direct", "ttft_p50_ms"), m("ttft", "direct", "ttft_p99_ms")
    router50, router99 = m("ttft", "router", "ttft_p50_ms"), m("ttft", "router", "ttft_p99_ms")
    nginx50 = m("ttft", "nginx", "ttft_p50_ms")
    over50 = None if router50 is None or direct50 is None else router50 - direct50
    allowed = None if nginx50 is None or direct50 is None else nginx50 - direct50 + 0.05
    out.append(
        Check(
            "TTFT overhead p50 (router - direct)",
            fmt(over50, " ms"),
            "≤ nginx's + 0.05 ms" + ("" if allowed is None else f" = {fmt(allowed, ' ms')}"),
            None if over50 is None or allowed is None else over50 <= allowed,
        )
    )
    over99 = None if router99 is None or direct99 is None else router99 - direct99
    add("TTFT overhead p99 (router - direct)", over99, "≤ 0.5 ms", lambda v: v <= 0.5, " ms")
    for workload in res.workloads():
        if workload.startswith("hold"):
            n = m(workload, "router", "streams")
            label = f"RSS per stream, {workload[4:]} held" + ("" if n is None else f" ({n:.0f} open)")
            add(label, m(workload, "router", "kb_per_stream"), "≤ 6 KB", lambda v: v <= 6, " KB")
    cpus = os.cpu_count() or 0
    add(
        "events/s, 2 workers ÷ 1 worker",
        _ratio(m("workers", "router-2w", "events_per_s"), m("chunk", "router", "events_per_s")),
        "≥ 1.7x" + (f" (needs CPUs to spare: this machine has {cpus})" if cpus < 4 else ""),
        lambda v: v >= 1.7,
        "x",
    )
    growth = m("slow", "router", "rss_growth_kb")
    add("RSS growth, slow reader", growth, "≤ 1024 KB", lambda v: v <= 1024, " KB")
    add("upstream paused, slow reader", m("slow", "router", "upstream_pauses"), "> 0", lambda v: v > 0)
    close99 = m("disconnect", "router", "close_p99_ms")
    add("abort → upstream closed p99", close99, "≤ 20 ms", lambda v: v <= 20, " ms")
    per_request_checks(res.median, add)
    return out


def per_request_checks(m: Callable[[str, str, str], float | None], add: Callable[..., None]) -> None:
    """Issue 15's targets: the per-request path against nginx, the access line, two workers."""

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    add(
        "CPU/request (rps), router (no access line) ÷ nginx (access_log off)",
        _ratio(m("rps", "router", "cpu_us_per_request"), m("rps", "nginx-nolog", "cpu_us_per_request")),
        "≤ 1.5x",
        lambda v: v <= 1.5,
        "x",
    )
    add(
        "CPU/request (ttft), router ÷ nginx",
        _ratio(m("ttft", "router", "cpu_ms_per_request"), m("ttft", "nginx", "cpu_ms_per_request")),
        "≤ 1.5x",
        lambda v: v <= 1.5,
        "x",
    )
    add(
        "access line CPU/request (rps: router+access - router)",
        minus(m("rps", "router+access", "cpu_us_per_request"), m("rps", "router", "cpu_us_per_request")),
        "≤ 10 µs",
        lambda v: v <= 10,
        " µs",
    )
    add(
        "abort → upstream closed p50, router - nginx",
        minus(m("disconnect", "router", "close_p50_ms"), m("disconnect", "nginx", "close_p50_ms")),
        "≤ 0.5 ms",
        lambda v: v <= 0.5,
        " ms",
    )
    add(
        "CPU/event, 2 workers ÷ 1 worker",
        _ratio(m("workers", "router-2w", "cpu_us_per_event"), m("chunk", "router", "cpu_us_per_event")),
        "≤ 1.05x",
        lambda v: v <= 1.05,
        "x",
    )
    add(
        "CPU/event, nginx 2 workers ÷ 1 worker (the machine's share of the above)",
        _ratio(m("workers", "nginx-2w", "cpu_us_per_event"), m("chunk", "nginx", "cpu_us_per_event")),
        REFERENCE,
        lambda v: True,
        "x",
    )
    add(
        "CPU/request (rps), 2 workers ÷ 1 worker",
        _ratio(m("rps", "router-2w", "cpu_us_per_request"), m("rps", "router", "cpu_us_per_request")),
        "≤ 1.05x",
        lambda v: v <= 1.05,
        "x",
    )
    add(
        "CPU/request (rps), nginx 2 workers ÷ 1 worker (the machine's share of the above)",
        _ratio(m("rps", "nginx-2w", "cpu_us_per_request"), m("rps", "nginx", "cpu_us_per_request")),
        REFERENCE,
        lambda v: True,
        "x",
    )
    add(
        "CPU/request (rps), pump+parse ÷ nginx (access_log off): a Python proxy's floor",
        _ratio(m("rps", "pump+parse", "cpu_us_per_request"), m("rps", "nginx-nolog", "cpu_us_per_request")),
        REFERENCE,
        lambda v: True,
        "x",
    )


def checks_table(items: list[Check]) -> str:
    lines = ["### Targets (router)", "", "| figure | measured | target | met |", "|---|---|---|---|"]
    for c in items:
        met = "not run" if c.ok is None else ("yes" if c.ok else "**NO**")
        met = "(no target)" if c.target == REFERENCE and c.ok is not None else met
        lines.append(f"| {c.name} | {c.value} | {c.target} | {met} |")
    return "\n".join(lines)


def render(res: Results, sizes: dict[str, Any], with_checks: bool = True) -> str:
    parts = []
    fill = {
        **sizes,
        "cpus": os.cpu_count(),
        "slow_mb": round(sizes["slow_bytes"] / 1e6),
        "slow_mbps": sizes["slow_bps"] / 1e6,
    }
    for workload in res.workloads():
        if workload.startswith("hold"):
            title = TITLES["hold"].format(n=workload[4:], **fill)
        else:
            title = TITLES[workload].format(**fill)
        parts.append(table(res, workload, title))
    if with_checks:
        parts.append(checks_table(checks(res)))
    return "\n\n".join(parts)


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lite = LITELLM_VENV / "bin" / "python"
    root = str(LITELLM_VENV.parent.parent)
    commit = _run(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    diff = _run(["git", "-C", root, "diff", "HEAD", "--", "src"]) if commit else ""
    if diff:
        commit += f" + uncommitted changes in src/ (diff sha1 {hashlib.sha1(diff.encode()).hexdigest()[:8]})"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _run([NGINX_BIN, "-v"]).replace("nginx version: ", "") if nginx_available() else None,
        "litellm": _run([str(lite), "-c", "import importlib.metadata as m; print(m.version('litellm'))"])
        if lite.exists()
        else None,
        "loadavg": os.getloadavg(),
        "commit": commit or None,
        "build": _router_build(),
    }


def _router_build() -> str:
    """Whether the router the benchmark starts runs its mypyc-compiled modules (setup.py)."""
    spec = importlib.util.find_spec("api_router.net.forward")
    origin = spec.origin if spec is not None else None
    return "compiled with mypyc" if origin and origin.endswith(".so") else "plain Python"


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"{info['date']}: {info['nproc']} CPUs ({info['cpu']}), Linux {info['kernel']}, "
        f"Python {info['python']}"
        + (f", nginx {info['nginx']}" if info.get("nginx") else "")
        + (f", LiteLLM {info['litellm']}" if info.get("litellm") else "")
        + (f"; router at {info['commit']}" if info.get("commit") else "")
        + (f", {info['build']}" if info.get("build") else "")
    )


def write_json(directory: Path, payload: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"bench-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=1, default=str))
    return path
