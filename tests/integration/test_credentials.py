"""Which credential reaches the provider (keys issue, "Credentials"), seen at a recording upstream.

The mock upstream records every request's headers. Each case sends, on every route kind (JSON,
stream, multipart, pass-through, /v1/messages, /v1/models), a request carrying the client's key
and a request id, then reads back what arrived upstream:
- ``clients`` on: the client's key is a key to the router; the provider gets the backend's
  key (else the router's), never the client's, and nothing when the router has none;
- ``clients`` off: a key the router has replaces the client's; ``forwardClientCredentials``
  (global, endpoint, backend) keeps the client's; with no router key the client's passes.
No key appears in the router's logs, its error bodies or /metrics.
"""

from __future__ import annotations

import itertools
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.integration.conftest import chat
from tests.router_process import RouterProcess
from tests.upstream_process import UpstreamProcess

GATEWAY_KEY = "sk-gateway-client-7f3a"  # what the client holds
ROUTER_KEY = "sk-router-provider-91c2"  # DEFAULT_API_KEY
BACKEND_KEY = "sk-backend-provider-55d0"  # a backend's apiKeyEnv
_ids = itertools.count()
MULTIPART = {"file": ("a.wav", b"RIFF....", "audio/wav")}


def clients() -> dict[str, Any]:
    return {"clients": [{"name": "team-a", "keyEnv": "TEAM_A_KEY"}]}


def passthrough() -> dict[str, Any]:
    return {"endpoints": {"/v1/files": {"method": "GET"}}}


def seen(upstream: UpstreamProcess, request_id: str) -> dict[str, str]:
    """The headers the upstream received for ``request_id`` (exactly one request)."""
    found = [r for r in upstream.requests() if dict(r["headers"]).get("x-request-id") == request_id]
    assert len(found) == 1, (request_id, len(found))
    return dict(found[0]["headers"])


def send_every_kind(router: RouterProcess, key: str, *, header: str = "authorization") -> dict[str, str]:
    """One request per route kind with ``key`` as the client's credential; kind → request id."""
    value = f"Bearer {key}" if header == "authorization" else key
    ids: dict[str, str] = {}

    def rid(kind: str) -> dict[str, str]:
        ids[kind] = f"cred-{kind}-{next(_ids)}"
        return {header: value, "x-request-id": ids[kind]}

    base = router.url
    with httpx.Client(base_url=base, timeout=20) as http:
        plain = http.post("/v1/chat/completions", json=chat(stream=False), headers=rid("json"))
        assert plain.status_code == 200
        with http.stream(
            "POST", "/v1/chat/completions", json=chat({"tokens": 2}), headers=rid("stream")
        ) as resp:
            assert resp.status_code == 200
            resp.read()
        multipart = http.post(
            "/v1/audio/transcriptions", data={"model": "whisper-1"}, files=MULTIPART, headers=rid("multipart")
        )
        assert multipart.status_code == 200, multipart.text
        http.get("/v1/files", headers=rid("passthrough"))  # the mock has no /v1/files: 404, recorded
        assert http.get("/v1/models", headers=rid("models")).status_code == 200
        messages = {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        headers = rid("messages")
        if header == "authorization":  # Anthropic clients send x-api-key
            headers = {"x-api-key": key, "x-request-id": headers["x-request-id"]}
        assert http.post("/v1/messages", json=messages, headers=headers).status_code == 200
    return ids


def assert_upstream_got(
    upstream: UpstreamProcess, ids: dict[str, str], provider_key: str | None, *, routers_key: bool = True
) -> None:
    """``routers_key``: the key is the router's (it then adds anthropic-version), not the client's."""
    for kind, request_id in ids.items():
        headers = seen(upstream, request_id)
        assert GATEWAY_KEY not in " ".join(headers.values()), (kind, headers)
        if kind == "messages":
            assert headers.get("x-api-key") == provider_key, (kind, headers)
            assert "authorization" not in headers, (kind, headers)
            assert ("anthropic-version" in headers) == (routers_key and provider_key is not None), headers
        else:
            expected = None if provider_key is None else f"Bearer {provider_key}"
            assert headers.get("authorization") == expected, (kind, headers)
            assert "x-api-key" not in headers, (kind, headers)


def assert_no_key_leaks(router: RouterProcess, *keys: str) -> None:
    texts = [router.logs()]
    with httpx.Client(base_url=router.url, timeout=10) as http:
        texts += [http.get(path).text for path in ("/metrics", "/health")]
        texts.append(http.post("/v1/chat/completions", content=b"{bad", headers={"x-api-key": keys[0]}).text)
    for key in keys:
        for text in texts:
            assert key not in text


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_with_clients_on_the_gateway_key_never_reaches_the_provider(make_router, upstream, header):
    router = make_router(
        {**clients(), **passthrough(), "logLevel": "debug"},
        env={"TEAM_A_KEY": GATEWAY_KEY, "DEFAULT_API_KEY": ROUTER_KEY},
    )
    ids = send_every_kind(router, GATEWAY_KEY, header=header)
    assert_upstream_got(upstream, ids, ROUTER_KEY)
    assert_no_key_leaks(router, GATEWAY_KEY, ROUTER_KEY)


def test_with_clients_on_and_no_router_key_no_credential_goes_upstream(make_router, upstream):
    router = make_router({**clients(), **passthrough()}, env={"TEAM_A_KEY": GATEWAY_KEY})
    ids = send_every_kind(router, GATEWAY_KEY)
    assert_upstream_got(upstream, ids, None)


def test_with_clients_on_a_backends_own_key_is_sent(upstream):
    config = {
        **clients(),
        **passthrough(),
        "backends": [{"url": upstream.url, "apiKeyEnv": "BACKEND_KEY"}],
        "forwardClientCredentials": True,  # ignored while clients is on
    }
    env = {"TEAM_A_KEY": GATEWAY_KEY, "DEFAULT_API_KEY": ROUTER_KEY, "BACKEND_KEY": BACKEND_KEY}
    with RouterProcess(config, env=env) as router:
        ids = send_every_kind(router, GATEWAY_KEY)
        assert_upstream_got(upstream, ids, BACKEND_KEY)


def test_with_clients_off_the_routers_key_replaces_the_clients(make_router, upstream):
    router = make_router(passthrough(), env={"DEFAULT_API_KEY": ROUTER_KEY})
    ids = send_every_kind(router, "unused-if-the-router-has-one")
    for request_id in ids.values():
        assert "unused-if-the-router-has-one" not in " ".join(seen(upstream, request_id).values())
    assert_upstream_got(upstream, ids, ROUTER_KEY)


def test_the_readme_sdk_examples_send_the_routers_key(make_router, upstream):
    router = make_router(env={"DEFAULT_API_KEY": ROUTER_KEY})
    oai = openai.OpenAI(base_url=router.url + "/v1", api_key="unused-if-the-router-has-one", max_retries=0)
    oai.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-request-id": "sdk-o"}
    )
    ant = anthropic.Anthropic(base_url=router.url, api_key="...", max_retries=0)
    ant.messages.create(
        model="claude-x",
        max_tokens=8,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "sdk-a"},
    )
    assert seen(upstream, "sdk-o")["authorization"] == f"Bearer {ROUTER_KEY}"
    anthropic_seen = seen(upstream, "sdk-a")
    assert anthropic_seen["x-api-key"] == ROUTER_KEY and anthropic_seen["anthropic-version"]


