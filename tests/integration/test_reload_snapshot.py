"""A reload builds a whole new runtime before it changes anything (runtime.py): a config that
fails while being built leaves the running one untouched, and an exchange in flight keeps the
config it started with (the layers issue, defect 3)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.integration.conftest import chat
from tests.integration.test_streaming import wait_for
from tests.router_process import RouterProcess


def _reload(router: RouterProcess, config: dict[str, Any], expect: str) -> None:
    before = router.logs().count(expect)
    router.config_path.write_text(json.dumps(config))
    router.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: router.logs().count(expect) > before, what=f"{expect!r} in the log")


def test_a_config_that_fails_while_being_built_changes_nothing(upstream: Any, tmp_path: Path) -> None:
    # The file exists, so the config loads and validates; that it holds no certificate is found
    # only when the TLS context is built. The old App.apply had by then replaced the router (now
    # routing to the https backend), stopped the old health checks and started new ones.
    not_a_cert = tmp_path / "ca.pem"
    not_a_cert.write_text("this is not a certificate\n")
    config = {"baseUrl": upstream.url, "modelMapping": {"gpt-4o": "kept"}}
    with RouterProcess(config) as router:
        _reload(
            router,
            {"baseUrl": "https://127.0.0.1:9", "upstreamTls": {"caFile": str(not_a_cert)}},
            "refused, keeping the running config",
        )
        answer = httpx.post(
            router.url + "/v1/chat/completions",
            json=chat(stream=False),
            headers={"x-request-id": "after-refused"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        seen = [r for r in upstream.requests() if ["x-request-id", "after-refused"] in r["headers"]]
        assert [r["model"] for r in seen] == ["kept"], "the old runtime stays whole"
        health = httpx.get(router.url + "/health", timeout=5).json()
        assert health["config"] == str(router.config_path)
        assert upstream.url.removeprefix("http://") in json.dumps(health["upstream"])


def test_an_exchange_in_flight_keeps_its_read_timeout(upstream: Any) -> None:
    # Before, the upstream-silence watchdog read the live app.read_timeout: a reload that
    # shortened it cut a stream that was within the timeout it started with. Heartbeats every
    # 0.2 s wake the watchdog during the stall.
    config = {
        "baseUrl": upstream.url,
        "timeouts": {"readSecs": 5},
        "streamConfig": {"heartbeatIntervalSecs": 0.2},
    }
    with RouterProcess(config) as router:
        body = chat({"tokens": 4, "interval_ms": 0, "stall_after": 1, "stall_s": 1.5})
        with httpx.stream("POST", router.url + "/v1/chat/completions", json=body, timeout=20) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            for line in lines:
                if '"content":"t' in line:
                    break  # the first token is here; the upstream now stalls for 1.5 s
            _reload(router, {**config, "timeouts": {"readSecs": 0.5}}, "config reloaded (SIGHUP)")
            rest = list(lines)
        assert "data: [DONE]" in rest, rest
        assert not any(line.startswith("event: error") for line in rest), rest
        # new exchanges take the new timeout
        stalled = chat({"tokens": 4, "interval_ms": 0, "stall_after": 1, "stall_s": 1.5})
        with httpx.stream("POST", router.url + "/v1/chat/completions", json=stalled, timeout=20) as resp:
            text = "\n".join(resp.iter_lines())
        assert "upstream_timeout" in text or "event: error" in text, text
