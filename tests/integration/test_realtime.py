"""WebSocket through the Realtime route (endpoints issue): ``Upgrade: websocket`` on ``/v1/realtime``
is proxied to the upstream's WebSocket (the mock's echo, mock/websocket.py) with the router's
credentials, then bytes flow both ways; a close on either side closes the other. Other upgrades
stay refused; an upstream that refuses the upgrade is answered for; one that is down is a 502.

The client is the ``websockets`` library's sync client; every wait is bounded (``open_timeout``,
``recv(timeout=...)``, the mock's ``/_websocket`` which answers once a session has ended).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import threading
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.integration.conftest import chat
from tests.integration.test_streaming import wait_for
from tests.rawhttp import RawResponse
from tests.router_process import RouterProcess
from tests.tls_files import tls_files
from tests.upstream_process import UpstreamProcess

ROUTER_KEY = "sk-router-realtime-4e1b"  # the router's provider key (apiKeyEnv)
CLIENT_KEY = "sk-client-own-9d7a"  # what the client sends: must never reach the upstream
WAIT_S = 10.0


@pytest.fixture
def router(make_router: Any) -> Any:
    return make_router({"apiKeyEnv": "REALTIME_KEY", "logFormat": "json"}, env={"REALTIME_KEY": ROUTER_KEY})


def ws_url(router: Any, path: str = "/v1/realtime") -> str:
    return router.url.replace("http", "ws", 1) + path + "?model=gpt-4o-realtime-preview"


def open_session(router: Any, request_id: str, path: str = "/v1/realtime") -> ClientConnection:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "X-Request-ID": request_id}
    return connect(
        ws_url(router, path), additional_headers=headers, open_timeout=WAIT_S, close_timeout=WAIT_S
    )


def seen_by_upstream(upstream: UpstreamProcess, request_id: str) -> dict[str, str]:
    found = [r for r in upstream.requests() if dict(r["headers"]).get("x-request-id") == request_id]
    assert len(found) == 1, (request_id, found)
    return dict(found[0]["headers"])


def test_messages_both_ways_with_the_routers_key(router: Any, upstream: UpstreamProcess) -> None:
    large = os.urandom(256 * 1024)  # 32 times the route's bufferSize (8 KiB): backpressure both ways
    with open_session(router, "rt-both-ways") as ws:
        assert ws.response is not None and ws.response.status_code == 101
        assert ws.response.headers["x-request-id"] == "rt-both-ways"
        for message in ("hello", "ünïcode ✓", b"\x00\x01\x02", large, "x" * 100_000):
            ws.send(message)
            assert ws.recv(timeout=WAIT_S) == message
    headers = seen_by_upstream(upstream, "rt-both-ways")
    assert headers["authorization"] == f"Bearer {ROUTER_KEY}"
    assert CLIENT_KEY not in json.dumps(headers)
    assert headers["upgrade"].lower() == "websocket" and "upgrade" in headers["connection"].lower()
    assert headers["sec-websocket-version"] == "13"
    record = upstream.websocket_ended("rt-both-ways", WAIT_S)
    assert record is not None and record["end_reason"] == "client_closed" and record["messages"] == 5


def test_many_messages_in_flight_before_any_is_read(router: Any) -> None:
    """The client writes far more than the buffers hold before reading: nothing is lost or reordered."""
    chunks = [os.urandom(64 * 1024) for _ in range(48)]  # 3 MiB
    with open_session(router, "rt-in-flight") as ws:
        sender = threading.Thread(target=lambda: [ws.send(chunk) for chunk in chunks], daemon=True)
        sender.start()
        received = [ws.recv(timeout=WAIT_S) for _ in chunks]
        sender.join(WAIT_S)
    assert received == chunks


def test_client_close_closes_the_upstream_session(router: Any, upstream: UpstreamProcess) -> None:
    with open_session(router, "rt-client-closes") as ws:
        ws.send("ping me")
        assert ws.recv(timeout=WAIT_S) == "ping me"
        ws.close()
        record = upstream.websocket_ended("rt-client-closes", WAIT_S)
    assert record is not None and record["end_reason"] == "client_closed"


def handshake(request_id: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n"
        f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        f"X-Request-ID: {request_id}\r\n\r\n"
    ).encode()


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One final client frame (RFC 6455 §5.2), masked as a client must; 0x1 text, 0x2 binary."""
    mask = os.urandom(4)
    if len(payload) < 126:
        length = bytes([0x80 | len(payload)])
    else:
        length = bytes([0x80 | 127]) + len(payload).to_bytes(8, "big")
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")
    return bytes([0x80 | opcode]) + length + mask + masked


