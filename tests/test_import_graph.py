"""The house's import rules, read from the source with `ast`: no import circles (function-level imports count),
only absolute `edgecpm.` imports, and runtime code (backends, kernels, the model) never imports exporter code."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "sdk": "edgecpm",
    "exporters": "edgecpm.exporters",
    "runtime_kernels": "edgecpm.runtime_kernels",
    "device_profiles": "edgecpm.device_profiles",
}
RUNTIME = ("edgecpm.backends", "edgecpm.runtime_kernels", "edgecpm.model", "edgecpm.attention_layers")


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def import_edges() -> tuple[dict[str, set[str]], list[str]]:
    """module -> the edgecpm modules it imports; plus every relative import found (as 'file:line')."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    relative = []
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    relative.append(f"{path.relative_to(ROOT)}:{node.lineno}")
                    continue
                module = node.module or ""
                subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in mods]
                deps.update(subs)
                if len(subs) < len(node.names):
                    deps.add(module)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph, relative


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    graph, _ = import_edges()
    assert len(graph) > 50
    assert cycles(graph) == []


def test_imports_are_absolute() -> None:
    _, relative = import_edges()
    assert relative == [], f"relative imports (use `from edgecpm.x import y`): {relative[:10]}"


def test_runtime_code_never_imports_exporters() -> None:
    graph, _ = import_edges()
    bad = [
        (m, d) for m, deps in graph.items() if m.startswith(RUNTIME) for d in deps if d.startswith("edgecpm.exporters")
    ]
    assert bad == []
