"""Ahead-of-time compile report: every kernel's SASS for sm_90/sm_80, built without a GPU.

``python -m kernels.aot --arch sm_90 [--json] [--only NAME]`` compiles each spec of the
``aot_specs()`` of ``kernels._rmsnorm_kernels`` (plain and with the fused residual add),
``kernels._swiglu_kernels``, ``kernels._cross_entropy_kernels`` and ``kernels._adamw_kernels``
with Triton's compiler for that target (``triton.compile(ASTSource(...),
target=GPUTarget(...))``, pointers and sizes declared divisible by 16 through
``tt.divisibility`` attributes), then reads the cubin with the ``cuobjdump`` shipped in
the triton wheel:

* registers / local (stack) / shared memory per kernel from ``cuobjdump -res-usage``;
* spill bytes from the ``STL``/``LDL`` (local-memory) instructions in the SASS (a kernel with no
  local frame and no STL/LDL cannot spill; ptxas -v is not rerun, to keep the report fast);
* the widest global load and store in bits from ``LDG``/``STG`` opcodes in ``cuobjdump -sass``;
* resident blocks per SM that those registers and shared memory allow (``ctas_per_sm``);
* a static issue-bound speed ceiling: the SASS instructions ``I`` of the steady-state loop (the
  row/tile loop; the whole program for one-block kernels), executed by each of the ``W`` warps of
  a program for the ``E`` elements of one iteration, so ``W * I / E`` warp-instructions per
  element. An H100 SXM issues at most 132 SMs x 4 schedulers x 1 warp-instruction/cycle x 1.98
  GHz, so the kernel cannot move more than ``132 * 4 * 1.98e9 * E / (W * I) * B`` bytes/s, B its
  ideal bytes per element. It is printed beside the HBM3 ceiling (3.35 TB/s spec, ~3.0 TB/s
  achievable): a kernel whose issue ceiling is under 3.0 TB/s is instruction-bound, not
  memory-bound (NVIDIA H100 Tensor Core GPU Architecture whitepaper, Tables 2-3; CUDA C
  Programming Guide, "Compute Capabilities").

Why static: our CI has no GPU, so this is the evidence that the kernels vectorize (128-bit
accesses), do not spill, and are not instruction-bound on the target. Compiling needs the real
``JITFunction`` objects, which Triton replaces by interpreter objects when ``TRITON_INTERPRET=1`` is
set at import time, so ``main`` re-executes itself with the variable removed in that case.
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

from ._utils import H100_SMS, ctas_per_sm

_SPEC_MODULES = (
    "kernels._rmsnorm_kernels",
    "kernels._swiglu_kernels",
    "kernels._cross_entropy_kernels",
    "kernels._adamw_kernels",
)
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
    "ctas_per_sm",
    "loop_instr",
    "bytes_per_elem",
    "issue_tbps",
    "note",
)
SCHEDULERS_PER_SM = 4
H100_BOOST_HZ = 1.98e9
HBM_SPEC_TBPS = 3.35
HBM_ACHIEVABLE_TBPS = 3.0


def _bin(name: str) -> Path:
    import triton  # local import: the module must import cheaply and without side effects

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


DTYPES = ("bf16", "fp16", "fp32")


def collect_specs(only: str | None = None, dtypes: tuple[str, ...] | None = None) -> list[dict]:
    """All spec dicts of the kernel modules (only kernels whose name contains ``only``, if set;
    bf16 and fp32 unless ``dtypes`` says otherwise)."""
    specs: list[dict] = []
    for mod_name in _SPEC_MODULES:
        mod = importlib.import_module(mod_name)
        specs.extend(mod.aot_specs() if dtypes is None else mod.aot_specs(tuple(dtypes)))
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
    # FMA contraction on, as Triton 3.9 launches kernels by default (and no warning about it)
    options = {"num_warps": spec.get("num_warps", 4), "enable_fp_fusion": True}
    return triton.compile(src, target=target, options=options)


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


_INSTR_RE = re.compile(r"/\*([0-9a-f]+)\*/\s+([^;]*);")
_BRA_RE = re.compile(r"\bBRA\s+(0x[0-9a-f]+)")


def sass_instructions(sass: str) -> list[tuple[int, str]]:
    """(address, text) of every SASS instruction of a cuobjdump dump, NOPs (padding) left out."""
    out = []
    for addr, text in _INSTR_RE.findall(sass):
        text = text.strip()
        if text and not re.search(r"\bNOP\b", text):
            out.append((int(addr, 16), text))
    return out


def loop_instructions(sass: str) -> tuple[int, bool]:
    """Instructions of the steady-state loop and whether there is a loop.

    The loop is the span of the widest backward branch (``BRA`` to a lower address; the
    ``BRA`` to itself after the last ``EXIT`` is padding). Without one the kernel is straight-line
    code run once per program, and every instruction up to the last ``EXIT`` counts. Branches
    inside the span are counted as if both sides run: a static upper bound of the dynamic count.
    """
    ins = sass_instructions(sass)
    backs = []
    for addr, text in ins:
        m = _BRA_RE.search(text)
        if m and int(m.group(1), 16) < addr:
            backs.append((int(m.group(1), 16), addr))
    if backs:
        lo, hi = max(backs, key=lambda b: b[1] - b[0])
        return sum(1 for a, _ in ins if lo <= a <= hi), True
    exits = [a for a, t in ins if re.search(r"\bEXIT\b", t)]
    if not exits:
        raise RuntimeError("SASS has no EXIT: not a kernel dump")
    return sum(1 for a, _ in ins if a <= max(exits)), False


def repeated_instructions(sass: str, repeat: int, row_loop: bool = True) -> int:
    """`loop_instructions` for a kernel whose slice loop runs `repeat` times per step (a RMSNorm
    row shared by `repeat` programs). The step is the row loop (`row_loop`) or, without one, the
    whole program up to its last EXIT; a slice loop the compiler kept as a loop (a backward branch
    inside the step) counts `repeat - 1` more times, an unrolled one is in the step already."""
    base, _ = loop_instructions(sass)
    if repeat <= 1:
        return base
    ins = sass_instructions(sass)
    spans = sorted(
        (hi - lo, lo, hi)
        for hi, text in ins
        if (m := _BRA_RE.search(text)) and (lo := int(m.group(1), 16)) < hi
    )
    if not row_loop:
        exits = [a for a, t in ins if re.search(r"\bEXIT\b", t)]
        base = sum(1 for a, _ in ins if a <= max(exits))
    inner = spans[:-1] if row_loop else spans  # the widest span of a row-loop kernel is that loop
    if not inner:
        return base
    _, lo, hi = inner[0]
    return base + (repeat - 1) * sum(1 for a, _ in ins if lo <= a <= hi)


def issue_ceiling_tbps(
    instr: int, elems: int, num_warps: int, bytes_per_elem: float, sms: int = H100_SMS
) -> float:
    """Issue-bound bandwidth ceiling in TB/s (see the module notes): each of the num_warps warps of
    a program issues ``instr`` instructions per iteration of ``elems`` elements."""
    warp_instr_per_elem = num_warps * instr / elems
    elems_per_s = sms * SCHEDULERS_PER_SM * H100_BOOST_HZ / warp_instr_per_elem
    return elems_per_s * bytes_per_elem / 1e12


def analyze(compiled: Any, arch: str, repeat: int = 1, row_loop: bool = True) -> dict[str, int]:
    """Registers, spills, local/shared memory and access widths of one compiled kernel;
    `repeat`, `row_loop`: its slice loop's runs per step (`repeated_instructions`)."""
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
    loop = repeated_instructions(sass, repeat, row_loop)
    return {
        "loop_instr": loop,
        "registers": int(r.group(1)),
        # bytes moved by the STL/LDL (local memory = spill) instructions in the SASS, per thread
        "spill_bytes": s["spill_bytes"],
        "local_bytes": int(r.group(2)) + int(r.group(4)),
        "shared_bytes": max(shared, int(meta_shared)),
        "ld_global_bits": s["ld_global_bits"],
        "st_global_bits": s["st_global_bits"],
    }


