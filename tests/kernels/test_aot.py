"""The sm_90 ahead-of-time compile report: no spills/local memory, 128-bit global access where required.

The report compiles real Triton kernels, which cannot happen under TRITON_INTERPRET=1 (the interpreter
replaces the JIT functions at import), so it runs once in a subprocess with that variable removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kernels import aot

EXPECTED = {
    "rmsnorm_fwd",
    "rmsnorm_bwd_dx",
    "rmsnorm_bwd_dw",
    "swiglu_fwd",
    "swiglu_bwd",
    "adamw",
    "adamw_avg",
    "adamw_gradnorm",
}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence triton 3.9's default-change warning
    proc = subprocess.run(
        [sys.executable, "-m", "kernels.aot", "--arch", "sm_90", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert out, proc.stdout[-2000:]
    return out


def test_every_kernel_is_reported(rows):
    assert EXPECTED <= {r["kernel"] for r in rows}


def test_no_spills_and_no_local_memory(rows):
    bad = [
        (r["kernel"], r["dtype"], r["hidden"], r["spill_bytes"], r["local_bytes"])
        for r in rows
        if r["spill_bytes"] or r["local_bytes"]
    ]
    assert not bad, f"kernels that spill / use local memory: {bad}"


def test_128_bit_global_loads_where_required(rows):
    def pick(kernel: str, dtype: str | None = None, hidden: int | None = None) -> list[dict]:
        got = [
            r
            for r in rows
            if r["kernel"] == kernel
            and (dtype is None or r["dtype"] == dtype)
            and (hidden is None or r["hidden"] == hidden)
        ]
        assert got, f"no report row for {kernel} {dtype} {hidden}"
        return got

    required = (
        pick("rmsnorm_fwd", "bf16", 4096)
        + pick("swiglu_fwd", "bf16", 4096)
        + pick("adamw")
        + pick("adamw_avg")
    )
    narrow = [
        (r["kernel"], r["dtype"], r["hidden"], r["ld_global_bits"])
        for r in required
        if r["ld_global_bits"] < 128
    ]
    assert not narrow, f"rows without 128-bit global loads: {narrow}"
    # the optimizer writes p, m, v (and avg) back with full-width stores too
    assert all(r["st_global_bits"] == 128 for r in pick("adamw") + pick("adamw_avg"))


@pytest.mark.parametrize(
    "quals,bits",
    [
        (".E", 32),
        (".E.128", 128),
        (".E.64.CONSTANT", 64),
        (".E.U16", 16),
        (".E.S16", 16),
        (".E.U8", 8),
        (".E.EL.128", 128),
        (".E.LU", 32),
        ("", 32),
    ],
)
def test_access_bits(quals, bits):
    assert aot.access_bits(quals) == bits


def test_parse_sass_widths_and_spills():
    sass = """
        /*0080*/   LDG.E.128.CONSTANT R4, desc[UR4][R2.64] ;
        /*0090*/   LDG.E.U16 R8, desc[UR4][R6.64] ;
        /*00a0*/   STG.E.64 desc[UR4][R2.64], R10 ;
        /*00b0*/   STL.64 [R1], R12 ;
        /*00c0*/   LDL R14, [R1+0x8] ;
    """
    got = aot.parse_sass(sass)
    assert got == {"ld_global_bits": 128, "st_global_bits": 64, "spill_bytes": 12}


def test_cli_rejects_unknown_arch(capsys):
    assert aot.main(["--arch", "sm_70"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
