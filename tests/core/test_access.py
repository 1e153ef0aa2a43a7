"""AccessControl: request headers in, a client or a 401/403 out; keys never echoed."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from api_router.core import access
from api_router.core.access import AccessControl, ClientPolicy, Forbidden, Unauthorized
from api_router.errors import ApiFlavor

ALICE_KEY = "sk-alice-0123456789"
BOB_KEY = "sk-bob-9876543210"
WRONG_KEY = "sk-wrong-5555555555"


def policy(
    name: str, key: str, routes: frozenset[str] | None = None, models: frozenset[str] | None = None
) -> ClientPolicy:
    return ClientPolicy(name, hashlib.sha256(key.encode()).digest(), routes, models)


ALICE = policy("alice", ALICE_KEY)
BOB = policy("bob", BOB_KEY, routes=frozenset({"/v1/chat/completions"}), models=frozenset({"gpt-4o"}))
GATE = AccessControl([ALICE, BOB])


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"x"), (b"authorization", f"Bearer {key}".encode())]


def assert_no_key_in(error: Exception, *keys: str) -> None:
    assert isinstance(error, Unauthorized | Forbidden)
    rendered = [str(error), repr(error), error.body().decode(), error.body(ApiFlavor.ANTHROPIC).decode()]
    rendered.append(error.sse_event().decode())
    for text in rendered:
        for key in keys:
            assert key not in text


def test_bearer_and_x_api_key_both_identify_the_client() -> None:
    assert GATE.authenticate(bearer(ALICE_KEY)) is ALICE
    assert GATE.authenticate([(b"x-api-key", BOB_KEY.encode())]) is BOB
    assert GATE.authenticate([(b"authorization", f"bearer   {BOB_KEY} ".encode())]) is BOB


def test_a_non_bearer_authorization_falls_back_to_x_api_key() -> None:
    headers = [(b"authorization", b"Basic Zm9vOmJhcg=="), (b"x-api-key", ALICE_KEY.encode())]
    assert GATE.authenticate(headers) is ALICE


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"host", b"x")],
        [(b"authorization", b"Bearer ")],
        [(b"authorization", b"Basic Zm9vOmJhcg==")],
        [(b"x-api-key", b"  ")],
    ],
)
def test_a_missing_key_is_401_with_www_authenticate(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(Unauthorized) as info:
        GATE.authenticate(headers)
    error = info.value
    assert (error.status, error.type, error.code) == (401, "invalid_request_error", "invalid_api_key")
    assert ("WWW-Authenticate", "Bearer") in error.headers
    assert "missing API key" in error.message


@pytest.mark.parametrize(
    "headers", [bearer(WRONG_KEY), [(b"x-api-key", WRONG_KEY.encode())], bearer(ALICE_KEY + "x")]
)
def test_an_unknown_key_is_401_and_never_echoed(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(Unauthorized) as info:
        GATE.authenticate(headers)
    assert info.value.status == 401
    assert ("WWW-Authenticate", "Bearer") in info.value.headers
    assert info.value.message == "invalid API key"
    assert_no_key_in(info.value, WRONG_KEY, ALICE_KEY)


def test_route_and_model_restrictions_are_403() -> None:
    GATE.authorize(BOB, "/v1/chat/completions", "gpt-4o")
    GATE.authorize(BOB, "/v1/chat/completions", None)  # no model: the model check passes
    with pytest.raises(Forbidden) as info:
        GATE.authorize(BOB, "/v1/embeddings", "gpt-4o")
    assert (info.value.status, info.value.code) == (403, "route_not_allowed")
    assert "/v1/embeddings" in info.value.message
    with pytest.raises(Forbidden) as info:
        GATE.authorize(BOB, "/v1/chat/completions", "gpt-4o-mini")
    assert (info.value.status, info.value.code) == (403, "model_not_allowed")
    assert "'gpt-4o-mini'" in info.value.message
    assert_no_key_in(info.value, BOB_KEY)


def test_an_unrestricted_client_may_use_everything() -> None:
    GATE.authorize(ALICE, "/v1/anything", "any-model")
    GATE.authorize(ALICE, "/v1/messages", None)


def test_an_empty_allow_list_allows_nothing() -> None:
    nobody = policy("nobody", "k", routes=frozenset(), models=frozenset())
    with pytest.raises(Forbidden):
        GATE.authorize(nobody, "/v1/chat/completions", None)


def test_no_clients_means_disabled() -> None:
    gate = AccessControl([])
    assert gate.enabled is False
    assert GATE.enabled is True
    assert repr(gate) == "<AccessControl disabled clients=0>"
    assert repr(GATE) == "<AccessControl enabled clients=2>"


def test_reprs_show_neither_key_nor_digest() -> None:
    for client, key in ((ALICE, ALICE_KEY), (BOB, BOB_KEY)):
        text = repr(client)
        assert key not in text
        assert client.key_hash.hex() not in text
        assert repr(client.key_hash) not in text
        assert client.name in text


def test_a_policy_needs_a_sha256_digest() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        ClientPolicy(name="x", key_hash=b"short")


@pytest.mark.parametrize("presented", [ALICE_KEY, BOB_KEY, WRONG_KEY])
def test_every_configured_digest_is_compared_even_after_a_match(
    presented: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[bytes] = []
    compare_digest = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return compare_digest(a, b)

    monkeypatch.setattr(access.hmac, "compare_digest", counting)
    clients = [ALICE, BOB, policy("carol", "sk-carol"), policy("dave", "sk-dave")]
    try:
        AccessControl(clients).authenticate(bearer(presented))
    except Unauthorized:
        assert presented == WRONG_KEY
    assert compared == [client.key_hash for client in clients]
