"""net/hangup.py on real loopback sockets under uvloop: a dropped connection's FIN goes out at
once, where uvloop's own abort() sends it only at the loop's next turn."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator

import pytest
import uvloop

from api_router.net.hangup import send_fin_now
from tests.net.fakes import FakeTransport


@pytest.fixture
def connected() -> Iterator[tuple[asyncio.AbstractEventLoop, asyncio.Transport, socket.socket]]:
    """A uvloop transport connected to a plain socket (the peer), on 127.0.0.1."""
    loop = uvloop.new_event_loop()
    server = socket.create_server(("127.0.0.1", 0))
    host, port = server.getsockname()
    transport, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, host, port))
    peer, _ = server.accept()
    peer.setblocking(False)
    try:
        yield loop, transport, peer
    finally:
        transport.abort()
        loop.run_until_complete(asyncio.sleep(0))
        peer.close()
        server.close()
        loop.close()


def test_uvloop_sends_an_aborted_connections_fin_only_at_its_next_turn(connected) -> None:
    """The premise: abort() alone leaves the socket open until the loop runs its callbacks."""
    loop, transport, peer = connected
    transport.abort()
    with pytest.raises(BlockingIOError):
        peer.recv(1)  # no FIN yet
    loop.run_until_complete(asyncio.sleep(0))
    assert peer.recv(1) == b""


def test_send_fin_now_reaches_the_peer_before_the_loop_turns(connected) -> None:
    loop, transport, peer = connected
    send_fin_now(transport)
    assert peer.recv(1) == b""  # EOF already: no loop turn ran since
    transport.abort()  # the transport still owns its descriptor and closes it as before
    loop.run_until_complete(asyncio.sleep(0))
    assert transport.is_closing()


def test_send_fin_now_twice_raises_nothing(connected) -> None:
    _, transport, peer = connected
    send_fin_now(transport)
    send_fin_now(transport)  # shutdown of a shut socket
    assert peer.recv(1) == b""


def test_send_fin_now_after_the_peer_reset_raises_nothing(connected) -> None:
    _, transport, peer = connected
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # linger 0: an RST
    send_fin_now(transport)


def test_send_fin_now_on_a_transport_without_a_socket_does_nothing() -> None:
    send_fin_now(FakeTransport())  # type: ignore[arg-type]
