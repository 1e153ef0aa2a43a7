"""``api-router schema``: the config's JSON Schema agrees with the loader, and ``$schema`` is accepted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from api_router import config as cfg

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("API_ROUTER_")}
    result = subprocess.run(
        [sys.executable, "-m", "api_router", "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed: dict[str, Any] = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(printed)
    return printed


def _errors(schema: dict[str, Any], doc: object) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _json_examples(markdown: Path) -> list[dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", markdown.read_text(), flags=re.DOTALL)
    examples = []
    for block in blocks:
        try:
            value = json.loads(block)
        except json.JSONDecodeError:
            continue  # a fragment, not a whole config
        if isinstance(value, dict) and ("baseUrl" in value or "backends" in value):
            examples.append(value)
    return examples


def test_schema_is_the_config_models(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    # Every file-level field of Config, by its camelCase name, plus "$schema" itself.
    aliases = {field.alias for field in cfg.Config.model_fields.values()}
    assert set(schema["properties"]) == aliases | {"$schema"}


@pytest.mark.parametrize("name", cfg.PRESETS)
def test_every_preset_validates(schema: dict[str, Any], name: str) -> None:
    text = resources.files("api_router").joinpath("presets", f"{name}.json").read_text()
    assert _errors(schema, json.loads(text)) == []


def test_the_docs_examples_validate(schema: dict[str, Any]) -> None:
    examples = _json_examples(ROOT / "README.md") + _json_examples(ROOT / "docs" / "configuration.md")
    assert len(examples) >= 3
    for example in examples:
        assert _errors(schema, example) == [], example
        cfg.from_dict(example)  # and the loader agrees


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"baseUrl": "http://x", "bufferSize": 1}, ""),  # unknown key
        ({"baseUrl": "http://x", "port": 70000}, "port"),
        ({"baseUrl": "http://x", "streamConfig": {"bufferSize": 1}}, "streamConfig.bufferSize"),
        ({"baseUrl": "http://x", "logFormat": "xml"}, "logFormat"),
        ({"baseUrl": "http://x", "$schema": 3}, "$schema"),
        ({"baseUrl": "http://x", "streamUsage": "always"}, "streamUsage"),
        (
            {"baseUrl": "http://x", "endpoints": {"/v1/completions": {"streamUsage": 1}}},
            "endpoints./v1/completions.streamUsage",
        ),
        ({"baseUrl": "http://x", "prices": {"m": {"inputPer1M": -1}}}, "prices.m.inputPer1M"),
        ({"baseUrl": "http://x", "prices": {"m": {"outputPer1M": 1}}}, "prices.m"),  # inputPer1M missing
    ],
)
def test_schema_and_loader_refuse_the_same_mistakes(schema: dict[str, Any], doc: object, field: str) -> None:
    errors = _errors(schema, doc)
    assert len(errors) == 1 and errors[0].startswith(f"{field}: "), errors
    with pytest.raises(cfg.ConfigError) as info:
        cfg.from_dict(doc)  # type: ignore[arg-type]
    assert field in str(info.value)


def test_usage_settings_validate_and_load(schema: dict[str, Any]) -> None:
    doc = {
        "baseUrl": "http://127.0.0.1:9",
        "streamUsage": "passthrough",
        "endpoints": {"/v1/chat/completions": {"streamUsage": "force"}},
        "prices": {"house": {"inputPer1M": 0.5, "outputPer1M": 1.5, "cachedInputPer1M": 0.05}},
    }
    assert _errors(schema, doc) == []
    config = cfg.from_dict(doc)
    assert config.stream_usage == "passthrough"
    assert config.endpoints["/v1/chat/completions"].stream_usage == "force"
    assert config.prices["house"].price() == (0.5, 1.5, 0.05)


def test_a_config_naming_its_schema_loads(tmp_path: Path, schema: dict[str, Any]) -> None:
    (tmp_path / "api-router.schema.json").write_text(json.dumps(schema))
    doc = {"$schema": "./api-router.schema.json", "baseUrl": "http://127.0.0.1:9", "port": 9000}
    assert _errors(schema, doc) == []
    path = tmp_path / "router.json"
    path.write_text(json.dumps(doc))
    config = cfg.load(path)
    assert (config.base_url, config.port) == ("http://127.0.0.1:9", 9000)
    # A reload re-validates a dump of the config: "$schema" must not come back as an unknown key.
    assert config.with_overrides({"port": 9001}).port == 9001
