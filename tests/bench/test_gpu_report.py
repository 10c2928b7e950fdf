"""`make gpu-report` on the CPU: its stage plan fits one lease, a failing or slow stage is recorded
and the report still written, its commands are valid commands, and the static report without
CUDA."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_report as gr

ROOT = Path(__file__).resolve().parents[2]


def test_stage_caps_fit_one_short_lease():
    assert sum(s.cap_s for s in gr.STAGES) <= gr.TOTAL_CAP_S <= 480
    names = [s.name for s in gr.STAGES]
    assert len(set(names)) == len(names)
    # in order of value: kernels, the trainer (compiled first), the CUDA tests, the sweep
    assert names[0] == "kernels" and names[-1] == "sweep"
    assert names.index("train-compile-ours") < names.index("train-eager-ours")
    assert names.index("cuda-tests") > max(names.index(n) for n in gr.TRAIN)


def test_make_gpu_report_uses_the_torch_it_finds():
    """A GPU box has torch system-wide and no registry: the target installs nothing there."""
    make = (ROOT / "Makefile").read_text()
    body = make.split("\ngpu-report:")[1].split("\n\n")[0]
    assert "import torch" in body and "bench.gpu_report" in body
    assert "pip" not in body.split("else")[0]  # the torch-found branch installs nothing


def _rows(pct_fwd=90.0, gpu_ms=0.030, call_ms=0.05, pct_swiglu=80.0):
    base = {"dtype": "bf16", "status": "ok"}
    return [
        {**base, "op": "rmsnorm", "mode": "forward", "shape": "4096x4096", "provider": "ours",
         "pct_copy_bw": pct_fwd},
        {**base, "op": "rmsnorm", "mode": "backward", "shape": "4096x4096", "provider": "ours",
         "gpu_ms": gpu_ms, "call_ms": call_ms},
        {**base, "op": "swiglu", "mode": "backward", "shape": "16384x2816", "provider": "ours",
         "pct_copy_bw": pct_swiglu},
        {**base, "op": "linear_ce", "mode": "full", "shape": "16384x768x50304",
         "provider": "ours", "peak_mem_mb": 500.0, "p50_ms": 9.0},
        {**base, "op": "linear_ce", "mode": "full", "shape": "16384x768x50304",
         "provider": "torch", "peak_mem_mb": 4000.0, "p50_ms": 12.0},
        {**base, "op": "linear_ce", "mode": "full", "shape": "16384x768x50304",
         "provider": "torch_compile", "peak_mem_mb": 3000.0, "p50_ms": 10.0},
    ]  # fmt: skip


def test_targets_pass_fail_and_missing():
    runs = {
        "train-compile-ours": {"tokens_per_s": 6.0e5, "mfu": 0.47},
        "train-compile-torch": {"tokens_per_s": 5.0e5, "mfu": 0.40},
        "train-eager-ours": {"tokens_per_s": 3.0e5},
    }
    got = {t["target"]: t for t in gr.targets(_rows(), runs)}
    assert got["RMSNorm fwd 4096x4096 bf16"]["pass"] is True
    assert got["RMSNorm bwd GPU time 4096x4096 bf16"]["measured"] == pytest.approx(30.0)
    assert got["RMSNorm bwd GPU time 4096x4096 bf16"]["pass"] is True
    assert got["RMSNorm bwd call time 4096x4096 bf16"]["pass"] is True
    assert got["SwiGLU bwd 16384x2816 bf16"]["pass"] is False  # 80% < 85%
    assert got["Linear+CE 16384x768x50304 peak memory / torch"]["measured"] == 0.125
    assert got["Linear+CE 16384x768x50304 time / torch.compile"]["pass"] is True
    assert got["124M compiled: ours / torch tokens/s"]["measured"] == pytest.approx(1.2)
    assert got["124M compiled ours: MFU"]["pass"] is True
    missing = got["124M eager: ours / torch tokens/s"]  # the torch eager run did not finish
    assert missing["measured"] is None and missing["pass"] is None


def test_a_failing_or_slow_stage_is_recorded_and_the_report_still_written(tmp_path, monkeypatch):
    commands = {
        "kernels": [sys.executable, "-c", "import sys; sys.exit(3)"],
        "train-eager-ours": [sys.executable, "-c", "import time; time.sleep(30)"],
        "sweep": [sys.executable, "-c", "print('ok')"],
    }
    monkeypatch.setattr(gr, "stage_command", lambda st, out: (commands[st.name], None))
    stages = (
        gr.Stage("kernels", 20, "fails"),
        gr.Stage("train-eager-ours", 1, "runs past its cap"),
        gr.Stage("sweep", 20, "works"),
    )
    got = gr._gpu_run(tmp_path / "r", stages)
    md = (tmp_path / "r" / "REPORT.md").read_text()
    assert re.search(r"\| kernels \| fails \| 20 \| [\d.]+ \| exit 3 \|", md)
    assert re.search(r"\| train-eager-ours \| runs past its cap \| 1 \| [\d.]+ \| timeout \|", md)
    assert re.search(r"\| sweep \| works \| 20 \| [\d.]+ \| ok \|", md)
    assert "timed out after 1 s" in (tmp_path / "r" / "logs" / "train-eager-ours.log").read_text()
    assert not (tmp_path / "r" / "tokens.bin").exists()  # nothing large stays behind
    assert all(t["measured"] is None for t in got)


def test_the_train_stage_is_a_valid_train_command_that_writes_no_checkpoint(tmp_path):
    """The 124M stage's exact flags, on a CPU-sized model (the flags are what is under test)."""
    from train.cli import main

    gr.random_tokens(tmp_path / "tokens.bin")
    cmd = gr.train_command(tmp_path, "train-eager-torch")
    argv = cmd[cmd.index("train") + 1 :]
    for flag, small in (("--preset", "tiny"), ("--iterations", "6"), ("--batch-size", "2"),
                        ("--sequence-length", "32")):  # fmt: skip
        argv[argv.index(flag) + 1] = small
    assert main(argv + ["--device", "cpu"]) == 0
    run = tmp_path / "train-eager-torch"
    assert not list(run.rglob("*.pt"))  # no checkpoint at all
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert gr.read_run(tmp_path, run.name, "ok")["records"] >= 1
    assert recs[-1]["kind"] == "eval"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["vocab_size"] == 50304  # the GPT-2 vocabulary, padded as the preset


