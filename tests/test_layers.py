"""The house's layers: contract -> model -> producer, consumer -> streamrec, and nothing upwards.

Read from the source (every ``import`` and ``from ... import`` statement, at any depth, so a
lazy import inside a function counts too) and checked by importing each layer alone in a fresh
interpreter, which shows what it really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: What each package may import of the project's own packages.
ALLOWED = {
    "contract": set(),
    "model": {"contract"},
    "producer": {"contract", "model"},
    "consumer": {"contract", "model"},
    "streamrec": {"contract", "model", "producer", "consumer"},
}


def import_nodes(path: Path) -> list[ast.AST]:
    """Every node of a module but those under ``if TYPE_CHECKING:`` (annotations, never run)."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for child in ast.walk(stmt)
    }
    return [node for node in ast.walk(tree) if id(node) not in typing_only]


def project_imports(path: Path) -> set[str]:
    """The project packages a module names in its import statements."""
    found: set[str] = set()
    for node in import_nodes(path):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in ALLOWED)
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_package_imports_a_layer_above_it(package):
    offenders = []
    for path in sorted((REPO / package).rglob("*.py")):
        for imported in project_imports(path) - ALLOWED[package] - {package}:
            offenders.append(f"{path.relative_to(REPO)} imports {imported}")
    assert offenders == []


def module_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (absolute imports only)."""
    graph: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        deps: set[str] = set()
        for node in import_nodes(path):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] == package:
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == package)
        graph[name] = deps - {name}
    return graph


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_circle_inside_a_package(package):
    graph = module_graph(package)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    # A package's __init__ re-exporting its modules is not a circle between those modules.
    circles = sorted(
        f"{a} <-> {b}"
        for a, deps in graph.items()
        for b in deps
        if a < b and a != package and b != package and reaches(b, a, set())
    )
    assert circles == []


def loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_model_loads_no_kafka_prometheus_or_service():
    loaded = loaded_by("import model, model.registry, model.embedding, model.baselines")
    top = {name.split(".")[0] for name in loaded}
    assert not top & {"kafka", "prometheus_client", "consumer", "producer", "streamrec"}


def test_the_contract_loads_nothing_of_the_project_above_it():
    loaded = loaded_by("import contract, contract.schema, contract.defaults, contract.errors")
    top = {name.split(".")[0] for name in loaded}
    assert not top & {"model", "consumer", "producer", "streamrec", "numpy", "kafka"}
