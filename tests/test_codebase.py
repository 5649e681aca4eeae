"""Rules of the codebase that a reader relies on (docs/architecture.md): checked, not just written down."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("how2sign", "search")
MAX_FUNCTION_LINES = 60


def functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def test_no_function_is_longer_than_a_screen():
    long = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) for n in functions(p)
            if n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_the_training_library_never_imports_optuna():
    offenders = []
    for p in sorted((ROOT / "how2sign").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{p.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "optuna"]
    assert offenders == []


def test_the_checks_see_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    (n,) = functions(tmp_path / "m.py")
    assert n.end_lineno - n.lineno + 1 == MAX_FUNCTION_LINES + 1
