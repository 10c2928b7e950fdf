"""Pins the size rules: no function over 80 lines, no file over 400 lines, in the packages.

A file may be longer only if a comment in its first 15 lines starts with `# size:` and says why
(for example, a kernel file whose jit kernels, launchers and autograd glue read best together).
Small functions and files are what lets a newcomer read the trainer and the CLIs in one sitting.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "model", "train", "bench", "timemodel")
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 400

FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _exempt(text: str) -> bool:
    return any(line.startswith("# size:") for line in text.splitlines()[:15])


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_file_and_function_sizes(path: Path) -> None:
    text = path.read_text()
    n = len(text.splitlines())
    if not _exempt(text):
        assert n <= MAX_FILE_LINES, f"{path.name} has {n} lines (> {MAX_FILE_LINES}); split it"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
        for node in ast.walk(ast.parse(text))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_the_rule_can_fail(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    src = f"def f():\n{body}\n"
    node = ast.parse(src).body[0]
    assert node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    assert not _exempt(src) and _exempt("'''doc'''\n# size: one op per file\n")
