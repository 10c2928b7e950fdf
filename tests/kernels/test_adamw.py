"""FusedAdamW vs torch.optim.AdamW, SWA/EMA definitions, clipping, resume, launches, bad input.

Run with TRITON_INTERPRET=1 (the Makefile does) so the Triton kernel itself runs on the CPU; without
it the same tests exercise the torch fast path (``adamw_ref``). Sizes stay at a few hundred elements
to keep the interpreter fast.
"""

from __future__ import annotations

import copy

import pytest
import torch

import kernels._adamw_kernels as kak
import kernels.adamw as kadamw
from kernels import FusedAdamW
from kernels._utils import interpreting
from kernels.reference import adamw_ref, adamw_scalars

SHAPES = [(7, 13), (1,), (33,), (4, 5, 3)]  # odd sizes, a 1-element tensor, a 3-D tensor


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _grads(step: int, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator(device=torch.get_default_device()).manual_seed(1000 + step)
    return [torch.randn(s, generator=g).to(dtype) for s in SHAPES]


def _groups(params: list[torch.nn.Parameter]) -> list[dict]:
    # Two groups with different hyperparameters: the default one and a no-decay one.
    return [
        {"params": params[:2]},
        {"params": params[2:], "weight_decay": 0.0, "betas": (0.8, 0.99), "eps": 1e-6},
    ]


def _lr(i: int) -> float:
    return 1e-2 * (1.0 + 0.3 * (i % 4)) / (1 + i)  # changes every step


def _max_rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x - y).abs() / y.abs().clamp_min(1e-12)).max().item() for x, y in zip(a, b))


# fp32 unit roundoff of a value in [1, 2): 2^-23.
_ULP = 2.0**-23


def _max_ulps_per_step(
    a: list[torch.Tensor], b: list[torch.Tensor], steps: int, lr: float
) -> float:
    """Worst |a - b| in fp32 ulps per step, an ulp taken at |b| + lr.

    Why this scale: a step p <- p * (1 - lr wd) - lr * m_hat / (sqrt(v_hat) + eps) rounds about
    four times (the decay product, m and v's updates feeding the quotient, the subtraction), each
    within half an ulp of its result; two implementations that order or contract (FMA) these
    differently can thus part by up to ~4 ulps of |p| per step on each side, and the quotient's
    part scales with the update, at most lr in size (Kingma & Ba 2015, arXiv:1412.6980, section
    2.1: |step| <= lr when 1 - beta1 <= sqrt(1 - beta2), as with (0.9, 0.95)). Over k steps the
    differences add at most linearly. Clipping adds a few ulps to the grad through the norm's
    different summation order, which Adam's scale-invariant quotient mostly cancels. A pure
    relative bound (1e-6 = 8.4 ulps over 3 to 5 steps) held on the CPU and failed on an H200
    (1.2e-6 and 1.5e-6) only by that contraction."""
    worst = 0.0
    for x, y in zip(a, b):
        scale = (y.detach().abs() + lr) * _ULP * steps
        worst = max(worst, ((x.detach() - y.detach()).abs() / scale).max().item())
    return worst


