"""Kernel benchmark pieces that run without a GPU: bytes formulas, shapes, providers, no-GPU CLI,
and the CUDA timing path itself on the CPU under tests/cuda_standin.py."""

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
    # the fused residual: a 16-bit branch has its own grad, an fp32 one shares the stream's
    assert kb.bytes_moved("add_rmsnorm", "forward", (3, 5), 2) == 15 * 14 + 4 * 5 + 4 * 3
    assert kb.bytes_moved("add_rmsnorm", "backward", (3, 5), 2) == 15 * 18 + 8 * 5 + 4 * 3
    assert kb.bytes_moved("add_rmsnorm", "backward", (3, 5), 4) == 15 * 16 + 8 * 5 + 4 * 3
    assert "liger" not in kb.providers("add_rmsnorm") and "apex" not in kb.providers("add_rmsnorm")
    assert kb.bytes_moved("rmsnorm", "full", (3, 5), e) == (
        kb.bytes_moved("rmsnorm", "forward", (3, 5), e)
        + kb.bytes_moved("rmsnorm", "backward", (3, 5), e)
    )
    assert kb.bytes_moved("swiglu", "forward", (4, 6), 4) == 3 * 24 * 4
    assert kb.bytes_moved("swiglu", "full", (4, 6), 4) == 8 * 24 * 4
    assert kb.bytes_moved("adamw", "full", (10,), 4) == 280
    assert kb.bytes_moved("adamw", "full", (10,), 4, average=True) == 360
    # linear + CE: read h, W, targets; write dh, dW (the logits are not part of the minimum)
    assert kb.bytes_moved("linear_ce", "full", (6, 4, 10), 2) == 2 * 24 * 2 + 2 * 40 * 2 + 48


def test_shapes_and_providers():
    assert kb.parse_shape("rmsnorm", "1151x8192") == (1151, 8192)
    assert kb.parse_shape("adamw", "1000") == (1000,)
    assert kb.parse_shape("linear_ce", "16384x768x50304") == (16384, 768, 50304)
    for op, bad in (("rmsnorm", "12"), ("adamw", "3x4"), ("swiglu", "ax3"), ("swiglu", "0x4"),
                    ("linear_ce", "4x5")):  # fmt: skip
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
@pytest.mark.slow
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
    assert {r["kernel"] for r in rows} == {"rmsnorm_fwd", "rmsnorm_bwd_dx", "rmsnorm_bwd_dw",
                                           "add_rmsnorm_fwd", "add_rmsnorm_bwd_dx"}  # fmt: skip
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

    def fake_run(ops, dtype, shapes, env, log, on_row):
        seen.update(ops=ops, dtype=dtype, shapes=shapes)
        row = dict.fromkeys(kb.COLUMNS, 1.0)
        row.update(op="rmsnorm", provider="ours", mode="full", shape="8x8", status="ok")
        on_row([row])
        # written as soon as measured: a run killed at a time cap keeps its rows
        assert len((out / "kernels.csv").read_text().splitlines()) == 2
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


def test_compiled_benchmarks_keep_their_backward_replayable():
    # The "backward" mode replays one backward graph (retain_graph); torch's own config note says
    # donated buffers must be off for that (torch/_functorch/config.py, ``donated_buffer``).
    import torch._functorch.config as fconfig

    before = fconfig.donated_buffer
    with kb._no_donated_buffers():
        assert fconfig.donated_buffer is False
    assert fconfig.donated_buffer == before


def test_cuda_timing_path_runs_on_the_cpu_standin(monkeypatch):
    """run_kernels' CUDA branches (inputs on "cuda", events, synchronize, the profiler's kernel
    sum, peak memory) executed on the CPU: cuda_standin for torch.cuda, plus the few factories
    and calls it does not cover; the profiler records CPU activity (no kernels, so GPU time 0 and
    the row says the bandwidth came from the call time)."""
    from tests.cuda_standin import CudaStandIn, _cpu_device

    standin = CudaStandIn(n=1).install(monkeypatch)
    real_randn, real_gen = torch.randn, torch.Generator

    def randn(*args, **kwargs):
        args, kwargs = _cpu_device(args, kwargs)
        return real_randn(*args, **kwargs)

    monkeypatch.setattr(torch, "randn", randn)

    class Generator(real_gen):  # device="cuda" generators are CPU ones here
        def __new__(cls, device=None):
            return real_gen()

    monkeypatch.setattr(torch, "Generator", Generator)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 0)
    monkeypatch.setattr(kb, "_flush_buffer", lambda: torch.empty(1024, dtype=torch.int8))
    monkeypatch.setattr(kb, "copy_bandwidth_gbps", lambda: 3000.0)

    from torch.profiler import ProfilerActivity

    monkeypatch.setattr(kb, "_profiler_activities", lambda: [ProfilerActivity.CPU])
    keep = {"adamw": ["ours", "torch_fused"]}
    monkeypatch.setattr(kb, "providers", lambda op: keep.get(op, ["ours", "torch"]))
    shapes = {"rmsnorm": ["7x24"], "add_rmsnorm": ["6x24"], "swiglu": ["5x16"],
              "linear_ce": ["9x8x33"], "adamw": ["100"]}  # fmt: skip
    rows = kb.run_kernels(list(shapes), "fp32", shapes, {"gpu_name": "standin"}, log=lambda m: 0)
    assert len(rows) == 3 * 3 * 2 + 2 + 2 * 2  # elementwise x modes x providers, CE, AdamW+swa
    bad = [(r["op"], r["provider"], r["mode"], r["message"]) for r in rows if r["status"] != "ok"]
    assert not bad, bad
    for r in rows:
        assert r["call_ms"] == r["p50_ms"] > 0 and r["gpu_ms"] == 0.0
        assert r["peak_mem_mb"] == 123.0  # the stand-in's max_memory_allocated, base 0
        assert "call time" in r["message"]
    ce = [r for r in rows if r["op"] == "linear_ce"]
    assert {r["provider"] for r in ce} == {"ours", "torch"} and all(r["mode"] == "full" for r in ce)
    assert max(r["max_abs_err"] for r in ce) < 1e-4  # ours (the CPU reference path) vs fp32
    assert standin.peak_resets  # peak memory was reset before each measured call


def test_every_op_names_kernels_in_the_aot_report():
    # `bench kernels --op X` without a GPU filters the AOT report by name: each op must match
    from kernels import aot

    names = {spec["kernel"] for spec in aot.collect_specs()}
    for op in kb.OPS:
        assert any(kb.AOT_NAMES.get(op, op) in n for n in names), op
