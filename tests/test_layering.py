"""The house rules of docs/architecture.md, read from the source: imports only point down, and no
package has an import cycle (imports inside functions and TYPE_CHECKING blocks count too)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("cola_core", "workbench", "apps")   # each may import only the ones before it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the project modules a file imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in LAYERS}


def project_graph() -> dict[str, set[str]]:
    files = [p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        # "from pkg import x" names a module when pkg/x.py exists, else the package itself
        graph[name] = {m if m in modules else m.rpartition(".")[0] for m in imported_modules(path)} - {name}
        graph[name] &= set(modules)
    return graph


GRAPH = project_graph()


@pytest.mark.parametrize("layer", LAYERS)
def test_no_layer_imports_a_layer_above_it(layer):
    above = LAYERS[LAYERS.index(layer) + 1:]
    upward = sorted(f"{module} -> {target}" for module, targets in GRAPH.items() if module.split(".")[0] == layer
                    for target in targets if target.split(".")[0] in above)
    assert not upward, "upward imports: " + "; ".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None (depth-first search)."""
    state: dict[str, int] = {}   # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("layer", ["cola_core", "apps"])
def test_no_import_cycle_inside_a_layer(layer):
    # a package's __init__ re-exports its modules, so edges into a package's own __init__ are not cycles
    sub = {m: {t for t in ts if t.split(".")[0] == layer and not m.startswith(t + ".")}
           for m, ts in GRAPH.items() if m.split(".")[0] == layer}
    assert find_cycle(sub) is None, " -> ".join(find_cycle(sub))
