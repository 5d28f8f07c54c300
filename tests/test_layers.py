"""The engine's imports form layers: no circle, and the lower layers never reach the supervisor.

Every import counts, including those under ``TYPE_CHECKING`` and inside
functions: a circle hidden that way is still one to whoever reads the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "datagraph"

#: Modules below the supervisor: they depend on Runtime and datagraph.context.Context.
LOWER = (
    "datagraph.context", "datagraph.io", "datagraph.streams", "datagraph.runner", "datagraph.liveness",
    "datagraph.rerun", "datagraph.runtime", "datagraph.executors.base", "datagraph.executors.local",
    "datagraph.executors.worker", "datagraph.executors.process", "datagraph.executors.process_pool",
    "datagraph.executors.celery", "datagraph.coordinator", "datagraph.retries", "datagraph.retries.attempts",
    "datagraph.retries.policy", "datagraph.retries.reader", "datagraph.flushers", "datagraph.local_streams",
    "datagraph.recording",
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The datagraph modules ``module`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{name}.{alias.name}"
                found.add(full if full in modules else name)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules and name != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports in ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = _graph()
    assert "datagraph.context" in graph["datagraph.io"]  # under TYPE_CHECKING
    assert "datagraph.runner" in graph["datagraph.executors.local"]
    assert "datagraph.liveness" in graph["datagraph.executors.worker"]  # `from .. import liveness`
    assert "datagraph.supervisor" in graph["datagraph"]


def test_the_circle_finder_finds_a_circle() -> None:
    graph = _graph()
    graph["datagraph.io"] = graph["datagraph.io"] | {"datagraph.supervisor"}
    circle = _circle(graph)
    assert circle is not None and "datagraph.supervisor" in circle and circle[0] == circle[-1]


def test_the_engine_imports_form_no_circle() -> None:
    circle = _circle(_graph())
    assert circle is None, "datagraph imports in a circle: " + " -> ".join(circle or [])


@pytest.mark.parametrize("module", LOWER)
def test_lower_layers_never_import_the_supervisor(module: str) -> None:
    graph = _graph()
    reach: set[str] = set()
    todo = [module]
    while todo:
        for dep in graph[todo.pop()] - reach:
            reach.add(dep)
            todo.append(dep)
    assert "datagraph.supervisor" not in reach, (
        f"{module} reaches datagraph.supervisor; depend on datagraph.context.Context instead"
    )