def report(
    arch: str = "sm_90", only: str | None = None, dtypes: tuple[str, ...] | None = None
) -> list[dict]:
    """One row per kernel x config: COLUMNS, for every spec of the kernel modules."""
    if arch not in _ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(_ARCHS)}")
    bad = sorted(set(dtypes or ()) - set(DTYPES))
    if bad:
        raise ValueError(f"unknown dtype {bad[0]!r}; choose from {', '.join(DTYPES)}")
    rows = []
    done: dict[tuple, dict] = {}  # specs that differ only in their label compile once
    for spec in collect_specs(only, dtypes):
        row = {
            "kernel": spec["kernel"],
            "dtype": spec.get("dtype", ""),
            "hidden": spec.get("hidden", ""),
            "num_warps": spec.get("num_warps", 4),
        }
        key = (spec["fn"].__name__, str(spec["signature"]), str(spec.get("constexprs")))
        key += (row["num_warps"], str(spec.get("divisible")))
        if key not in done:
            rep = spec.get("inner_repeat", 1), spec.get("row_loop", True)
            done[key] = analyze(compile_spec(spec, arch), arch, *rep)
        row.update(done[key])
        row["ctas_per_sm"] = ctas_per_sm(row["registers"], row["shared_bytes"], row["num_warps"])
        row["bytes_per_elem"] = spec["bytes_per_elem"]
        row["issue_tbps"] = round(
            issue_ceiling_tbps(
                row["loop_instr"], spec["elems_per_iter"], row["num_warps"], spec["bytes_per_elem"]
            ),
            2,
        )
        row["note"] = spec.get("note", "")
        row["arch"] = arch
        rows.append(row)
    return rows


