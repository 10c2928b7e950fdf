"""Pins the import rules: imports only go downward.

kernels (nothing of ours) <- model <- train <- bench; timemodel imports only model.config and
model.costs, and never torch. model/config.py, model/costs.py, train/schedules.py and
train/config.py are stdlib only.
Every file is parsed with `ast`, so the rule holds for lazy imports inside functions too.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "model", "train", "bench", "timemodel")

# What each package may import from us (besides itself).
ALLOWED = {
    "kernels": set(),
    "model": {"kernels"},
    "train": {"model", "kernels"},
    "bench": {"train", "model", "kernels"},
    "timemodel": {"model.config", "model.costs"},
}
# Modules that must stay importable without third-party packages.
STDLIB_ONLY = (
    "model/config.py",
    "model/costs.py",
    "train/schedules.py",
    "train/config.py",
    "train/config_checks.py",
    "train/timebudget.py",
    "model/_opcount.py",
    "model/_poly.py",
)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported by a file (relative imports resolved against its package).

    `from a.b import c` yields "a.b.c" when c is a module of ours, else "a.b"; so both
    `from model import costs` and `from model.costs import num_params` read as model.costs.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg_parts = path.relative_to(ROOT).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg_parts[: len(pkg_parts) - node.level + 1])
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = ROOT.joinpath(*mod.split("."), a.name)
                is_module = sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file()
                out.append((f"{mod}.{a.name}" if is_module else mod, node.lineno))
    return out


def _files(pkg: str) -> list[Path]:
    return sorted((ROOT / pkg).rglob("*.py"))


def test_every_package_exists():
    for pkg in PACKAGES:
        assert (ROOT / pkg / "__init__.py").is_file(), f"package {pkg}/ is missing"


@pytest.mark.parametrize("pkg", PACKAGES)
def test_imports_go_downward(pkg):
    bad = []
    for f in _files(pkg):
        for mod, line in _imports(f):
            top = mod.split(".")[0]
            if top not in PACKAGES or top == pkg:
                continue
            allowed = ALLOWED[pkg]
            if pkg == "timemodel":
                ok = mod in allowed or any(mod.startswith(a + ".") for a in allowed)
            else:
                ok = top in allowed
            if not ok:
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_nothing_imports_cli_or_top_layers():
    bad = []
    for pkg in PACKAGES:
        for f in _files(pkg):
            for mod, line in _imports(f):
                top = mod.split(".")[0]
                if top in ("bench", "timemodel") and top != pkg:
                    bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
                if mod.endswith(".cli") and f.name not in ("__main__.py", "cli.py"):
                    bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("rel", STDLIB_ONLY)
def test_stdlib_only_modules(rel):
    path = ROOT / rel
    assert path.is_file(), f"{rel} is missing"
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    ours = {r[: -len(".py")].replace("/", ".") for r in STDLIB_ONLY}  # may import each other
    bad = [
        f"{rel}:{line} imports {mod}"
        for mod, line in _imports(path)
        if mod.split(".")[0] not in stdlib and mod not in ours
    ]
    assert not bad, "\n".join(bad)


def test_timemodel_never_imports_torch():
    """Importing every timemodel module leaves torch out of sys.modules (in a fresh process)."""
    mods = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in _files("timemodel")]
    mods = [m[: -len(".__init__")] if m.endswith(".__init__") else m for m in mods]
    mods = [m for m in mods if not m.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r} + ['model.config', 'model.costs']:\n"
        "    importlib.import_module(m)\n"
        "heavy = [m for m in ('torch', 'triton') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]


def test_code_cites_sources_not_internal_documents():
    """Users have the repository only: code cites papers and upstream files, and reads nothing
    outside the repository (no absolute machine paths, no sibling folders)."""
    pattern = re.compile(
        r"spec/(seeds|anchors|style)\.md|\bstyle\.md\b|DEVELOPERS\.md|\.\./shared|/wor"
        r"k/"
        r"|\bthe issue\b"
    )
    paths = [p for pkg in (*PACKAGES, "examples", "tests") for p in (ROOT / pkg).rglob("*")]
    paths += [ROOT / "Makefile", ROOT / ".ci" / "run"]
    bad = []
    for p in paths:
        if p == Path(__file__).resolve():
            continue  # this test spells the patterns out
        if p.is_file() and (p.suffix in (".py", ".sh") or p.name in ("Makefile", "run")):
            for i, line in enumerate(p.read_text().splitlines(), 1):
                if pattern.search(line):
                    bad.append(f"{p.relative_to(ROOT)}:{i}")
    assert not bad, "internal documents or outside paths cited at " + ", ".join(bad[:20])
