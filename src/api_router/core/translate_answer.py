"""One upstream answer in the other API, translated for the client as it arrives.

Rule 1. A stream (``text/event-stream``) is translated one event at a time
        (``core/translate_stream.py``): nothing is held beyond an unfinished event, so memory
        per stream is bounded by ``MAX_EVENT_BYTES`` whatever the upstream sends.
Rule 2. A JSON answer (an answer or an error) is whole only at its end: it is held, up to
        ``MAX_ANSWER_BYTES``, and translated then (``finish``). An error keeps its status;
        its body takes the client's API's shape.
Rule 3. What cannot be read as its API's answer (not JSON, too long) goes to the client as it
        came: a translation never hides what the upstream said.

Pure: bytes in, bytes out; ``created`` (an OpenAI answer's timestamp) is an argument.
"""

from __future__ import annotations

import json
from typing import Any

from api_router.core.translate import anthropic_error_to_openai, anthropic_message_to_openai
from api_router.core.translate_reverse import openai_completion_to_anthropic, openai_error_to_anthropic
from api_router.core.translate_stream import AnthropicToOpenAI, OpenAIToAnthropic, StreamTranslationError

MAX_ANSWER_BYTES = 16 << 20


class AnswerTranslator:
    """``to_openai``: an Anthropic answer for an OpenAI client; else the reverse."""

    __slots__ = ("_held", "_status", "_stream", "_to_openai", "created", "include_usage", "model", "raw")

    def __init__(self, to_openai: bool, model: str, created: int, include_usage: bool) -> None:
        self._to_openai = to_openai
        self.model = model  # the name the client asked for: its answer names it
        self.created = created
        self.include_usage = include_usage
        self._stream: AnthropicToOpenAI | OpenAIToAnthropic | None = None
        self._held = bytearray()
        self._status = 200
        self.raw = False  # rule 3: the rest goes out as it came

    def start(self, status: int, event_stream: bool) -> None:
        """The upstream's head arrived: its status, and whether its body is a stream."""
        self._status = status
        if event_stream and status < 300:
            self._stream = (
                AnthropicToOpenAI(self.model, self.created, self.include_usage)
                if self._to_openai
                else OpenAIToAnthropic(self.model)
            )

    def feed(self, data: bytes) -> bytes:
        """One body piece; the client's bytes it completed (rule 1), or nothing yet (rule 2)."""
        if self.raw:
            return data
        stream = self._stream
        if stream is not None:
            try:
                return stream.feed(data)
            except StreamTranslationError:
                self.raw = True  # rule 3
                return data
        self._held += data
        if len(self._held) > MAX_ANSWER_BYTES:
            self.raw = True
            held, self._held = bytes(self._held), bytearray()
            return held
        return b""

    def finish(self) -> bytes:
        """The upstream's body ended: a held JSON answer, translated (rule 2)."""
        if self._stream is not None or self.raw or not self._held:
            return b""
        held, self._held = bytes(self._held), bytearray()
        try:
            body: Any = json.loads(held)
        except ValueError:
            return held  # rule 3
        status = self._status
        try:
            if self._to_openai:
                out = (
                    anthropic_error_to_openai(body, status)
                    if status >= 400
                    else anthropic_message_to_openai(body, self.model, self.created)
                )
            elif status >= 400:
                out = openai_error_to_anthropic(body, status)
            else:
                out = openai_completion_to_anthropic(body, self.model)
        except (AttributeError, KeyError, TypeError, ValueError):
            return held  # JSON, but not its API's answer: rule 3
        return json.dumps(out, separators=(",", ":")).encode()
