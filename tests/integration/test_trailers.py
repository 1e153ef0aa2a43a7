"""Trailer fields of a chunked request body (hardening issue, defect 2), over raw sockets.

A trailer is never merged into the request head: it does not go upstream as a header, and a key
sent only in a trailer authenticates nobody.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.integration.conftest import chat
from tests.rawhttp import RawResponse
from tests.router_process import RouterProcess

GATEWAY_KEY = "sk-trailer-gateway-key"
BODY = json.dumps(chat({"tokens": 2}, stream=False)).encode()


def chunked_post(port: int, request_id: str, trailers: list[bytes], headers: list[bytes] = ()) -> RawResponse:
    wire = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nX-Request-ID: %s\r\n"
        % request_id.encode()
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n%x\r\n%s\r\n0\r\n" % (len(BODY), BODY)
        + b"".join(t + b"\r\n" for t in trailers)
        + b"\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(wire)
    return RawResponse(sock)


@pytest.fixture
def router(upstream):
    config = {"baseUrl": upstream.url, "clients": [{"name": "a", "keyEnv": "TEAM_KEY"}]}
    with RouterProcess(config, env={"TEAM_KEY": GATEWAY_KEY}) as router:
        yield router


@pytest.mark.parametrize(
    "trailer", [b"Authorization: Bearer " + GATEWAY_KEY.encode(), b"X-Api-Key: " + GATEWAY_KEY.encode()]
)
def test_a_key_only_in_a_trailer_is_refused(router, trailer):
    resp = chunked_post(router.port, "trailer-auth", [trailer])
    try:
        assert resp.status == 401
        assert json.loads(resp.body())["error"]["code"] == "invalid_api_key"
    finally:
        resp.close()


def test_trailer_fields_never_go_upstream(router, upstream):
    resp = chunked_post(
        router.port,
        "trailer-fwd",
        [b"X-Injected: from-trailer", b"X-Forwarded-For: 203.0.113.9"],
        headers=[b"Authorization: Bearer " + GATEWAY_KEY.encode()],
    )
    try:
        assert resp.status == 200
        resp.body()
    finally:
        resp.close()
    seen = [r for r in upstream.requests() if dict(r["headers"]).get("x-request-id") == "trailer-fwd"]
    assert len(seen) == 1
    headers = dict(seen[0]["headers"])
    assert "x-injected" not in headers
    assert "203.0.113.9" not in headers.get("x-forwarded-for", "")
