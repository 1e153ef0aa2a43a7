"""core/json_body.py rule 3: include_usage spliced into an OpenAI streaming body, nothing re-serialised."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api_router.core.json_body import DuplicateKey, ask_for_usage, check_top_level

BIG = b"123456789012345678901234567890"  # beyond 64 bits: a re-serialised body would change it


def _ask(raw: bytes) -> tuple[bytes, bool]:
    return ask_for_usage(raw, orjson.loads(raw) if b"\\u" not in raw else json.loads(raw))


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        (
            b'{"model":"gpt-4o","stream":true,"seed":' + BIG + b"}",
            b'{"stream_options":{"include_usage":true},"model":"gpt-4o","stream":true,"seed":' + BIG + b"}",
        ),
        (
            b'  {\n "stream": true, "stream_options": null}',
            b'  {\n "stream": true, "stream_options": {"include_usage":true}}',
        ),
        (
            b'{"stream":true,"stream_options":{}}',
            b'{"stream":true,"stream_options":{"include_usage":true}}',
        ),
        (
            b'{"stream":true,"stream_options":{ "include_obfuscation": false }}',
            b'{"stream":true,"stream_options":{"include_usage":true, "include_obfuscation": false }}',
        ),
        (  # force means the router asks, and the client that said no does not see the chunk
            b'{"stream":true,"stream_options":{"include_usage" : false},"n":' + BIG + b"}",
            b'{"stream":true,"stream_options":{"include_usage" : true},"n":' + BIG + b"}",
        ),
    ],
    ids=["absent", "null", "empty", "other-option", "false"],
)
def test_the_router_asks_and_strips(raw: bytes, sent: bytes) -> None:
    assert _ask(raw) == (sent, True)
    assert orjson.loads(sent)["stream_options"]["include_usage"] is True


@pytest.mark.parametrize(
    "raw",
    [
        b'{"stream":true,"stream_options":{"include_usage":true}}',
        b'{"stream":true,"stream_options": {"include_usage": true, "x": 1}}',
        b'{"stream":true,"stream_options":"nonsense"}',  # the upstream's to refuse
    ],
)
def test_a_client_that_asked_or_sent_nonsense_is_left_alone(raw: bytes) -> None:
    assert _ask(raw) == (raw, False)


def test_the_rare_path_keeps_numbers_exact() -> None:
    """A spelling the splice does not judge (an escape) is rewritten by the exact parser."""
    raw = b'{"stream":true,"m\\u006fdel":"gpt-4o","seed":' + BIG + b',"stream_options":{"x":1}}'
    sent, strip = _ask(raw)
    assert strip
    assert BIG in sent
    assert json.loads(sent)["stream_options"] == {"x": 1, "include_usage": True}


def test_a_repeated_stream_options_is_refused() -> None:
    with pytest.raises(DuplicateKey):
        raw = b'{"stream":true,"stream_options":{},"stream_options":{"include_usage":true}}'
        check_top_level(raw, orjson.loads(raw))


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@given(
    st.dictionaries(
        st.text(max_size=6).filter(lambda k: k not in ("stream", "stream_options", "model")),
        _VALUES,
        max_size=4,
    ),
    st.sampled_from([None, {}, {"include_usage": False}, {"include_usage": None}, {"a": [1, {"b": "}"}]}]),
    st.booleans(),
)
def test_the_sent_body_is_the_client_body_plus_include_usage(
    extra: dict[str, object], options: dict[str, object] | None, present: bool
) -> None:
    body: dict[str, object] = {"stream": True, **extra}
    if options is not None or present:
        body["stream_options"] = options
    raw = json.dumps(body).encode()
    sent, strip = _ask(raw)
    assert strip
    expected = dict(body)
    previous = body.get("stream_options")
    expected["stream_options"] = {**(previous if isinstance(previous, dict) else {}), "include_usage": True}
    assert json.loads(sent) == expected
