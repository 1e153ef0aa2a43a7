"""Cache keys are canonical (what the upstream sees), and only deterministic requests are cacheable."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from api_router.core.cache_key import cache_key, cacheable

BODY: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "héllo"}]}


def test_key_is_sha256_of_route_and_canonical_json() -> None:
    canonical = json.dumps(BODY, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(b"/v1/chat/completions\0" + canonical.encode()).hexdigest()
    assert cache_key("/v1/chat/completions", BODY, None) == expected
    assert len(expected) == 64


def test_key_ignores_key_order() -> None:
    reordered = {"messages": BODY["messages"], "model": "gpt-4o"}
    assert cache_key("/v1/x", reordered, None) == cache_key("/v1/x", BODY, None)


def test_key_depends_on_route_and_content() -> None:
    base = cache_key("/v1/chat/completions", BODY, None)
    assert cache_key("/v1/completions", BODY, None) != base
    assert cache_key("/v1/chat/completions", {**BODY, "max_tokens": 5}, None) != base


def test_key_uses_the_mapped_model() -> None:
    mapped = cache_key("/v1/x", BODY, "upstream-large")
    assert mapped == cache_key("/v1/x", {**BODY, "model": "upstream-large"}, None)
    assert mapped == cache_key("/v1/x", {**BODY, "model": "alias"}, "upstream-large")
    assert mapped != cache_key("/v1/x", BODY, None)
    assert BODY["model"] == "gpt-4o"  # the caller's body is not changed


def test_route_and_body_cannot_run_into_each_other() -> None:
    assert cache_key("/a", {"b": 1}, None) != cache_key("/a{", {"b": 1}, None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, True),
        ({"stream": False}, True),
        ({"temperature": 0}, True),
        ({"temperature": 0.0, "n": 1}, True),
        ({"stream": True}, False),
        ({"stream": "yes"}, False),
        ({"temperature": 0.7}, False),
        ({"temperature": "0"}, False),
        ({"n": 2}, False),
        ({"n": True}, False),
        ({"temperature": 0, "n": 3}, False),
    ],
    ids=repr,
)
def test_cacheable(body: dict[str, Any], expected: bool) -> None:
    assert cacheable(body, allow_sampling=False) is expected


def test_sampling_allowed_by_config() -> None:
    assert cacheable({"temperature": 0.7}, allow_sampling=True)
    assert not cacheable({"temperature": 0.7, "stream": True}, allow_sampling=True)
    assert not cacheable({"temperature": 0.7, "n": 2}, allow_sampling=True)
