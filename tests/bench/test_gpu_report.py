"""The GPU report builder on synthetic rows, and its no-CUDA static report (CPU, in `make test`)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu_report as gr


def _row(op, mode, shape, provider, p50_ms, gbps, status="ok"):
    pct = 100 * gbps / 3000
    return {"op": op, "mode": mode, "shape": shape, "provider": provider, "dtype": "bf16",
            "p50_ms": p50_ms, "gbps": gbps, "pct_copy_bw": pct, "status": status}  # fmt: skip


KERNEL_ROWS = [
    _row("rmsnorm", "forward", "4096x4096", "ours", 0.0229, 2930.0),  # meets 2.9 TB/s
    _row("rmsnorm", "forward", "4096x4096", "torch", 0.2, 335.0),
    _row("rmsnorm", "backward", "4096x4096", "ours", 0.0471, 2140.0),  # misses 45 us
    _row("swiglu", "forward", "4096x11008", "ours", 0.1, 2700.0),  # misses 2.9 TB/s
    _row("swiglu", "backward", "4096x11008", "ours", 0.2, 2600.0, status="error"),  # not measured
    _row("adamw+swa", "full", "124000000", "ours", 1.7, 2626.0),
    _row("adamw+swa", "full", "124000000", "torch_fused", 2.4, 1860.0),
]


def test_kernel_targets_pass_fail_and_missing():
    got = {t["target"].split(" 4")[0].split(" 1")[0]: t for t in gr.kernel_targets(KERNEL_ROWS)}
    assert got["RMSNorm fwd"]["pass"] is True
    assert got["RMSNorm fwd"]["measured"] == pytest.approx(2.93)
    assert got["RMSNorm bwd"]["pass"] is False and got["RMSNorm bwd"]["unit"] == "us"
    assert got["RMSNorm bwd"]["measured"] == pytest.approx(47.1)
    assert got["SwiGLU fwd"]["pass"] is False
    assert got["SwiGLU bwd"]["pass"] is None and got["SwiGLU bwd"]["measured"] is None
    assert got["FusedAdamW+SWA"]["pass"] is True
    speed = got["FusedAdamW+SWA vs torch fused AdamW + SWA pass"]
    assert speed["measured"] == pytest.approx(2.4 / 1.7) and speed["pass"] is True


def test_throughput_summary_skips_the_compile_records():
    recs = [{"kind": "train", "tokens_per_s": 10.0, "mfu": 0.01}] * 2 + [
        {"kind": "train", "tokens_per_s": v, "mfu": v / 1e3} for v in (400.0, 500.0, 600.0)
    ]
    recs.append({"kind": "eval", "val_loss": 3.0})
    got = gr.throughput_summary(recs)
    assert got == {"tokens_per_s": 500.0, "mfu": 0.5, "records": 3}


def test_build_report_has_every_table(tmp_path):
    runs = [
        {"compile": False, "tokens_per_s": 4.0e5, "mfu": 0.38, "records": 9, "status": "ok"},
        {"compile": True, "tokens_per_s": 5.1e5, "mfu": 0.47, "records": 9, "status": "ok"},
    ]
    sweep = [{"config_id": "abc", "n_layer": 4, "n_embd": 512, "status": "ok",
              "step_ms_median": 31.5, "host_ms": 2.0, "tokens_per_s": 5e5, "mfu": 0.4}]  # fmt: skip
    tests = {"exit_code": 0, "tests": 120, "failures": 0, "errors": 0, "skipped": 3}
    env = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.13.0", "cuda": "12.8"}
    gr.plot_targets(gr.kernel_targets(KERNEL_ROWS), tmp_path / "targets.png")
    assert (tmp_path / "targets.png").stat().st_size > 1000
    md = gr.build_report(env, tests, KERNEL_ROWS, runs, sweep, ["targets.png"])
    for heading in ("## Environment", "## CUDA test set", "## Targets", "## Kernels",
                    "## Trainer throughput", "## bench sweep", "## Plots"):  # fmt: skip
        assert heading in md
    assert "| RMSNorm fwd 4096x4096 bf16 | 2.93 | TB/s | >= 2.9 | 97.67 | True |" in md
    assert "| True | 5.1e+05 | 0.47 | 9 | ok | True |" in md  # MFU >= 45 % with compile
    assert "| False | 4e+05 | 0.38 | 9 | ok |  |" in md  # no MFU goal without compile
    assert "![targets](targets.png)" in md and "| abc | 4 | 512 | ok | 31.5 |" in md


def test_md_table_blanks_missing_values():
    got = gr.md_table([{"a": 1.23456, "b": None}, {"a": float("nan"), "b": "x|y"}], ["a", "b"])
    assert got.splitlines() == ["| a | b |", "|---|---|", "| 1.235 |  |", "|  | x/y |"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the report measures instead")
def test_without_cuda_the_static_report_is_written_and_exit_is_0(tmp_path, capsys):
    out = tmp_path / "gpu-report"
    assert gr.main(["--out", str(out), "--only", "rmsnorm_bwd_dx"]) == 0
    assert "no CUDA device" in capsys.readouterr().err
    md = (out / "REPORT.md").read_text()
    assert "No CUDA device" in md and "issue_tbps" in md and "3.35 TB/s" in md
    assert "RMSNorm backward traffic" in md and "| bf16 | 4096 | after |" in md
    assert "![ceilings](ceilings.png)" in md and (out / "ceilings.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (out / "aot_report.json").read_text().splitlines()]
    assert {r["kernel"] for r in rows} == {"rmsnorm_bwd_dx"}
    assert all(r["issue_tbps"] >= 3.0 for r in rows)


def test_bad_flag_is_one_line(capsys):
    assert gr.main(["--nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_cuda_run_plumbing_with_the_steps_faked(tmp_path, monkeypatch):
    # The CUDA branch of main, every measuring step replaced by canned results.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gr, "environment", lambda: {"gpu": "fake H100"})
    monkeypatch.setattr(gr, "run_tests", lambda out: {"exit_code": 0, "tests": 5, "failures": 0})
    monkeypatch.setattr(gr, "run_kernel_bench", lambda out: KERNEL_ROWS)
    monkeypatch.setattr(
        gr,
        "run_throughput",
        lambda out, c: {
            "compile": c,
            "tokens_per_s": 1e5,
            "mfu": 0.5,
            "records": 3,
            "status": "ok",
        },
    )
    monkeypatch.setattr(gr, "run_sweep", lambda out: [])
    assert gr.main(["--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "REPORT.md").read_text()
    assert "fake H100" in md and "![targets](targets.png)" in md
    assert (tmp_path / "r" / "targets.png").is_file()
