"""``python -m bench.instructions`` counts the router's instructions per request under callgrind
(a few requests here: it checks the harness, not the count)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.instructions import valgrind_available

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not valgrind_available(), reason="valgrind is not installed")
def test_instruction_count_of_a_few_requests() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("API_ROUTER_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--requests", "20", "--warmup", "5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    output = proc.stdout[-4000:] + proc.stderr[-4000:]
    assert proc.returncode == 0, output
    match = re.search(r"router\s+([\d,]+)", proc.stdout)
    assert match, output
    per_request = int(match.group(1).replace(",", ""))
    assert 10_000 < per_request < 50_000_000, output  # counted, and per request
