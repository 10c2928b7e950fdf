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


def test_planner_fits_the_budget_and_freezes_in_the_cooldown():
    # 2 s for the untimed warmup steps, then 0.1 s per step; budget 60 s, 20% cooldown
    steps, clock, plans = _drive(lambda i: 2.0 if i < TIMING_WARMUP_STEPS else 0.1, 60.0, 0.2)
    assert plans[0][0] == TIMING_WARMUP_STEPS + TIMING_PROBE_STEPS
    assert abs(clock - 60.0) <= 0.1 + 1e-9 and steps == plans[-1][1]
    # the step time doubles halfway: re-plans shrink the run; none once the cooldown started
    slow = lambda i: 0.1 if i < 200 else 0.2  # noqa: E731
    p = BudgetPlanner(60.0, 0.2, 10_000)
    clock, done, cool = 0.0, 0, None
    while done < p.total:
        clock += slow(done)
        done += 1
        if cool is None and done >= cooldown_start(p.total, 0.2) and p.planned:
            cool = (done, p.total)
        if done % 10 == 0 or p.wants(done):
            p.observe(done, clock)
    assert cool is not None and p.total == cool[1]  # frozen from the cooldown start on
    assert abs(clock - 60.0) < 1.0


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
    # the LR every step used equals the final plan's WSD schedule: re-plans only moved the
    # cooldown while the LR did not depend on it, so the cooldown starts at 70% of the run
    recs = [json.loads(x) for x in open(out / "metrics.jsonl")]
    lrs = [r["lr"] for r in recs if r["kind"] == "train"]
    kw = dict(scheduler="wsd", iterations=total, warmup_steps=2, wsd_fract_decay=0.3)
    assert lrs == pytest.approx([1e-3 * lr_factor(i, **kw) for i in range(total)], rel=1e-12)
