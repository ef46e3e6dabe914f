"""The module DAG of DESIGN.md §2, checked on the source."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lmrnn"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__")


def imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names if node.module == "lmrnn"}
    return names


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_on_its_own(module):
    result = subprocess.run([sys.executable, "-c", f"import lmrnn.{module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_dependency_rules():
    def uses(module, target):
        return any(name == target or name.startswith(target + ".") for name in imports(module))

    assert not any(uses("config", m) for m in ("torch", "lmrnn.models", "lmrnn.data"))
    assert not any(uses("models", m) for m in ("lmrnn.tokenizer", "lmrnn.data"))
    assert not uses("data", "lmrnn.models")
    assert [m for m in MODULES if uses(m, "typer")] == ["cli"]
    assert {m for m in MODULES if uses(m, "rich")} <= {"cli", "console"}
    assert not any(uses(m, "lmrnn.cli") for m in MODULES)
    # plumbing stays light: the durable writes need no torch, and a plot needs no run directory
    assert not any(uses("files", m) for m in ("torch", "safetensors.torch", "lmrnn.checkpoint"))
    assert not uses("report", "lmrnn.checkpoint")
