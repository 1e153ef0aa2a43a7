"""Path patterns for routes: exact paths, ``{name}`` segments and ``/*`` prefixes. Pure, no I/O.

Rule 1. A pattern is a path of ``/``-separated segments. A segment ``{name}`` matches any one
        non-empty segment; a last segment ``*`` matches one or more further segments (so
        ``/v1/files/*`` matches ``/v1/files/abc`` and ``/v1/files/abc/content``, not
        ``/v1/files``). Anything else matches itself only.
Rule 2. The most specific pattern wins, whatever the order they were added in: an exact path
        over any pattern; among patterns, the one whose first differing segment is literal (a
        literal beats ``{name}``, which beats ``*``), then the one with more segments. So
        ``/v1/files/{id}`` beats ``/v1/files/*`` for one segment, and ``/v1/files/*`` beats
        ``/v1/*``.
Rule 3. Lookup of an exact path is one dict read (the built-in routes, nearly every request);
        patterns are tried only when that misses, most specific first.
Rule 4. A path with an empty segment (``//``), ``.`` or ``..`` segments, or a percent-encoded
        ``/`` matches no pattern: a prefix route must not be reached by a path that a backend
        would read as another one. Exact paths are compared as sent.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")

_LITERAL, _PARAM, _REST = 0, 1, 2  # segment kinds, most specific first (rule 2)


def _kind(segment: str) -> int:
    if segment == "*":
        return _REST
    if len(segment) > 2 and segment[0] == "{" and segment[-1] == "}":
        return _PARAM
    return _LITERAL


def validate_pattern(pattern: str) -> str | None:
    """Why ``pattern`` is not a valid route pattern, or None if it is."""
    if not pattern.startswith("/"):
        return "endpoint path must start with '/'"
    segments = pattern[1:].split("/")
    for index, segment in enumerate(segments):
        if segment == "":
            return "a route has no empty segments ('//' or a trailing '/')"
        if "*" in segment and (segment != "*" or index != len(segments) - 1):
            return "'*' may only be a whole last segment, as in /v1/files/*"
        if ("{" in segment or "}" in segment) and _kind(segment) != _PARAM:
            return "a parameter is a whole segment, as in /v1/files/{id}"
    return None


def is_pattern(path: str) -> bool:
    return "{" in path or path.endswith("/*")


class _Pattern(Generic[T]):
    __slots__ = ("kinds", "names", "segments", "value")

    def __init__(self, pattern: str, value: T) -> None:
        self.segments = pattern[1:].split("/")
        self.kinds = tuple(_kind(s) for s in self.segments)
        self.names = tuple(
            s[1:-1] if k == _PARAM else "" for s, k in zip(self.segments, self.kinds, strict=True)
        )
        self.value = value

    def sort_key(self) -> tuple[tuple[int, ...], int]:
        # rule 2: segment by segment, literal < param < rest; then longer first
        return self.kinds, -len(self.segments)

    def match(self, parts: list[str]) -> dict[str, str] | None:
        rest = self.kinds[-1] == _REST
        fixed = len(self.segments) - 1 if rest else len(self.segments)
        if len(parts) < fixed + (1 if rest else 0) or (not rest and len(parts) != fixed):
            return None
        params: dict[str, str] = {}
        for index in range(fixed):
            kind, part = self.kinds[index], parts[index]
            if kind == _LITERAL:
                if part != self.segments[index]:
                    return None
            else:
                params[self.names[index]] = part
        return params


class PathTable(Generic[T]):
    """Routes by path: ``add(pattern, value)``, then ``match(path) -> (value, params) | None``."""

    __slots__ = ("_exact", "_patterns")

    def __init__(self) -> None:
        self._exact: dict[str, T] = {}
        self._patterns: list[_Pattern[T]] = []

    def add(self, pattern: str, value: T) -> None:
        problem = validate_pattern(pattern)
        if problem is not None:
            raise ValueError(f"{pattern}: {problem}")
        if not is_pattern(pattern):
            self._exact[pattern] = value
            return
        self._patterns.append(_Pattern(pattern, value))
        self._patterns.sort(key=_Pattern.sort_key)

    def exact(self, path: str) -> T | None:
        return self._exact.get(path)

    def match(self, path: str) -> tuple[T, dict[str, str]] | None:
        value = self._exact.get(path)
        if value is not None:
            return value, {}
        if not self._patterns or not path.startswith("/"):
            return None
        parts = path[1:].split("/")
        for part in parts:  # rule 4
            if part in ("", ".", "..") or "%2f" in part.lower() or "%5c" in part.lower():
                return None
        for pattern in self._patterns:
            params = pattern.match(parts)
            if params is not None:
                return pattern.value, params
        return None

    def __contains__(self, path: str) -> bool:
        return path in self._exact or any("/" + "/".join(p.segments) == path for p in self._patterns)

    def __len__(self) -> int:
        return len(self._exact) + len(self._patterns)
