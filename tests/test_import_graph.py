"""crdiff.experiment has no import circle, counting imports inside functions too (they hide circles
from Python's import machinery, not from the reader)."""

import ast
import graphlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "crdiff" / "experiment"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parents[1]).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The crdiff.experiment modules `path` imports anywhere (`from pkg import mod` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found & modules


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(path, set(paths)) - {name} for name, path in paths.items()}


def test_the_graph_sees_the_imports():
    g = graph()
    assert "crdiff.experiment.methods" in g["crdiff.experiment.run"]
    assert "crdiff.experiment.run" in g["crdiff.experiment.planner"]
    assert "crdiff.experiment.methods.base" in g["crdiff.experiment.methods.pruned"]


def test_no_import_circle_in_the_experiment_package():
    graphlib.TopologicalSorter(graph()).prepare()  # raises CycleError naming the circle
