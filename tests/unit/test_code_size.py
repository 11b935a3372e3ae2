"""The package's own size rule: no function over 50 lines, no class over 250 (the generated
protobuf code aside). A unit that outgrows it is split where its parts separate."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent.parent / "pusher"
MAX_FUNCTION = 50
MAX_CLASS = 250


def test_no_function_or_class_outgrows_the_rule() -> None:
    too_long = []
    modules = sorted(PACKAGE.glob("*.py"))
    for path in modules:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {lines} lines")
    assert not too_long, too_long
    assert len(modules) > 20  # it did read the package
