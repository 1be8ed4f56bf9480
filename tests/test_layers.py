"""The package's layers: no import cycle between its packages and top-level modules.

The import graph is read from the source with `ast`: every import counts, also one inside a
function (a lazy import is still a dependency), except those under `if TYPE_CHECKING:` (type
hints only). Nodes are `foleyrt`'s packages and top-level modules (`foleyrt.accel`,
`foleyrt.config`, ...); an import between two modules of one package is inside that node.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import foleyrt

PACKAGE = Path(foleyrt.__file__).parent
# Bottom to top (spec: STYLE.md's layers, in one order): a node imports only nodes before it
# (the root package re-exports the public API lazily, by name, and is not a node).
LAYERS = ["errors", "version",
          "config", "lengths", "request", "atomic",
          "models", "weights", "media",
          "sampling",
          "accel",
          "export",
          "pipeline",
          "batch", "calibrate", "bench", "verify",
          "server", "cli"]


def _node(module: str) -> str | None:
    """`foleyrt.accel.quant` -> `accel`; None outside the package or for the root itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "foleyrt" and len(parts) > 1 else None


def _imports(tree: ast.AST, package: str) -> Iterator[str]:
    """Modules imported anywhere in `tree` but under `if TYPE_CHECKING:` (`package`: the
    package relative imports start from)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for branch in node.orelse:
                yield from _imports(branch, package)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, source] if source else base)
            yield source
            yield from (f"{source}.{alias.name}" for alias in node.names)
        yield from _imports(node, package)


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(p for p in rel.parts if p != "__init__")
        source = _node(module)
        if source is None:
            continue
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = {_node(m) for m in _imports(ast.parse(path.read_text()), package)}
        graph.setdefault(source, set()).update(t for t in targets if t and t != source)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_packages_or_modules() -> None:
    cycle = _cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_every_import_goes_down_the_layers() -> None:
    graph = import_graph()
    assert set(graph) <= set(LAYERS), f"nodes missing from LAYERS: {set(graph) - set(LAYERS)}"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if LAYERS.index(b) > LAYERS.index(a))
    assert not upward, "imports that do not go down: " + ", ".join(upward)


def test_the_checker_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from foleyrt.cli import x\n"
        "def f():\n    from foleyrt.server import app\n"
        "from . import sibling\n")
    found = set(_imports(tree, "foleyrt.accel"))
    assert "foleyrt.server" in found and "foleyrt.cli" not in found
    assert "foleyrt.accel.sibling" in found
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
