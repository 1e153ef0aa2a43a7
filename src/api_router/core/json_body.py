"""The top level of a client's JSON body: what the router judges is what the upstream reads.

Two rules (hardening issue, defect 9):

1. A body whose top level repeats a key the router reads (``model``, ``stream``) is refused.
   Parsers disagree on duplicates (orjson keeps the last, others the first), so a body judged by
   one key could be served by the other: ``{"model": "allowed", "model": "forbidden"}``.
   Other repeated keys are the upstream's business and pass as sent.
2. A value the router changes (the mapped model, ``stream`` turned off) is spliced into the
   client's bytes; the rest of the body stays byte for byte as sent (numbers beyond 64 bits,
   key order, spacing). Re-serialising turned 123456789012345678901234567890 into 1.2e+29.

Speed: the usual body names each judged key once, literally, and has no ``\\u`` escape (the only
way another spelling could decode to ``"model"``); then a byte count proves there is no
duplicate and finds the one place to splice, with no second parse. Only other bodies are parsed
again (stdlib ``json``, which reports duplicates and keeps every number exact).
"""

from __future__ import annotations

import json
from typing import Any

JUDGED_KEYS = ("model", "stream")
_QUOTED = {key: b'"' + key.encode() + b'"' for key in JUDGED_KEYS}
_WHITESPACE = b" \t\r\n"


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"the request body repeats the top-level key {key!r}")
        self.key = key


def _is_plain(raw: bytes) -> bool:
    """Each judged key appears at most once, spelled literally: no duplicate can hide."""
    return b"\\u" not in raw and all(raw.count(quoted) <= 1 for quoted in _QUOTED.values())


def check_top_level(raw: bytes) -> None:
    """Raise ``DuplicateKey`` if the top-level object repeats a judged key."""
    if _is_plain(raw):
        return
    _parse_exact(raw)


def _parse_exact(raw: bytes) -> dict[str, Any]:
    """The body as the stdlib reads it, refusing repeated judged keys at the top level."""
    last: list[list[tuple[str, Any]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        last[:] = [pairs]  # objects close inside out: the last one closed is the top level
        return dict(pairs)

    parsed = json.loads(raw, object_pairs_hook=pairs_hook)
    if isinstance(parsed, dict) and last:
        seen: set[str] = set()
        for key, _ in last[0]:
            if key in JUDGED_KEYS:
                if key in seen:
                    raise DuplicateKey(key)
                seen.add(key)
    assert isinstance(parsed, dict)
    return parsed


def replace_values(raw: bytes, changes: dict[str, Any]) -> bytes:
    """``raw`` with the top-level values of ``changes`` (judged keys, present in the body)
    replaced; every other byte as the client sent it."""
    if _is_plain(raw):
        for key, value in changes.items():
            raw = _splice(raw, _QUOTED[key], json.dumps(value, ensure_ascii=False).encode())
        return raw
    body = _parse_exact(raw)  # rare: a judged key also named deeper in the body, or \u escapes
    body.update(changes)
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _splice(raw: bytes, quoted_key: bytes, value: bytes) -> bytes:
    """Replace the value after the only occurrence of ``quoted_key`` (a top-level key)."""
    at = raw.index(quoted_key) + len(quoted_key)
    at = _skip_whitespace(raw, at)
    if raw[at : at + 1] != b":":
        raise ValueError("expected ':' after a key")
    start = _skip_whitespace(raw, at + 1)
    return raw[:start] + value + raw[_value_end(raw, start) :]


def _skip_whitespace(raw: bytes, at: int) -> int:
    while at < len(raw) and raw[at] in _WHITESPACE:
        at += 1
    return at


def _value_end(raw: bytes, start: int) -> int:
    """The end of the scalar JSON value at ``start`` (a judged key's value: string or literal)."""
    if raw[start : start + 1] == b'"':
        at = start + 1
        while True:
            quote = raw.index(b'"', at)
            backslashes = 0
            while raw[quote - 1 - backslashes] == 0x5C:  # count the escapes before the quote
                backslashes += 1
            if backslashes % 2 == 0:
                return quote + 1
            at = quote + 1
    end = start
    while end < len(raw) and raw[end] not in b",}" and raw[end] not in _WHITESPACE:
        end += 1
    return end
