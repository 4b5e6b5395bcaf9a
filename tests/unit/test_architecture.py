"""Layering rules: the core library never reaches up into orchestration, and stays light to import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"prefect", "mlflow", "boto3", "botocore", "tasks", "flows", "infra"}
HEAVY = {"torch", "transformers", "trl", "vllm", "peft", "accelerate", "datasets"}


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, top-level module, at module level?) for every import statement in a file, nested ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name.split(".")[0], id(node) in top_level) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0], id(node) in top_level))
    return found


def _core_files() -> list[Path]:
    return sorted((ROOT / "rstar").rglob("*.py"))


def test_core_never_imports_orchestration() -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {mod}"
        for p in _core_files()
        for line, mod, _ in _imports(p)
        if mod in FORBIDDEN
    ]
    assert not bad, "rstar/ must not import prefect, mlflow, boto3, tasks, flows or infra:\n" + "\n".join(bad)


def test_core_never_imports_heavy_ml_at_module_level() -> None:
    bad = [
        f"{p.relative_to(ROOT)}:{line} imports {mod} at module level"
        for p in _core_files()
        for line, mod, top in _imports(p)
        if mod in HEAVY and top
    ]
    assert not bad, "torch/transformers/trl/vllm are imported lazily, inside adapter functions:\n" + "\n".join(bad)


def test_the_checker_sees_nested_imports(tmp_path: Path) -> None:
    """The scan must catch an import hidden in a function, or the rule above could never fail."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import prefect\n    from mlflow import log_metric\n")
    mods = {m for _, m, _ in _imports(f)}
    assert {"prefect", "mlflow"} <= mods


@pytest.mark.parametrize(
    "module",
    ["rstar.types", "rstar.data.problems", "rstar.cli", "rstar.verify", "rstar.search", "rstar.data", "rstar.eval"],
)
def test_core_modules_import_without_heavy_packages(module: str) -> None:
    code = (
        f"import sys, json, importlib; importlib.import_module({module!r}); "
        f"print(json.dumps(sorted(m for m in {sorted(HEAVY | FORBIDDEN)!r} if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(out.stdout) == []
