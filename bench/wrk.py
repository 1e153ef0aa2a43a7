"""Workload 9, ``rps``: non-streamed requests at 64 connections, driven by ``wrk`` (Debian's
package), a load tool no one here wrote, so the request path is measured by someone else's
clock and counter.

wrk posts a small chat completion (5 tokens, ``"stream": false``) over keep-alive connections for
``rps_seconds``; a Lua ``done`` hook prints its totals and latency percentiles as one JSON line.
CPU per request is the proxy's own CPU (utime+stime of its process tree) over wrk's requests.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.measure import ProcTree
from bench.targets import Target

WRK = shutil.which("wrk")
WRK_HINT = "wrk is not installed: apt-get install -y wrk (workload rps is skipped)"
CONNECTIONS = 64
_LUA = """
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(auth)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK-JSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"socket_errors\\":%%d,\\"non_2xx\\":%%d," ..
    "\\"p50_us\\":%%d,\\"p99_us\\":%%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""
_RESULT = re.compile(r"^WRK-JSON (\{.*\})$", re.MULTILINE)


def lua_script(model: str, tokens: int, api_key: str | None) -> str:
    body = json.dumps(
        {
            "model": model,
            "stream": False,
            "messages": [{"role": "user", "content": "hi"}],
            "mock": {"tokens": tokens},
        }
    )
    auth = f'wrk.headers["Authorization"] = "Bearer {api_key}"' if api_key else ""
    return _LUA % {"body": json.dumps(body), "auth": auth}


async def run_wrk(
    target: Target, model: str, tokens: int, seconds: float, threads: int = 1, timeout_s: float = 2.0
) -> dict[str, Any]:
    """wrk against ``target`` for ``seconds``: its totals, and the proxy's CPU per request.
    ``timeout_s``: wrk's per-request timeout (its default, 2 s; longer for a proxy under valgrind)."""
    if WRK is None:
        raise RuntimeError(WRK_HINT)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(lua_script(model, tokens, target.api_key))
        argv = [WRK, f"-t{threads}", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s"]
        argv += [f"--timeout={max(1, round(timeout_s))}s", "-s", str(script)]
        argv.append(f"http://{target.host}:{target.port}/v1/chat/completions")
        tree = ProcTree([target.pid]) if target.pid is not None else None
        cpu_before = tree.sample()[0] if tree is not None else None
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
        cpu_after = tree.sample()[0] if tree is not None else None
    found = _RESULT.search(out.decode())
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.decode()[-500:]} {out.decode()[-500:]}")
    result: dict[str, Any] = json.loads(found.group(1))
    result["cpu_s"] = None if cpu_before is None or cpu_after is None else round(cpu_after - cpu_before, 3)
    return result
