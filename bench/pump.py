"""bench/pump.py: the floor of any Python proxy on uvloop: bytes in, bytes out, nothing parsed.

Each client connection gets its own upstream connection, and every read is written to the
other side as it is. It speaks no HTTP of its own: keep-alive works because both ends keep the
connection. Used by ``python -m bench.floor`` only; not a product.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: _Upstream | None = None
        self.early: list[bytes] = []  # what the client sent before the upstream connection was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            port = self.upstream_port
            _, upstream = await loop.create_connection(lambda: _Upstream(self), "127.0.0.1", port)
        except OSError:
            self.transport.close()
            return
        self.upstream = upstream
        for data in self.early:
            self.data_received(data)
        self.early = []

    def data_received(self, data: bytes) -> None:
        if self.upstream is None or self.upstream.transport is None:
            self.early.append(data)
        else:
            self.upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def _serve(upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream_port), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"READY http://127.0.0.1:{port}", flush=True)
    await asyncio.Future()  # until SIGTERM


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench/pump.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream-port", type=int, required=True)
    uvloop.run(_serve(ap.parse_args(argv).upstream_port))


if __name__ == "__main__":
    main()
