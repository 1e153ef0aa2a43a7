"""Which requests the response cache may answer, and under which key.

The key is what the upstream would see: the route and the JSON body with ``model`` already
mapped, in canonical form (sorted keys, no spaces), so that key order and whitespace in the
client's JSON, or two client names for the same upstream model, do not split the cache.
It does not include the client's credentials: entries are shared by everyone on the route.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["cache_key", "cacheable"]


def cache_key(route_path: str, body: dict[str, Any], mapped_model: str | None) -> str:
    """sha256 hex of the route and the canonical JSON body (``model`` replaced by ``mapped_model``)."""
    if mapped_model is not None:
        body = {**body, "model": mapped_model}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(route_path.encode())
    digest.update(b"\0")  # a path cannot contain NUL, so route and body cannot run into each other
    digest.update(canonical.encode())
    return digest.hexdigest()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def cacheable(body: dict[str, Any], *, allow_sampling: bool) -> bool:
    """A non-streamed request with one choice and, unless ``allow_sampling``, temperature 0.

    With sampling the same request may rightly get a different answer each time; caching it
    is the operator's choice (``cacheSampled``).
    """
    if body.get("stream", False) is not False:
        return False
    n = body.get("n")
    if n is not None and not (_is_number(n) and n == 1):
        return False
    temperature = body.get("temperature")
    return allow_sampling or temperature is None or (_is_number(temperature) and temperature == 0)