def raw_session(router: Any, request_id: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=WAIT_S)
    sock.sendall(handshake(request_id, router.port))
    head = RawResponse(sock)
    assert head.status == 101, head.headers
    return sock


FRAME = 64 * 1024
PUSH = 64 * 1024 * 1024  # far more than every socket buffer on the way together


def test_a_client_that_does_not_read_stops_the_upstream_being_read(router: Any) -> None:
    """The echo comes back faster than the client reads (it does not): the router stops reading
    the upstream rather than buffering the echo; its memory stays flat while 64 MiB go through."""
    sock = raw_session(router, "rt-client-full")
    frame = masked_frame(os.urandom(FRAME))
    before = router.rss_kb()
    for _ in range(PUSH // FRAME):
        sock.sendall(frame)  # the upstream reads it all (and buffers its echo, unread by us)
    grown_mb = (router.rss_kb() - before) / 1024
    sock.close()
    assert grown_mb < 16, f"router RSS grew {grown_mb:.0f} MB relaying to a client that does not read"


def test_an_upstream_that_does_not_read_stops_the_client_being_read(make_router: Any) -> None:
    """The other way: the client is read no faster than the upstream reads (it stops). Neither
    side is read then, so neither's close can be seen (asyncio reads nothing while paused): the
    session lasts until the router drains, which a short drainTimeoutSecs makes quick here."""
    router = make_router({"drainTimeoutSecs": 0.5})
    sock = raw_session(router, "rt-upstream-full")
    sock.sendall(masked_frame(b"stop reading", opcode=0x1))  # the echo reads nothing more
    frame = masked_frame(os.urandom(FRAME))
    before, sent = router.rss_kb(), 0
    sock.settimeout(1.0)
    try:
        while sent < PUSH:
            sent += sock.send(frame)
    except TimeoutError:
        pass  # blocked: the router stopped reading us
    grown_mb = (router.rss_kb() - before) / 1024
    sock.close()
    assert sent < PUSH // 2, f"the router read {sent >> 20} MiB it could not forward"
    assert grown_mb < 16, f"router RSS grew {grown_mb:.0f} MB"


def test_a_client_that_drops_the_connection_ends_the_upstream_session(
    router: Any, upstream: UpstreamProcess
) -> None:
    """No close frame, just the TCP close: the router closes the upstream side too."""
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=WAIT_S)
    sock.sendall(handshake("rt-dropped", router.port))
    head = RawResponse(sock)
    assert head.status == 101 and head.headers["upgrade"].lower() == "websocket"
    sock.close()
    record = upstream.websocket_ended("rt-dropped", WAIT_S)
    assert record is not None and record["end_reason"] == "peer_gone"


def test_frames_sent_with_the_handshake_reach_the_upstream_after_the_101(router: Any) -> None:
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=WAIT_S)
    sock.sendall(handshake("rt-early", router.port) + masked_frame(b"early bird", opcode=0x1))
    data = b""
    while b"early bird" not in data:
        more = sock.recv(65536)
        assert more, data
        data += more
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert frames == bytes([0x81, len("early bird")]) + b"early bird"  # the echo's unmasked frame
    sock.close()


def test_upstream_close_reaches_the_client(router: Any, upstream: UpstreamProcess) -> None:
    with open_session(router, "rt-upstream-closes") as ws:
        ws.send("close")  # the echo sends a close frame (1000) and closes its connection
        with pytest.raises(ConnectionClosedOK) as closed:
            ws.recv(timeout=WAIT_S)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert closed.value.rcvd.reason == "echo closing"
    record = upstream.websocket_ended("rt-upstream-closes", WAIT_S)
    assert record is not None and record["end_reason"] == "echo_closed"


