"""The import contract of docs/architecture.md, read from the source (an AST walk over pare/):
layers import downward only, a technique never imports another, and no import circle exists.
Imports inside functions count like the others: they may not dodge a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "pare"

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    (
        "core",
        {
            "errors",
            "config",
            "io",
            "lock",
            "progress",
            "seeding",
            "provenance",
            "selection",
            "version",
            "registry",
        },
    ),
    ("foundation", {"metrics", "data", "models"}),
    ("formats and runtimes", {"cost", "export", "formats", "generate", "graph", "tasks"}),
    ("training", {"training", "evaluate"}),
    ("techniques and reports", {"techniques", "reporting"}),
    ("recipes", {"recipes"}),
    ("drivers", {"search", "estimate"}),
    ("api", {"__init__", "cli"}),
]
RANK = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ["pare", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported pare module: line}"""
    found = modules()

    def resolve(name: str) -> str:
        while name not in found:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in found.items():
        edges = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                if name == "pare" or name.startswith("pare."):
                    target = resolve(name)
                    if target != module:
                        edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def technique(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "techniques" else None


def test_every_package_has_a_layer():
    assert {top(m) for m in modules()} <= set(RANK), sorted({top(m) for m in modules()} - set(RANK))


def test_layers_import_downward_only():
    upward = [
        f"{m}:{line} imports {target} ({LAYERS[RANK[top(target)]][0]} above {LAYERS[RANK[top(m)]][0]})"
        for m, edges in import_graph().items()
        for target, line in edges.items()
        if RANK[top(target)] > RANK[top(m)]
    ]
    assert upward == []


def test_techniques_never_import_each_other():
    crossing = [
        f"{m}:{line} imports {target}"
        for m, edges in import_graph().items()
        for target, line in edges.items()
        if technique(m) and technique(target) and technique(m) != technique(target)
    ]
    assert crossing == []


def cycles(graph: dict[str, dict]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_no_import_circles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}, [["a", "b", "c"]]),
        ({"a": {"b": 1}, "b": {}, "c": {"b": 1}}, []),
    ],
)
def test_the_cycle_finder_finds_circles(graph, expected):
    assert cycles(graph) == expected


def test_techniques_is_the_function_not_the_package():
    import pare
    import pare.registry

    pare.techniques()
    assert pare.techniques is pare.registry.techniques
