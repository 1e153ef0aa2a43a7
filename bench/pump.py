"""bench/pump.py: the floor of any Python proxy on uvloop: bytes in, bytes out, nothing parsed.

Each client connection gets its own upstream connection, and every read is written to the
other side as it is. It speaks no HTTP of its own: keep-alive works because both ends keep the
connection. Used by ``python -m bench.floor``, the ``rps`` workload and
``python -m bench.instructions --floor`` only; not a product.

``--parse`` also feeds every read, both ways, to an httptools parser whose callbacks keep the
request's URL and each message's headers and count its end: the least an HTTP-aware proxy on
this loop must do (it cannot route, pool or answer without message boundaries and heads), still
without building any bytes of its own. The router's cost over ``pump --parse`` is its own code.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop


class _Heads:
    """httptools callbacks that keep what a proxy needs of each message: URL, headers, its end."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.messages = 0

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        self.messages += 1
        self.headers = []


class _Upstream(asyncio.Protocol):
    def __init__(self, client: _Client, parse: bool) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(_Heads()) if parse else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.feed_data(data)
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, upstream_port: int, parse: bool) -> None:
        self.upstream_port = upstream_port
        self.upstream: _Upstream | None = None
        self.parse = parse
        self.parser = httptools.HttpRequestParser(_Heads()) if parse else None
        self.early: list[bytes] = []  # what the client sent before the upstream connection was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            port = self.upstream_port
            _, upstream = await loop.create_connection(lambda: _Upstream(self, self.parse), "127.0.0.1", port)
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
            return
        if self.parser is not None:
            self.parser.feed_data(data)
        self.upstream.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()


async def _serve(upstream_port: int, parse: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream_port, parse), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"READY http://127.0.0.1:{port}", flush=True)
    await asyncio.Future()  # until SIGTERM


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="bench/pump.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream-port", type=int, required=True)
    ap.add_argument("--parse", action="store_true", help="also parse every message, both ways (httptools)")
    args = ap.parse_args(argv)
    uvloop.run(_serve(args.upstream_port, args.parse))


if __name__ == "__main__":
    main()
