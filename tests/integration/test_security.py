"""Access control, client TLS, header hygiene and secrets, through real router processes."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator

import httpx
import openai

from tests.integration.conftest import chat
from tests.router_process import RouterProcess
from tests.tls_files import tls_files

ALICE = "sk-alice-0123456789"
BOB = "sk-bob-9876543210"


def _clients_config(upstream_url: str) -> dict[str, object]:
    return {
        "baseUrl": upstream_url,
        "clients": [
            {"name": "alice", "keyEnv": "ALICE_KEY"},
            {
                "name": "bob",
                "keySha256": hashlib.sha256(BOB.encode()).hexdigest(),
                "routes": ["/v1/chat/completions"],
                "models": ["gpt-4o-mini"],
                "rateLimit": {"requestsPerMinute": 60, "burst": 2},
            },
        ],
    }


def test_clients_need_a_valid_key_and_stay_in_their_routes_and_models(upstream):
    with RouterProcess(_clients_config(upstream.url), env={"ALICE_KEY": ALICE}) as router:
        url = router.url + "/v1/chat/completions"
        missing = httpx.post(url, json=chat(stream=False))
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.json()["error"]["code"] == "invalid_api_key"
        wrong = httpx.post(url, json=chat(stream=False), headers={"authorization": "Bearer sk-nope"})
        assert wrong.status_code == 401 and "sk-nope" not in wrong.text
        assert httpx.post(url, json=chat(stream=False), headers={"x-api-key": ALICE}).status_code == 200

        bob = {"authorization": f"Bearer {BOB}"}
        assert httpx.post(url, json=chat(stream=False, model="gpt-4o-mini"), headers=bob).status_code == 200
        other_model = httpx.post(url, json=chat(stream=False, model="gpt-4o"), headers=bob)
        assert other_model.status_code == 403 and other_model.json()["error"]["code"] == "model_not_allowed"
        other_route = httpx.post(
            router.url + "/v1/embeddings", json={"model": "gpt-4o-mini", "input": "x"}, headers=bob
        )
        assert other_route.status_code == 403 and other_route.json()["error"]["code"] == "route_not_allowed"
        # bob has his own limit (burst 2): one request used above, one left
        statuses = [
            httpx.post(url, json=chat(stream=False, model="gpt-4o-mini"), headers=bob).status_code
            for _ in range(2)
        ]
        assert statuses == [200, 429]

        client = openai.OpenAI(base_url=router.url + "/v1", api_key=ALICE, max_retries=0)
        assert list(client.chat.completions.create(model="gpt-4o", messages=[], stream=True))
        assert ALICE not in router.logs() and BOB not in router.logs()


def test_tls_termination_with_a_self_signed_certificate(tmp_path, upstream):
    cert_file, key_file, ca_file, _ = tls_files(tmp_path)
    config = {"baseUrl": upstream.url, "tls": {"certFile": str(cert_file), "keyFile": str(key_file)}}
    with RouterProcess(config) as router:
        assert router.url.startswith("https://")
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca_file))) as client:
            with client.stream("POST", router.url + "/v1/chat/completions", json=chat({"tokens": 3})) as resp:
                body = resp.read().decode()
            assert resp.status_code == 200 and body.rstrip().endswith("data: [DONE]")
        with httpx.Client(verify=False) as insecure:  # plain HTTP to a TLS port is refused, not served
            try:
                insecure.get(router.url.replace("https", "http") + "/health", timeout=5)
                raise AssertionError("plain HTTP was answered on the TLS port")
            except httpx.HTTPError:
                pass


def test_hop_by_hop_headers_host_and_forwarded_for(make_router, upstream):
    router = make_router()
    httpx.post(
        router.url + "/v1/embeddings",
        json={"model": "m", "input": "x"},
        headers={
            "x-request-id": "hygiene-1",
            "connection": "keep-alive, x-private",
            "x-private": "do-not-forward",
            "proxy-authorization": "Basic c2VjcmV0",
            "te": "trailers",
            "x-forwarded-for": "203.0.113.7",
            "host": "router.example",
        },
    )
    seen = next(r for r in upstream.requests() if ["x-request-id", "hygiene-1"] in r["headers"])
    headers = dict(map(tuple, seen["headers"]))
    for hop in ("connection", "x-private", "proxy-authorization", "te", "keep-alive"):
        assert hop not in headers
    assert headers["host"] == upstream.url.split("://")[1]
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"


@contextlib.contextmanager
def scripted_upstream(response: bytes) -> Iterator[str]:
    """A loopback server that answers every request on every connection with ``response``."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(10)
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    while len(body) < length:
                        body += conn.recv(65536)
                    conn.sendall(response)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        thread.join(timeout=10)


def test_hop_by_hop_response_headers_are_not_forwarded():
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Connection: keep-alive, X-Upstream-Private\r\nX-Upstream-Private: secret\r\n"
        b"Keep-Alive: timeout=5\r\nX-Request-ID: upstream-id\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\n{}"
    )
    with scripted_upstream(answer) as url, RouterProcess({"baseUrl": url}) as router:
        resp = httpx.post(
            router.url + "/v1/embeddings", json={"model": "m", "input": "x"}, headers={"x-request-id": "mine"}
        )
    assert resp.status_code == 200 and resp.content == b"{}"
    assert resp.headers["x-kept"] == "yes"
    assert resp.headers["x-request-id"] == "mine"  # the router's id, not the upstream's
    assert "x-upstream-private" not in resp.headers and "keep-alive" not in resp.headers


def test_the_upstream_key_never_leaks(make_router):
    secret = "sk-upstream-secret-42"
    router = make_router({"logLevel": "debug"}, env={"DEFAULT_API_KEY": secret})
    httpx.post(router.url + "/v1/chat/completions", json=chat({"status": 401}, stream=False))
    httpx.post(router.url + "/v1/chat/completions", content=b"{bad json")
    for path in ("/health", "/metrics", "/v1/models"):
        assert secret not in httpx.get(router.url + path).text
    assert secret not in router.logs()
