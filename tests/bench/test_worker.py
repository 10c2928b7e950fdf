"""The worker's run, in this process: built from TrainConfig, no host reads inside a window."""

from __future__ import annotations

import math

import pytest
import torch

from bench.sweep import rowbuild
from bench.sweep.grid import expand
from bench.worker import timing
from bench.worker.run import train_config
from bench.worker.runsetup import setup
from bench.worker.timing import Clock, Schedule, run_windows
from train.config import TrainConfig


def _spec(**settings):
    row = expand({"n_layer": ["1"], "n_head": ["2"], "batch_size": ["2"]}, "tiny")[0]
    s = {"scheduler": "constant", "warmup_steps": 0, "untimed_steps": 1, **settings}
    return {"config_id": "x", "row": row, "settings": s}


def test_the_run_is_the_trainers_with_trainconfig_defaults(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = _spec()
    tcfg = train_config(spec, spec["row"])
    default = TrainConfig()
    assert tcfg.optim == default.optim and tcfg.runtime.seed == default.runtime.seed
    assert tcfg.data.data_seed == default.data.data_seed
    r = setup(spec, tcfg)
    decayed, other = r.opt.param_groups[:2]
    assert decayed["weight_decay"] == default.optim.weight_decay and other["weight_decay"] == 0.0
    assert decayed["betas"] == (default.optim.beta1, default.optim.beta2)
    assert decayed["eps"] == default.optim.eps
    assert (r.kernels, r.dtype, r.device.type) == ("torch", "float32", "cpu")  # what runs here
    assert r.cfg.kernels == "torch" and r.tokens_per_step == 2 * 64


def test_no_host_read_inside_a_timing_window(monkeypatch):
    """Losses stay on the device; the only reads are one per window (and one after warmup)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = _spec()
    r = setup(spec, train_config(spec, spec["row"]))
    reads: list[str] = []
    for name in ("item", "tolist", "__float__", "__bool__", "cpu", "numpy", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(timing, "_window_target", lambda budget_s: 0.15)  # k > 1 under load too
    t = run_windows(r.launch, r.read, Clock(False), Schedule(), budget_s=0.6, untimed_steps=2)
    monkeypatch.undo()
    steps = sum(k for k, _, _ in t.windows)
    assert max(k for k, _, _ in t.windows) > 1, t.windows
    assert len(reads) == 1 + len(t.windows), (reads, len(t.windows))
    assert t.status == "ok" and all(math.isfinite(x) for x in t.losses)
    assert len(t.losses) == 2 + steps


def test_static_columns_come_from_costs_step_features(monkeypatch):
    from model import costs

    row = expand({"n_layer": ["1"], "n_head": ["2"]}, "tiny")[0]
    seen = {}

    def fake(cfg, batch_size, **kw):
        seen.update(kw, batch_size=batch_size, kernels_cfg=cfg.kernels)
        return {"params": 1.0, "flops": 2.0, "bytes": 3.0, "launches": 4.0}

    monkeypatch.setattr(costs, "step_features", fake, raising=False)
    cols = rowbuild.static_columns(row, "triton", "bfloat16", dp=2)
    assert cols["launches"] == 4.0 and cols["flops_per_step"] == 2.0
    assert cols["memory_traffic"] == 3.0
    assert seen["dp"] == 2 and seen["dtype"] == "bfloat16" and seen["kernels_cfg"] == "triton"
    assert seen["acc_steps"] == row["acc_steps"] and seen["batch_size"] == row["batch_size"]


@pytest.mark.parametrize(
    "inject,exc", [("error", RuntimeError), ("oom", torch.cuda.OutOfMemoryError)]
)
def test_injected_failures_raise(inject, exc):
    from bench.worker.run import run

    spec = _spec()
    spec["row"] = {**spec["row"], "inject": inject}
    with pytest.raises(exc):
        run(spec)


def test_val_loss_is_scored_on_the_same_tokens_whatever_the_batch(monkeypatch):
    """--val-tokens: every config of a sequence length sees the same held-out sequences, so a
    batch-size sweep compares losses on one val set (not 2 batches of its own batch size)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    got = []
    for bs in ("2", "8"):
        spec = _spec(val_tokens=1000)
        spec["row"] = expand({"n_layer": ["1"], "n_head": ["2"], "batch_size": [bs]}, "tiny")[0]
        r = setup(spec, train_config(spec, spec["row"]))
        got.append(torch.cat([y for _, y in r.val_batches]))
    assert torch.equal(got[0], got[1])
    assert got[0].numel() >= 1000 and got[0].numel() < 1000 + 16 * 64
