"""The mock upstream's request shapes are documented where users look, from the code's own table.

``SHAPE_FIELDS`` is what ``Shape`` reads (every field changes the shape, an unknown one is a 400),
and the ``--help`` of both mock commands and docs/mock-upstream.md must name exactly those fields,
so a field added to the code and not to the help or the docs fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from api_router.mock.shape import AUDIO_ROUTES, JSON_ROUTES, SHAPE_FIELDS, MockSpecError, Shape, parse_mock
from tests.upstream_process import UpstreamProcess

DOC = Path(__file__).resolve().parents[1] / "docs" / "mock-upstream.md"
SAMPLES: dict[str, Any] = {
    "integer": 3,
    "number": 7.5,
    "bool": True,
    "string": "label",
    "list of strings": ["data: {}\n\n"],
    "list of numbers": [5],
}
HELP_COMMANDS = [
    [sys.executable, "-m", "api_router", "mock-upstream", "--help"],
    [sys.executable, "-m", "api_router.mock", "--help"],
]


@pytest.mark.parametrize("argv", HELP_COMMANDS, ids=["api-router mock-upstream", "python -m"])
def test_help_names_every_shape_field_and_route(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    text = result.stdout
    for field in SHAPE_FIELDS:
        assert re.search(rf"^  {field.name}\s+{field.kind}, default ", text, re.MULTILINE), field.name
    for route in (*JSON_ROUTES, *AUDIO_ROUTES):
        assert route in text, route
    assert '"mock"' in text and "MOCK{" in text


def test_docs_table_names_exactly_the_fields() -> None:
    rows = re.findall(r"^\| `(\w+)` \|", DOC.read_text(), re.MULTILINE)
    assert rows == [field.name for field in SHAPE_FIELDS]


@pytest.mark.parametrize("field", SHAPE_FIELDS, ids=lambda f: f.name)
def test_every_field_in_the_table_changes_the_shape(field: Any) -> None:
    base = {"raw_events": SAMPLES["list of strings"]} if field.name == "event_delays_ms" else {}
    before = vars(Shape(base, 50.0))
    after = vars(Shape({**base, field.name: SAMPLES[field.kind]}, 50.0))
    assert after != before, f"Shape ignores mock.{field.name}"


def test_unknown_field_and_bad_types_are_refused() -> None:
    with pytest.raises(MockSpecError, match="unknown mock field tokenz; the fields are: tokens, "):
        Shape({"tokenz": 3}, 50.0)
    with pytest.raises(MockSpecError, match=r"mock\.tokens must be a number"):
        Shape({"tokens": "3"}, 50.0)
    with pytest.raises(MockSpecError, match=r"mock\.raw_events must be a list of strings"):
        Shape({"raw_events": [1]}, 50.0)


def test_mock_in_the_body_or_in_the_text() -> None:
    assert parse_mock({"mock": {"tokens": 2}}) == {"tokens": 2}
    message = {"messages": [{"role": "user", "content": 'hi MOCK{"tokens": 4} there'}]}
    assert parse_mock(message) == {"tokens": 4}
    assert parse_mock({"prompt": 'MOCK{"die_after": 1}'}) == {"die_after": 1}
    assert parse_mock({"input": 'MOCK{"tokens": 5}'}) == {"tokens": 5}  # Responses API
    items = [{"role": "user", "content": [{"type": "input_text", "text": 'hi MOCK{"tokens": 6}'}]}]
    assert parse_mock({"input": items}) == {"tokens": 6}  # as the Vercel AI SDK sends it
    assert parse_mock({"input": ["embed MOCK{", "me"]}) == {}  # embeddings' input: no messages


def test_the_mock_process_answers_an_unknown_field_with_400() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "mock": {"tokenz": 3}}
    with UpstreamProcess() as upstream:
        request = urllib.request.Request(
            upstream.url + "/v1/chat/completions",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10)
        assert info.value.code == 400
        assert "unknown mock field tokenz" in json.loads(info.value.read())["error"]["message"]