def test_the_tunnel_has_an_access_line(router: Any) -> None:
    with open_session(router, "rt-logged") as ws:
        ws.send(b"12345")
        assert ws.recv(timeout=WAIT_S) == b"12345"

    def line() -> dict[str, Any] | None:
        for text in router.logs().splitlines():
            if '"logger":"api_router.access"' in text and '"rt-logged"' in text:
                entry: dict[str, Any] = json.loads(text)
                return entry
        return None

    entry = wait_for(line, what="the tunnel's access line")
    # after the close handshake the server closes the TCP connection first (RFC 6455 §7.1.1)
    assert (entry["status"], entry["route"], entry["outcome"]) == (101, "/v1/realtime", "closed_by_upstream")
    # up: the binary frame (2 + 4 mask + 5) and the close (2 + 4 + code 2); down: the echo (2 + 5)
    # and the close's answer (2 + 2); the 101 head is not counted, as no head is
    assert (entry["bytes_upstream"], entry["bytes"]) == (19, 11)


def test_websocket_elsewhere_is_still_refused(router: Any) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_session(router, "rt-elsewhere", "/v1/chat/completions")
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body or b"")["error"]["code"] == "upgrade_not_supported"


def test_the_realtime_route_without_an_upgrade_is_426(router: Any) -> None:
    resp = httpx.get(router.url + "/v1/realtime", timeout=WAIT_S)
    assert resp.status_code == 426 and resp.headers["upgrade"] == "websocket"
    assert resp.json()["error"]["code"] == "upgrade_required"


def test_an_upstream_refusing_the_upgrade_is_answered_with_its_status(
    make_router: Any, upstream: UpstreamProcess
) -> None:
    router = make_router({"endpoints": {"/v1/realtime": {"upstreamPath": "/v1/nowhere"}}})
    with pytest.raises(InvalidStatus) as refused:
        open_session(router, "rt-refused")
    response = refused.value.response
    assert response.status_code == 404 and response.headers["x-request-id"] == "rt-refused"
    assert "no WebSocket at GET /v1/nowhere" in json.loads(response.body or b"")["error"]["message"]
    assert seen_by_upstream(upstream, "rt-refused")  # it did go upstream


def test_an_unreachable_upstream_is_a_502(make_router: Any) -> None:
    with socket.socket() as placeholder:  # a port nothing listens on
        placeholder.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    router = make_router({"baseUrl": dead, "retries": 0})
    with pytest.raises(InvalidStatus) as refused:
        open_session(router, "rt-unreachable")
    assert refused.value.response.status_code == 502
    assert json.loads(refused.value.response.body or b"")["error"]["code"] == "upstream_unreachable"


def test_shutdown_closes_open_tunnels(make_router: Any, upstream: UpstreamProcess) -> None:
    router = make_router({"drainTimeoutSecs": 0.5})
    with open_session(router, "rt-shutdown") as ws:
        ws.send("still here")
        assert ws.recv(timeout=WAIT_S) == "still here"
        router.close()  # SIGTERM: the drain's grace passes, then open tunnels are closed
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=WAIT_S)
    record = upstream.websocket_ended("rt-shutdown", WAIT_S)
    assert record is not None and record["end_reason"] in ("client_closed", "peer_gone")


def test_a_backend_that_cannot_be_reached_is_failed_over(upstream: UpstreamProcess) -> None:
    """Two backends, one down: with a retry every session gets through (as other routes' failover)."""
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{placeholder.getsockname()[1]}"
    config = {"backends": [{"url": dead}, {"url": upstream.url}], "retries": 1}
    with RouterProcess(config) as router:
        for n in range(3):  # whichever the balancer picks first
            with open_session(router, f"rt-failover-{n}") as ws:
                ws.send(f"through {n}")
                assert ws.recv(timeout=WAIT_S) == f"through {n}"


def silent_upstream(hung_up: threading.Event) -> Any:
    """An upstream that takes the handshake and never answers; ``hung_up`` once the router closes."""

    def behave(conn: socket.socket, stop: threading.Event) -> None:
        conn.settimeout(WAIT_S)
        if conn.recv(1) == b"":
            hung_up.set()

    return behave


