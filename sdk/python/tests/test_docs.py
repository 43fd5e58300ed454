"""The Python in the docs compiles, and the names it takes from phased
exist: a renamed API fails here, not in a reader's hands."""

import ast
import glob
import os
import re

import phased

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..")
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")) + [os.path.join(ROOT, "sdk", "python", "README.md")])


def blocks():
    for path in DOCS:
        with open(path) as f:
            text = f.read()
        for m in re.finditer(r"```python\n(.*?)```", text, re.S):
            yield os.path.relpath(path, ROOT), text[:m.start()].count("\n") + 2, m.group(1)


def test_python_blocks():
    found = 0
    for path, line, code in blocks():
        found += 1
        tree = compile(code, f"{path}:{line}", "exec", ast.PyCF_ONLY_AST)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "phased":
                assert hasattr(phased, node.attr), f"{path}:{line + node.lineno - 1}: phased.{node.attr} does not exist"
    assert found >= 3, "the docs' Python examples were not found"
