"""The benchmark harness still works: ``python -m bench --smoke`` starts the mock upstream, the
router (two configs) and nginx if it is installed (skipped otherwise), streams a few tokens
through each workload and checks correctness only (every token, in order; no failures)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("API_ROUTER_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = proc.stdout[-6000:] + proc.stderr[-6000:]
    assert proc.returncode == 0, output
    assert "smoke: ok" in proc.stdout, output
    assert "workers     router-2w" in proc.stdout, output  # the --workers 2 router ran workload 8
    assert len(list(tmp_path.glob("bench-*.json"))) == 1
