"""Imports run one way: no cycle among the package's modules, the core never imports the passes,
and only the runner builds ONNX Runtime sessions.

Every import statement counts, those inside functions too (a lazy import is still a
dependency); only ``if TYPE_CHECKING:`` blocks are left out.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Import name of each source folder (pyproject.toml maps passes/ and targets/ into the package).
FOLDERS = {"onnxpress": REPO / "onnxpress", "onnxpress.passes": REPO / "passes",
           "onnxpress.targets": REPO / "targets", "onnxpress.samples": REPO / "samples"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(folder.glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules ``path`` imports (``from onnxpress import x`` counts x if a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name in modules}


def _graph() -> dict[str, set[str]]:
    """Module -> the modules it imports. A submodule's import of its own package (Python imports
    the parent first anyway; ``from onnxpress.passes import _common``) is not an edge, and the
    top-level ``__init__`` is a lazy facade that imports nothing."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        parents = {name.rsplit(".", n)[0] for n in range(1, name.count(".") + 1)}
        graph[name] = set() if name == "onnxpress" else _imports(path, modules) - {name} - parents
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_import_cycle_among_the_package_modules():
    graph = _graph()
    assert len(graph) > 20  # the walk found the package
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_core_never_imports_the_passes():
    graph = _graph()
    core = [name for name in graph if not name.startswith(("onnxpress.passes", "onnxpress.samples"))]
    offenders = {name: sorted(m for m in graph[name] if m.startswith("onnxpress.passes"))
                 for name in core}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_runner_builds_onnx_runtime_sessions():
    pattern = re.compile(r"InferenceSession|SessionOptions")
    users = sorted(str(path.relative_to(REPO)) for path in _modules().values()
                   if pattern.search(path.read_text(encoding="utf-8")))
    assert users == ["onnxpress/runtime.py"]
