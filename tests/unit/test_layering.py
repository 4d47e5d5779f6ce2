"""The package's layering, read from the source with `ast`: HTTP stays at the edge, and no two
top-level parts of trio_gateway import each other (directly or round a longer loop).

A top-level part is a subpackage (`engines`, `plane`, ...) or a top-level module (`config`,
`gateway`, ...). Imports under `if TYPE_CHECKING:` count too: a cycle of types is still a
cycle a reader has to untangle. The allowlists below are edges other parts of the same
issue remove; they may only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "trio_gateway"

# Packages below HTTP: none of them may import `trio_gateway.http`.
BELOW_HTTP = ("engines", "router", "sessions", "lifecycle", "plane", "worker")

# (importing module, imported module) edges still to go, each named by the issue-15 item
# that removes it. Empty: keep it so.
HTTP_IMPORTS_ALLOWED: set[tuple[str, str]] = set()
# (part, part) edges that close a cycle between top-level parts, with the item removing them.
CYCLE_EDGES_ALLOWED: set[tuple[str, str]] = set()


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def imports_of(name: str, path: Path) -> set[str]:
    """The trio_gateway modules `name` imports, at any depth in the file (lazy imports too)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from trio_gateway.worker import protocol` imports a module, not a name.
            found.update(f"{target}.{alias.name}" for alias in node.names)
    known = {module for module, _ in modules()}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules()}


def part_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def part_graph(modules_graph: dict[str, set[str]]) -> dict[str, set[str]]:
    parts: dict[str, set[str]] = {}
    for module, targets in modules_graph.items():
        edges = parts.setdefault(part_of(module), set())
        edges.update(part_of(t) for t in targets if part_of(t) != part_of(module))
    return parts


def cycles(parts: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one part (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(parts.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(parts):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    # The checks below mean something only if the imports are found at all.
    modules_graph = graph()
    assert "trio_gateway.plane.codec" in modules_graph["trio_gateway.engines.ws_client"]
    assert "trio_gateway.plane.codec" in modules_graph["trio_gateway.worker.connection"]
    assert "trio_gateway.http.asgi" in modules_graph["trio_gateway.http.inference"]


def test_nothing_below_http_imports_http() -> None:
    offending = {
        (module, target)
        for module, targets in graph().items()
        if part_of(module) in BELOW_HTTP
        for target in targets
        if part_of(target) == "http"
    }
    assert offending - HTTP_IMPORTS_ALLOWED == set()
    # An allowed edge that is gone must leave the list, so the list only shrinks.
    assert HTTP_IMPORTS_ALLOWED - offending == set()


def test_no_cycle_between_top_level_parts() -> None:
    parts = part_graph(graph())
    for source, target in CYCLE_EDGES_ALLOWED:
        assert target in parts[source], f"{source} → {target} is gone: drop it from the list"
        parts[source].discard(target)
    assert cycles(parts) == []


def test_engines_and_worker_meet_only_in_plane() -> None:
    parts = part_graph(graph())
    assert "worker" not in parts["engines"]
    assert "plane" in parts["engines"] and "plane" in parts["worker"]
    assert {"engines", "worker", "http"}.isdisjoint(parts["plane"])


def test_cycles_are_found() -> None:
    # The detector itself: a loop of three, a self-contained pair, and a tree.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