def test_a_client_leaving_during_the_handshake_closes_the_upstream(router_for: Any) -> None:
    hung_up = threading.Event()
    router = router_for(silent_upstream(hung_up))
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=WAIT_S)
    sock.sendall(handshake("rt-left-early", router.port))
    sock.close()
    assert hung_up.wait(WAIT_S), "the router kept the upstream handshake open for a client that left"


def test_an_upstream_that_does_not_answer_the_handshake_is_a_504(router_for: Any) -> None:
    router = router_for(silent_upstream(threading.Event()), timeouts={"readSecs": 0.5})
    with pytest.raises(InvalidStatus) as refused:
        open_session(router, "rt-silent")
    assert refused.value.response.status_code == 504
    assert json.loads(refused.value.response.body or b"")["error"]["code"] == "upstream_timeout"


def test_access_control_applies_and_the_gateway_key_never_goes_upstream(
    make_router: Any, upstream: UpstreamProcess
) -> None:
    gateway_key = "sk-gateway-realtime-77aa"
    router = make_router(
        {"apiKeyEnv": "REALTIME_KEY", "clients": [{"name": "team-a", "keyEnv": "TEAM_A_KEY"}]},
        env={"REALTIME_KEY": ROUTER_KEY, "TEAM_A_KEY": gateway_key},
    )
    with pytest.raises(InvalidStatus) as refused:
        open_session(router, "rt-no-gateway-key")  # CLIENT_KEY is no key to this router
    assert refused.value.response.status_code == 401
    headers = {"Authorization": f"Bearer {gateway_key}", "X-Request-ID": "rt-gateway"}
    with connect(ws_url(router), additional_headers=headers, open_timeout=WAIT_S) as ws:
        ws.send("team a")
        assert ws.recv(timeout=WAIT_S) == "team a"
    seen = seen_by_upstream(upstream, "rt-gateway")
    assert seen["authorization"] == f"Bearer {ROUTER_KEY}" and gateway_key not in json.dumps(seen)
    refused_ids = {dict(r["headers"]).get("x-request-id") for r in upstream.requests()}
    assert "rt-no-gateway-key" not in refused_ids  # refused by the router, never sent upstream


def test_tls_on_both_sides(tmp_path: Any) -> None:
    """wss:// to the router (TLS terminated there) and TLS to the upstream (upstreamTls): the
    tunnel takes over a TLS transport, and opens its upstream with the pool's TLS context."""
    cert_file, key_file, ca_file, _ = tls_files(tmp_path)
    with UpstreamProcess(certfile=str(cert_file), keyfile=str(key_file)) as tls_upstream:
        config = {
            "baseUrl": tls_upstream.url,
            "upstreamTls": {"caFile": str(ca_file)},
            "tls": {"certFile": str(cert_file), "keyFile": str(key_file)},
        }
        with RouterProcess(config) as router:
            assert router.url.startswith("https://")
            context = ssl.create_default_context(cafile=str(ca_file))
            url = router.url.replace("https", "wss", 1) + "/v1/realtime"
            large = os.urandom(100_000)
            with connect(url, ssl=context, open_timeout=WAIT_S, close_timeout=WAIT_S) as ws:
                for message in ("over tls", large):
                    ws.send(message)
                    assert ws.recv(timeout=WAIT_S) == message


def test_a_pipelined_upgrade_is_refused_after_the_answers_before_it(router: Any) -> None:
    """What follows an accepted upgrade's head are frames: an upgrade that arrives while an
    earlier request on the connection is still being answered cannot be a tunnel's (400), and the
    earlier answer still goes out first. (Behind an answer already written it is accepted.)"""
    body = json.dumps(chat(stream=False)).encode()
    earlier = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=WAIT_S)
    sock.sendall(earlier + handshake("rt-piped", router.port))  # the upgrade arrives mid-exchange
    first = RawResponse(sock)
    assert first.status == 200
    first.body_keep_open()
    second = first.next_response()
    assert second.status == 400 and json.loads(second.body())["error"]["code"] == "upgrade_not_supported"
    sock.close()
