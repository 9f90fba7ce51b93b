"""The package's layers: a module imports only from its own layer or lower ones (lazy imports too).

The table is the architecture in one place; the graph it checks is printed by
``python -m pytest tests/test_layers.py -s`` (also in the note of the layout change).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import morphreg

ROOT = Path(morphreg.__file__).parent

#: Lowest first. A new top-level module or package must be placed here.
LAYERS = [
    {"_allocator", "_checks", "_limits", "_files", "_threads"},
    {"spatial", "losses", "metrics", "geometry", "inverse"},
    {"io", "data"},
    {"models", "optimize"},
    {"viz", "zoo"},
    {"workflows"},
    {"api", "cli", "__main__"},
]
#: ``from .. import __version__`` reads the package's version string only.
ANYWHERE = {"__version__"}


def _top(path: Path) -> list[str]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported(path: Path) -> set[str]:
    """Top-level morphreg names that ``path`` imports, at any depth of its code."""
    parts = _top(path)
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[list[str]] = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            module = base + (node.module.split(".") if node.module else [])
            targets = [module] if node.module else [module + [alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("morphreg."):
            targets = [node.module.split(".")[1:]]
        elif isinstance(node, ast.Import):
            targets = [alias.name.split(".")[1:] for alias in node.names if alias.name.startswith("morphreg.")]
        found |= {target[0] for target in targets if target}
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = _top(path)
        if not parts:
            continue
        graph.setdefault(parts[0], set()).update(_imported(path) - {parts[0]} - ANYWHERE)
    return graph


def _layer(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"'{name}' is in no layer of tests/test_layers.py: place it in LAYERS")


def test_every_module_has_a_layer():
    for name in _graph():
        _layer(name)


@pytest.mark.parametrize("name", sorted(_graph()))
def test_no_upward_import(name):
    upward = {target for target in _graph()[name] if _layer(target) > _layer(name)}
    assert not upward, f"morphreg.{name} (layer {_layer(name)}) imports higher layers: {sorted(upward)}"


def test_print_graph():
    for name, targets in sorted(_graph().items(), key=lambda kv: (_layer(kv[0]), kv[0])):
        print(f"[{_layer(name)}] {name:>10} -> {', '.join(sorted(targets)) or '-'}")
