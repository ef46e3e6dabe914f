"""The module DAG of DESIGN.md §2, checked on the source."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lmrnn"
# dotted names below lmrnn: "train", "cli" (the package), "cli.use"
MODULES = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
                 for p in PACKAGE.rglob("*.py") if p.stem != "__main__" and p.relative_to(PACKAGE).parts[0] != "__init__.py")
CLI = [m for m in MODULES if m == "cli" or m.startswith("cli.")]


def source(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports(module: str) -> set[str]:
    tree = ast.parse(source(module).read_text())
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

    assert not any(uses("config", m) for m in ("torch", "lmrnn.models", "lmrnn.data", "lmrnn.config_parser"))
    for light in ("config_parser", "corpus", "files"):  # read by the CLI before any command needs torch
        assert not any(uses(light, m) for m in ("torch", "lmrnn.models", "lmrnn.data")), light
    assert not any(uses("models", m) for m in ("lmrnn.tokenizer", "lmrnn.data"))
    assert not uses("data", "lmrnn.models")
    assert "cli" in {m for m in MODULES if uses(m, "typer")} <= set(CLI)
    assert {m for m in MODULES if uses(m, "rich")} <= {*CLI, "console"}
    assert not any(uses(m, "lmrnn.cli") for m in MODULES if m not in CLI)
    # plumbing stays light: the durable writes need no torch, and a plot needs no run directory
    assert not any(uses("files", m) for m in ("torch", "safetensors.torch", "lmrnn.checkpoint"))
    assert not uses("report", "lmrnn.checkpoint")
