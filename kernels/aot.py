"""Ahead-of-time compile report: build every kernel's SASS for sm_90/sm_80 without a GPU and inspect it.

``python -m kernels.aot --arch sm_90 [--json] [--only NAME]`` compiles each spec from
``kernels.rmsnorm.aot_specs()``, ``kernels.swiglu.aot_specs()`` and ``kernels.adamw.aot_specs()`` with
Triton's compiler for that target (``triton.compile(ASTSource(...), target=GPUTarget(...))``), then reads
the cubin with the ``cuobjdump``/``ptxas`` shipped in the triton wheel:

* registers / local (stack) / shared memory per kernel from ``cuobjdump -res-usage``;
* spill bytes from the ``STL``/``LDL`` (local-memory) instructions in the SASS (a kernel with no local
  frame and no STL/LDL cannot spill; ptxas -v is not rerun, to keep the report fast);
* the widest global load and store in bits from ``LDG``/``STG`` opcodes in ``cuobjdump -sass``.

Why static: our CI has no GPU, so this is the evidence that the kernels vectorize (128-bit accesses)
and do not spill on the target. Compiling needs the real ``JITFunction`` objects, which Triton replaces
by interpreter objects when ``TRITON_INTERPRET=1`` is set at import time, so ``main`` re-executes itself
with the variable removed in that case.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

_SPEC_MODULES = ("kernels.rmsnorm", "kernels.swiglu", "kernels.adamw")
_ARCHS = {"sm_90": 90, "sm_80": 80}
COLUMNS = (
    "kernel",
    "dtype",
    "hidden",
    "num_warps",
    "registers",
    "spill_bytes",
    "local_bytes",
    "shared_bytes",
    "ld_global_bits",
    "st_global_bits",
    "note",
)


def _bin(name: str) -> Path:
    import triton  # local import: the module must import cheaply and without side effects

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


def collect_specs(only: str | None = None) -> list[dict]:
    """All spec dicts from the kernel modules (optionally only kernels whose name contains ``only``)."""
    specs: list[dict] = []
    for mod_name in _SPEC_MODULES:
        mod = importlib.import_module(mod_name)
        specs.extend(mod.aot_specs())
    if only is not None:
        specs = [s for s in specs if only in s["kernel"]]
    return specs


def compile_spec(spec: dict, arch: str) -> Any:
    """Compile one spec for ``arch`` (no GPU needed) and return Triton's CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(spec["signature"])
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in spec.get("divisible", [])}
    src = ASTSource(
        fn=spec["fn"],
        signature=dict(spec["signature"]),
        constexprs={(names.index(k),): v for k, v in spec.get("constexprs", {}).items()},
        attrs=attrs,
    )
    target = GPUTarget("cuda", _ARCHS[arch], 32)
    return triton.compile(src, target=target, options={"num_warps": spec.get("num_warps", 4)})


_RES_RE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_MEM_RE = re.compile(r"\b(LDG|STG)((?:\.[A-Z0-9_]+)*)\s")
_LOCAL_RE = re.compile(r"\b(LDL|STL)((?:\.[A-Z0-9_]+)*)\s")


def access_bits(qualifiers: str) -> int:
    """Width in bits of an LDG/STG given its qualifier string (e.g. '.E.128.CONSTANT' -> 128).

    No width qualifier means 32 bits; .U8/.S8 = 8, .U16/.S16/.16 = 16, .64 = 64, .128 = 128.
    Other qualifiers (.E, .CONSTANT, .EL, .EF, .LU, .STRONG.GPU, .SYS ...) do not change the width.
    """
    bits = 32
    for q in qualifiers.split("."):
        if q in ("U8", "S8", "8"):
            bits = 8
        elif q in ("U16", "S16", "16"):
            bits = 16
        elif q == "64":
            bits = 64
        elif q == "128":
            bits = 128
    return bits


def parse_sass(sass: str) -> dict[str, int]:
    """Widest global load/store (bits) and the local-memory (spill) traffic in bytes of a SASS dump.

    Each static STL/LDL instruction counts its width once (bytes per thread per executed instance);
    any nonzero value means the kernel touches local memory, which for these kernels means spills.
    """
    ld = st = 0
    for op, quals in _MEM_RE.findall(sass):
        b = access_bits(quals)
        if op == "LDG":
            ld = max(ld, b)
        else:
            st = max(st, b)
    spill = sum(access_bits(q) // 8 for _, q in _LOCAL_RE.findall(sass))
    return {"ld_global_bits": ld, "st_global_bits": st, "spill_bytes": spill}


def analyze(compiled: Any, arch: str) -> dict[str, int]:
    """Registers, spills, local/shared memory and access widths of one compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        res = subprocess.run(
            [str(_bin("cuobjdump")), "-res-usage", str(cubin)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sass = subprocess.run(
            [str(_bin("cuobjdump")), "-sass", str(cubin)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    r = _RES_RE.search(res)
    if r is None:
        raise RuntimeError(f"could not parse cuobjdump -res-usage output: {res[:200]!r}")
    s = parse_sass(sass)
    shared = int(r.group(3))
    meta_shared = getattr(compiled.metadata, "shared", 0) or 0
    return {
        "registers": int(r.group(1)),
        # bytes moved by the STL/LDL (local memory = spill) instructions in the SASS, per thread
        "spill_bytes": s["spill_bytes"],
        "local_bytes": int(r.group(2)) + int(r.group(4)),
        "shared_bytes": max(shared, int(meta_shared)),
        "ld_global_bits": s["ld_global_bits"],
        "st_global_bits": s["st_global_bits"],
    }


def report(arch: str = "sm_90", only: str | None = None) -> list[dict]:
    """One row per kernel x config: COLUMNS, for every spec of the kernel modules."""
    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(_ARCHS)}")
    rows = []
    for spec in collect_specs(only):
        row = {
            "kernel": spec["kernel"],
            "dtype": spec.get("dtype", ""),
            "hidden": spec.get("hidden", ""),
            "num_warps": spec.get("num_warps", 4),
        }
        row.update(analyze(compile_spec(spec, arch), arch))
        row["note"] = spec.get("note", "")
        row["arch"] = arch
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """Plain-text table of the report rows."""
    cols = list(COLUMNS)
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(x.ljust(w) for x, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.aot", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90", help="sm_90 (H100) or sm_80 (A100)")
    ap.add_argument("--json", action="store_true", help="print one JSON row per line")
    ap.add_argument("--only", default=None, help="only kernels whose name contains this")
    args = ap.parse_args(argv)
    if args.arch not in _ARCHS:
        print(
            f"error: unknown --arch {args.arch!r}; choose from {', '.join(sorted(_ARCHS))}",
            file=sys.stderr,
        )
        return 2
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter swaps JITFunctions for interpreted ones at import; compile in a clean child.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        cmd = [sys.executable, "-m", "kernels.aot"] + (
            list(argv) if argv is not None else sys.argv[1:]
        )
        return subprocess.run(cmd, env=env).returncode
    try:
        rows = report(args.arch, args.only)
    except (ImportError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: compile report failed: {e}", file=sys.stderr)
        return 1
    if not rows:
        print(f"error: no kernel matches --only {args.only!r}", file=sys.stderr)
        return 2
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