def format_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Plain-text table of the report rows (``columns`` default: COLUMNS)."""
    cols = list(COLUMNS) if columns is None else columns
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(x.ljust(w) for x, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def rmsnorm_bwd_traffic(rows: list[dict], m: int = 4096) -> list[dict]:
    """RMSNorm backward bytes at M x hidden 4096 and 16384: the old fixed grid (8 programs per SM)
    against one resident wave (132 x the report's blocks per SM), as bytes per element of x and the
    share the fp32 dw partials add to the 3 x itemsize of x, dy and dx."""
    from ._rmsnorm_kernels import bwd_traffic

    out = []
    for r in rows:
        if r["kernel"] != "rmsnorm_bwd_dx" or r["hidden"] not in (4096, 16384):
            continue
        e = 4 if r["dtype"] == "fp32" else 2
        for when, per_sm in (("before", 8), ("after", r["ctas_per_sm"])):
            progs = min(m, per_sm * H100_SMS)
            progs = -(-m // -(-m // progs))  # programs left after rounding rows per program up
            t = bwd_traffic(m, r["hidden"], e, progs)
            total_mb = round((t["data_bytes"] + t["partial_bytes"]) / 1e6, 1)
            out.append({"dtype": r["dtype"], "hidden": r["hidden"], "grid": when,
                        "programs": progs, "bytes_per_elem": round(t["bytes_per_elem"], 3),
                        "partial_share_pct": round(100 * t["partial_share"], 1),
                        "total_mb": total_mb})  # fmt: skip
    return out


def format_report(rows: list[dict]) -> str:
    """The compile table, its issue-bound verdict beside the HBM ceiling, and the RMSNorm backward
    traffic before/after the resident-wave grid."""
    if not rows:
        return "no kernel in the report"
    lines = [format_table(rows), ""]
    lines.append(
        f"HBM ceiling: {HBM_SPEC_TBPS} TB/s spec, ~{HBM_ACHIEVABLE_TBPS} TB/s achievable. "
        "issue_tbps = 132 SMs x 4 schedulers x 1.98 GHz x elements per warp-instruction x "
        "bytes_per_elem (loop_instr SASS instructions per warp per iteration)."
    )
    slow = [r for r in rows if r["issue_tbps"] < HBM_ACHIEVABLE_TBPS]
    if slow:
        for r in slow:
            lines.append(
                f"issue-bound below {HBM_ACHIEVABLE_TBPS} TB/s: {r['kernel']} {r['dtype']} "
                f"{r['hidden']}: {r['issue_tbps']} TB/s ({r.get('issue_note') or r['note']})"
            )
    else:
        low = min(rows, key=lambda r: r["issue_tbps"])
        lines.append(
            f"no kernel is issue-bound below {HBM_ACHIEVABLE_TBPS} TB/s (lowest: {low['kernel']} "
            f"{low['dtype']} {low['hidden']} at {low['issue_tbps']} TB/s)"
        )
    traffic = rmsnorm_bwd_traffic(rows)
    if traffic:
        lines += ["", "RMSNorm backward traffic at 4096 rows (x, dy, dx + fp32 dw partials):"]
        lines.append(format_table(traffic, list(traffic[0])))
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line + exit 2, like every steptime CLI
        print(f"error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m kernels.aot",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--arch", default="sm_90", choices=sorted(_ARCHS), help="compile target")
    ap.add_argument("--json", action="store_true", help="print one JSON row per line")
    ap.add_argument("--only", default=None, metavar="NAME", help="kernels whose name has NAME")
    ap.add_argument(
        "--dtype", default="bf16,fp32", metavar="LIST", help=f"comma list of {', '.join(DTYPES)}"
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # the one-line error above, or --help
        return int(e.code or 0)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter swaps JITFunctions for interpreted ones at import: compile in a child.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        cmd = [sys.executable, "-m", "kernels.aot"] + (
            list(argv) if argv is not None else sys.argv[1:]
        )
        return subprocess.run(cmd, env=env).returncode
    dtypes = tuple(d.strip() for d in args.dtype.split(",") if d.strip())
    try:
        rows = report(args.arch, args.only, dtypes)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ImportError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"error: compile report failed: {str(e).splitlines()[0]}", file=sys.stderr)
        return 1
    if not rows:
        print(f"error: no kernel matches --only {args.only!r}", file=sys.stderr)
        return 2
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(format_report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
