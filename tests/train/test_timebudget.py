"""`train --minutes M`: the WSD schedule is fitted into a wall-clock budget from the measured step
time (the planner is pure, so it is tested with a fake clock); re-plans stop at the cooldown."""

import json
import math

import pytest

from train import schedules
from train.cli import main
from train.schedules import ScheduleConfig
from train.timebudget import (
    TIMING_PROBE_STEPS,
    TIMING_WARMUP_STEPS,
    BudgetPlanner,
    cooldown_start,
    plan_total_steps,
    warmup_for,
)


def lr_factor(step, **kw):
    """The schedule of these keyword settings (the rest ScheduleConfig's defaults) at `step`."""
    return schedules.lr_factor(step, ScheduleConfig(**kw))


def test_plan_total_steps():
    # 10 s spent on 20 steps, 0.5 s per step from now on, 60 s budget: 100 more steps
    assert plan_total_steps(10.0, 20, 60.0, 0.5) == 120
    assert plan_total_steps(70.0, 20, 60.0, 0.5) == 20  # over budget: stop now
    # a WSD plan never puts the cooldown start before the steps already done
    t = plan_total_steps(70.0, 20, 60.0, 0.5, fract_decay=0.2)
    assert cooldown_start(t, 0.2) == 20 and cooldown_start(t - 1, 0.2) < 20
    for bad in ((1.0, 1, 10.0, 0.0), (1.0, 1, math.inf, 1.0), (1.0, 1, 10.0, math.nan)):
        with pytest.raises(ValueError):
            plan_total_steps(*bad)
    with pytest.raises(ValueError, match="fraction"):
        plan_total_steps(1.0, 1, 10.0, 1.0, fract_decay=1.0)


def _drive(step_s, budget_s, fract, start_total=10_000):
    """Run a BudgetPlanner against a fake clock where step i takes step_s(i) seconds."""
    p, clock, steps, plans = BudgetPlanner(budget_s, fract, start_total), 0.0, 0, []
    while steps < p.total:
        clock += step_s(steps)
        steps += 1
        if p.wants(steps):
            new = p.observe(steps, clock)
            if new is not None:
                plans.append((steps, new))
    return steps, clock, plans


def test_planner_fits_the_budget():
    # 2 s for the untimed warmup steps, then 0.1 s per step; budget 60 s, 20% cooldown
    steps, clock, plans = _drive(lambda i: 2.0 if i < TIMING_WARMUP_STEPS else 0.1, 60.0, 0.2)
    assert plans[0][0] == TIMING_WARMUP_STEPS + TIMING_PROBE_STEPS
    assert abs(clock - 60.0) <= 0.1 + 1e-9 and steps == plans[-1][1]


def _run_with_cooldown(step_s, budget_s=60.0, fract=0.2, every=10):
    """Drive the planner as the trainer does (readings at log steps) with a schedule whose LR is
    the WSD of the current plan; returns (end clock, cooldown start, LRs of the cooldown)."""
    p = BudgetPlanner(budget_s, fract, 10_000)
    clock, done, lrs, start = 0.0, 0, [], None
    while done < p.total:
        f = p.fract_for(p.total)
        lr = lr_factor(done, scheduler="wsd", iterations=p.total, warmup_steps=0,
                       wsd_fract_decay=f)  # fmt: skip
        if start is not None or (p.planned and done >= cooldown_start(p.total, f)):
            start = done if start is None else start
            lrs.append(lr)
        clock += step_s(done)
        done += 1
        if done < p.total and (done % every == 0 or p.wants(done)):
            p.observe(done, clock)
    return clock, start, lrs, p


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_the_cooldown_ends_at_the_budget_when_step_times_change_in_it(factor):
    """Steps 2x slower (or faster) once the cooldown has begun: the cooldown keeps its start and
    is cut (or stretched) so the run still ends at the budget. A planner frozen at the cooldown
    start (what `train --minutes 2` did, ending at 239 s) misses by up to the cooldown's share of
    the change: 20% x (factor - 1) of the budget."""
    step = lambda i: 0.1 if i < 500 else 0.1 * factor  # noqa: E731
    clock, start, lrs, p = _run_with_cooldown(step)
    assert abs(clock - 60.0) <= 3 * 0.1 * factor + 1e-9, clock
    assert p.cooldown_at == start == 480  # the planned 80% point of 600 steps, kept
    assert lrs[0] == 1.0 and lrs[-1] < 0.2


def test_warmup_that_does_not_fit_the_plan_is_scaled():
    assert warmup_for(300, 7) == 0 and warmup_for(300, 100) == 10 and warmup_for(20, 100) == 20


def test_train_minutes_runs_wsd_into_the_budget(tmp_path):
    out = tmp_path / "r"
    args = ["--preset", "tiny", "--batch-size", "2", "--acc-steps", "1", "--scheduler", "wsd"]
    args += ["--wsd-fract-decay", "0.3", "--warmup-steps", "2", "--minutes", "0.05"]
    args += ["--eval-batches", "1", "--log-interval", "5", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    s = json.load(open(out / "summary.json"))
    total = s["steps_total"]
    assert s["scheduler"] == "wsd" and s["final_step"] == total > TIMING_WARMUP_STEPS
    assert s["tokens_seen"] == total * 2 * 64 and s["minutes"] == 0.05
    assert total < 15000  # planned from the measured speed, not the default --iterations
    assert s["budget_plans"] >= (2 if total > 20 else 1)  # re-planned at log steps
    # warmup, then the peak until the cooldown (whose start stayed where the stable phase put
    # it), then an LR that only falls, to the end of the budget
    recs = [json.loads(x) for x in open(out / "metrics.jsonl")]
    lrs = [r["lr"] for r in recs if r["kind"] == "train"]
    assert len(lrs) == total and lrs[2] == 1e-3
    peak = [i for i, x in enumerate(lrs) if x == 1e-3]
    assert peak == list(range(2, peak[-1] + 1)) and 0.5 * total <= len(peak) + 2 <= 0.9 * total
    cool = lrs[peak[-1] + 1 :]
    assert cool and all(b <= a for a, b in zip(cool, cool[1:]))


def test_default_warmup_is_scaled_to_short_runs_and_says_so(tmp_path, capsys):
    """The default 300-step warmup in a 10-step run (or a 0.02-minute budget) would never reach
    the peak LR: it is scaled to a tenth of the run, with one line saying so."""
    base = ["--preset", "tiny", "--batch-size", "2", "--acc-steps", "1", "--eval-batches", "1"]
    base += ["--no-progress", "--log-interval", "1"]
    assert main(base + ["--iterations", "10", "--out", str(tmp_path / "a")]) == 0
    assert "default warmup of 300 steps does not fit 10 iterations: warmup 1" in (
        capsys.readouterr().err
    )
    recs = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    assert max(r["lr"] for r in recs if r["kind"] == "train") == pytest.approx(1e-3, rel=0.2)
    timed = base + ["--scheduler", "wsd", "--minutes", "0.02", "--out", str(tmp_path / "b")]
    assert main(timed) == 0
    err = capsys.readouterr().err
    assert "warmup 300 steps does not fit the" in err and "scaled to" in err
    recs = [json.loads(x) for x in open(tmp_path / "b" / "metrics.jsonl")]
    assert max(r["lr"] for r in recs if r["kind"] == "train") == 1e-3  # the peak is reached