def _run_pair(grad_dtype: torch.dtype, steps: int = 20, clip: float | None = None):
    init = _params()
    ours = [torch.nn.Parameter(p.clone()) for p in init]
    ref = [torch.nn.Parameter(p.clone()) for p in init]
    opt = FusedAdamW(_groups(ours), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    topt = torch.optim.AdamW(
        _groups(ref), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False
    )
    if grad_dtype != torch.float32:
        for p in ours:
            p.grad_dtype = grad_dtype  # torch >= 2.10 pins grad dtype to param dtype unless told
    norms = []
    for i in range(steps):
        for p, q, g in zip(ours, ref, _grads(i, grad_dtype)):
            p.grad = g.clone()
            q.grad = g.float()  # torch fed the upcast grads
        for grp in opt.param_groups + topt.param_groups:
            grp["lr"] = _lr(i)
        if clip is not None:
            n1 = opt.clip_grad_norm_(clip).item()  # a device tensor now
            n2 = torch.nn.utils.clip_grad_norm_(ref, clip).item()
            norms.append((n1, n2))
        opt.step()
        topt.step()
    _run_pair.last_torch_opt = topt  # for state comparisons
    return ours, ref, opt, norms


@pytest.mark.interpreter_only
def test_interpreter_is_active_for_kernel_tests():
    # The Makefile runs tests/kernels with TRITON_INTERPRET=1; without it these tests would only
    # check the torch path, so say so loudly instead of passing silently.
    assert interpreting(), "run tests/kernels with TRITON_INTERPRET=1 (see Makefile)"


def test_matches_torch_adamw_fp32():
    ours, ref, opt, _ = _run_pair(torch.float32)
    assert _max_rel(ours, ref) <= 1e-6
    assert all(g["step"] == 20 for g in opt.param_groups)
    # exp_avg / exp_avg_sq agree too (state views into the flat buffers)
    topt = _run_pair.last_torch_opt
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(
            [opt.state[p][key] for p in ours],
            [topt.state[q][key] for q in ref],
            rtol=1e-6,
            atol=1e-6,
        )  # m can cancel to ~0


def test_bf16_grads_match_adamw_on_upcast_grads():
    ours, ref, opt, _ = _run_pair(torch.bfloat16, steps=6)
    assert _max_rel(ours, ref) <= 1e-6
    assert opt._flats[0].grad.dtype == torch.bfloat16  # the bf16 buffer/kernel variant really ran


def test_ulp_bound_is_tight_enough_to_fail():
    # one ulp of |p| per step passes; a relative 1e-4 error (~840 ulps) does not
    p = [torch.tensor([1.0, -0.5, 3.0])]
    assert _max_ulps_per_step([p[0] * (1 + 3 * _ULP)], p, steps=3, lr=1e-2) <= 8.0
    assert _max_ulps_per_step([p[0] * (1 + 1e-4)], p, steps=5, lr=1e-2) > 8.0


def test_clipping_matches_clip_grad_norm():
    ours, ref, opt, norms = _run_pair(torch.float32, steps=5, clip=0.5)
    for n1, n2 in norms:
        assert n1 == pytest.approx(n2, rel=1e-5)
        assert n1 > 0.5  # the clip was active, so the check is meaningful
    assert _max_ulps_per_step(ours, ref, steps=5, lr=_lr(0)) <= 8.0  # 2 x 4 ulps, see helper


def test_max_grad_norm_in_constructor_clips_each_step():
    init = _params()
    ours = [torch.nn.Parameter(p.clone()) for p in init]
    ref = [torch.nn.Parameter(p.clone()) for p in init]
    opt = FusedAdamW(ours, lr=1e-2, max_grad_norm=0.3)
    topt = torch.optim.AdamW(ref, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, foreach=False)
    for i in range(3):
        for p, q, g in zip(ours, ref, _grads(i)):
            p.grad, q.grad = g.clone(), g.clone()
        n = torch.nn.utils.clip_grad_norm_(ref, 0.3).item()
        opt.step()
        topt.step()
        assert opt.last_grad_norm.item() == pytest.approx(n, rel=1e-5)
    assert _max_ulps_per_step(ours, ref, steps=3, lr=1e-2) <= 8.0  # 2 x 4 ulps, see helper


def _explicit_average(
    snapshots: list[torch.Tensor], kind: str, interval: int, horizon: int | None, decay: float
) -> torch.Tensor:
    """The definitions, evaluated literally on the param snapshots after each step t."""
    avg = None
    for t, p in enumerate(snapshots):
        if t % interval:
            continue
        if kind == "swa":
            k = (t % horizon) // interval if horizon is not None else t // interval
            avg = p.clone() if k == 0 else avg + (p - avg) / (k + 1)
        else:
            avg = p.clone() if avg is None else decay * avg + (1 - decay) * p
    return avg


@pytest.mark.parametrize(
    "kind,interval,horizon",
    [
        ("swa", 1, 4),
        ("swa", 2, 6),
        ("swa", 3, None),
        ("ema", 1, 500),
        ("ema", 2, None),
    ],
)
def test_average_equals_definition(kind, interval, horizon):
    init = _params()
    ours = [torch.nn.Parameter(p.clone()) for p in init]
    avg = (
        dict(swa=True, swa_interval=interval, swa_horizon=horizon)
        if kind == "swa"
        else dict(ema=True, ema_interval=interval)
    )
    opt = FusedAdamW(_groups(ours), lr=1e-2, ema_decay=0.7, **avg)
    snaps: list[list[torch.Tensor]] = [[] for _ in ours]
    for i in range(13):
        for p, g in zip(ours, _grads(i)):
            p.grad = g
        before = [opt.averaged(p).clone() for p in ours]
        opt.step()
        for j, p in enumerate(ours):
            snaps[j].append(p.detach().clone())
            if i % interval != 0:
                # non-averaging steps leave the average bitwise untouched
                assert torch.equal(opt.averaged(p), before[j])
    for j, p in enumerate(ours):
        want = _explicit_average(snaps[j], kind, interval, horizon, 0.7)
        torch.testing.assert_close(opt.averaged(p), want, rtol=1e-6, atol=1e-7)


def test_use_averaged_weights_swaps_and_restores_even_on_error():
    ours = [torch.nn.Parameter(p.clone()) for p in _params()]
    opt = FusedAdamW(ours, lr=1e-2, swa=True, swa_interval=1, swa_horizon=4)
    for i in range(3):
        for p, g in zip(ours, _grads(i)):
            p.grad = g
        opt.step()
    live = [p.detach().clone() for p in ours]
    avgs = [opt.averaged(p).clone() for p in ours]
    assert not torch.equal(live[0], avgs[0])
    with pytest.raises(ZeroDivisionError):
        with opt.use_averaged_weights():
            assert all(torch.equal(p, a) for p, a in zip(ours, avgs))
            raise ZeroDivisionError("an error inside the block")
    assert all(torch.equal(p, x) for p, x in zip(ours, live))


@pytest.mark.parametrize("kind", ["swa", "ema"])
def test_state_dict_round_trip_mid_window_is_bitwise(kind):
    def make():
        ps = [torch.nn.Parameter(p.clone()) for p in _params()]
        avg = dict(swa_interval=2, swa_horizon=6) if kind == "swa" else dict(ema_interval=2)
        return ps, FusedAdamW(_groups(ps), lr=1e-2, ema_decay=0.9, **{kind: True}, **avg)

    def run(ps, opt, steps):
        for i in steps:
            for p, g in zip(ps, _grads(i)):
                p.grad = g
            for grp in opt.param_groups:
                grp["lr"] = _lr(i)
            opt.step()

    full, fopt = make()
    run(full, fopt, range(10))

    first, opt1 = make()
    run(first, opt1, range(5))  # step 5: inside the second window (horizon 6, interval 2)
    sd = copy.deepcopy(opt1.state_dict())
    weights = [p.detach().clone() for p in first]
    resumed, opt2 = make()  # fresh model + optimizer, then restore
    with torch.no_grad():
        for p, w in zip(resumed, weights):
            p.copy_(w)
    opt2.load_state_dict(sd)
    run(resumed, opt2, range(5, 10))
    for a, b in zip(full, resumed):
        assert torch.equal(a, b)
        assert torch.equal(fopt.averaged(a), opt2.averaged(b))
        assert torch.equal(fopt.state[a]["exp_avg_sq"], opt2.state[b]["exp_avg_sq"])


def test_one_launch_per_group_per_step(monkeypatch):
    calls = []
    real = kadamw._launch_adamw

    def counting(*args, **kwargs):
        calls.append("swa" in args[0])  # whether this launch is the averaging variant
        return real(*args, **kwargs)

    monkeypatch.setattr(kadamw, "_launch_adamw", counting)
    ours = [torch.nn.Parameter(p.clone()) for p in _params()]
    opt = FusedAdamW(_groups(ours), lr=1e-2, swa=True, swa_interval=2, swa_horizon=4)
    for i in range(3):
        for p, g in zip(ours, _grads(i)):
            p.grad = g
        opt.step()
    assert kadamw.use_triton(ours[0]), "launch counting needs the Triton path"
    # 2 groups x 3 steps; steps 0 and 2 average, step 1 runs the non-averaging variant
    assert calls == [True, True, False, False, True, True]


def test_params_stay_the_same_objects_and_zero_grad_keeps_views():
    model = torch.nn.Linear(5, 3)
    ids = [id(p) for p in model.parameters()]
    opt = FusedAdamW(model.parameters(), lr=1e-2)
    assert [id(p) for p in model.parameters()] == ids
    x = torch.randn(4, 5)
    model(x).sum().backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    model(x).sum().backward()  # accumulates into the flat grad buffer views
    flat = opt._flats[0]
    assert model.weight.grad.data_ptr() == flat.grad.data_ptr()
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,err",
    [
        ({"lr": -1.0}, "lr"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (-0.1, 0.9)}, "betas"),
        ({"swa": True, "swa_interval": 3, "swa_horizon": 10}, "divide"),
        ({"ema": True}, "ema=True needs ema_decay"),  # one default: the trainer's --ema-decay
        ({"ema": True, "ema_decay": 1.0}, "ema_decay"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
    ],
)
def test_bad_hyperparameters(kwargs, err):
    with pytest.raises(ValueError, match=err):
        FusedAdamW([torch.nn.Parameter(torch.zeros(3))], **kwargs)


