"""A bounded soak (issue 6, promise 3): mixed traffic, then nothing may have leaked.

Normal streams, non-streamed answers, client aborts at random points (FIN and RST), upstream
resets mid-stream and slow readers, ~50 at a time. Afterwards (bounded wait): no stream open in
the router or at the upstream, the router's fds back at the baseline (±5, idle pooled upstream
connections not counted), RSS growth under a bound, and every stream that was neither aborted
nor reset complete. The engine is ``bench/soak.py`` (``python -m bench.soak`` runs it longer).

    SOAK_REQUESTS=100000 .venv/bin/pytest tests/integration/test_soak.py -q -s
"""

from __future__ import annotations

import json
import os
import random

import pytest

from bench.soak import ROUTER_CONFIG, soak, violations
from tests.router_process import RouterProcess
from tests.upstream_process import UpstreamProcess

REQUESTS = int(os.environ.get("SOAK_REQUESTS", "2000"))
CONCURRENCY = int(os.environ.get("SOAK_CONCURRENCY", "50"))
SEED = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(2**32))
RSS_LIMIT_KB = 20 * 1024 if REQUESTS <= 10_000 else 50 * 1024


@pytest.mark.timeout(max(180, REQUESTS // 50 + 120))
def test_soak_leaves_no_streams_fds_or_memory_behind() -> None:
    with (
        UpstreamProcess(tokens_per_second=1000) as upstream,
        RouterProcess({"baseUrl": upstream.url, **ROUTER_CONFIG}) as router,
    ):
        figures = soak(
            router,
            upstream,
            requests=REQUESTS,
            concurrency=CONCURRENCY,
            seed=SEED,
            warmup=min(500, max(100, REQUESTS // 4)),
        )
        print("\nsoak figures:", json.dumps(figures, indent=1))
        print(
            f"soak: {figures['requests']} requests in {figures['seconds']} s "
            f"({figures['requests_per_second']} req/s), aborts {figures['aborts']}, "
            f"resets {figures['resets']}, fds {figures['before']['fds']} -> {figures['after']['fds']} "
            f"(net of idle pool {figures['net_fds_before']} -> {figures['net_fds_after']}), "
            f"RSS {figures['before']['rss_kb']} -> {figures['after']['rss_kb']} KB, seed {SEED}"
        )
        assert router.proc.poll() is None, router.logs()[-3000:]
        assert "Traceback" not in router.logs(), router.logs()[-5000:]
        assert figures["requests"] == REQUESTS
        assert figures["aborts"] > 0 and figures["resets"] > 0  # the mix really happened
        assert not violations(figures, RSS_LIMIT_KB)
