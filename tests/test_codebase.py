"""Rules of the codebase that a reader relies on (docs/architecture.md): checked, not just written down."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("how2sign", "search")
MAX_FUNCTION_LINES = 45


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


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """Modules of ours that `path` imports anywhere in it (function-level imports included)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            subs = {f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")}
            found.update(subs)  # `from . import decoding` imports that module, not its package's contents
            if len(subs) < len(node.names):
                found.add(base)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def test_no_two_modules_import_each_other():
    paths = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    graph = {module_name(p): imports_of(p) for p in paths}
    mutual = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps
                     if b != a and b in graph and a in graph[b]})
    assert mutual == []


def test_the_import_check_sees_a_mutual_import(tmp_path, monkeypatch):
    pkg = tmp_path / "search"
    pkg.mkdir()
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imports_of(pkg / "a.py") == {"search.b"} and "search.a" in imports_of(pkg / "b.py")
