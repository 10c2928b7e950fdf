"""Steady-state step timing in windows, and a WSD schedule fitted into the time budget.

Method (`--timing windows`, the default): after the untimed steps, the worker times windows of k
consecutive training steps. On CUDA a window is the time between two CUDA events recorded on the
stream before the first and after the last step, with no host synchronisation inside the window:
the steps' losses stay on the device and are read only after the window's end event has been
waited for. On the CPU the window is timed with `time.perf_counter`. The per-step time of a
window is its time / k; a row reports the median over windows (`step_ms_median`), p10/p90, mean,
std and `step_spread` = p90 / p10. The first window is a single step that calibrates k so that a
window lasts about 1/20 of the budget (10 ms to 2 s); it is left out of the statistics when at
least two other windows exist. `host_ms` is the host time spent issuing one step (perf_counter
around the launches of a window, no sync, / k): on a GPU, when it is close to the step time the
config is launch-bound; on the CPU, where issuing a step is running it, it equals the step time.
`--timing synced` times every step alone, synchronised before and after (k = 1), which is what
the sweep measured before windows and what a launch-bound GPU run sees. The estimate that plans
the rest of a run is the median of the last 5 windows, so a machine that slows down is seen soon.

With `--scheduler wsd` the total step count T is planned from the measured step time at every
window end (`train.timebudget`): the steps done plus the steps left at that speed end at the
budget. Windows in the stable phase stop at the planned cooldown start, so the cooldown starts at
its planned fraction. From there on, as in `train --minutes`, its start stays and its length
follows the clock: T is re-planned at every window end (`replan_in_cooldown`), the fraction is
the one whose cooldown starts where it did (`fract_keeping_start`), and a re-plan that stretches
the cooldown holds the LR rather than raising it, so a machine that slows down (or speeds up)
in the cooldown still ends at the budget.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core import percentile
from train.schedules import ScheduleConfig, lr_factor
from train.timebudget import (
    cooldown_start,
    fract_keeping_start,
    plan_total_steps,
    replan_in_cooldown,
)

UNPLANNED = 10**9  # iterations used for the LR before the first plan: WSD is flat there


@dataclass(frozen=True)
class MeasureConfig:
    """How a worker measures its run (the run itself is the spec's TrainConfig): a worker spec is
    {"train": TrainConfig.to_dict(), "measure": MeasureConfig as a dict, "row": ...}. Threads are
    the run's (`--threads`, TrainConfig.runtime), so that train and bench share one policy."""

    budget_s: float  # timed seconds of one config (not of the sweep)
    untimed_steps: int  # steps before timing starts (allocator, autotuning, compile)
    timing: str  # "windows": k steps between events, no sync inside; "synced": per step
    val_tokens: int  # held-out tokens behind each val_loss, the same for every batch size
    pin: bool  # CPU workers: pin to one core per thread


def factor(sched: ScheduleConfig, step: int, total: int, fract: float | None = None) -> float:
    """The LR multiplier of `step` when the run is `total` steps long (the plan so far); `fract`:
    the WSD cooldown fraction, if not the schedule's."""
    changes: dict = {"iterations": max(total, 1)}
    if fract is not None:
        changes["wsd_fract_decay"] = fract
    return lr_factor(step, dataclasses.replace(sched, **changes))


@dataclass
class Timed:
    """What the timing loop measured (seconds; losses as floats)."""

    windows: list[tuple[int, float, float]] = field(default_factory=list)  # (k, device s, host s)
    losses: list[float] = field(default_factory=list)
    curve: list[tuple[float, float]] = field(default_factory=list)  # (timed s, loss)
    steps: int = 0  # optimizer steps taken, untimed included
    timed_s: float = 0.0
    total: int = 0  # planned total steps (WSD), else steps taken
    cooldown_step: int | None = None
    cooldown_s: float | None = None
    status: str = "ok"
    message: str = ""
    last_factor: float = 1.0  # the LR multiplier of the last step launched

    def lr_factor(self, sched: ScheduleConfig, step: int) -> float:
        """The LR multiplier of `step` under the plan so far (held, never raised, once a re-plan
        has stretched the cooldown)."""
        total = self.total or UNPLANNED
        if self.cooldown_step is None:
            f = factor(sched, step, total)
        else:
            fract = fract_keeping_start(total, self.cooldown_step, sched.wsd_fract_decay)
            f = factor(sched, step, total, fract)
            if step > self.cooldown_step:
                f = min(f, self.last_factor)
        self.last_factor = f
        return f


class Clock:
    """Window timer: CUDA events on a GPU, perf_counter on the CPU; `stop` waits for the device."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        if cuda:
            import torch

            self._events = (
                torch.cuda.Event(enable_timing=True),
                torch.cuda.Event(enable_timing=True),
            )

    def start(self) -> None:
        if self.cuda:
            self._events[0].record()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self._events[1].record()
            self._events[1].synchronize()
            return self._events[0].elapsed_time(self._events[1]) / 1e3
        return time.perf_counter() - self._t0


def _window_target(budget_s: float) -> float:
    return min(2.0, max(0.01, budget_s / 20.0))


def _estimate(windows: list[tuple[int, float, float]], recent: int = 5) -> float:
    """Seconds per step now: the median of the last `recent` windows (a slowdown shows soon)."""
    per = [dt / k for k, dt, _ in _stat_windows(windows)[-recent:]]
    return max(percentile(per, 0.5), 1e-9)


def _stat_windows(windows):
    return windows[1:] if len(windows) >= 3 else windows


def run_windows(
    launch: Callable[[int, float], object],
    read: Callable[[list], list[float]],
    clock: Clock,
    sched: ScheduleConfig,
    *,
    budget_s: float,
    untimed_steps: int,
    synced: bool = False,
    agree: Callable[[list[float]], list[float]] | None = None,
) -> Timed:
    """Run untimed steps, then timed windows until the budget (or the planned WSD end).

    `launch(step, lr_factor)` issues one training step and returns its loss (a device tensor or a
    float); `read(losses)` turns a window's losses into floats (the one device read per window).
    `agree(values)` makes every rank of a multi-process run take rank 0's decisions.
    """
    agree = agree or (lambda v: v)
    out = Timed(total=UNPLANNED if sched.scheduler == "wsd" else 0)
    pending = [launch(s, out.lr_factor(sched, s)) for s in range(untimed_steps)]
    clock.start()
    clock.stop()  # waits for the untimed steps
    out.losses += read(pending)
    out.steps = untimed_steps
    k = 1
    while True:
        kk = _next_window(out, k, out.cooldown_step is not None, sched, budget_s)
        go, kk = (int(x) for x in agree([float(kk > 0), float(kk)]))
        if not go:
            break
        if not _one_window(out, launch, read, clock, sched, kk, synced):
            break
        est = _estimate(out.windows)
        k = 1 if synced else max(1, min(100_000, round(_window_target(budget_s) / est)))
        if sched.scheduler == "wsd" and out.cooldown_step is None:
            total = plan_total_steps(
                out.timed_s, out.steps, budget_s, est, fract_decay=min(sched.wsd_fract_decay, 0.999)
            )
            out.total = int(agree([float(total)])[0])
            if out.steps >= cooldown_start(out.total, sched.wsd_fract_decay):
                out.cooldown_step, out.cooldown_s = out.steps, out.timed_s
        elif sched.scheduler == "wsd":  # the start stays, the end follows the clock
            total = replan_in_cooldown(out.timed_s, out.steps, budget_s, est, out.cooldown_step)
            out.total = int(agree([float(total)])[0])
    if sched.scheduler != "wsd":
        out.total = out.steps
    return out


def _next_window(out: Timed, k: int, cooling: bool, sched: ScheduleConfig, budget_s: float) -> int:
    """Steps in the next window (0: stop); `cooling`: the WSD cooldown has started."""
    if sched.scheduler == "wsd" and out.windows:
        left = out.total - out.steps
        if not cooling:  # end the window at the cooldown start so it begins where planned
            left = min(left, max(1, cooldown_start(out.total, sched.wsd_fract_decay) - out.steps))
        return max(0, min(k, left))
    if len(out.windows) < 3:
        return k
    est = _estimate(out.windows)
    fits = int((budget_s - out.timed_s) / est)
    return max(0, min(k, fits))


def _one_window(out, launch, read, clock, sched, kk, synced) -> bool:
    """Time kk steps; False when a loss is not finite (status nan)."""
    losses = []
    host = 0.0
    clock.start()
    for i in range(kk):
        h = time.perf_counter()
        losses.append(launch(out.steps + i, out.lr_factor(sched, out.steps + i)))
        host += time.perf_counter() - h
    dt = clock.stop()
    vals = read(losses)
    out.steps += kk
    out.timed_s += dt
    out.windows.append((kk, dt, host))
    out.losses += vals
    out.curve.append((round(out.timed_s, 4), vals[-1]))
    bad = next((v for v in vals if not math.isfinite(v)), None)
    if bad is not None:
        out.status = "nan"
        out.message = f"non-finite loss {bad} at step {out.steps - kk + vals.index(bad) + 1}"
        return False
    return True


def summarize(t: Timed, budget_s: float, tokens_per_step: int) -> dict:
    """Row columns of a timing (ms, tokens/s, schedule bookkeeping)."""
    ws = _stat_windows(t.windows)
    per = [dt / k for k, dt, _ in ws]
    host = [h / k for k, _, h in ws]
    med = percentile(per, 0.5)
    n = len(per)
    mean = sum(per) / n if n else math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in per) / (n - 1)) if n > 1 else 0.0
    p10, p90 = percentile(per, 0.1), percentile(per, 0.9)
    return {
        "step_ms_median": 1e3 * med,
        "step_ms_p10": 1e3 * p10,
        "step_ms_p90": 1e3 * p90,
        "step_ms_mean": 1e3 * mean,
        "step_ms_std": 1e3 * std,
        "step_spread": p90 / p10 if p10 > 0 else math.nan,
        "windows": n,
        "window_steps": max((k for k, _, _ in ws), default=0),
        "host_ms": 1e3 * percentile(host, 0.5),
        "tokens_per_s": tokens_per_step / med if med > 0 else math.nan,
        "steps_timed": sum(k for k, _, _ in t.windows),
        "steps_total": t.steps,
        "tokens_seen": t.steps * tokens_per_step,
        "cooldown_start_step": t.cooldown_step if t.cooldown_step is not None else math.nan,
        "cooldown_start_s": t.cooldown_s if t.cooldown_s is not None else math.nan,
        "timed_s": t.timed_s,
        "timed_fraction": t.timed_s / budget_s if budget_s > 0 else math.nan,
        "loss_start": t.losses[0] if t.losses else math.nan,
        "loss_end": t.losses[-1] if t.losses else math.nan,
    }
