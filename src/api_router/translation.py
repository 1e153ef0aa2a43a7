"""What one JSON request becomes for each backend of its group (``backends[].api``, ``.model``).

Rule 1. A backend of the client's API (or of none named) gets the client's bytes, its model
        replaced by the backend's own name if it has one (spliced: the rest of the bytes as sent).
Rule 2. A chat-completions request to an ``anthropic`` backend, or a messages request to an
        ``openai`` one, is translated (core/translate.py, core/translate_reverse.py) and sent to
        that API's path with that API's credentials; its answer is translated back
        (core/translate_answer.py). Fields with no counterpart are dropped and named in the
        answer's ``x-api-router-dropped`` header; a request that cannot be translated is a 400.
Rule 3. Other routes have no counterpart: they go to every backend as they are (rule 1).
Rule 4. Each backend's request is built once, when it is first tried (failover rebuilds it for
        the next backend, from the client's request, not from the previous backend's).
"""

from __future__ import annotations

from typing import Any

import orjson

from api_router.core.json_body import replace_values
from api_router.core.translate import Translated, TranslationError, openai_to_anthropic
from api_router.core.translate_answer import AnswerTranslator
from api_router.core.translate_reverse import anthropic_to_openai
from api_router.errors import BadRequest
from api_router.routing import PreparedJson, Route, Router
from api_router.targets import Target

# the client's path → (the API it speaks, the other API's path)
COUNTERPARTS = {
    "/v1/chat/completions": ("openai", "/v1/messages"),
    "/v1/messages": ("anthropic", "/v1/chat/completions"),
}


class BackendRequest:
    """One backend's request: the route its head is built for, its body, how to read its answer."""

    __slots__ = ("body", "dropped", "route", "translate")

    def __init__(self, route: Route, body: bytes, dropped: tuple[str, ...], translate: bool) -> None:
        self.route = route
        self.body = body
        self.dropped = dropped
        self.translate = translate


class BackendRequests:
    """A request's forms, one per backend, made on first use (rule 4)."""

    __slots__ = ("_built", "_client_api", "_created", "_prepared", "_route", "_router")

    def __init__(self, router: Router, route: Route, prepared: PreparedJson, created: int) -> None:
        self._router = router
        self._route = route
        self._prepared = prepared
        self._created = created
        self._client_api = COUNTERPARTS.get(route.path, (None, ""))[0]
        self._built: dict[str, BackendRequest] = {}

    def for_target(self, target: Target) -> BackendRequest:
        built = self._built.get(target.name)
        if built is None:
            built = self._built[target.name] = self._build(target)
        return built

    def _build(self, target: Target) -> BackendRequest:
        prepared, route = self._prepared, self._route
        if self._client_api is None or target.api is None or target.api == self._client_api:
            return BackendRequest(route, _with_model(prepared, target.model), (), False)  # rules 1, 3
        body = prepared.body
        try:
            translated: Translated = (
                openai_to_anthropic(body, target.model)
                if self._client_api == "openai"
                else anthropic_to_openai(body, target.model)
            )
        except TranslationError as exc:
            raise BadRequest(
                f"{exc} (backend {target.name} speaks the {target.api} API)", code="untranslatable"
            ) from None
        counterpart = self._router.route_for(COUNTERPARTS[route.path][1])
        return BackendRequest(counterpart, orjson.dumps(translated.body), translated.dropped, True)

    def answer_translator(self, target: Target) -> AnswerTranslator | None:
        """For a translated backend's answer (rule 2), else None."""
        if not self.for_target(target).translate:
            return None
        body, prepared = self._prepared.body, self._prepared
        asked = body.get("stream_options")
        include_usage = (
            isinstance(asked, dict) and bool(asked.get("include_usage")) and not prepared.strip_usage
        )
        model = prepared.model or str(body.get("model") or "")
        return AnswerTranslator(self._client_api == "openai", model, self._created, include_usage)


def _with_model(prepared: PreparedJson, model: str | None) -> bytes:
    if model is None or prepared.body.get("model") == model:
        return prepared.raw
    if "model" in prepared.body:
        return replace_values(prepared.raw, {"model": model})
    body: dict[str, Any] = {**prepared.body, "model": model}
    return orjson.dumps(body)


__all__ = ["COUNTERPARTS", "BackendRequest", "BackendRequests"]
