"""The config file's JSON Schema, generated from the pydantic models (``api-router schema``).

Editors (VS Code, JetBrains, anything speaking the JSON language server) complete and check a
config that names this schema in its ``"$schema"`` key; the loader accepts and ignores that key.
The schema describes the file's shape and the bounds pydantic knows (types, ranges, enums,
unknown keys refused); checks that need code (header names, URLs, files that must exist) are
still only made by ``api-router check-config``.
"""

from __future__ import annotations

from typing import Any

from api_router import __version__
from api_router.config import SCHEMA_KEY, Config

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def config_schema() -> dict[str, Any]:
    schema = Config.model_json_schema(by_alias=True, mode="validation")
    properties = {
        SCHEMA_KEY: {"type": "string", "description": "URL or path of this JSON Schema (for editors)"},
        **schema["properties"],
    }
    return {
        SCHEMA_KEY: DIALECT,
        "title": f"api-router {__version__} configuration",
        **{key: value for key, value in schema.items() if key not in ("title", "properties")},
        "properties": properties,
    }
