"""core/json_body.py: duplicate judged keys refused, values spliced into the client's bytes."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api_router.core.json_body import DuplicateKey, check_top_level, replace_values


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"allowed","model":"forbidden"}',
        b'{"model":"allowed", "m\\u006fdel":"forbidden"}',  # another spelling of the same key
        b'{"stream":false,"messages":[],"stream":true}',
        b'{"model":"a","tools":[{"model":"x"}],"model":"b"}',
    ],
)
def test_a_repeated_judged_key_is_refused(raw):
    with pytest.raises(DuplicateKey):
        check_top_level(raw, orjson.loads(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"a","messages":[{"role":"user","content":"the \\"model\\" said"}]}',
        b'{"model":"a","metadata":{"model":"nested is fine"}}',
        b'{"model":"a","x":1,"x":2}',  # not judged by the router: passes as sent
        b'{"model":"caf\\u00e9"}',
    ],
)
def test_other_bodies_pass(raw):
    check_top_level(raw, orjson.loads(raw))


def test_a_mapped_model_keeps_every_other_byte():
    raw = b'{ "seed" : 123456789012345678901234567890, "model" : "gpt-4o" ,"temperature":0.10}'
    out = replace_values(raw, {"model": "qwen-max"})
    assert out == b'{ "seed" : 123456789012345678901234567890, "model" : "qwen-max" ,"temperature":0.10}'


def test_escaped_quotes_in_the_old_value_are_skipped_whole():
    raw = b'{"model":"a\\"b\\\\","stream":true}'
    assert json.loads(replace_values(raw, {"model": "m", "stream": False})) == {"model": "m", "stream": False}


def test_the_rare_path_keeps_numbers_exact():
    raw = b'{"model":"gpt-4o","metadata":{"model":"x"},"seed":123456789012345678901234567890}'
    out = replace_values(raw, {"model": "qwen-max"})
    assert b"123456789012345678901234567890" in out
    assert json.loads(out)["model"] == "qwen-max" and json.loads(out)["metadata"] == {"model": "x"}


keys = st.sampled_from(["model", "stream", "messages", "seed", "x"])
values = st.one_of(st.text(max_size=8), st.integers(), st.booleans(), st.none())


@given(st.lists(st.tuples(keys, values), max_size=6), st.text(max_size=8))
def test_replace_values_agrees_with_a_plain_rewrite(pairs, new_model):
    body = dict(pairs)
    body["model"] = "old"
    raw = json.dumps(body).encode()
    expected = {**body, "model": new_model}
    assert json.loads(replace_values(raw, {"model": new_model})) == expected


spellings = st.sampled_from(['"model"', '"m\\u006fdel"', '"stream"', '"stream_options"', '"messages"', '"x"'])


@given(st.lists(st.tuples(spellings, values), max_size=6), st.booleans())
def test_check_top_level_agrees_with_the_exact_parser(pairs, nest):
    """Only the judged keys the parsed body has are counted: a repeat is refused exactly when the
    stdlib's own pairs show one at the top level, wherever else the keys appear."""
    members = [f"{key}:{json.dumps(value)}" for key, value in pairs]
    if nest:  # the same spellings deeper in the body are not the top level's
        members.append('"metadata":{' + ",".join(members) + "}")
    raw = ("{" + ",".join(members) + "}").encode()
    top = [key for key, _ in json.loads(raw, object_pairs_hook=lambda p: p)]
    repeated = any(top.count(key) > 1 for key in ("model", "stream", "stream_options"))
    if repeated:
        with pytest.raises(DuplicateKey):
            check_top_level(raw, orjson.loads(raw))
    else:
        check_top_level(raw, orjson.loads(raw))
