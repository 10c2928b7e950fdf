"""LR schedules: the seed code's exact values (arXiv:2405.18392; upstream src/optim/utils.py and
src/main.py), edge cases, errors, print-schedule."""

import math

import pytest
import torch

from core import UserError
from train import schedules
from train.cli import main
from train.schedules import ScheduleConfig


def lr_factor(step, **kw):
    """The schedule of these keyword settings (the rest ScheduleConfig's defaults) at `step`."""
    return schedules.lr_factor(step, ScheduleConfig(**kw))


def wsd(step, **kw):
    base = dict(scheduler="wsd", iterations=100, warmup_steps=10, wsd_fract_decay=0.2)
    return lr_factor(step, **{**base, **kw})


def test_wsd_warmup_stable_and_end():
    # warmup: step/W + (1 - step/W)/100
    assert wsd(0) == pytest.approx(0.01)
    assert wsd(5) == pytest.approx(0.5 + 0.5 / 100)
    assert wsd(10) == 1.0
    assert wsd(79) == 1.0  # n_hold = 100 - int(0.2*100) = 80
    assert wsd(100) == 0.0 and wsd(150) == 0.0


@pytest.mark.parametrize(
    "decay,p,want",
    [
        ("linear", 0.25, 0.75),
        ("sqrt", 0.25, 0.5),
        ("cosine", 0.25, 0.5 * (1 + math.cos(math.pi / 4))),
        ("square", 0.25, 1 - 0.0625),
        ("mirror_cosine", 0.25, 2 * 0.75 - 0.5 * (1 + math.cos(math.pi / 4))),
        ("miror_cosine", 0.5, 2 * 0.5 - 0.5),
        ("linear", 0.0, 1.0),
        ("sqrt", 0.95, 1 - math.sqrt(0.95)),
    ],
)
def test_wsd_every_decay_form(decay, p, want):
    step = 80 + round(p * 20)  # n_hold 80, n_anneal 20
    assert wsd(step, decay_type=decay) == pytest.approx(want, abs=1e-12)


def test_final_scale_above_zero_and_exp():
    # g = final + (1-final)(1-sqrt p); p = 5/20 -> 0.2 + 0.8*0.5
    assert wsd(85, decay_type="sqrt", wsd_final_lr_scale=0.2) == pytest.approx(0.6)
    assert wsd(85, decay_type="exp", wsd_final_lr_scale=0.1) == pytest.approx(0.1**0.25)
    assert wsd(100, decay_type="linear", wsd_final_lr_scale=0.1) == pytest.approx(0.1)
    with pytest.raises(UserError, match="exp"):
        wsd(85, decay_type="exp")


def test_int_truncation_of_decay_length():
    # T=1001, f=0.15: n_anneal = int(150.15) = 150, n_hold = 851
    kw = dict(iterations=1001, warmup_steps=0, wsd_fract_decay=0.15)
    assert wsd(850, **kw) == 1.0
    assert wsd(851, **kw) == 1.0  # p = 0 at the branch step
    assert wsd(852, **kw) == pytest.approx(1 - 1 / 150)
    assert wsd(1000, **kw) == pytest.approx(1 / 150)


def test_warmup_zero():
    assert wsd(0, warmup_steps=0) == 1.0
    assert lr_factor(0, scheduler="constant", iterations=5, warmup_steps=0) == 1.0
    # OneCycle with pct_start 0 (torch semantics): phase 2 starts at step -1, so step 0 is
    # already past the peak
    assert lr_factor(0, scheduler="cos", iterations=10, warmup_steps=0) == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi * 0.1))
    )
    # warmup 1 (torch itself divides by zero here): step 0 is the peak
    assert lr_factor(0, scheduler="cos", iterations=10, warmup_steps=1) == pytest.approx(1.0)


@pytest.mark.parametrize("strategy", ["cos", "linear"])
@pytest.mark.parametrize("warmup", [0, 2, 7, 39])
def test_one_cycle_matches_torch(strategy, warmup):
    iters, lr = 40, 1.0
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=lr,
        total_steps=iters,
        pct_start=warmup / iters,
        anneal_strategy=strategy,
        cycle_momentum=False,
        div_factor=1e2,
        final_div_factor=0.1,
    )
    for t in range(iters):
        got = lr_factor(t, scheduler=strategy, iterations=iters, warmup_steps=warmup)
        assert got == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), t
        opt.step()
        sched.step()


def test_one_cycle_hand_values():
    # cos, warmup 11, 101 steps: step 0 = 0.01, step 10 = peak, last step = 0.1 (10% of peak)
    kw = dict(scheduler="cos", iterations=101, warmup_steps=11)
    assert lr_factor(0, **kw) == pytest.approx(0.01)
    assert lr_factor(5, **kw) == pytest.approx(1 + (0.01 - 1) / 2 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(55, **kw) == pytest.approx(0.1 + 0.9 / 2 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(100, **kw) == pytest.approx(0.1)
    lin = dict(scheduler="linear", iterations=101, warmup_steps=11)
    assert lr_factor(5, **lin) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_factor(55, **lin) == pytest.approx(1 - 0.9 * 0.5)


def test_cos_inf_and_constant():
    kw = dict(scheduler="cos_inf", iterations=110, warmup_steps=10, cos_inf_steps=20)
    assert lr_factor(5, **kw) == pytest.approx(0.505)
    assert lr_factor(10, **kw) == pytest.approx(1.0)
    assert lr_factor(50, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(90, **kw) == pytest.approx(0.1) and lr_factor(109, **kw) == pytest.approx(0.1)
    assert lr_factor(5, scheduler="constant", iterations=50, warmup_steps=10) == pytest.approx(
        0.505
    )
    assert lr_factor(49, scheduler="constant", iterations=50, warmup_steps=10) == 1.0


@pytest.mark.parametrize("f", [-0.1, 1.5])
def test_fraction_outside_unit_interval(f):
    with pytest.raises(UserError, match="fract"):
        wsd(0, wsd_fract_decay=f)


def test_print_schedule_csv(capsys):
    rc = main(
        [
            "--print-schedule",
            "--scheduler",
            "wsd",
            "--iterations",
            "10",
            "--warmup-steps",
            "2",
            "--wsd-fract-decay",
            "0.4",
            "--decay-type",
            "sqrt",
        ]
    )
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "step,lr_factor" and len(lines) == 12
    vals = {int(s): float(v) for s, v in (ln.split(",") for ln in lines[1:])}
    assert vals[0] == pytest.approx(0.01) and vals[1] == pytest.approx(0.505)
    assert vals[5] == 1.0 and vals[6] == 1.0  # n_hold = 6
    assert vals[7] == pytest.approx(1 - math.sqrt(0.25)) and vals[10] == 0.0


def test_print_schedule_warmup_tokens_params(capsys):
    # tiny preset: warmup steps = ceil(params / (batch * acc * seq)); > 1 so the warmup shows
    rc = main(
        [
            "--print-schedule",
            "--scheduler",
            "constant",
            "--iterations",
            "400",
            "--preset",
            "tiny",
            "--batch-size",
            "8",
            "--acc-steps",
            "1",
            "--warmup-tokens",
            "params",
        ]
    )
    assert rc == 0
    vals = [float(ln.split(",")[1]) for ln in capsys.readouterr().out.strip().splitlines()[1:]]
    from model.config import PRESETS
    from model.costs import num_params as count_params

    w = math.ceil(count_params(PRESETS["tiny"]) / (8 * 64))
    assert vals[w - 1] < 1.0 and vals[w] == 1.0
