"""The CUDA-only lines of train, the sweep worker and the sweep parent, executed on the CPU through
the strict `torch.cuda` stand-in (tests/cuda_standin.py).

Each test here runs a line no CPU test reached before the first GPU run: every `--device`
spelling through `set_device` (f24b1ab called it with an index-less device and every sweep config
failed), CUDA-event timing windows, peak-memory reads, MFU on a GPU name, NVML telemetry of the GPU
the worker actually runs on (NVML numbers GPUs physically, torch the visible ones), the OOM row,
`--gpus` slots and the device of each `--nproc-per-config` rank.
"""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch

from bench.sweep import grid
from bench.sweep.options import SweepOptions, base_train_config, check_gpus, measure_config
from core import UserError
from tests.cuda_standin import NAME, CudaStandIn, StrictEvent
from train import session
from train.autokernels import measure_op as REAL_MEASURE
from train.session import resolve_device


@pytest.fixture
def cuda(monkeypatch, tmp_path):
    from train import autokernels

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    # --kernels auto measures on CUDA; on the stand-in both paths are the CPU reference, so the
    # measurement is given (ours 2x, as on a GPU) except where a test looks at it
    monkeypatch.setattr(autokernels, "measure_op", lambda *a: (1.0, 2.0))
    return CudaStandIn(n=2).install(monkeypatch)


@pytest.fixture
def nvml(monkeypatch):
    """A pynvml that records which physical GPU its handle was asked for."""
    seen = {"index": []}
    m = types.ModuleType("pynvml")
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM, m.NVML_TEMPERATURE_GPU = 1, 2, 0
    m.nvmlInit = lambda: None
    m.nvmlDeviceGetHandleByIndex = lambda i: seen["index"].append(i) or ("h", i)
    m.nvmlDeviceGetPowerUsage = lambda h: 350_000
    m.nvmlDeviceGetClockInfo = lambda h, kind: 1980 if kind == 1 else 2619
    m.nvmlDeviceGetTemperature = lambda h, kind: 61
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=97)
    m.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: 0
    monkeypatch.setitem(sys.modules, "pynvml", m)
    return seen


# ----------------------------------------------------------------------------------- the stand-in
def test_the_standin_refuses_what_torch_refuses(cuda):
    with pytest.raises(ValueError, match="specified index"):
        torch.cuda.set_device(torch.device("cuda"))  # the f24b1ab call: every sweep row failed
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        torch.cuda.set_device(5)
    a, b = StrictEvent(), StrictEvent()
    a.record(), b.record()
    with pytest.raises(RuntimeError, match="enable_timing"):
        a.elapsed_time(b)
    c, d = StrictEvent(enable_timing=True), StrictEvent(enable_timing=True)
    with pytest.raises(RuntimeError, match="recorded"):
        c.elapsed_time(d)


# ----------------------------------------------------------------------------- device spellings
@pytest.mark.parametrize(
    "arg,world,local,index",
    [("cuda", 1, 0, 0), ("cuda:0", 1, 0, 0), ("cuda:1", 1, 0, 1), ("auto", 1, 0, 0)]
    + [("cuda", 2, 1, 1), ("auto", 2, 1, 1)],  # torchrun: the local rank picks the GPU
)
def test_every_cuda_spelling_sets_an_indexed_device(cuda, arg, world, local, index):
    dev = resolve_device(arg, world, local)
    assert dev == torch.device("cuda", index)
    assert cuda.calls[-1] == ("set_device", torch.device("cuda", index))


@pytest.mark.parametrize(
    "arg,needle", [("cuda:2", "2 CUDA device"), ("cuda:x", "GPU index"), ("gpu", "auto, cpu")]
)
def test_bad_cuda_spellings_are_one_line(cuda, arg, needle):
    with pytest.raises(UserError, match=needle):
        resolve_device(arg, 1, 0)


def test_cpu_spellings_never_touch_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu", 1, 0).type == "cpu" and resolve_device("auto", 1, 0).type == "cpu"
    with pytest.raises(UserError, match="CUDA is not available"):
        resolve_device("cuda:0", 1, 0)


