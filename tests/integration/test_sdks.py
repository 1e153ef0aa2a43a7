"""The official SDKs work through the router unchanged, and the router's rewrites hold."""

from __future__ import annotations

import asyncio
import hashlib
import os

import anthropic
import httpx
import openai
import pytest

from tests.router_process import RouterProcess
from tests.tls_files import tls_files
from tests.upstream_process import UpstreamProcess


def _openai(router_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=router_url + "/v1", api_key="client-key", max_retries=0, timeout=20)


def test_openai_sdk_sync_stream_and_plain(make_router):
    router = make_router()
    client = _openai(router.url)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"mock": {"tokens": 5}},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(f"t{i:08d}" for i in range(5))
    completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"


def test_openai_sdk_async_stream_and_plain(make_router):
    router = make_router()

    async def main() -> tuple[str, str | None]:
        client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="k", max_retries=0, timeout=20)
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            extra_body={"mock": {"tokens": 4}},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        plain = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
        await client.close()
        return text, plain.choices[0].message.content

    text, plain = asyncio.run(main())
    assert text == "".join(f"t{i:08d}" for i in range(4))
    assert plain


def test_openai_sdk_completions_embeddings_models(make_router):
    router = make_router({"modelMapping": {"alias": "mock-small"}})
    client = _openai(router.url)
    assert list(
        client.completions.create(
            model="gpt-4o", prompt="Once", stream=True, extra_body={"mock": {"tokens": 2}}
        )
    )
    embedding = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(embedding.data) == 2
    models = client.models.list()
    assert [m.id for m in models.data], "the upstream's list is passed through"


def test_openai_sdk_raises_on_mid_stream_error_event(make_router):
    router = make_router()
    client = _openai(router.url)
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        extra_body={"mock": {"die_after": 2}},
    )
    with pytest.raises(openai.APIError):
        list(stream)


def test_anthropic_sdk_stream_and_plain(make_router):
    router = make_router()
    client = anthropic.Anthropic(base_url=router.url, api_key="client-key", max_retries=0, timeout=20)
    with client.messages.stream(
        model="claude-x",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"mock": {"tokens": 3}},
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == "".join(f"t{i:08d}" for i in range(3))
    message = client.messages.create(
        model="claude-x", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.content[0].type == "text"


def test_anthropic_errors_come_in_anthropic_shape(make_router):
    router = make_router()
    client = anthropic.Anthropic(base_url=router.url, api_key="k", max_retries=0, timeout=20)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="claude-x", max_tokens=5, messages=[], extra_body={"stream": "yes"})
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_model_mapping_rewrites_json_and_multipart(make_router, upstream):
    router = make_router({"modelMapping": {"gpt-4o": "mock-large", "whisper-1": "mock-whisper"}})
    upstream.reset()
    client = _openai(router.url)
    completion = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert completion.model == "mock-large"
    data = os.urandom(3 * 1024 * 1024 + 17)  # far larger than bufferSize
    result = client.audio.transcriptions.create(file=("a.wav", data, "audio/wav"), model="whisper-1")
    extra = result.model_extra or {}
    assert extra["model"] == "mock-whisper"
    assert extra["file_bytes"] == len(data)
    assert extra["file_sha256"] == hashlib.sha256(data).hexdigest()
    seen = [r["model"] for r in upstream.requests()]
    assert "gpt-4o" not in seen and "mock-large" in seen


def test_auth_injection_and_client_credentials(make_router, upstream):
    router = make_router(env={"DEFAULT_API_KEY": "sk-router"})

    def upstream_auth(request_id: str) -> str | None:
        for r in upstream.requests():
            headers = dict(map(tuple, r["headers"]))
            if headers.get("x-request-id") == request_id:
                return headers.get("authorization")
        raise AssertionError("request not seen")

    httpx.post(
        router.url + "/v1/embeddings", json={"model": "m", "input": "a"}, headers={"x-request-id": "auth-1"}
    )
    assert upstream_auth("auth-1") == "Bearer sk-router"
    httpx.post(
        router.url + "/v1/embeddings",
        json={"model": "m", "input": "a"},
        headers={"x-request-id": "auth-2", "authorization": "Bearer sk-client"},
    )
    # The router has a key: it replaces the client's (forwardClientCredentials keeps the client's).
    assert upstream_auth("auth-2") == "Bearer sk-router"


def test_https_upstream_with_a_private_ca(tmp_path):
    cert_file, key_file, ca_file, _ = tls_files(tmp_path, "127.0.0.1", "localhost")
    with UpstreamProcess(certfile=str(cert_file), keyfile=str(key_file)) as tls_upstream:
        assert tls_upstream.url.startswith("https://")
        base = {"baseUrl": tls_upstream.url}
        with RouterProcess({**base, "upstreamTls": {"caFile": str(ca_file)}}) as router:
            text = "".join(
                c.choices[0].delta.content or ""
                for c in _openai(router.url).chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "x"}],
                    stream=True,
                    extra_body={"mock": {"tokens": 3}},
                )
                if c.choices
            )
            assert text == "t00000000t00000001t00000002"
        with RouterProcess(base) as router:  # verification is on by default: an unknown CA is refused
            resp = httpx.post(
                router.url + "/v1/chat/completions", json={"model": "m", "messages": []}, timeout=20
            )
            assert resp.status_code == 502
            assert "certificate" in resp.json()["error"]["message"].lower()
