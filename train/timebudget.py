"""Fit a warmup -> stable -> cooldown (WSD) schedule into a wall-clock budget.

A WSD schedule (Hägele et al. 2024, arXiv:2405.18392, §3) is constant after its warmup until the
cooldown starts at step T - int(f * T), so its learning rate up to that point does not depend on
the total step count T. That is what lets a run set T from its measured speed while it runs:

1. a few untimed steps (allocation, autotuning, compilation) are excluded from the estimate;
2. the step time is measured (over the last quarter of the timed steps) and T is chosen so that
   the steps done plus the steps left at that speed end at the budget;
3. T is re-estimated at later measurement points while the run is in its stable phase;
4. once the cooldown has started, its start S stays where it is and its length follows the clock:
   T is re-estimated at every measurement point as before, and the cooldown is stretched or cut
   to S..T (`fract_for`: the WSD fraction whose cooldown starts at S), so a run whose steps slow
   down in the cooldown (or speed up) still ends at the budget. The LR falls monotonically; when
   T moves, the cooldown's progress (t - S) / (T - S) moves with it.

A re-plan never moves the cooldown start before the current step, which would make the LR jump.
`warmup_for` scales a warmup that does not fit the planned run (a tenth of it), so a budget too
short for the default warmup still trains.
Standard library only: `train` (`BudgetPlanner`) and the sweep worker (`bench/worker/timing.py`,
which plans from its timing windows) both use it.
"""

from __future__ import annotations

import math

TIMING_WARMUP_STEPS = 3  # untimed steps before the step time is measured
TIMING_PROBE_STEPS = 3  # timed steps before the first plan
WARMUP_MAX_FRACTION = 0.25  # a warmup longer than this share of the planned run is scaled
WARMUP_SCALED_FRACTION = 0.1  # ... to this share of it


def cooldown_start(total_steps: int, fract_decay: float) -> int:
    """First step of the cooldown of a WSD run of `total_steps` (the seed's int() truncation)."""
    return total_steps - int(fract_decay * total_steps)


