"""Router.upstream_head, which precomputes per route and backend, against the rules spelled out
plainly (the reference below), for random client headers and configs; and prepare_json."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api_router.config import from_dict
from api_router.core.http import HeaderList, end_to_end, request_head
from api_router.errors import ApiFlavor, BadRequest
from api_router.routing import _ROUTER_OWNED, Route, Router, _overlay
from api_router.targets import Target, make_target


def reference_head(
    router: Router,
    route: Route,
    target: Target,
    client_headers: HeaderList,
    query: bytes,
    body_length: int | None,
    request_id: bytes,
    client_addr: str | None,
    streaming: bool,
) -> bytes:
    """The rules, one at a time: end-to-end client headers; config headers override the client's
    but never its content type; the client's credentials pass only with gateway keys off and
    either bring-your-own-key or no router key, else the router's key (and anthropic-version on
    Anthropic routes, unless the client sent one); then host, request id, X-Forwarded-For,
    identity encoding for streams, and the body framing."""
    headers = end_to_end(client_headers, _ROUTER_OWNED)
    own = _overlay(route.headers, target.headers)
    configured = {name for name, _ in own}
    api_key = target.api_key or router.api_key
    router_has_key = bool(api_key) or bool(configured & {b"authorization", b"x-api-key"})
    forward = route.forward_client_credentials
    if target.forward_client_credentials is not None:
        forward = target.forward_client_credentials
    pass_credentials = not router.gateway_keys and (forward or not router_has_key)
    if not pass_credentials:
        headers = [(n, v) for n, v in headers if n not in (b"authorization", b"x-api-key")]
    has_content_type = any(name == b"content-type" for name, _ in headers)
    has_version = any(name == b"anthropic-version" for name, _ in headers)
    client_auth = any(name in (b"authorization", b"x-api-key") for name, _ in headers)
    keep = {b"content-type"} if has_content_type else set()
    if client_auth:
        keep |= {b"authorization", b"x-api-key"}
    headers = [(n, v) for n, v in headers if n not in configured or n in keep]
    headers += [(n, v) for n, v in own if n not in keep]
    if not client_auth and api_key and not configured & {b"authorization", b"x-api-key"}:
        if route.flavor is ApiFlavor.ANTHROPIC:
            headers.append((b"x-api-key", api_key.encode()))
        else:
            headers.append((b"authorization", b"Bearer " + api_key.encode()))
    if (
        route.flavor is ApiFlavor.ANTHROPIC
        and not pass_credentials
        and router_has_key
        and b"anthropic-version" not in configured
        and not has_version
    ):
        headers.append((b"anthropic-version", b"2023-06-01"))
    headers.append((b"host", target.origin.host_header))
    headers.append((b"x-request-id", request_id))
    forwarded = next((v for n, v in headers if n == b"x-forwarded-for"), None)
    headers = [(n, v) for n, v in headers if n != b"x-forwarded-for"]
    if client_addr:
        value = client_addr.encode()
        headers.append((b"x-forwarded-for", forwarded + b", " + value if forwarded else value))
    elif forwarded is not None:
        headers.append((b"x-forwarded-for", forwarded))
    if streaming:
        headers.append((b"accept-encoding", b"identity"))
    if body_length is None:
        headers.append((b"transfer-encoding", b"chunked"))
    elif body_length or route.upstream_method in (b"POST", b"PUT", b"PATCH"):
        headers.append((b"content-length", str(body_length).encode()))
    path = target.origin.base_path.encode() + route.upstream_path + (b"?" + query if query else b"")
    return request_head(route.upstream_method, path, headers)


CLIENT_NAMES = [
    b"content-type",
    b"authorization",
    b"x-api-key",
    b"anthropic-version",
    b"x-forwarded-for",
    b"x-team",
    b"openai-organization",
    b"host",
    b"content-length",
    b"te",
    b"accept-encoding",
    b"user-agent",
]
CONNECTION_VALUES = [b"keep-alive", b"close", b"x-team", b"authorization", b"content-type, x-forwarded-for"]
CONFIG_HEADERS = st.dictionaries(
    st.sampled_from(["X-Team", "Authorization", "Content-Type", "OpenAI-Organization", "X-Forwarded-For"]),
    st.sampled_from(["cfg", "cfg2"]),
    max_size=3,
)
client_headers = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(CLIENT_NAMES), st.sampled_from([b"a", b"b"])),
        st.tuples(st.just(b"connection"), st.sampled_from(CONNECTION_VALUES)),
    ),
    max_size=8,
)


@settings(max_examples=400, deadline=None)
@given(
    global_headers=CONFIG_HEADERS,
    endpoint_headers=CONFIG_HEADERS,
    backend_headers=CONFIG_HEADERS,
    router_key=st.sampled_from([None, "sk-router"]),
    backend_key=st.sampled_from([None, "sk-backend"]),
    path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/models"]),
    headers=client_headers,
    query=st.sampled_from([b"", b"a=1"]),
    body_length=st.sampled_from([None, 0, 123]),
    client_addr=st.sampled_from([None, "10.0.0.7"]),
    streaming=st.booleans(),
    forward=st.sampled_from([None, False, True]),
    backend_forward=st.sampled_from([None, False, True]),
    gateway_keys=st.booleans(),
)
def test_upstream_head_follows_the_reference(
    global_headers: dict[str, str],
    endpoint_headers: dict[str, str],
    backend_headers: dict[str, str],
    router_key: str | None,
    backend_key: str | None,
    path: str,
    headers: HeaderList,
    query: bytes,
    body_length: int | None,
    client_addr: str | None,
    streaming: bool,
    forward: bool | None,
    backend_forward: bool | None,
    gateway_keys: bool,
) -> None:
    config = from_dict(
        {
            "baseUrl": "http://127.0.0.1:9/base",
            "headers": global_headers,
            "endpoints": {path: {"headers": endpoint_headers, "forwardClientCredentials": forward}},
        },
        "<test>",
    )
    router = Router(config)
    router.api_key = router_key
    router.gateway_keys = gateway_keys
    route = router.match("GET" if path == "/v1/models" else "POST", path)
    assert isinstance(route, Route)
    target = make_target("b1", "http://upstream.test:8080/v2", backend_headers, backend_key, backend_forward)
    args = (route, target, headers, query, body_length, b"rid-1", client_addr, streaming)
    expected = reference_head(router, *args)
    assert router.upstream_head(*args) == expected
    assert router.upstream_head(*args) == expected  # the second call uses the cached plan


def test_a_plan_is_per_route_and_backend() -> None:
    router = Router(from_dict({"baseUrl": "http://127.0.0.1:9"}, "<test>"))
    route = router.match("POST", "/v1/chat/completions")
    assert isinstance(route, Route)
    one = make_target("one", "http://one.test", {"X-Backend": "1"}, None)
    two = make_target("two", "http://two.test:81", {"X-Backend": "2"}, None)
    head_one = router.upstream_head(route, one, [], b"", 2, b"r", None, False)
    head_two = router.upstream_head(route, two, [], b"", 2, b"r", None, False)
    assert b"host: one.test\r\n" in head_one and b"x-backend: 1\r\n" in head_one
    assert b"host: two.test:81\r\n" in head_two and b"x-backend: 2\r\n" in head_two


def test_prepare_json_maps_models_and_reports_bad_bodies() -> None:
    config = from_dict(
        {
            "baseUrl": "http://127.0.0.1:9",
            "modelMapping": {"gpt-4o": "qwen-max", "fast": {"model": "qwen-turbo", "backends": "cheap"}},
            "backendGroups": {"cheap": {"backends": [{"url": "http://127.0.0.1:10"}]}},
        },
        "<test>",
    )
    router = Router(config)
    route = router.match("POST", "/v1/chat/completions")
    assert isinstance(route, Route)
    body = b'{"model":"gpt-4o","stream":true,"messages":[{"content":"h\xc3\xa9"}]}'
    mapped = router.prepare_json(route, body)
    # streamUsage "force" (the default) asks for the usage chunk, and the client will not see it
    asked = '{"stream_options":{"include_usage":true},"model":"qwen-max","stream":true,'
    assert mapped.raw == (asked + '"messages":[{"content":"hé"}]}').encode()
    assert (mapped.model, mapped.stream, mapped.group, mapped.strip_usage) == ("gpt-4o", True, None, True)
    grouped = router.prepare_json(route, b'{"model":"fast"}')
    assert (grouped.body["model"], grouped.group) == ("qwen-turbo", "cheap")
    raw = b'{"model": "other", "stream": false}'
    assert router.prepare_json(route, raw).raw is raw  # unmapped: the client's bytes, untouched
    # mapped: only the model's value changes; numbers beyond 64 bits and spacing stay as sent
    exact = b'{"seed": 123456789012345678901234567890, "model": "gpt-4o", "n": 1.10}'
    assert router.prepare_json(route, exact).raw == exact.replace(b'"gpt-4o"', b'"qwen-max"')
    passthrough = Router(config.with_overrides({"stream_usage": "passthrough"}))
    passthrough_route = passthrough.match("POST", "/v1/chat/completions")
    assert isinstance(passthrough_route, Route)
    kept = passthrough.prepare_json(passthrough_route, b'{"model":"x","stream":true}')
    assert (kept.raw, kept.strip_usage) == (b'{"model":"x","stream":true}', False)
    messages = router.match("POST", "/v1/messages")  # Anthropic streams report usage unasked
    assert isinstance(messages, Route) and not messages.force_usage
    for bad, code in [
        (b"{not json", "invalid_json"),
        (b"[1]", "invalid_json"),
        (b'{"model": 3}', "invalid_type"),
        (b'{"stream": "yes"}', "invalid_type"),
        (b'{"model": "\xff"}', "invalid_json"),
        (b'{"model": "a", "model": "b"}', "duplicate_key"),
    ]:
        with pytest.raises(BadRequest) as caught:
            router.prepare_json(route, bad)
        assert caught.value.code == code
