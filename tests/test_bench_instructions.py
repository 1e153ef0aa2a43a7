"""``python -m bench.instructions`` counts the router's instructions per request under callgrind
(a few requests here: it checks the harness, not the count)."""

from __future__ import annotations

import re

import pytest

from bench.instructions import valgrind_available
from tests.bench_run import run_bench


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(not valgrind_available(), reason="valgrind is not installed")
def test_instruction_count_of_a_few_requests() -> None:
    proc, output = run_bench("bench.instructions", "--requests", "20", "--warmup", "5", timeout=380)
    assert proc.returncode == 0, output
    match = re.search(r"router\s+([\d,]+)", proc.stdout)
    assert match, output
    per_request = int(match.group(1).replace(",", ""))
    assert 10_000 < per_request < 50_000_000, output  # counted, and per request
