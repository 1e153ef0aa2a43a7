"""The core is sans-IO: no module under api_router/core (nor routing.py) imports an I/O or clock module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import api_router

FORBIDDEN = frozenset({"asyncio", "socket", "ssl", "uvloop", "time", "httptools", "selectors", "threading"})
PACKAGE = Path(api_router.__file__).parent


def pure_modules() -> list[Path]:
    modules = sorted((PACKAGE / "core").rglob("*.py"))
    routing = PACKAGE / "routing.py"
    if routing.exists():
        modules.append(routing)
    return modules


def imported_modules(tree: ast.AST) -> set[str]:
    """Top-level names of every module imported anywhere in the tree (including inside functions)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_the_core_package_is_found() -> None:
    names = {path.name for path in pure_modules()}
    assert {"__init__.py", "sse.py", "heartbeat.py", "stream.py"} <= names


@pytest.mark.parametrize("path", pure_modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert not imported_modules(tree) & FORBIDDEN


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import time as t",
        "import os, socket",
        "from ssl import SSLContext",
        "from asyncio.streams import StreamReader",
        "def f():\n    import threading",
        "import importlib\nimportlib.import_module('selectors')",
        "__import__('uvloop')",
        "from httptools import HttpRequestParser",
    ],
)
def test_the_scan_catches_forbidden_imports(source: str) -> None:
    assert imported_modules(ast.parse(source)) & FORBIDDEN


@pytest.mark.parametrize(
    "source",
    ["import enum", "from . import sse", "from api_router.core.sse import X", "from datetime import time"],
)
def test_the_scan_allows_other_imports(source: str) -> None:
    assert not imported_modules(ast.parse(source)) & FORBIDDEN
