"""Pins the import rules: imports only go downward.

core (the ground floor: stdlib only, nothing of ours) <- kernels <- model <- train <- bench;
timemodel imports only core, model.config and model.costs, and never torch. No import cycles, even
between modules of one package. model/config.py, model/costs.py, train/schedules.py and
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
PACKAGES = ("core", "kernels", "model", "train", "bench", "timemodel")

# What each package may import from us (besides itself).
ALLOWED = {
    "core": set(),
    "kernels": {"core"},
    "model": {"core", "kernels"},
    "train": {"core", "model", "kernels"},
    "bench": {"core", "train", "model", "kernels"},
    "timemodel": {"core", "model.config", "model.costs"},
}
# Modules that must stay importable without third-party packages.
STDLIB_ONLY = (
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "core").glob("*.py")),  # the ground floor
    "train/fields.py",
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
    ours = {r[: -len(".py")].replace("/", ".").removesuffix(".__init__") for r in STDLIB_ONLY}
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


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (lazy imports inside functions included)."""
    files = {_module_name(f): f for pkg in PACKAGES for f in _files(pkg)}
    graph: dict[str, set[str]] = {}
    for name, f in files.items():
        deps = set()
        for mod, _ in _imports(f):
            # `from pkg import name` where name is not a module resolves to pkg (its __init__).
            while mod and mod not in files:
                mod = mod.rpartition(".")[0]
            if mod and mod != name and not name.startswith(mod + "."):
                deps.add(mod)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif nxt not in index:
                index[nxt] = low[nxt] = counter[0]
                counter[0] += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(sorted(graph.get(nxt, ())))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
