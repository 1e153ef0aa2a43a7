"""Start the router as a real process on 127.0.0.1, wait for its ready line, clean up."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

_READY = re.compile(r"api-router listening on (https?)://([\d.]+):(\d+)")


class RouterProcess:
    def __init__(
        self,
        config: dict[str, Any] | None = None,
        *,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        ready_timeout: float = 20.0,
    ) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="api-router-test-")
        argv = [sys.executable, "-m", "api_router", "serve", "--host", "127.0.0.1", "--port", "0"]
        if config is not None:
            self.config_path = Path(self._dir.name) / "config.json"
            self.config_path.write_text(json.dumps(config))
            argv += ["--config", str(self.config_path)]
        argv += list(args)
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("API_ROUTER_", "DEFAULT_API_KEY"))
        }
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, text=True, bufsize=1
        )
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        self._pumps = [
            threading.Thread(
                target=self._pump, args=(self.proc.stdout, lines, self.stdout_lines), daemon=True
            ),
            threading.Thread(
                target=self._pump, args=(self.proc.stderr, None, self.stderr_lines), daemon=True
            ),
        ]
        for pump in self._pumps:
            pump.start()
        try:
            while True:
                line = lines.get(timeout=ready_timeout)
                if line is None:
                    raise RuntimeError(f"router exited before ready: {''.join(self.stderr_lines)}")
                match = _READY.search(line)
                if match:
                    self.scheme = match.group(1)
                    self.port = int(match.group(3))
                    break
        except BaseException:
            self.close()
            raise
        self.url = f"{self.scheme}://127.0.0.1:{self.port}"

    @staticmethod
    def _pump(stream: Any, into: queue.Queue[str | None] | None, keep: list[str] | None) -> None:
        for line in stream:
            if into is not None:
                into.put(line)
            if keep is not None:
                keep.append(line)
        if into is not None:
            into.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def logs(self) -> str:
        return "".join(self.stderr_lines)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for pump in self._pumps:  # what the process wrote before it ended, all of it (reads end at EOF)
            pump.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        self._dir.cleanup()

    def __enter__(self) -> RouterProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