def test_bad_param_and_grad_dtypes():
    with pytest.raises(TypeError, match="float32 params"):
        FusedAdamW([torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))])
    with pytest.raises(TypeError, match="lr as a Python float"):
        FusedAdamW([torch.nn.Parameter(torch.zeros(3))], lr=torch.tensor(1e-3))
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad_dtype = None  # let torch accept a foreign grad dtype so the optimizer's check is reached
    opt = FusedAdamW([p])
    p.grad = torch.zeros(3, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        opt.step()
    p.grad = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        opt.clip_grad_norm_(1.0)
    with pytest.raises(ValueError, match="max_norm"):
        opt.clip_grad_norm_(0.0)


@pytest.mark.parametrize("average", [False, True])
def test_kernel_agrees_with_reference_fast_path(average):
    # adamw_ref is what CPU runs without the interpreter: it must agree with the kernel to fp32
    # rounding on the same flat buffers (1024-element, padded like the optimizer's buffers).
    gen = torch.Generator(device=torch.get_default_device()).manual_seed(7)
    n = kak.BLOCK
    p, g, m = (torch.randn(n, generator=gen) for _ in range(3))
    v = torch.rand(n, generator=gen)
    avg = torch.randn(n, generator=gen) if average else None
    bufs = [p, g, m, v] + ([avg] if average else [])
    k = [b.clone() for b in bufs]
    r = [b.clone() for b in bufs]
    hp = dict(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=4)
    s = adamw_scalars(hp["lr"], hp["beta1"], hp["beta2"], hp["weight_decay"], hp["step"])
    scale = torch.tensor([0.5])
    kbufs = dict(zip("pgmv", k[:4])) | ({"swa": k[4]} if average else {})
    s.update(beta2=0.95, eps=1e-8, lr=3e-3, step1=4, swa_w=(0.75, 0.25), ema_w=None)
    kadamw._launch_adamw(kbufs, scale, n, s)
    adamw_ref(
        r[0],
        r[1],
        r[2],
        r[3],
        grad_scale=scale,
        swa=r[4] if average else None,
        swa_weights=(0.75, 0.25),
        **hp,
    )
    for a, b in zip(k, r):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(k[0], p)  # the step really changed the params
