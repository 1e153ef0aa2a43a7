"""The router as an HTTP server: local endpoints, errors in OpenAI shape, keep-alive, pipelining."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import httpx
import openai
import pytest

from tests.integration.conftest import chat
from tests.rawhttp import RawResponse, request
from tests.router_process import RouterProcess


def test_serve_without_config_runs_the_builtin_mock():
    with RouterProcess(None) as router:
        client = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=20)
        chunks = list(
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        )
        assert any(c.choices and c.choices[0].delta.content for c in chunks)
        assert "BUILT-IN MOCK UPSTREAM" in router.logs()


def test_serve_with_an_invalid_config_names_file_and_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"baseUrl": "http://127.0.0.1:1", "streamConfig": {"bufferSize": "big"}}))
    result = subprocess.run(
        [sys.executable, "-m", "api_router", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}: streamConfig.bufferSize:" in result.stderr


def test_health_and_metrics(make_router):
    router = make_router()
    health = httpx.get(router.url + "/health").json()
    assert health["status"] == "ok" and health["streams_active"] == 0
    metrics = httpx.get(router.url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        "streaming_active",
        "requests_total",
        "request_duration_seconds",
        "stream_heartbeats_sent_total",
    ):
        assert name in metrics.text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/v1/nope", b"{}", 404, "not_found"),
        ("GET", "/v1/chat/completions", None, 405, "method_not_allowed"),
        ("POST", "/health", b"{}", 405, "method_not_allowed"),
        ("POST", "/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b"[1, 2]", 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"model": 5}', 400, "invalid_type"),
        ("POST", "/v1/chat/completions", b'{"model": "m", "stream": "yes"}', 400, "invalid_type"),
    ],
)
def test_bad_requests_get_openai_errors_and_the_connection_stays_usable(
    make_router, method, path, body, status, code
):
    router = make_router()
    with httpx.Client(base_url=router.url) as client:
        resp = client.request(method, path, content=body, headers={"content-type": "application/json"})
        assert resp.status_code == status
        error = resp.json()["error"]
        assert error["code"] == code and error["type"] and error["message"]
        assert resp.headers["x-request-id"]
        assert client.get("/health").status_code == 200  # same keep-alive connection


def test_oversized_json_body_is_413(make_router):
    router = make_router({"maxBodyBytes": 1024})
    resp = httpx.post(router.url + "/v1/chat/completions", content=b"{" + b" " * 4096 + b"}")
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


def test_upstream_connections_are_reused(make_router):
    router = make_router()
    with httpx.Client(base_url=router.url) as client:
        for _ in range(5):
            assert client.post("/v1/chat/completions", json=chat(stream=False)).status_code == 200
        for _ in range(3):
            with client.stream("POST", "/v1/chat/completions", json=chat({"tokens": 3})) as resp:
                resp.read()
        pool = client.get("/health").json()["upstream_pool"]
    assert pool["opened"] == 1 and pool["reused"] == 7


def test_pipelined_requests_are_answered_in_order(make_router):
    router = make_router()
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    bodies = [json.dumps(chat({"tokens": 2, "req_id": f"p{i}"}, stream=i == 1)).encode() for i in range(3)]
    wire = b"".join(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: p%d\r\nContent-Length: %d\r\n\r\n%s" % (i, len(body), body)
        for i, body in enumerate(bodies)
    )
    sock.sendall(wire + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    reader = RawResponse(sock)
    ids = []
    for _ in range(4):
        ids.append(reader.headers["x-request-id"])
        reader.body_keep_open()
        if len(ids) < 4:
            reader = reader.next_response()
    sock.close()
    assert ids[:3] == ["p0", "p1", "p2"]


def test_http10_client_gets_a_close_delimited_stream(make_router):
    router = make_router()
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    body = json.dumps(chat({"tokens": 3})).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert payload.endswith(b"data: [DONE]\n\n")


def test_expect_100_continue(make_router):
    router = make_router()
    resp = request(
        router.port,
        "POST",
        "/v1/embeddings",
        {"model": "m", "input": "x"},
        headers={"Expect": "100-continue"},
    )
    assert resp.status == 100
    final = resp.next_response()
    assert final.status == 200
    assert final.json()["data"]


def test_chunked_upload_over_the_multipart_limit_is_refused(make_router):
    router = make_router({"maxMultipartBytes": 4096})
    sock = socket.create_connection(("127.0.0.1", router.port), timeout=10)
    head = (
        b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n"
    )
    part = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    sock.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
    reply = b""
    try:
        for _ in range(10):  # 10 KiB: over the limit without any Content-Length to announce it
            sock.sendall(b"400\r\n" + b"x" * 1024 + b"\r\n")
        while chunk := sock.recv(65536):
            reply += chunk
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b'"code":"request_too_large"' in reply


JUNK = [b"\x00\x01junk\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"NOT A REQUEST LINE\r\n\r\n"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("junk", JUNK)
def test_a_valid_request_followed_by_junk_is_answered_then_400_and_closed(make_router, junk, stream):
    """The old router closed at once when junk followed a forwarded request: the valid one's answer
    was lost (0 bytes). Now the answers come in order, then the error, then the close."""
    router = make_router()
    body = json.dumps(chat({"tokens": 3}, stream=stream)).encode()
    with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body) + junk
        )
        first = RawResponse(sock)
        assert first.status == 200
        answer = first.body_keep_open()
        assert (b"data: [DONE]" in answer) if stream else json.loads(answer)["choices"]
        second = first.next_response()
        assert second.status in (400, 505)
        assert second.headers.get("connection") == "close"
        assert "error" in json.loads(second.body_keep_open())
        assert second._buf == b"" and sock.recv(1) == b""  # nothing after the error: closed
