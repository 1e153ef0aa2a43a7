"""OpenAI chat completions ⇄ Anthropic messages: requests, answers and errors. Pure: dicts in,
dicts out, no I/O, no clock (``created`` is an argument). Streams: ``core/translate_stream.py``.

Rule 1. What has a counterpart is translated: system/developer messages ⇄ ``system``; user and
        assistant text; image parts (data URLs ⇄ base64 sources, http(s) URLs ⇄ url sources);
        assistant ``tool_calls`` ⇄ ``tool_use`` blocks; ``tool`` messages ⇄ ``tool_result``
        blocks; ``max_tokens`` / ``max_completion_tokens``; ``stop`` ⇄ ``stop_sequences``;
        ``temperature``, ``top_p``; ``tools`` and ``tool_choice`` (``required`` ⇄ ``any``,
        ``parallel_tool_calls: false`` ⇄ ``disable_parallel_tool_use``); ``user`` ⇄
        ``metadata.user_id``; ``stream``.
Rule 2. What has none and only tunes the answer is dropped and named (``Translated.dropped``,
        sent to the client as the ``x-api-router-dropped`` header): ``presence_penalty``,
        ``frequency_penalty``, ``logit_bias``, ``seed``, ``service_tier``, ``top_k``, ... What
        would change the answer's meaning is refused (``TranslationError``, a 400): ``n`` > 1,
        ``logprobs``, a JSON ``response_format``, audio or file parts, a non-function tool.
Rule 3. Anthropic requires ``max_tokens``: an OpenAI request without one gets
        ``DEFAULT_MAX_TOKENS``. Anthropic's ``temperature`` is 0-1: a higher OpenAI value is
        clamped to 1. Consecutive messages of one role are merged (Anthropic alternates roles).
Rule 4. Answers: ``stop_reason`` ⇄ ``finish_reason`` by ``STOP_REASONS``; usage as
        ``core/usage.py`` counts it (OpenAI's ``prompt_tokens`` include cached input,
        Anthropic's ``input_tokens`` do not). The model named in the answer is the one the
        client asked for.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

DEFAULT_MAX_TOKENS = 4096
# Anthropic stop_reason -> OpenAI finish_reason, and back (the first of each pair wins)
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
FINISH_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}
_OPENAI_DROPPED = (
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "service_tier",
    "store",
    "prediction",
    "reasoning_effort",
    "modalities",
    "web_search_options",
    "verbosity",
    "top_logprobs",
    "safety_identifier",
    "prompt_cache_key",
)
# OpenAI error type by status, for Anthropic errors translated (OpenAI's own names)
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


class TranslationError(ValueError):
    """A request that cannot be translated without changing what it asks (rule 2): a 400."""


class Translated(NamedTuple):
    body: dict[str, Any]
    dropped: tuple[str, ...]  # request fields left out (rule 2)


# -- OpenAI request -> Anthropic ------------------------------------------------------------------
def openai_to_anthropic(body: dict[str, Any], model: str | None = None) -> Translated:
    if body.get("n") not in (None, 1):
        raise TranslationError("'n' > 1 cannot be translated: Anthropic answers one choice")
    if body.get("logprobs"):
        raise TranslationError("'logprobs' cannot be translated: Anthropic has none")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise TranslationError("a JSON 'response_format' cannot be translated to Anthropic")
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    for message in _list(body.get("messages"), "messages"):
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text_of(message.get("content")))
        elif role == "user":
            _append(messages, "user", _user_blocks(message.get("content")))
        elif role == "assistant":
            _append(messages, "assistant", _assistant_blocks(message))
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": str(message.get("tool_call_id") or ""),
                "content": _text_of(message.get("content")),
            }
            _append(messages, "user", [result])
        else:
            raise TranslationError(f"message role {role!r} cannot be translated")
    out: dict[str, Any] = {"model": model or body.get("model"), "messages": messages}
    if system:
        out["system"] = "\n\n".join(system)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else DEFAULT_MAX_TOKENS
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)):
        out["temperature"] = min(float(temperature), 1.0)  # rule 3
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    if body.get("stream"):
        out["stream"] = True
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    tools = body.get("tools")
    if tools:
        out["tools"] = [_anthropic_tool(tool) for tool in _list(tools, "tools")]
    choice = _anthropic_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    dropped = tuple(name for name in _OPENAI_DROPPED if body.get(name) is not None)
    return Translated(out, dropped)


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise TranslationError(f"'{name}' must be a list")
    return value


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if messages and messages[-1]["role"] == role:  # rule 3: merged
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    raise TranslationError("message content must be a string or a list of parts")


def _user_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks: list[dict[str, Any]] = []
    for part in _list(content, "content"):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            blocks.append({"type": "image", "source": _image_source(str(url or ""))})
        else:
            raise TranslationError(f"a {kind!r} content part cannot be translated to Anthropic")
    return blocks


def _image_source(url: str) -> dict[str, str]:
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        media_type, _, encoding = head[5:].partition(";")
        if encoding != "base64" or not data:
            raise TranslationError("an image data URL must be base64")
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise TranslationError("an image must be a data: or http(s) URL")


def _assistant_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = _text_of(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            raise TranslationError("a tool call's 'arguments' must be JSON") from None
        blocks.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments}
        )
    return blocks


def _anthropic_tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise TranslationError("only function tools can be translated to Anthropic")
    function = tool.get("function") or {}
    out: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object"},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _anthropic_tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None and parallel is not False:
        return None
    out: dict[str, Any]
    if choice in (None, "auto"):
        out = {"type": "auto"}
    elif choice == "none":
        out = {"type": "none"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise TranslationError(f"tool_choice {choice!r} cannot be translated")
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# -- Anthropic answer -> OpenAI -------------------------------------------------------------------
def openai_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage as OpenAI's (rule 4: cached and cache-written input are input too)."""
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached + int(usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def anthropic_message_to_openai(message: dict[str, Any], model: str, created: int) -> dict[str, Any]:
    text = "".join(b.get("text", "") for b in message.get("content") or [] if b.get("type") == "text")
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {})},
        }
        for b in message.get("content") or []
        if b.get("type") == "tool_use"
    ]
    reply: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + str(message.get("id") or ""),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": STOP_REASONS.get(message.get("stop_reason") or "", "stop"),
            }
        ],
        "usage": openai_usage(message.get("usage") or {}),
    }


def anthropic_error_to_openai(body: Any, status: int) -> dict[str, Any]:
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": str(message or f"upstream error {status}"), "type": kind, "code": None}}


__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FINISH_REASONS",
    "STOP_REASONS",
    "Translated",
    "TranslationError",
    "anthropic_error_to_openai",
    "anthropic_message_to_openai",
    "openai_to_anthropic",
    "openai_usage",
]
