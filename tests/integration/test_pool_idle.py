"""Idle pooled upstream connections are closed when pool.idleTimeoutSecs passes, not when next taken
(hardening issue, defect 10): the old pool kept 206 connections open 33 s after a burst."""

from __future__ import annotations

import concurrent.futures
import os
import time

import httpx

from tests.router_process import RouterProcess


def upstream_sockets(pid: int, port: int) -> int:
    """ESTABLISHED TCP connections of ``pid`` to 127.0.0.1:``port`` (from /proc, no extra package)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    with open(f"/proc/{pid}/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if fields[3] == "01" and remote_port == port and fields[9] in inodes:
                count += 1
    return count


def test_idle_pooled_connections_close_after_the_idle_timeout(upstream):
    config = {"baseUrl": upstream.url, "pool": {"idleTimeoutSecs": 1}}
    with RouterProcess(config) as router:
        body = {"model": "m", "input": "x"}
        with concurrent.futures.ThreadPoolExecutor(20) as threads:
            answers = list(
                threads.map(lambda _: httpx.post(router.url + "/v1/embeddings", json=body), range(40))
            )
        assert all(a.status_code == 200 for a in answers)
        port = int(upstream.url.rsplit(":", 1)[1])
        assert upstream_sockets(router.pid, port) > 1  # the burst left several pooled
        burst_ended = time.monotonic()
        deadline = burst_ended + 10
        while upstream_sockets(router.pid, port) and time.monotonic() < deadline:
            time.sleep(0.1)  # polling a condition with a deadline, not waiting a fixed time
        assert upstream_sockets(router.pid, port) == 0, "pooled connections outlived idleTimeoutSecs"
        assert time.monotonic() - burst_ended < 5
        assert httpx.get(router.url + "/health").json()["upstream_pool"]["idle"] == 0
        # and the pool still works afterwards
        assert httpx.post(router.url + "/v1/embeddings", json=body).status_code == 200
