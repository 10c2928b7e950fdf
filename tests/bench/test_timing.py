"""Windowed steady-state timing and the WSD-in-time plan, on a fake device clock (no workers)."""

from __future__ import annotations

import math

import pytest

from bench.worker.timing import factor, run_windows, summarize
from train.schedules import ScheduleConfig
from train.timebudget import cooldown_start


class FakeDevice:
    """A device whose steps take `step_s` seconds of virtual time; counts host reads."""

    def __init__(self, step_s: float = 0.01, jitter: float = 0.0) -> None:
        self.now = 0.0
        self.step_s = step_s
        self.jitter = jitter
        self.factors: list[float] = []
        self.reads: list[int] = []  # losses read per call of `read`
        self.launched = 0

    # Clock protocol
    def start(self) -> None:
        self.t0 = self.now

    def stop(self) -> float:
        return self.now - self.t0

    def launch(self, step: int, factor: float):
        assert step == self.launched, "steps must be launched in order, each once"
        self.launched += 1
        self.factors.append(factor)
        wobble = self.jitter * (1 if step % 2 else -1)
        self.now += self.step_s * (1 + wobble)
        return ("loss", 5.0 - 1e-3 * step)  # a "device value": only `read` may open it

    def read(self, losses: list) -> list[float]:
        self.reads.append(len(losses))
        return [v for _, v in losses]


def test_constant_windows_read_once_per_window_and_fit_the_budget():
    dev = FakeDevice(step_s=0.004, jitter=0.1)
    t = run_windows(
        dev.launch,
        dev.read,
        dev,
        ScheduleConfig(scheduler="constant", warmup_steps=0),
        budget_s=1.0,
        untimed_steps=2,
    )
    k = [w[0] for w in t.windows]
    # one read for the untimed steps, then exactly one per window: none inside a window
    assert dev.reads == [2] + k
    assert k[0] == 1 and max(k) > 1  # a calibration step, then windows of ~budget/20
    assert 0.9 <= t.timed_s <= 1.0 + 1e-9 and len(t.windows) >= 3
    assert dev.factors == [1.0] * dev.launched  # constant LR without warmup: today's behaviour
    s = summarize(t, 1.0, tokens_per_step=256)
    # per-step time = window time / k; the median over windows sits between the two step costs
    assert 3.6 <= s["step_ms_median"] <= 4.4
    assert s["step_ms_p10"] <= s["step_ms_median"] <= s["step_ms_p90"]
    assert s["step_spread"] == pytest.approx(s["step_ms_p90"] / s["step_ms_p10"])
    assert s["windows"] == len(t.windows) - 1  # the calibration window is left out
    assert s["tokens_per_s"] == pytest.approx(256 / (s["step_ms_median"] / 1e3))
    assert s["steps_total"] == dev.launched and s["tokens_seen"] == 256 * dev.launched
    assert s["host_ms"] >= 0


def test_synced_timing_is_one_step_per_window():
    dev = FakeDevice(step_s=0.01)
    t = run_windows(
        dev.launch,
        dev.read,
        dev,
        ScheduleConfig(scheduler="constant", warmup_steps=0),
        budget_s=0.2,
        untimed_steps=1,
        synced=True,
    )
    assert {w[0] for w in t.windows} == {1} and dev.reads[1:] == [1] * len(t.windows)


def test_nan_loss_stops_with_its_step():
    dev = FakeDevice()

    def launch(step, factor):
        dev.launch(step, factor)
        return ("loss", math.nan if step == 7 else 1.0)

    t = run_windows(
        launch,
        dev.read,
        dev,
        ScheduleConfig(scheduler="constant", warmup_steps=0),
        budget_s=1.0,
        untimed_steps=2,
    )
    assert t.status == "nan" and "step 8" in t.message


@pytest.mark.parametrize("fract,decay", [(0.2, "sqrt"), (0.5, "linear")])
def test_wsd_cooldown_starts_at_its_fraction_and_ends_at_the_budget(fract, decay):
    dev = FakeDevice(step_s=0.005, jitter=0.05)
    sched = ScheduleConfig(
        scheduler="wsd", warmup_steps=10, wsd_fract_decay=fract, decay_type=decay
    )
    t = run_windows(dev.launch, dev.read, dev, sched, budget_s=2.0, untimed_steps=3)
    total = t.total
    assert dev.launched == total  # the run ends at its planned total
    assert t.cooldown_step == cooldown_start(total, fract)  # exactly at the planned step
    assert t.timed_s == pytest.approx(2.0, rel=0.03)  # and at the budget
    assert t.cooldown_s / t.timed_s == pytest.approx(1 - fract, abs=0.03)
    f = dev.factors
    assert f[0] == pytest.approx(0.01) and f[9] < 1.0 and f[10] == 1.0  # warmup from lr/100
    c = t.cooldown_step
    assert all(x == 1.0 for x in f[10:c]) and f[c] == 1.0 and f[c + 1] < 1.0
    assert all(a >= b for a, b in zip(f[c:], f[c + 1 :]))  # monotone cooldown
    assert f[-1] == pytest.approx(factor(sched, total - 1, total))
    # the schedule the run took is the one a straight run of `total` steps would take
    assert f == [pytest.approx(factor(sched, i, total)) for i in range(total)]


def test_wsd_replans_when_the_machine_slows_down():
    dev = FakeDevice(step_s=0.005)

    def launch(step, factor):
        if step == 100:
            dev.step_s = 0.01  # the machine halves its speed mid-run
        return dev.launch(step, factor)

    sched = ScheduleConfig(scheduler="wsd", warmup_steps=0, wsd_fract_decay=0.2)
    t = run_windows(launch, dev.read, dev, sched, budget_s=2.0, untimed_steps=2)
    assert t.timed_s == pytest.approx(2.0, rel=0.05)
    assert t.cooldown_step == cooldown_start(t.total, 0.2)


@pytest.mark.parametrize("speed", [2.0, 0.5], ids=["slows-down", "speeds-up"])
def test_wsd_cooldown_follows_the_clock_when_the_speed_changes_in_it(speed):
    """As in `train --minutes`: once the cooldown has started its start stays, but its length is
    re-planned, so a machine that changes speed in the cooldown still ends at the budget; the LR
    never rises (a stretched cooldown holds it)."""
    dev = FakeDevice(step_s=0.005)
    sched = ScheduleConfig(scheduler="wsd", warmup_steps=0, wsd_fract_decay=0.4)
    state = {}

    def launch(step, factor):
        if "start" not in state and factor < 1.0:
            state["start"] = step  # the first step that cools down
            dev.step_s *= speed
        return dev.launch(step, factor)

    t = run_windows(launch, dev.read, dev, sched, budget_s=2.0, untimed_steps=2)
    assert t.timed_s == pytest.approx(2.0, rel=0.03)  # ends at the budget, not at the old T
    assert dev.launched == t.total
    c = t.cooldown_step
    assert state["start"] == c + 1 and t.cooldown_s / 2.0 == pytest.approx(0.6, abs=0.03)
    f = dev.factors
    assert all(x == 1.0 for x in f[: c + 1])
    assert all(a >= b for a, b in zip(f[c:], f[c + 1 :]))  # monotone, never raised
    assert f[-1] < 0.2  # cooled down to (near) zero by the end