def test_anthropic_version_is_added_only_when_the_client_sent_none(make_router, upstream):
    router = make_router(env={"DEFAULT_API_KEY": ROUTER_KEY})
    body = {"model": "claude-x", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    httpx.post(router.url + "/v1/messages", json=body, headers={"x-request-id": "v-none"})
    httpx.post(
        router.url + "/v1/messages",
        json=body,
        headers={"x-request-id": "v-own", "anthropic-version": "2099-01-01"},
    )
    assert seen(upstream, "v-none")["anthropic-version"] == "2023-06-01"
    assert seen(upstream, "v-own")["anthropic-version"] == "2099-01-01"


BYOK = "sk-users-own-provider-key"


@pytest.mark.parametrize(
    "config",
    [
        {"forwardClientCredentials": True},
        {
            "endpoints": {
                path: {"forwardClientCredentials": True}
                for path in (
                    "/v1/chat/completions",
                    "/v1/audio/transcriptions",
                    "/v1/messages",
                    "/v1/models",
                    "/v1/files",
                )
            }
        },
        "backend",
    ],
    ids=["global", "endpoint", "backend"],
)
def test_forward_client_credentials_passes_the_clients_key(upstream, config):
    if config == "backend":
        config = {"backends": [{"url": upstream.url, "forwardClientCredentials": True}]}
    else:
        config = {"baseUrl": upstream.url, **config}
    config.setdefault("endpoints", {}).setdefault("/v1/files", {})["method"] = "GET"
    with RouterProcess(config, env={"DEFAULT_API_KEY": ROUTER_KEY}) as router:
        ids = send_every_kind(router, BYOK)
    assert_upstream_got(upstream, ids, BYOK, routers_key=False)


def test_with_no_router_key_the_clients_key_passes_through(make_router, upstream):
    router = make_router(passthrough())
    ids = send_every_kind(router, BYOK)
    assert_upstream_got(upstream, ids, BYOK, routers_key=False)
