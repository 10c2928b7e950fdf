"""FusedAdamW's full contract: SWA and EMA in one pass, sync-free clipping, zero-copy grads, the
fused dynamic loss scaler (injected inf/NaN grads), state round trips, and clean API errors.

Every test runs the Triton kernels under TRITON_INTERPRET=1; the ``path`` fixture runs the
loss-scaling and sync tests a second time on the pure-torch path that CPUs use without it.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import pytest
import torch

import kernels.adamw as kadamw
from kernels import DynamicLossScaler, FusedAdamW, rms_norm

SHAPES = [(7, 13), (1,), (33,), (4, 5, 3)]
DEV = torch.get_default_device()  # the CPU, or the GPU under STEPTIME_TEST_DEVICE=cuda


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(1000 + step)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _groups(ps):
    return [{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0.0, "betas": (0.8, 0.99)}]


def _both(ps, **kw):
    hp = dict(swa=True, swa_interval=2, swa_horizon=6, ema=True, ema_interval=3, ema_decay=0.7)
    return FusedAdamW(_groups(ps), lr=1e-2, **(hp | kw))


@pytest.fixture(params=["triton", "torch"])
def path(request, monkeypatch):
    if request.param == "torch":
        monkeypatch.setattr(kadamw, "use_triton", lambda *t: False)
    return request.param


def _definition(snaps, kind, interval, horizon, decay, start):
    """SWA window mean / EMA of the parameter snapshots after each step, literally."""
    avg = None
    for t, p in enumerate(snaps):
        if kind == "swa" and t % interval == 0:
            k = (t % horizon) // interval
            avg = p.clone() if k == 0 else avg + (p - avg) / (k + 1)
        elif kind == "ema" and t == start:
            avg = p.clone()
        elif kind == "ema" and t > start and t % interval == 0:
            avg = decay * avg + (1 - decay) * p
    return avg


@pytest.mark.parametrize("ema_start", [0, 4])
def test_swa_and_ema_together_in_one_launch_per_group(monkeypatch, ema_start):
    launches = []
    real = kadamw._launch_adamw
    monkeypatch.setattr(
        kadamw, "_launch_adamw", lambda bufs, *a: launches.append(sorted(bufs)) or real(bufs, *a)
    )
    ps = _params()
    opt = _both(ps, ema_start=ema_start)
    snaps = [[] for _ in ps]
    for i in range(13):
        for p, g in zip(ps, _grads(i)):
            p.grad = g
        opt.step()
        for j, p in enumerate(ps):
            snaps[j].append(p.detach().clone())
    assert len(launches) == 2 * 13  # one launch per group per step, whatever is averaged
    assert ["ema", "g", "m", "p", "swa", "v"] in launches  # t = 6, 12: both in the same pass
    for j, p in enumerate(ps):
        swa = _definition(snaps[j], "swa", 2, 6, 0.7, ema_start)
        ema = _definition(snaps[j], "ema", 3, None, 0.7, ema_start)
        torch.testing.assert_close(opt.averaged(p, "swa"), swa, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.averaged(p, "ema"), ema, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="kind='swa' or kind='ema'"):
        opt.averaged(ps[0])
    live = [p.detach().clone() for p in ps]
    with opt.use_averaged_weights("ema"):
        assert all(torch.equal(p, opt.averaged(p, "ema")) for p in ps)
    assert all(torch.equal(p, x) for p, x in zip(ps, live))


def test_state_dict_round_trip_mid_window_with_both_averages_is_bitwise():
    def run(ps, opt, steps):
        for i in steps:
            for p, g in zip(ps, _grads(i)):
                p.grad = g
            opt.param_groups[0]["lr"] = 1e-2 / (1 + i)
            opt.step()

    full = _params()
    fopt = _both(full)
    run(full, fopt, range(11))
    first = _params()
    opt1 = _both(first)
    run(first, opt1, range(5))  # mid SWA window (horizon 6) and between EMA updates
    sd = copy.deepcopy(opt1.state_dict())
    resumed = _params()
    opt2 = _both(resumed)
    with torch.no_grad():
        for p, w in zip(resumed, first):
            p.copy_(w)
    opt2.load_state_dict(sd)
    run(resumed, opt2, range(5, 11))
    for a, b in zip(full, resumed):
        assert torch.equal(a, b)
        for kind in ("swa", "ema"):
            assert torch.equal(fopt.averaged(a, kind), opt2.averaged(b, kind))
        assert torch.equal(fopt.state[a]["exp_avg"], opt2.state[b]["exp_avg"])


def _forbid_host_reads(monkeypatch):
    def boom(self, *a, **k):
        raise AssertionError("host read of a tensor inside the optimizer step")

    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, boom)


def test_clip_and_scaled_step_never_read_back(path, monkeypatch):
    ps = _params()
    opt = _both(ps, max_grad_norm=0.5)
    scaler = DynamicLossScaler(DEV, init_scale=8.0, growth_interval=2)
    assert opt.last_grad_norm is None
    for i in range(4):
        for p, g in zip(ps, _grads(i)):
            p.grad = g * scaler.get_scale()
        with monkeypatch.context() as m:
            _forbid_host_reads(m)
            norm = opt.clip_grad_norm_(0.5, scaler=scaler)
            opt.step(scaler=scaler)
            opt.zero_grad(set_to_none=False)
        assert isinstance(norm, torch.Tensor) and norm.dim() == 0 and opt.last_grad_norm is norm
    want = torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in _grads(3)]))
    torch.testing.assert_close(norm, want, rtol=1e-5, atol=0)  # the unscaled norm


def test_zero_grad_keeps_grads_as_views_and_backward_accumulates_in_place(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3))
    opt = FusedAdamW(model.parameters(), lr=1e-2)
    opt.zero_grad(set_to_none=False)
    (buf,) = opt.grad_buffers()
    ptrs = {p: p.grad.data_ptr() for p in model.parameters()}
    assert all(buf.data_ptr() <= v < buf.data_ptr() + buf.numel() * 4 for v in ptrs.values())
    copies = []
    monkeypatch.setattr(
        kadamw.Flat, "make_grad_views", lambda *a: copies.append(1) or pytest.fail("copied")
    )
    x = torch.randn(6, 5)
    for _ in range(3):
        model(x).square().sum().backward()
        assert {p: p.grad.data_ptr() for p in model.parameters()} == ptrs
        buf.mul_(0.5)  # an in-place all-reduce of the flat buffer is what p.grad sees
        opt.step()
        opt.zero_grad(set_to_none=False)
        assert not buf.any()
    assert not copies


def _torch_reference_run(steps, bad, clip, init_scale, interval):
    ps = _params()
    opt = torch.optim.AdamW(
        _groups(ps), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False
    )
    sc = torch.amp.GradScaler(DEV.type, init_scale=init_scale, growth_interval=interval)
    sc.scale(torch.zeros(()))  # GradScaler creates its scale tensor lazily
    scales = []
    for i in range(steps):
        for j, (p, g) in enumerate(zip(ps, _grads(i))):
            p.grad = g * sc.get_scale()
            if i in bad and j == 2:
                p.grad[5] = bad[i]
        sc.unscale_(opt)
        if clip:
            torch.nn.utils.clip_grad_norm_(ps, clip)
        sc.step(opt)
        sc.update()
        scales.append(sc.get_scale())
    return ps, scales


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf / inf in the interpreter's numpy
@pytest.mark.parametrize("clip", [None, 0.5])
def test_loss_scaler_matches_torch_grad_scaler_with_injected_inf(path, clip):
    bad = {2: math.inf, 3: math.nan, 7: -math.inf}  # skipped steps, one with a NaN
    want, want_scales = _torch_reference_run(10, bad, clip, 2.0**10, 3)
    ps = _params()
    opt = FusedAdamW(_groups(ps), lr=1e-2, max_grad_norm=clip)
    scaler = DynamicLossScaler(DEV, init_scale=2.0**10, growth_interval=3)
    scales = []
    for i in range(10):
        for j, (p, g) in enumerate(zip(ps, _grads(i))):
            p.grad = g * scaler.get_scale()
            if i in bad and j == 2:
                p.grad[5] = bad[i]
        opt.step(scaler=scaler)
        scales.append(float(scaler.get_scale()))
        assert math.isfinite(opt.last_grad_norm.item()) == (i not in bad)
    assert scales == want_scales
    for a, b in zip(ps, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert opt.state_dict()["param_groups"][0]["skipped_steps"] == 3


def test_skipped_step_leaves_params_moments_and_averages_bitwise(path):
    ps = _params()
    opt = _both(ps, swa_interval=1, ema_interval=1)
    scaler = DynamicLossScaler(DEV, init_scale=4.0)
    for p, g in zip(ps, _grads(0)):
        p.grad = g
    opt.step(scaler=scaler)
    before = copy.deepcopy(opt.state_dict()["state"]), [p.detach().clone() for p in ps]
    for p, g in zip(ps, _grads(1)):
        p.grad = g
    ps[0].grad[0, 0] = math.nan
    opt.step(scaler=scaler)
    after = opt.state_dict()["state"]
    assert all(torch.equal(p, q) for p, q in zip(ps, before[1]))
    for k, st in before[0].items():
        assert all(torch.equal(v, after[k][n]) for n, v in st.items()), k
    assert scaler.get_scale().item() == 2.0 and scaler.state_dict()["_growth_tracker"] == 0
    sd = scaler.state_dict()
    other = DynamicLossScaler(DEV)
    other.load_state_dict(sd)
    assert other.state_dict() == sd


def test_clip_then_step_with_another_scaler_is_refused():
    ps = _params()
    opt = FusedAdamW(ps)
    for p, g in zip(ps, _grads(0)):
        p.grad = g
    opt.clip_grad_norm_(1.0)
    with pytest.raises(ValueError, match="same scaler"):
        opt.step(scaler=DynamicLossScaler(DEV))


# --------------------------------------------------------------------------- API errors (issue 9)
def test_empty_param_group_is_a_value_error():
    with pytest.raises(ValueError, match="param group 1 has no parameters"):
        FusedAdamW([{"params": [torch.nn.Parameter(torch.zeros(3))]}, {"params": []}])


def test_loading_a_torch_adamw_state_says_what_to_do():
    ps = _params()
    t = torch.optim.AdamW(ps)
    for p, g in zip(ps, _grads(0)):
        p.grad = g
    t.step()
    opt = FusedAdamW(_params())
    with pytest.raises(ValueError, match="torch.optim.AdamW.*start FusedAdamW fresh"):
        opt.load_state_dict(t.state_dict())


@pytest.mark.parametrize("lr", [math.nan, math.inf, -1.0])
def test_bad_lr_set_after_construction_fails_at_step(lr):
    ps = _params()
    opt = FusedAdamW(ps)
    opt.param_groups[0]["lr"] = lr
    for p, g in zip(ps, _grads(0)):
        p.grad = g
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(ps, before))


@pytest.mark.parametrize("eps", [-1, math.nan, math.inf])
def test_rms_norm_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        rms_norm(torch.randn(2, 4), torch.ones(4), eps=eps)


def test_importing_kernels_does_not_import_triton():
    code = (
        "import sys, torch, kernels, kernels.reference\n"
        "from model.config import ModelConfig\n"
        "from model.transformer import Transformer\n"
        "m = Transformer(ModelConfig(vocab_size=32, n_layer=1, n_embd=16, n_head=2,"
        " sequence_length=8, kernels='triton'))\n"
        "m(torch.zeros(1, 8, dtype=torch.long))\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
