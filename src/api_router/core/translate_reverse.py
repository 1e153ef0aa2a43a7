"""Anthropic messages → OpenAI chat completions, for Anthropic clients on an OpenAI-compatible
backend (``core/translate.py`` is the other way; its rules 1-4 hold here, mirrored). Pure.

Rule 1. ``system`` (a string or text blocks) becomes the first, system message; text and image
        blocks become parts; ``tool_use`` blocks an assistant's ``tool_calls``; each
        ``tool_result`` block its own ``tool`` message, before the rest of that user turn.
Rule 2. ``top_k``, ``thinking`` and the like have no counterpart and are dropped and named;
        ``stream`` asks for ``stream_options.include_usage`` too, so the translated stream can
        report output tokens in its ``message_delta``.
"""

from __future__ import annotations

import json
from typing import Any

from api_router.core.translate import FINISH_REASONS, Translated, TranslationError
from api_router.errors import ANTHROPIC_TYPES

_DROPPED = ("top_k", "thinking", "service_tier", "container", "mcp_servers")


def anthropic_to_openai(body: dict[str, Any], model: str | None = None) -> Translated:
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        text = (
            system
            if isinstance(system, str)
            else "".join(b.get("text", "") for b in system if isinstance(b, dict))
        )
        messages.append({"role": "system", "content": text})
    raw = body.get("messages")
    if not isinstance(raw, list):
        raise TranslationError("'messages' must be a list")
    for message in raw:
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            raise TranslationError(f"message role {role!r} cannot be translated")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
        elif role == "assistant":
            messages.append(_assistant(content))
        else:
            messages.extend(_user(content))
    out: dict[str, Any] = {"model": model or body.get("model"), "messages": messages}
    if isinstance(body.get("max_tokens"), int):
        out["max_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and metadata.get("user_id"):
        out["user"] = str(metadata["user_id"])
    if body.get("tools"):
        out["tools"] = [_tool(tool) for tool in body["tools"]]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind or "")
        out["tool_choice"] = mapped or {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return Translated(out, tuple(name for name in _DROPPED if body.get(name) is not None))


def _blocks(content: Any) -> list[dict[str, Any]]:
    if not isinstance(content, list):
        raise TranslationError("message content must be a string or a list of blocks")
    return [b for b in content if isinstance(b, dict)]


def _user(content: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in _blocks(content):
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text", ""))})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source") or {})}})
        elif kind == "tool_result":
            inner = block.get("content")
            text = (
                inner if isinstance(inner, str) else "".join(b.get("text", "") for b in _blocks(inner or []))
            )
            results.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
        else:
            raise TranslationError(f"a {kind!r} block cannot be translated to OpenAI")
    return results + ([{"role": "user", "content": parts}] if parts else [])


def _image_url(source: dict[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if source.get("type") == "url":
        return str(source.get("url"))
    raise TranslationError("an image source must be base64 or a URL")


def _assistant(content: Any) -> dict[str, Any]:
    text = "".join(b.get("text", "") for b in _blocks(content) if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in _blocks(content)
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function: dict[str, Any] = {
        "name": tool.get("name"),
        "parameters": tool.get("input_schema") or {"type": "object"},
    }
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def anthropic_usage(usage: dict[str, Any]) -> dict[str, int]:
    """OpenAI usage as Anthropic's: ``input_tokens`` leave out what was read from the cache."""
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0)
    return {
        "input_tokens": int(usage.get("prompt_tokens") or 0) - cached,
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_read_input_tokens": cached,
    }


def openai_completion_to_anthropic(completion: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = {}
        content.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}
        )
    return {
        "id": "msg_" + str(completion.get("id") or ""),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": FINISH_REASONS.get(choice.get("finish_reason") or "", "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(completion.get("usage") or {}),
    }


def openai_error_to_anthropic(body: Any, status: int) -> dict[str, Any]:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    kind = ANTHROPIC_TYPES.get(status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": str(message or f"upstream error {status}")}}
