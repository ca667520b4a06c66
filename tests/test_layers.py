"""The layers import downwards only: operators, models and state never import sluice, dataflows or perf;
models never import operators; operators never import models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "operators": {"sluice", "dataflows", "perf", "models"},
    "models": {"sluice", "dataflows", "perf", "operators"},
    "state": {"sluice", "dataflows", "perf", "operators", "models"},
    "dataflows": {"perf"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (ROOT / layer).rglob("*.py")
        for name in _imports(path) & FORBIDDEN[layer]
    }
    assert not wrong, sorted(wrong)
