"""The mock upstream's fixed answers (no shape, no stream): the endpoints issue's pass-through
routes need something real at the far end of the wire."""

from __future__ import annotations

import json
from typing import Any

from api_router.mock.responses import response_object
from api_router.mock.shapes import models_body


def simple_answer(method: str, path: str, body: Any) -> dict[str, Any] | None:
    """The mock's fixed answers: the model list and one model, the (empty) file list, and
    Anthropic's token count (about one token per 4 characters of the messages)."""
    if method == "GET" and path == "/v1/models":
        return models_body()
    if method == "GET" and path.startswith("/v1/models/"):
        return {"id": path.removeprefix("/v1/models/"), "object": "model", "created": 0, "owned_by": "mock"}
    if method == "GET" and path.startswith("/v1/responses/") and path.count("/") == 3:
        return response_object(path.removeprefix("/v1/responses/"), "mock-large", "completed", "", 0, 0)
    if method == "GET" and path == "/v1/files":
        return {"object": "list", "data": [], "has_more": False}
    if method == "POST" and path == "/v1/messages/count_tokens":
        return {"input_tokens": max(1, len(json.dumps((body or {}).get("messages", []))) // 4)}
    return None
