"""A tiny blocking HTTP/1.1 client over a raw socket, for what SDKs hide: chunk sizes, exact
bytes, closing mid-stream, reading slowly."""

from __future__ import annotations

import json
import socket
from typing import Any


class RawResponse:
    def __init__(self, sock: socket.socket, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buf = buffered
        self._keep_open = False
        head = self._read_until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding") == "chunked"

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self._buf += data
        return True

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buf:
            if not self._fill():
                raise ConnectionError(f"closed before {marker!r}; have {self._buf[:200]!r}")
        head, _, self._buf = self._buf.partition(marker)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._fill():
                raise ConnectionError("closed mid-chunk")
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def chunks(self):  # type: ignore[no-untyped-def]
        """Yield each HTTP chunk's data as sent (chunked responses only)."""
        assert self.chunked
        while True:
            size = int(self._read_until(b"\r\n").split(b";")[0], 16)
            if size == 0:
                self._read_until(b"\r\n")
                if not self._keep_open:
                    self.sock.close()
                return
            data = self._read_exact(size)
            self._read_exact(2)
            yield data

    def body(self) -> bytes:
        if self.chunked:
            return b"".join(self.chunks())
        length = int(self.headers.get("content-length", "0"))
        data = self._read_exact(length)
        if not self._keep_open:
            self.sock.close()
        return data

    def body_keep_open(self) -> bytes:
        """Read this response's body and leave the connection open for the next one."""
        self._keep_open = True
        return self.body()

    def next_response(self) -> RawResponse:
        """The next response on the same connection (keep-alive, pipelining, 100-continue)."""
        return RawResponse(self.sock, self._buf)

    def close(self) -> None:
        self.sock.close()

    def json(self) -> Any:
        return json.loads(self.body())


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 20.0,
    rcvbuf: int | None = None,
) -> RawResponse:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    all_headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json"}
    all_headers.update(headers or {})
    if body is not None:
        all_headers["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items()) + "\r\n"
    sock.sendall(head.encode() + (body or b""))
    return RawResponse(sock)


def sse_events(body: bytes) -> list[str]:
    """Split an SSE body into events (text of each, comments included), by blank lines."""
    text = body.decode().replace("\r\n", "\n").replace("\r", "\n")
    return [event for event in text.split("\n\n") if event]
