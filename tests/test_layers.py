"""The import structure of src/api_router, read from the AST (TYPE_CHECKING and function-level
imports included): which modules may import which, and no circles beyond the one still owed.

Layers, bottom up (a module imports only its own layer's peers below it and lower layers):
errors → core/ → config_backends → config_security, config_usage → config → the rest.
The one circle left (app ↔ net/ ↔ backends ↔ logs) is the layers issue's remaining work; it is
named here so that it can only shrink: any other circle, or a new member, fails this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "api_router"

# Modules → the api_router modules (prefixes) each may import. Core is pure and imports no config.
ALLOWED_BELOW = {
    "api_router.errors": (),
    "api_router.core": ("api_router.core", "api_router.errors"),
    "api_router.config_backends": ("api_router.errors",),
    "api_router.config_security": ("api_router.config_backends", "api_router.core", "api_router.errors"),
    "api_router.config_usage": ("api_router.config_backends", "api_router.core", "api_router.errors"),
}
STILL_TANGLED = frozenset(
    {
        "api_router.app",
        "api_router.backends",
        "api_router.logs",
        "api_router.net.downstream",
        "api_router.net.forward",
    }
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The api_router modules that ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in modules:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "api_router.config_backends" in graph["api_router.config"]
    assert "api_router.net.forward" in graph["api_router.net.downstream"]


def test_lower_layers_import_only_what_is_below_them():
    wrong = []
    for name, imported in import_graph().items():
        for layer, allowed in ALLOWED_BELOW.items():
            if name == layer or name.startswith(layer + "."):
                wrong += [f"{name} imports {dep}" for dep in imported if not dep.startswith(allowed)]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_circle_but_the_one_still_owed():
    found = circles(import_graph())
    others = [c for c in found if not c <= STILL_TANGLED]
    assert not others, f"import circles: {others}"