def plan_total_steps(
    elapsed_s: float,
    steps_done: int,
    budget_s: float,
    step_s: float,
    *,
    fract_decay: float = 0.0,
) -> int:
    """Total optimizer steps T so that a run ends at `budget_s` seconds.

    `elapsed_s`: seconds spent so far (everything since the run started, untimed steps included);
    `steps_done`: optimizer steps done so far; `step_s`: the measured seconds per step from now on.
    T = steps_done + floor((budget_s - elapsed_s) / step_s), but at least `steps_done` and, for a
    WSD cooldown of fraction `fract_decay` < 1, never so small that the cooldown would have started
    before `steps_done` (T is then the smallest T whose cooldown starts at `steps_done`).
    """
    if not (math.isfinite(step_s) and step_s > 0):
        raise ValueError(f"step time must be a finite number > 0, got {step_s}")
    if not (math.isfinite(budget_s) and budget_s > 0):
        raise ValueError(f"budget must be a finite number > 0 seconds, got {budget_s}")
    if not 0.0 <= fract_decay < 1.0:
        raise ValueError(f"cooldown fraction must be in [0, 1) to plan in time, got {fract_decay}")
    if steps_done < 0 or elapsed_s < 0:
        raise ValueError("steps done and elapsed time must be >= 0")
    left = max(0.0, budget_s - elapsed_s)
    total = max(steps_done, 1, steps_done + int(left // step_s))
    # cooldown_start(T) is non-decreasing in T and grows by at most 1 per step of T.
    total = max(total, math.ceil(steps_done / (1.0 - fract_decay)) - 1)
    while cooldown_start(total, fract_decay) < steps_done:
        total += 1
    return total


def fract_keeping_start(total: int, start: int | None, fract_decay: float) -> float:
    """The WSD fraction of a run of `total` steps: `fract_decay`, or, once the cooldown has started
    at `start`, the fraction whose cooldown starts exactly there (T - int(f T) = start; the half
    step keeps int() off a rounding edge)."""
    if start is None or total <= start:
        return fract_decay
    return min(1.0, (total - start + 0.5) / total)


def replan_in_cooldown(
    elapsed_s: float, steps_done: int, budget_s: float, step_s: float, start: int
) -> int:
    """Total steps of a run whose cooldown started at `start`: the steps left at `step_s` end at
    the budget, but the run is at least one cooldown step long and never ends before now."""
    left = max(0.0, budget_s - elapsed_s)
    return max(steps_done, start + 1, steps_done + int(left // step_s))


def warmup_for(warmup_steps: int, total_steps: int) -> int:
    """The warmup of a run planned at `total_steps`: as asked, unless it exceeds a quarter of the
    run (it would leave no stable phase: the default 300 steps in a 7-step run learns nothing);
    then a tenth of the run."""
    if warmup_steps <= WARMUP_MAX_FRACTION * total_steps:
        return warmup_steps
    return int(WARMUP_SCALED_FRACTION * total_steps)


class BudgetPlanner:
    """Re-plans the total step count of a run from (steps done, seconds since start) readings.

    Call `observe(steps_done, elapsed_s)` at points where the device is synchronised; it returns
    the new total when it re-planned, else None. Plans start after TIMING_WARMUP_STEPS untimed and
    TIMING_PROBE_STEPS timed steps, and go on through the cooldown, whose start is then kept
    (`cooldown_at`, and `fract_for` for the schedule).
    """

    def __init__(self, budget_s: float, fract_decay: float, total_steps: int) -> None:
        if not (math.isfinite(budget_s) and budget_s > 0):
            raise ValueError(f"budget must be a finite number > 0 seconds, got {budget_s}")
        self.budget_s = budget_s
        self.fract_decay = fract_decay
        self.total = total_steps
        self.planned = False
        self.cooldown_at: int | None = None  # the cooldown's first step, once it has started
        self._seen: list[tuple[int, float]] = []  # (steps, seconds) readings since timing began

    def wants(self, steps_done: int) -> bool:
        """True when a reading at `steps_done` must be taken (the caller syncs only then): the
        first readings, and the step where the cooldown starts (its start is fixed there)."""
        if self.in_cooldown(steps_done) and self.cooldown_at is None:
            return True
        if not self._seen:
            return steps_done >= TIMING_WARMUP_STEPS
        return not self.planned and steps_done >= self._seen[0][0] + TIMING_PROBE_STEPS

    def in_cooldown(self, steps_done: int) -> bool:
        if self.cooldown_at is not None:
            return steps_done >= self.cooldown_at
        return self.planned and steps_done >= cooldown_start(self.total, self.fract_decay)

    def fract_for(self, total: int) -> float:
        """The WSD fraction of a run of `total` steps (`fract_keeping_start`)."""
        return fract_keeping_start(total, self.cooldown_at, self.fract_decay)

    def observe(self, steps_done: int, elapsed_s: float) -> int | None:
        if steps_done < TIMING_WARMUP_STEPS:
            return None
        if self.cooldown_at is None and self.in_cooldown(steps_done):
            self.cooldown_at = cooldown_start(self.total, self.fract_decay)
        if not self._seen or steps_done <= self._seen[-1][0]:
            self._seen = self._seen or [(steps_done, elapsed_s)]
            return None
        # The step time over the most recent quarter of the timed steps: it follows a run that
        # slows down or speeds up, and still averages over the occasional evaluation.
        back = max(TIMING_PROBE_STEPS, (steps_done - self._seen[0][0]) // 4)
        ref = self._seen[0]
        for s, t in self._seen:
            if s <= steps_done - back:
                ref = (s, t)
        self._seen.append((steps_done, elapsed_s))
        step_s = max((elapsed_s - ref[1]) / (steps_done - ref[0]), 1e-9)
        if self.cooldown_at is not None:  # the start stays; the end follows the clock
            self.total = replan_in_cooldown(
                elapsed_s, steps_done, self.budget_s, step_s, self.cooldown_at
            )
        else:
            self.total = plan_total_steps(
                elapsed_s, steps_done, self.budget_s, step_s, fract_decay=self.fract_decay
            )
        self.planned = True
        return self.total
