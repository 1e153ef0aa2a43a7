"""The benchmark harness still works: ``python -m bench --smoke`` starts the mock upstream, the
router (two configs) and nginx if it is installed (skipped otherwise), streams a few tokens
through each workload and checks correctness only (every token, in order; no failures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench_run import run_bench


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path: Path) -> None:
    proc, output = run_bench("bench", "--smoke", "--results-dir", str(tmp_path), timeout=240)
    assert proc.returncode == 0, output
    assert "smoke: ok" in proc.stdout, output
    assert "workers     router-2w" in proc.stdout, output  # the --workers 2 router ran workload 8
    assert len(list(tmp_path.glob("bench-*.json"))) == 1


@pytest.mark.timeout(120)
def test_floor_compares_the_router_with_a_python_byte_pump() -> None:
    proc, output = run_bench("bench.floor", "--reps", "1", "--requests", "10", "--no-nginx", timeout=100)
    assert proc.returncode == 0, output
    rows = {line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert {"direct", "pump", "pump+parse", "router"} <= rows, output
