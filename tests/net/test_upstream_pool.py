"""UpstreamConnection and UpstreamPool on a fake transport: a connection goes back to the pool
only from a clean state, so no exchange ever reads bytes that answered another one."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from api_router.net.upstream import UpstreamConnection, UpstreamPool
from api_router.targets import Origin
from tests.net.fakes import FakeTransport, RecordingListener

ORIGIN = Origin("http", "127.0.0.1", 9, "")


def response(body: bytes, *, extra_headers: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra_headers, body)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # UpstreamPool.release reads the running loop's clock
    yield loop
    asyncio.set_event_loop(None)
    loop.close()


def feed(conn: UpstreamConnection, data: bytes) -> None:
    """What the loop does on a read: fill the protocol's buffer, then tell it how much arrived."""
    while data:
        view = conn.get_buffer(len(data))
        n = min(len(view), len(data))
        view[:n] = data[:n]
        conn.buffer_updated(n)
        data = data[n:]


class PoolingListener(RecordingListener):
    """Releases the connection when its response completes, as the Forwarder does."""

    def __init__(self, pool: UpstreamPool, conn: UpstreamConnection) -> None:
        super().__init__()
        self.pool, self.conn = pool, conn

    def upstream_done(self, keep_alive: bool) -> None:
        super().upstream_done(keep_alive)
        if keep_alive:
            self.pool.release(self.conn)


def borrowed(loop: asyncio.AbstractEventLoop) -> tuple[UpstreamPool, UpstreamConnection, FakeTransport]:
    pool = UpstreamPool(ssl_context=None, connect_timeout=1.0)
    conn = UpstreamConnection(pool, ORIGIN)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return pool, conn, transport


def run(loop: asyncio.AbstractEventLoop, step: object) -> None:
    async def body() -> None:
        assert callable(step)
        step()

    loop.run_until_complete(body())


def test_a_clean_response_returns_the_connection_to_the_pool(loop):
    pool, conn, transport = borrowed(loop)

    def step() -> None:
        conn.bind(PoolingListener(pool, conn), 8192)
        feed(conn, response(b"ok"))

    run(loop, step)
    assert pool.idle_count == 1 and not transport.aborted
    assert pool.take_idle(ORIGIN, loop.time()) is conn


@pytest.mark.parametrize("extra", [response(b"POISON"), b"HTTP/1.1 200 OK\r\nContent-Len", b"junk\r\n"])
def test_bytes_after_the_response_in_the_same_read_discard_the_connection(loop, extra):
    pool, conn, transport = borrowed(loop)
    listener = PoolingListener(pool, conn)

    def step() -> None:
        conn.bind(listener, 8192)
        feed(conn, response(b"mine") + extra)

    run(loop, step)
    assert listener.body == b"mine"
    assert transport.aborted and conn.closed
    assert pool.idle_count == 0 and pool.take_idle(ORIGIN, loop.time()) is None


def test_bytes_after_the_response_split_across_reads_discard_the_connection(loop):
    """The extra response arrives with the end of the first in one read, its rest in the next."""
    pool, conn, _ = borrowed(loop)
    listener = PoolingListener(pool, conn)
    wire = response(b"mine") + response(b"POISON")

    def step() -> None:
        conn.bind(listener, 8192)
        cut = len(response(b"mine")) + 5
        feed(conn, wire[:cut])
        if not conn.closed:
            feed(conn, wire[cut:])

    run(loop, step)
    assert listener.body == b"mine" and conn.closed and pool.idle_count == 0


@pytest.mark.parametrize("extra", [response(b"POISON"), b"HTTP/1.1 200 OK\r\n", b"\r\n"])
def test_bytes_on_an_idle_pooled_connection_discard_it(loop, extra):
    pool, conn, transport = borrowed(loop)

    def step() -> None:
        conn.bind(PoolingListener(pool, conn), 8192)
        feed(conn, response(b"mine"))
        assert pool.idle_count == 1
        feed(conn, extra)

    run(loop, step)
    assert transport.aborted and pool.idle_count == 0
    assert pool.take_idle(ORIGIN, loop.time()) is None


def test_an_interim_response_is_not_a_second_response(loop):
    pool, conn, transport = borrowed(loop)
    listener = PoolingListener(pool, conn)

    def step() -> None:
        conn.bind(listener, 8192)
        feed(conn, b"HTTP/1.1 100 Continue\r\n\r\n" + response(b"mine"))

    run(loop, step)
    assert listener.body == b"mine" and not transport.aborted and pool.idle_count == 1


def test_a_pooled_connection_serves_the_next_borrower_cleanly(loop):
    pool, conn, transport = borrowed(loop)
    first, second = PoolingListener(pool, conn), PoolingListener(pool, conn)

    def step() -> None:
        conn.bind(first, 8192)
        feed(conn, response(b"one"))
        again = pool.take_idle(ORIGIN, loop.time())
        assert again is conn
        conn.bind(second, 8192)
        feed(conn, response(b"two"))

    run(loop, step)
    assert (first.body, second.body) == (b"one", b"two")
    assert not transport.aborted and pool.idle_count == 1


def test_a_larger_buffer_size_elsewhere_leaves_streams_in_flight_readable(loop):
    """Layers issue, defect 1: a route with a larger bufferSize released the shared read views
    that live connections still held, so their next read failed (``get_buffer`` error)."""
    pool, small, _ = borrowed(loop)
    _, large, _ = borrowed(loop)
    first, second = PoolingListener(pool, small), PoolingListener(pool, large)

    def step() -> None:
        small.bind(first, 4096)
        feed(small, b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nhalf")
        large.bind(second, 1 << 20)  # a size larger than any seen before
        feed(large, response(b"big"))
        feed(small, b"done")  # the stream in flight reads on

    run(loop, step)
    assert first.body == b"halfdone" and second.body == b"big"
