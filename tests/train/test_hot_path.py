"""The hot path: no host sync in a step that does not log, zero-copy gradients, the optimizer's
memory traffic, fp16 loss scaling, and the effective kernels/dtype a run records."""

import collections
import json
import os
import subprocess
import sys

import pytest
import torch

from model.config import PRESETS
from model.transformer import Transformer
from train.cli import main
from train.optim import build_optimizer
from train.session import effective_dtype, effective_kernels
from train.step import train_step

READS = ("item", "__float__", "tolist", "cpu", "__bool__", "__int__")


def test_no_host_read_in_steps_that_do_not_log(tmp_path, monkeypatch, capsys):
    """20 steps, a log line every 10: the device is read twice (the two logged steps, each
    bringing back the interval's losses and norms at once) plus once by the final evaluation."""
    counts = collections.Counter()
    for name in READS:
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            counts[_name] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    args = ["--preset", "tiny", "--batch-size", "2", "--acc-steps", "2", "--iterations", "20"]
    args += ["--warmup-steps", "2", "--log-interval", "10", "--eval-interval", "0"]
    args += ["--eval-batches", "1", "--no-progress", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    monkeypatch.undo()
    assert sum(counts.values()) <= 3, dict(counts)  # was 41 (2 per step + 1) before
    recs = [json.loads(x) for x in open(tmp_path / "r" / "metrics.jsonl")]
    assert [r["step"] for r in recs if r["kind"] == "train"] == list(range(1, 21))
    assert all(r["grad_norm"] > 0 and r["loss"] > 0 for r in recs if r["kind"] == "train")
    err = capsys.readouterr().err
    assert "step 10/20" in err and "step 20/20" in err and "step 5/20" not in err


def _tiny(seed=0):
    torch.manual_seed(seed)
    return Transformer(PRESETS["tiny"].replace(n_layer=1))


def test_backward_accumulates_into_the_flat_grad_buffer():
    m = _tiny()
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, max_grad_norm=1.0)
    opt.prepare_grads()
    bufs = opt.grad_buffers()
    spans = [(b.data_ptr(), b.data_ptr() + b.numel() * b.element_size()) for b in bufs]
    ptrs = {id(p): p.grad.data_ptr() for p in m.parameters()}
    x = torch.randint(0, 256, (2, 16))
    for _ in range(3):
        st = train_step(m, opt, [(x, x), (x, x)], lr=1e-3)
        assert torch.is_tensor(st.loss) and torch.is_tensor(st.grad_norm)  # left on the device
        for p in m.parameters():  # the same views every step: autograd never allocated a grad
            assert p.grad.data_ptr() == ptrs[id(p)]
            assert any(lo <= p.grad.data_ptr() < hi for lo, hi in spans)
            assert not p.grad.any()  # zeroed in place after the step


_TRAFFIC = r"""
import json, torch
import kernels._adamw_kernels as K
from model.config import PRESETS
from model.transformer import Transformer
from model.traffic import measure_step
from train.optim import build_optimizer

orig, touched = K.launch_adamw, []


def spy(bufs, *a, **k):  # which distinct buffers the kernel reads, and which it writes
    before = {name: t.clone() for name, t in bufs.items() if t is not None}
    orig(bufs, *a, **k)
    for name, old in before.items():
        touched.append((name, old.numel() * 4, not torch.equal(old, bufs[name])))


def measure(zero_copy, swa):
    torch.manual_seed(0)
    cfg = PRESETS["tiny"].replace(n_layer=1, n_embd=32, n_head=2, ffn_hidden=64)
    m = Transformer(cfg)
    opt = build_optimizer(m, lr=1e-3, weight_decay=0.1, beta1=0.9, beta2=0.95, swa=swa,
                          swa_interval=1)
    if zero_copy:  # the trainer's zero_grad: grads stay views of the flat buffer
        opt.prepare_grads()
        m.zero_grad = lambda set_to_none=True: opt.zero_grad(set_to_none=False)
    x = torch.randint(0, 256, (2, 16))
    m(x, x)[1].backward()
    opt.step()
    fb = measure_step(m, [(x, x)])
    full = measure_step(m, [(x, x)], opt)
    K.launch_adamw = spy  # one more step outside the counter, to see what the kernel touches
    touched.clear()
    m.zero_grad()
    m(x, x)[1].backward()
    opt.step()
    K.launch_adamw = orig
    n = sum(f.n for f in opt._flats)
    side = {k: (full["bytes"].get(k, 0) - fb["bytes"].get(k, 0)) / n for k in full["bytes"]}
    kernel = sum(b + (b if w else 0) for _, b, w in touched) / n  # read once; written if changed
    return {"side": {k: v for k, v in side.items() if v}, "kernel": kernel}


print(json.dumps({f"{z}{s}": measure(z, s) for z in (0, 1) for s in (0, 1)}))
"""


