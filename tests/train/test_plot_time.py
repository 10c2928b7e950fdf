"""`train --plot` draws loss against wall-clock time too (what a time-budget user compares)."""

from __future__ import annotations

import json

from train.cli import main
from train.plot import build_figure, wall_clock


def test_wall_clock_uses_time_s_else_the_sum_of_step_times():
    recs = {1: {"step_ms": 100.0, "time_s": 0.5}, 2: {"step_ms": 100.0, "time_s": 0.7}}
    assert wall_clock(recs) == {1: 0.5, 2: 0.7}
    old = {1: {"step_ms": 100.0}, 2: {"step_ms": 300.0}}  # written before time_s existed
    assert wall_clock(old, offset=10.0) == {1: 10.1, 2: 10.4}


def test_plot_has_a_wall_clock_panel_and_records_carry_time(tmp_path):
    out = tmp_path / "r"
    argv = ["--preset", "tiny", "--iterations", "6", "--batch-size", "2", "--acc-steps", "1"]
    argv += ["--eval-batches", "1", "--eval-interval", "3", "--log-interval", "2"]
    assert main([*argv, "--warmup-steps", "1", "--out", str(out), "--no-progress"]) == 0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["time_s"] for r in recs if r["kind"] == "train"]
    assert len(times) == 6 and times == sorted(times) and times[0] > 0
    assert all(r["time_s"] > 0 for r in recs if r["kind"] == "eval")
    fig = build_figure(str(out))
    ax_time = fig.axes[2]
    assert "wall clock" in ax_time.get_xlabel() and len(ax_time.lines) == 2  # train + val
    xs = ax_time.lines[0].get_xdata()
    assert abs(xs[-1] - times[-1] / 60) < 1e-9