# ------------------------------------------------------------------------------------ train
@pytest.mark.parametrize("spelling", ["cuda", "cuda:1"])
def test_train_runs_its_cuda_branches(cuda, tmp_path, spelling):
    from train.cli import main

    out = tmp_path / "run"
    argv = ["--preset", "tiny", "--iterations", "3", "--warmup-steps", "0", "--batch-size", "2"]
    argv += ["--acc-steps", "1", "--eval-batches", "1", "--device", spelling, "--out", str(out)]
    torch.backends.cuda.matmul.allow_tf32 = False
    assert main(argv + ["--no-progress"]) == 0
    eff = json.loads((out / "config.json").read_text())["effective"]
    assert eff["device"] == NAME and eff["kernels"] == "triton" and eff["dtype"] == "bfloat16"
    assert torch.backends.cuda.matmul.allow_tf32  # the seed's TF32, set by the one builder
    index = 1 if spelling == "cuda:1" else 0
    assert ("set_device", torch.device("cuda", index)) in cuda.calls
    rec = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("mfu") and math.isfinite(r["mfu"]) for r in rec)  # MFU on a known GPU
    torch.backends.cuda.matmul.allow_tf32 = False


# ----------------------------------------------------------------------------------- worker
def _spec(device: str, **row):
    r = grid.expand(
        {"n_layer": ["1"], "n_head": ["2"], "batch_size": ["2"], "acc_steps": ["1"]}, "tiny"
    )[0]
    r.update(device=device, **row)
    opts = SweepOptions(out_dir=".", minutes_per_config=0.005, untimed_steps=1, val_tokens=256)
    return {
        "config_id": "c",
        "row": r,
        "train": base_train_config({}).to_dict(),
        "measure": measure_config(opts),
    }


@pytest.mark.parametrize(
    "device,visible,nvml_index",
    [("cuda", None, 0), ("cuda:1", None, 1), ("auto", "2,3", 2), ("cuda:1", "2,3", 3)],
)
def test_worker_times_with_cuda_events_and_reads_its_own_gpu(
    cuda, nvml, monkeypatch, device, visible, nvml_index
):
    """--gpus 2,3 runs workers with CUDA_VISIBLE_DEVICES=2 (or 3): torch calls that GPU cuda:0,
    NVML calls it 2. The row's telemetry must be that GPU's."""
    from bench.worker.run import run

    if visible:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    out = run(_spec(device))
    assert out["status"] == "ok", out["message"]
    assert nvml["index"] == [nvml_index]
    assert out["device"] == "cuda" and out["kernels"] == "triton" and out["dtype"] == "bfloat16"
    assert out["peak_mem_mb"] == 123.0 and math.isfinite(out["mfu"]) and out["mfu"] > 0
    assert out["gpu_power_mean_w"] == 350.0 and out["gpu_sm_clock_mhz"] == 1980
    assert cuda.peak_resets  # peak memory is measured from the build on
    assert math.isfinite(out["step_ms_median"]) and math.isfinite(out["val_loss"])


def test_worker_oom_is_a_row_not_a_crash(cuda, tmp_path):
    from bench.worker.run import main

    spec = _spec("cuda", inject="oom")
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main([str(tmp_path / "spec.json"), str(tmp_path / "res.json")]) == 0
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["status"] == "oom" and res["device"] == "cuda" and res["kernels"] == "triton"


