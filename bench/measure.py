"""Measurement helpers: CPU, RSS and write calls of a process tree from /proc (no psutil),
and percentiles."""

from __future__ import annotations

import os
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcTree:
    """CPU seconds (utime+stime) and VmRSS of some processes and all their descendants."""

    def __init__(self, pids: list[int]) -> None:
        self.roots = pids
        self.peak_rss_kb = 0

    def pids(self) -> set[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat", "rb") as f:
                        ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry))
        found: set[int] = set()
        todo = list(self.roots)
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo.extend(children.get(pid, ()))
        return found

    def sample(self) -> tuple[float, int]:
        cpu, rss = 0.0, 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                with open(f"/proc/{pid}/status", "rb") as f:
                    status = f.read()
            except OSError:
                continue
            cpu += (int(fields[11]) + int(fields[12])) / CLK_TCK
            at = status.find(b"VmRSS:")
            if at >= 0:
                rss += int(status[at + 6 :].split(None, 1)[0])
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        return cpu, rss

    def write_syscalls(self) -> int | None:
        """write/writev calls so far (``syscw`` in /proc/PID/io); None if not readable."""
        total = 0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/io", "rb") as f:
                    io = f.read()
            except OSError:
                return None
            at = io.find(b"syscw:")
            if at < 0:
                return None
            total += int(io[at + 6 :].split(None, 1)[0])
        return total


def pct(values: Any, q: float) -> float | None:
    """Nearest-rank percentile of a sequence (None when empty)."""
    if not len(values):
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))])


def ms_summary(values: Any) -> dict[str, float | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    top = max(values) if len(values) else None
    return {"p50": r(pct(values, 50)), "p99": r(pct(values, 99)), "max": r(top)}
