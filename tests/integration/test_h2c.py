"""An ``Upgrade: h2c`` offer is ignored and the request answered in HTTP/1.1, as nginx does
(endpoints issue): ``curl --http2`` against the router gets its answer, the body of an offering
request is read as its body (llhttp leaves it unparsed at an upgrade), the connection stays
usable, and the offer's headers never reach the upstream. Other upgrades stay refused."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess

import pytest

from tests.integration.conftest import chat
from tests.rawhttp import RawResponse

OFFER = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.settimeout(20)
    return sock


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_http2_gets_an_http_1_1_answer(make_router):
    router = make_router()
    result = subprocess.run(
        ["curl", "--http2", "-sS", "-i", "--max-time", "20", router.url + "/v1/models"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status_line = result.stdout.splitlines()[0]
    assert status_line.startswith("HTTP/1.1 200"), result.stdout[:300]
    assert json.loads(result.stdout.split("\n\n", 1)[1])["data"]  # text mode: CRLF read as LF


def test_an_offer_without_a_body_then_a_pipelined_request_on_one_connection(make_router):
    router = make_router()
    sock = _connect(router.port)
    host = f"Host: 127.0.0.1:{router.port}\r\n"
    offering = f"GET /health HTTP/1.1\r\n{host}{OFFER}\r\n"
    sock.sendall((offering + f"GET /health HTTP/1.1\r\n{host}X-Request-ID: second\r\n\r\n").encode())
    first = RawResponse(sock)
    assert first.status == 200 and "upgrade" not in first.headers
    first.body_keep_open()
    second = first.next_response()
    assert second.status == 200 and second.headers["x-request-id"] == "second"
    second.close()


def test_an_offer_with_a_body_forwards_the_body_and_not_the_offer(make_router, upstream):
    router = make_router()
    body = json.dumps(chat(stream=False)).encode()
    sock = _connect(router.port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{router.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"X-Request-ID: h2c-body\r\n{OFFER}\r\n"
    )
    # the body in two pieces, the second in its own write: it arrives after the head was parsed
    sock.sendall(head.encode() + body[:7])
    sock.sendall(body[7:] + f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{router.port}\r\n\r\n".encode())
    answer = RawResponse(sock)
    assert answer.status == 200, answer.body_keep_open()
    assert json.loads(answer.body_keep_open())["choices"][0]["message"]["content"]
    after = answer.next_response()
    assert after.status == 200  # the bytes after the body were read as the next request
    after.close()
    [seen] = [r for r in upstream.requests() if ["x-request-id", "h2c-body"] in r["headers"]]
    names = {name for name, _ in seen["headers"]}
    assert not names & {"upgrade", "http2-settings"}, names
    assert seen["body_bytes"] == len(body)


@pytest.mark.parametrize(
    "offer",
    [
        "Connection: Upgrade\r\nUpgrade: websocket\r\n",
        "Connection: Upgrade\r\nUpgrade: h2c, websocket\r\n",
        "Connection: Upgrade\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n",
    ],
)
def test_other_upgrades_are_still_refused(make_router, offer):
    router = make_router()
    sock = _connect(router.port)
    body = b"" if "chunked" not in offer else b"0\r\n\r\n"
    sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{router.port}\r\n{offer}\r\n".encode() + body)
    answer = RawResponse(sock)
    assert answer.status == 400
    assert json.loads(answer.body())["error"]["code"] == "upgrade_not_supported"
