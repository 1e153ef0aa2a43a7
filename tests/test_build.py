"""The tests must run the code that ships: the mypyc-compiled hot modules (setup.py), fresh."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPILED = [
    "api_router.access_log",
    "api_router.accounting",
    "api_router.backends",
    "api_router.core.balancer",
    "api_router.core.deadline",
    "api_router.core.flow_control",
    "api_router.core.heartbeat",
    "api_router.core.http",
    "api_router.core.json_body",
    "api_router.core.paths",
    "api_router.core.request_head",
    "api_router.core.reserve",
    "api_router.core.response_head",
    "api_router.core.sse",
    "api_router.core.stream",
    "api_router.core.translate_answer",
    "api_router.core.translate_stream",
    "api_router.core.usage",
    "api_router.core.usage_filter",
    "api_router.ledger",
    "api_router.metrics",
    "api_router.net.attempts",
    "api_router.net.dispatch",
    "api_router.net.downstream",
    "api_router.net.forward",
    "api_router.net.request",
    "api_router.net.upstream",
    "api_router.quota",
    "api_router.routing",
    "api_router.runtime",
    "api_router.targets",
]
PURE = bool(os.environ.get("API_ROUTER_PURE_PYTHON"))


def test_the_list_matches_setup_py() -> None:
    text = (ROOT / "setup.py").read_text()
    listed = [line.strip().strip('",') for line in text.splitlines() if line.strip().startswith('"src/')]
    assert [p.removeprefix("src/").removesuffix(".py").replace("/", ".") for p in listed] == COMPILED


@pytest.mark.skipif(PURE, reason="API_ROUTER_PURE_PYTHON: built without the compiled modules")
@pytest.mark.parametrize("name", COMPILED)
def test_hot_module_is_compiled_and_not_older_than_its_source(name: str) -> None:
    module = importlib.import_module(name)
    built = Path(module.__file__ or "")
    assert built.suffix == ".so", f"{name} runs as plain Python; build with `pip install -e .` (setup.py)"
    source = ROOT / "src" / Path(*name.split(".")).with_suffix(".py")
    if source.exists():  # an editable install: the extension sits beside the source it was built from
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than {source.name}: rebuild (scripts/test does) before testing"
        )
