"""The import structure of src/api_router, read from the AST (TYPE_CHECKING and function-level
imports included): which modules may import which, and no circles at all.

Layers, bottom up: a module imports only modules of its own layer or of the layers below it
(peers within a layer may import each other, but never in a circle):

    errors → core/ → mock/ → config_backends → config_security, config_usage, config_telemetry
    → config → routing, targets → records (access_log, logs, metrics, cache) → net/ → features → runtime → app
    → server, supervisor → cli

net/ reaches what sits above it (the app, backend groups, stream slots, tracing) only through
the Protocols of net/ports.py, which the layers above satisfy. logs, metrics and cache are below
net/: they import nothing above core/ and routing, and net/ writes into them natively.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "api_router"

# Bottom up: (layer, the modules in it, by name or package prefix). A module belongs to the layer
# of its longest matching prefix; "api_router" itself (the package's __init__: its version) is
# at the bottom, as errors.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("errors", ("api_router", "api_router.errors")),
    ("core", ("api_router.core",)),  # pure, and no config (tests/core/test_core_is_pure.py)
    ("mock", ("api_router.mock",)),  # the simulated upstream: only errors and core below it
    ("config_backends", ("api_router.config_backends",)),
    (
        "config parts",
        ("api_router.config_security", "api_router.config_usage", "api_router.config_telemetry"),
    ),
    ("config", ("api_router.config", "api_router.config_schema")),
    ("routing", ("api_router.targets", "api_router.routing", "api_router.translation")),
    ("records", ("api_router.access_log", "api_router.logs", "api_router.metrics", "api_router.cache")),
    ("net", ("api_router.net",)),
    (
        "features",
        (
            "api_router.accounting",
            "api_router.admin",
            "api_router.backends",
            "api_router.ledger",
            "api_router.limits",
            "api_router.limits_redis",
            "api_router.quota",
            "api_router.quota_redis",
            "api_router.slots_redis",
            "api_router.tracing",
        ),
    ),
    ("runtime", ("api_router.runtime",)),  # one config built whole (runtime.py)
    ("app", ("api_router.app",)),
    ("process", ("api_router.server", "api_router.startup", "api_router.supervisor")),
    ("cli", ("api_router.cli", "api_router.__main__")),
)


def layer_of(module: str) -> int:
    """The index in LAYERS of ``module``'s layer; -1 if no layer names it."""
    best, found = -1, -1
    for index, (_, members) in enumerate(LAYERS):
        for prefix in members:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    return found


# The 400-line rule (STYLE.md): one module owns one thing. These are still over it and owed a
# split (the layers issue); the list can only shrink, and each may not grow.
MAX_LINES = 400
STILL_OVERSIZED: dict[str, int] = {}


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


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in import_graph() if layer_of(name) < 0)
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}"


def test_layers_import_only_their_own_layer_and_those_below():
    wrong = []
    for name, imported in import_graph().items():
        mine = layer_of(name)
        for dep in imported:
            if layer_of(dep) > mine:
                wrong.append(f"{name} ({LAYERS[mine][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_net_reaches_the_app_and_backends_only_through_its_ports():
    graph = import_graph()
    above = ("api_router.app", "api_router.backends")
    wrong = [
        f"{name} imports {dep}"
        for name in graph
        if name.startswith("api_router.net")
        for dep in graph[name]
        if dep.startswith(above)
    ]
    assert not wrong, wrong


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, f"import circles: {found}"


def test_no_module_over_400_lines_but_those_owed():
    wrong = []
    for path in (SRC / PACKAGE).rglob("*.py"):
        name, lines = module_name(path), len(path.read_text().splitlines())
        if lines > STILL_OVERSIZED.get(name, MAX_LINES):
            wrong.append(f"{name}: {lines} lines (at most {STILL_OVERSIZED.get(name, MAX_LINES)})")
    assert not wrong, "\n".join(wrong)
