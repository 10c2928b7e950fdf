"""The worker's run, in this process: built from TrainConfig, no host reads inside a window."""

from __future__ import annotations

import math

import pytest
import torch

from bench.sweep import grid, rowbuild
from bench.sweep.grid import expand
from bench.worker import timing
from bench.worker.run import read_losses, train_config, validation_batches
from bench.worker.timing import Clock, run_windows
from train.config import TrainConfig
from train.schedules import ScheduleConfig
from train.session import Session


def _spec(**measure):
    from bench.sweep.options import base_train_config

    row = expand(
        {"n_layer": ["1"], "n_head": ["2"], "batch_size": ["2"], "acc_steps": ["1"]}, "tiny"
    )[0]
    m = {"budget_s": 1.0, "untimed_steps": 1, "timing": "windows", "val_tokens": 1024, "pin": False}
    return {
        "config_id": "x",
        "row": row,
        "train": base_train_config({}).to_dict(),
        "measure": {**m, **measure},
    }


def test_the_run_is_the_trainers_with_trainconfig_defaults(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = _spec()
    tcfg = train_config(spec)
    default = TrainConfig()
    assert tcfg.optim == default.optim and tcfg.runtime.seed == default.runtime.seed
    assert tcfg.data.data_seed == default.data.data_seed
    ses = Session.build(tcfg)
    decayed, other = ses.opt.param_groups[:2]
    assert decayed["weight_decay"] == default.optim.weight_decay and other["weight_decay"] == 0.0
    assert decayed["betas"] == (default.optim.beta1, default.optim.beta2)
    assert decayed["eps"] == default.optim.eps
    assert (ses.kernels, ses.dtype, ses.device.type) == ("torch", "float32", "cpu")  # what runs
    assert ses.model_cfg.kernels == "torch" and ses.tokens_per_step == 2 * 64
    assert ses.model_cfg == grid.model_config(spec["row"], kernels="torch")  # the row's model
    assert ses.threads == 1  # the one CPU thread policy of train and bench


def test_a_sweep_step_is_trains_step_bitwise(tmp_path, monkeypatch):
    """The worker's run and `train`'s run of the same config are one computation: the same
    losses, bit for bit, step after step (same builder, seeds, data order and optimizer)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from train.loop import Trainer

    spec = _spec()
    cfg = train_config(spec).with_(iterations=6, out=str(tmp_path / "run"))
    ses = Session.build(cfg)
    swept = [float(ses.step(cfg.schedule.lr).loss) for _ in range(6)]
    tr = Trainer(cfg)
    tr.setup()
    trained = [float(tr.session.step(cfg.schedule.lr).loss) for _ in range(6)]
    assert swept == trained
    # and through the trainer's own loop (constant schedule, no warmup: the same LR each step)
    t2 = Trainer(cfg.with_(out=str(tmp_path / "run2"), log_interval=1, no_progress=True))
    t2.setup()
    t2.train()
    t2.finish()
    import json

    rows = [json.loads(x) for x in open(tmp_path / "run2" / "metrics.jsonl")]
    assert [r["loss"] for r in rows if r.get("kind") == "train"] == swept


def test_no_host_read_inside_a_timing_window(monkeypatch):
    """Losses stay on the device; the only reads are one per window (and one after warmup)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = _spec()
    ses = Session.build(train_config(spec))
    reads: list[str] = []
    for name in ("item", "tolist", "__float__", "__bool__", "cpu", "numpy", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    monkeypatch.setattr(timing, "_window_target", lambda budget_s: 0.15)  # k > 1 under load too
    t = run_windows(
        lambda step, f: ses.step(ses.cfg.schedule.lr * f).loss,
        read_losses,
        Clock(False),
        ScheduleConfig(scheduler="constant", warmup_steps=0),
        budget_s=0.6,
        untimed_steps=2,
    )
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
        ses = Session.build(train_config(spec))
        got.append(torch.cat([y for _, y in validation_batches(ses, 1000)]))
    assert torch.equal(got[0], got[1])
    assert got[0].numel() >= 1000 and got[0].numel() < 1000 + 16 * 64
