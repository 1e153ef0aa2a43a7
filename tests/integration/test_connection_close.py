"""``Connection: close`` from the client is honoured (hardening issue, defect 3; RFC 9112 §9.6).

Over raw sockets, for a forwarded JSON answer, a forwarded stream, an upstream error passed
through, the router's own error and a local answer: the response says ``Connection: close`` and
the router closes the connection after it (the client reads EOF, not a kept-alive socket).
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.integration.conftest import chat
from tests.rawhttp import RawResponse

CASES = {
    "forwarded_json": ("POST", "/v1/chat/completions", chat({"tokens": 2}, stream=False)),
    "forwarded_stream": ("POST", "/v1/chat/completions", chat({"tokens": 3})),
    "upstream_error": ("POST", "/v1/chat/completions", chat({"status": 429}, stream=False)),
    "router_error": ("POST", "/v1/chat/completions", {"model": 5}),
    "local": ("GET", "/health", None),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_connection_close_closes_after_the_response(make_router, case):
    router = make_router()
    method, path, body = case
    raw = json.dumps(body).encode() if body is not None else b""
    wire = (
        b"%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" % (method.encode(), path.encode())
        + (
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(raw)
            if body is not None
            else b""
        )
        + b"\r\n"
        + raw
    )
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(wire)
        resp = RawResponse(sock)
        assert resp.headers.get("connection") == "close"
        resp.body_keep_open()
        sock.settimeout(5)
        assert sock.recv(1) == b"", "the router kept the connection open after Connection: close"


@pytest.mark.parametrize("target", [b"http://127.0.0.1/v1/models", b"*"])
def test_a_request_target_that_is_not_origin_form_is_answered_and_closed(make_router, target):
    router = make_router()
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        resp = RawResponse(sock)
        assert resp.status == 400 and resp.headers.get("connection") == "close"
        assert json.loads(resp.body_keep_open())["error"]["code"] == "invalid_url"
        sock.settimeout(5)
        assert sock.recv(1) == b""