def test_md_table_blanks_missing_values():
    got = gr.md_table([{"a": 1.23456, "b": None}, {"a": float("nan"), "b": "x|y"}], ["a", "b"])
    assert got.splitlines() == ["| a | b |", "|---|---|", "| 1.235 |  |", "|  | x/y |"]


def test_throughput_summary_skips_the_compile_records():
    recs = [{"kind": "train", "tokens_per_s": 10.0, "mfu": 0.01}] * 2 + [
        {"kind": "train", "tokens_per_s": v, "mfu": v / 1e3} for v in (400.0, 500.0, 600.0)
    ]
    recs.append({"kind": "eval", "val_loss": 3.0})
    assert gr.throughput_summary(recs) == {"tokens_per_s": 500.0, "mfu": 0.5, "records": 3}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the report measures instead")
def test_without_cuda_the_static_report_is_written_and_exit_is_0(tmp_path, capsys):
    out = tmp_path / "gpu-report"
    assert gr.main(["--out", str(out), "--only", "rmsnorm_bwd_dx"]) == 0
    assert "no CUDA device" in capsys.readouterr().err
    md = (out / "REPORT.md").read_text()
    assert "No CUDA device" in md and "issue_tbps" in md and "3.35 TB/s" in md
    assert "![ceilings](ceilings.png)" in md and (out / "ceilings.png").stat().st_size > 1000
    rows = [json.loads(x) for x in (out / "aot_report.json").read_text().splitlines()]
    assert rows and all("rmsnorm_bwd_dx" in r["kernel"] for r in rows)
    assert all(r["issue_tbps"] >= 3.0 for r in rows)


def test_bad_flag_is_one_line(capsys):
    assert gr.main(["--nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
