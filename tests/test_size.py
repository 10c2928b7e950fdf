"""Size, as a warning with a reason, never a cap that decides where code goes.

Files are cut by cohesion: one op per file, one room per subsystem. A file over `FILE_LINES` or a
function over `FUNCTION_LINES` is worth a second look, so each one is reported as a pytest warning
naming it; it fails nothing. What does fail is an exemption without a reason: a `# size:` comment
in a file's first 15 lines must say why the file is long (for example, a kernel file whose jit
kernels, launchers and autograd glue read best together).
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "kernels", "model", "train", "bench", "timemodel")
FUNCTION_LINES = 80
FILE_LINES = 600

FILES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _reason(text: str) -> str | None:
    """The `# size:` reason of a file, "" when the comment is empty, None when there is none."""
    for line in text.splitlines()[:15]:
        if line.startswith("# size:"):
            return line[len("# size:") :].strip()
    return None


def long_parts(text: str, name: str) -> list[str]:
    """What is long in a file: itself (unless it says why) and its long functions."""
    out = []
    n = len(text.splitlines())
    if n > FILE_LINES and not _reason(text):
        out.append(f"{name} has {n} lines (> {FILE_LINES}): is it one thing? say why with # size:")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > FUNCTION_LINES:
                out.append(f"{name}: {node.name} is {length} lines (line {node.lineno})")
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_sizes_are_reported_and_exemptions_give_a_reason(path: Path) -> None:
    text = path.read_text()
    assert _reason(text) != "", f"{path.name}: a '# size:' comment must say why the file is long"
    for msg in long_parts(text, path.name):
        # a builtin category: xdist ships warnings between processes by their class's module
        warnings.warn(f"size: {msg}", UserWarning, stacklevel=1)


def test_the_report_names_what_is_long() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(FUNCTION_LINES + 1))
    got = long_parts(f"def f():\n{body}\n", "a.py")
    assert got == [f"a.py: f is {FUNCTION_LINES + 2} lines (line 1)"]
    long_file = "x = 1\n" * (FILE_LINES + 1)
    assert long_parts(long_file, "b.py") and not long_parts("# size: one op\n" + long_file, "b.py")
    assert _reason("'''doc'''\n# size:\n") == "" and _reason("x = 1\n") is None
