"""Run one of the benchmark's commands (``python -m bench...``) as its user would, for the smoke tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], str]:
    """The finished process and the tail of its output (for assertion messages)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("API_ROUTER_")}
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc, proc.stdout[-6000:] + proc.stderr[-6000:]
