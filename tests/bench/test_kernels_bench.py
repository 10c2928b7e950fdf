"""Kernel benchmark pieces that run without a GPU: bytes formulas, shapes, providers, no-GPU CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from bench import kernelbench as kb


def test_bytes_formulas():
    e = 2
    assert kb.bytes_moved("rmsnorm", "forward", (3, 5), e) == 2 * 15 * e + 5 * e
    assert kb.bytes_moved("rmsnorm", "backward", (3, 5), e) == 3 * 15 * e + 2 * 5 * e + 4 * 3
    assert kb.bytes_moved("rmsnorm", "full", (3, 5), e) == (
        kb.bytes_moved("rmsnorm", "forward", (3, 5), e)
        + kb.bytes_moved("rmsnorm", "backward", (3, 5), e)
    )
    assert kb.bytes_moved("swiglu", "forward", (4, 6), 4) == 3 * 24 * 4
    assert kb.bytes_moved("swiglu", "full", (4, 6), 4) == 8 * 24 * 4
    assert kb.bytes_moved("adamw", "full", (10,), 4) == 280
    assert kb.bytes_moved("adamw", "full", (10,), 4, average=True) == 360


def test_shapes_and_providers():
    assert kb.parse_shape("rmsnorm", "1151x8192") == (1151, 8192)
    assert kb.parse_shape("adamw", "1000") == (1000,)
    for op, bad in (("rmsnorm", "12"), ("adamw", "3x4"), ("swiglu", "ax3"), ("swiglu", "0x4")):
        with pytest.raises(ValueError):
            kb.parse_shape(op, bad)
    assert kb.providers("rmsnorm")[:3] == ["ours", "torch", "torch_compile"]
    assert kb.providers("adamw")[:2] == ["ours", "torch_fused"]
    has_liger = kb._has("liger_kernel")
    assert ("liger" in kb.providers("swiglu")) == has_liger


def test_cli_bad_shape_exits_2(capsys):
    from bench.cli import main

    assert main(["kernels", "--op", "rmsnorm", "--shapes", "12"]) == 2
    assert capsys.readouterr().err.startswith("error: bad shape")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU path times kernels instead")
def test_no_gpu_writes_the_static_report_for_the_asked_dtype(tmp_path):
    # --dtype is honoured and --out (nested, missing) is created without a GPU.
    out = tmp_path / "a" / "b"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, "-m", "bench", "kernels", "--op", "rmsnorm", "--dtype", "fp32",
         "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no GPU" in r.stderr
    assert "issue_tbps" in r.stdout and "rmsnorm_bwd_dx" in r.stdout
    rows = [json.loads(x) for x in (out / "aot_report.json").read_text().splitlines()]
    assert rows and {r["dtype"] for r in rows} == {"fp32"}
    assert {r["kernel"] for r in rows} == {"rmsnorm_fwd", "rmsnorm_bwd_dx", "rmsnorm_bwd_dw"}
    md = (out / "aot_report.md").read_text()
    assert "No CUDA" in md or "no CUDA" in md
    assert "| rmsnorm_fwd | fp32 |" in md


def test_adamw_bench_row_is_labelled_swa():
    cases = list(kb._cases(["adamw"], {"adamw": ["1000"]}))
    assert ("adamw", "1000", "ours", "full", True) in cases
    assert all(mode == "full" for _, _, _, mode, _ in cases)


def test_gpu_path_honours_dtype_and_creates_out(tmp_path, monkeypatch):
    """The timing path (faked here) gets --dtype and writes into a missing nested --out."""
    from bench import envinfo
    from bench.cli import main

    seen = {}

    def fake_run(ops, dtype, shapes, env, log):
        seen.update(ops=ops, dtype=dtype, shapes=shapes)
        row = dict.fromkeys(kb.COLUMNS, 1.0)
        row.update(op="rmsnorm", provider="ours", mode="full", shape="8x8", status="ok")
        return [row]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(envinfo, "env_info", lambda device: {"gpu_name": "fake"})
    monkeypatch.setattr(kb, "run_kernels", fake_run)
    out = tmp_path / "x" / "y"
    argv = ["kernels", "--op", "rmsnorm", "--dtype", "fp16", "--shapes", "8x8", "--out", str(out)]
    assert main(argv) == 0
    assert seen == {"ops": ["rmsnorm"], "dtype": "fp16", "shapes": {"rmsnorm": ["8x8"]}}
    assert (out / "kernels.csv").read_text().startswith("op,provider,mode,dtype")
    assert (out / "kernels.png").stat().st_size > 0