# ------------------------------------------------------------------------------ sweep parent
def test_gpus_are_checked_against_the_visible_ones(cuda, monkeypatch):
    check_gpus(["0", "1"])
    with pytest.raises(UserError, match="not on this machine"):
        check_gpus(["2"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    check_gpus(["2", "3"])
    with pytest.raises(UserError, match="not on this machine"):
        check_gpus(["0"])


def test_gpus_give_each_worker_one_gpu_and_nproc_runs_torchrun(cuda, tmp_path, monkeypatch):
    from bench.sweep import run as sweep

    seen = []

    def fake_run_config(spec, out):
        seen.append(spec["gpu"])
        return {"config_id": spec["config_id"], "status": "ok"}

    monkeypatch.setattr(sweep, "run_config", fake_run_config)
    rows = grid.expand({"n_layer": ["1", "2", "3", "4"], "n_head": ["2"]}, "tiny")
    opts = SweepOptions(
        out_dir=str(tmp_path), minutes_per_config=0.01, gpus=["2", "3"], progress=False
    )
    sweep.run_sweep(rows, opts)
    assert len(seen) == 4 and set(seen) <= {"2", "3"}  # every config ran on one of the GPUs
    spec = {"nproc_per_config": 2}
    cmd = sweep.worker_command(spec, "s.json", "r.json")
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc-per-node=2"]
    assert cmd[-3:] == ["bench.worker.run", "s.json", "r.json"]


@pytest.mark.parametrize("spelling", ["cuda", "cuda:1", "auto"])
def test_sample_takes_every_cuda_spelling(cuda, tmp_path, spelling, capsys):
    from train.cli import main as train_main
    from train.sample import main as sample_main

    run = tmp_path / "run"
    argv = ["--preset", "tiny", "--iterations", "2", "--batch-size", "2", "--acc-steps", "1"]
    assert train_main([*argv, "--eval-batches", "1", "--device", "cpu", "--out", str(run)]) == 0
    capsys.readouterr()
    got = sample_main([str(run), "--prompt", "def ", "--max-new-tokens", "4", "--device", spelling])
    assert got == 0, capsys.readouterr().err
    index = 1 if spelling == "cuda:1" else 0
    assert cuda.calls[-1] == ("set_device", torch.device("cuda", index))


def test_kernels_auto_on_cuda_is_measured_cached_and_recorded(cuda, tmp_path, monkeypatch):
    """--kernels auto on CUDA times ours against torch at the run's shapes (CUDA events), picks
    per op, caches the timings and records them; the model runs ours for the ops that won."""
    from train import autokernels
    from train.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    seen = []
    real = REAL_MEASURE

    def fake(op, shape, dtype, device, compile_mode):
        seen.append((op, shape))
        assert compile_mode is None  # an eager run measures eager calls
        real(op, shape, dtype, device)  # the real timing code runs (on the stand-in)
        return (1.0, 3.0) if op == "rmsnorm" else (2.0, 1.0)  # ours faster at the norms only

    monkeypatch.setattr(autokernels, "measure_op", fake)
    built = []
    real_build = session.Session.build.__func__

    def build(cls, cfg):
        ses = real_build(cls, cfg)
        built.append(ses.raw)
        return ses

    monkeypatch.setattr(session.Session, "build", classmethod(build))
    argv = ["--preset", "tiny", "--iterations", "2", "--batch-size", "2", "--acc-steps", "1"]
    argv += ["--eval-batches", "1", "--device", "cuda", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    # 2 x 64 rows of width 64 (norm), 192 (MLP), 64 x vocab 256 (head)
    assert seen == [("rmsnorm", (128, 64)), ("swiglu", (128, 192)), ("linear_ce", (128, 64, 256))]
    eff = json.loads((tmp_path / "a" / "config.json").read_text())["effective"]
    auto = eff["kernels_auto"]
    # chosen: 5 norms x 1 ms (ours) + 2 MLPs x 1 ms + 1 head x 1 ms (torch's) = 8 ms;
    # all-torch: 5 x 3 + 2 x 1 + 1 x 1 = 18 ms
    assert eff["kernels"] == "rmsnorm" and auto["speedup"] == pytest.approx(18 / 8)
    assert auto["ops"]["swiglu"] == {
        "shape": [128, 192], "calls_per_step": 2, "ours_ms": 2.0, "torch_ms": 1.0,
        "speedup": 0.5, "chosen": "torch",
    }  # fmt: skip
    assert auto["ops"]["rmsnorm"]["chosen"] == "ours" and auto["cached"] is False
    model = built[-1]
    assert model.blocks[0].ln_1.backend == "triton" and model.blocks[0].mlp.backend == "torch"
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0  # same shapes: from the cache
    assert len(seen) == 3
    eff = json.loads((tmp_path / "b" / "config.json").read_text())["effective"]
    assert eff["kernels_auto"]["cached"] is True and eff["kernels"] == "rmsnorm"
    monkeypatch.setattr(autokernels, "measure_op", lambda *a: (3.0, 1.0))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other"))
    assert main([*argv, "--out", str(tmp_path / "c")]) == 0
    eff = json.loads((tmp_path / "c" / "config.json").read_text())["effective"]
    assert eff["kernels"] == "torch"  # ours slower at every op: the torch path runs
    monkeypatch.setattr(autokernels, "measure_op", lambda *a: (1.0, 2.0))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "third"))
    assert main([*argv, "--out", str(tmp_path / "e")]) == 0
    eff = json.loads((tmp_path / "e" / "config.json").read_text())["effective"]
    assert eff["kernels"] == "triton"  # ours faster at every op
    assert main([*argv, "--kernels", "triton", "--out", str(tmp_path / "d")]) == 0
    eff = json.loads((tmp_path / "d" / "config.json").read_text())["effective"]
    assert eff["kernels_auto"] is None and eff["kernels"] == "triton"  # asked for: not measured
    assert main([*argv, "--kernels", "swiglu+rmsnorm", "--out", str(tmp_path / "f")]) == 0
    eff = json.loads((tmp_path / "f" / "config.json").read_text())["effective"]
    assert eff["kernels_auto"] is None and eff["kernels"] == "rmsnorm+swiglu"  # canonical order


def test_kernels_auto_picks_ours_where_the_torch_path_runs_out_of_memory(
    cuda, tmp_path, monkeypatch
):
    """The head's torch path (B x T x V logits) out of memory at the run's shape: ours is chosen
    and the record says the torch time is unknown (None), not a number."""
    from kernels import reference
    from model.config import get_preset
    from train import autokernels

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (stand-in)")

    monkeypatch.setattr(reference, "linear_cross_entropy_ref", oom)
    monkeypatch.setattr(autokernels, "measure_op", REAL_MEASURE)
    monkeypatch.setattr(autokernels, "WARMUP", 1)
    monkeypatch.setattr(autokernels, "REPS", 2)
    dev = torch.device("cuda", 0)
    kernels, rec = autokernels.choose(get_preset("tiny"), 16, torch.bfloat16, dev)
    ce = rec["ops"]["linear_ce"]
    assert ce["torch_ms"] is None and ce["speedup"] is None and ce["chosen"] == "ours"
    assert ce["ours_ms"] > 0
    assert kernels == "triton" or "linear_ce" in kernels.split("+")
    assert rec["speedup"] is None  # the all-torch step cannot run: no ratio to give
    assert rec["method"] == "measured, eager"
    cached = json.loads((tmp_path / "xdg-cache" / "steptime" / "kernels-auto.json").read_text())
    assert [v[1] for k, v in cached.items() if "|linear_ce|" in k] == [None]


def test_kernels_auto_compiled_run_measures_compiled_calls(cuda, tmp_path, monkeypatch):
    """A --compile run compares Inductor with Inductor: both sides of each op go through
    torch.compile in the run's mode (reduce-overhead's CUDA graphs left out), cached apart from
    the eager measurements."""
    from model.config import get_preset
    from train import autokernels

    compiled = []

    def spy(fn, mode=None, dynamic=None):
        compiled.append((mode, dynamic))
        return fn  # the stand-in cannot run Inductor's CUDA code: time the functions themselves

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.setattr(autokernels, "measure_op", REAL_MEASURE)
    monkeypatch.setattr(autokernels, "WARMUP", 1)
    monkeypatch.setattr(autokernels, "REPS", 2)
    dev, cfg = torch.device("cuda", 0), get_preset("tiny")
    _, rec = autokernels.choose(cfg, 16, torch.bfloat16, dev, "max-autotune-no-cudagraphs")
    assert compiled == [("max-autotune-no-cudagraphs", False)] * 6  # 3 ops x (ours, torch)
    assert rec["method"] == "measured, torch.compile max-autotune-no-cudagraphs"
    _, rec = autokernels.choose(cfg, 16, torch.bfloat16, dev, "reduce-overhead")
    assert compiled[6:] == [(None, False)] * 6 and rec["cached"] is False
    _, rec = autokernels.choose(cfg, 16, torch.bfloat16, dev)  # eager: measured apart
    assert len(compiled) == 12 and rec["cached"] is False and rec["method"] == "measured, eager"
    _, rec = autokernels.choose(cfg, 16, torch.bfloat16, dev, "reduce-overhead")
    assert rec["cached"] is True and len(compiled) == 12