def test_optimizer_side_bytes_per_param():
    """measure_step of a full step (forward, backward, FusedAdamW) in the Triton interpreter: the
    optimizer side is the AdamW kernel alone (no gradient gather copy), which reads p, g, m, v
    (+ the SWA mean on an averaging step) once and writes p, m, v (+ SWA) once: 28 (36) B/param.
    """
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run(
        [sys.executable, "-c", _TRAFFIC], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for swa, expect in ((0, 28.0), (1, 36.0)):
        zero_copy, old = res[f"1{swa}"], res[f"0{swa}"]
        assert zero_copy["kernel"] == pytest.approx(expect, abs=0.05)
        assert set(zero_copy["side"]) == {"triton::_adamw_kernel"}  # nothing but the kernel
        # set_to_none grads (the old path) add a gather copy of every gradient
        assert old["side"].get("aten::copy_", 0) >= 8.0


def test_fp16_loss_scaler_skips_inf_steps_on_the_cpu():
    from kernels.adamw import DynamicLossScaler

    m = _tiny()
    opt = build_optimizer(m, lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95, max_grad_norm=1.0)
    opt.prepare_grads()
    scaler = DynamicLossScaler(torch.device("cpu"), init_scale=2.0**10)
    x = torch.randint(0, 256, (2, 16))
    w = next(m.parameters())
    hook = w.register_hook(lambda g: g * float("inf"))  # one poisoned gradient
    before = [p.detach().clone() for p in m.parameters()]
    st = train_step(m, opt, [(x, x)], lr=1e-2, scaler=scaler)
    assert not torch.isfinite(st.grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))  # skipped
    assert float(scaler.get_scale()) == 2.0**9  # backed off
    hook.remove()
    st = train_step(m, opt, [(x, x)], lr=1e-2, scaler=scaler)
    assert torch.isfinite(st.grad_norm) and float(st.loss) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))  # updated


def test_effective_kernels_and_dtype(tmp_path, monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert effective_kernels("auto", cpu) == "torch" and effective_kernels("auto", cuda) == "triton"
    assert effective_kernels("triton", cpu) == "torch"  # what actually runs on a CPU
    assert effective_dtype("bfloat16", cpu) == "float32" and effective_dtype("float16", cuda)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert effective_kernels("auto", cpu) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    out = tmp_path / "r"
    args = ["--preset", "tiny", "--batch-size", "2", "--acc-steps", "1", "--iterations", "2"]
    assert main(args + ["--warmup-steps", "1", "--eval-batches", "1", "--out", str(out)]) == 0
    eff = json.load(open(out / "config.json"))["effective"]
    assert eff["kernels"] == "torch" and eff["dtype"] == "float32"  # asked: auto, bfloat16
    summary = json.load(open(out / "summary.json"))
    assert summary["kernels"] == "torch" and summary["dtype"] == "float32"


@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs", "reduce-overhead"])
def test_compile_mode_reaches_torch_compile_and_is_recorded(tmp_path, monkeypatch, mode):
    """--compile-mode is passed to torch.compile (None for default) and the run records it."""
    import torch

    from train.cli import main

    seen = []
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: seen.append(mode) or m)
    out = tmp_path / "r"
    argv = ["--preset", "tiny", "--iterations", "2", "--batch-size", "2", "--acc-steps", "1"]
    argv += ["--eval-batches", "1", "--compile", "--compile-mode", mode, "--out", str(out)]
    assert main(argv) == 0
    assert seen == [None if mode == "default" else mode]
    assert json.load(open(out / "config.json"))["effective"]["compile_mode"] == mode
