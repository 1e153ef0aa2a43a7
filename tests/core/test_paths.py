"""core/paths.py: route patterns, most specific first whatever the order they were added in."""

from __future__ import annotations

import itertools

import pytest

from api_router.core.paths import PathTable, validate_pattern

PATTERNS = [
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/responses/{id}",
    "/v1/responses/{id}/cancel",
    "/v1/files/{file_id}",
    "/v1/files/*",
    "/v1/*",
    "/v1/models/{model}",
]


@pytest.mark.parametrize(
    ("path", "expected", "params"),
    [
        ("/v1/chat/completions", "/v1/chat/completions", {}),
        ("/v1/responses", "/v1/responses", {}),
        ("/v1/responses/resp_1", "/v1/responses/{id}", {"id": "resp_1"}),
        ("/v1/responses/resp_1/cancel", "/v1/responses/{id}/cancel", {"id": "resp_1"}),
        ("/v1/responses/resp_1/input_items", "/v1/*", {}),
        ("/v1/files/file-9", "/v1/files/{file_id}", {"file_id": "file-9"}),
        ("/v1/files/file-9/content", "/v1/files/*", {}),
        ("/v1/files", "/v1/*", {}),
        ("/v1/models/gpt-4o", "/v1/models/{model}", {"model": "gpt-4o"}),
        ("/v1/batches", "/v1/*", {}),
        ("/v2/anything", None, None),
        ("/v1", None, None),
        ("/v1/", None, None),
        ("/v1//files", None, None),
        ("/v1/files/../admin", None, None),
        ("/v1/files/a%2Fb", None, None),
        ("/v1/./batches", None, None),
    ],
)
def test_the_most_specific_pattern_wins_in_any_order(
    path: str, expected: str | None, params: dict[str, str] | None
) -> None:
    for order in itertools.islice(itertools.permutations(PATTERNS), 0, None, 997):  # ~40 orders
        table: PathTable[str] = PathTable()
        for pattern in order:
            table.add(pattern, pattern)
        found = table.match(path)
        if expected is None:
            assert found is None, (path, order)
        else:
            assert found == (expected, params), (path, order)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("v1/files", "must start with '/'"),
        ("/v1//files", "empty segments"),
        ("/v1/files/", "empty segments"),
        ("/v1/*/files", "whole last segment"),
        ("/v1/files*", "whole last segment"),
        ("/v1/{id", "whole segment"),
        ("/v1/x{id}", "whole segment"),
    ],
)
def test_bad_patterns_are_refused_with_a_reason(pattern: str, problem: str) -> None:
    reason = validate_pattern(pattern)
    assert reason is not None and problem in reason
    with pytest.raises(ValueError, match="/"):
        PathTable[str]().add(pattern, "x")


def test_exact_lookup_and_membership() -> None:
    table: PathTable[int] = PathTable()
    table.add("/v1/embeddings", 1)
    table.add("/v1/files/*", 2)
    assert table.exact("/v1/embeddings") == 1 and table.exact("/v1/files/x") is None
    assert "/v1/files/*" in table and "/v1/embeddings" in table and "/v1/other" not in table
    assert len(table) == 2
