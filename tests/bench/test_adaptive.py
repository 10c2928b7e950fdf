"""--repeat-until: re-measure configs whose median is uncertain, in interleaved resumable rounds."""

from __future__ import annotations

import math
import random

import pytest

from bench.sweep import adaptive, results
from bench.sweep import run as sweep
from bench.sweep.grid import config_id, expand
from bench.sweep.options import SweepOptions, check_options
from core import UserError


def test_median_se_is_the_larger_of_the_mad_and_mckean_schrader_estimates():
    se = adaptive.median_se_pct
    assert se([10.0, 10.0]) == math.inf  # too few to have a spread
    assert se([10.0, 10.0, 10.0]) == 0.0
    # 1..12: median 6.5. MAD 3: 1.2533 * 1.4826 * 3 / sqrt(12) = 1.609. McKean-Schrader:
    # c = round(6.5 - 2.5758 * sqrt(3)) = 2, (x_11 - x_2) / (2 * 2.5758) = 9 / 5.1517 = 1.747
    assert se([float(i) for i in range(1, 13)]) == pytest.approx(100 * 1.747 / 6.5, abs=0.01)
    # median 10, MAD 1 (8.31%); below 12 values McKean-Schrader spans the range: 4.5 / 5.1517
    assert se([9.0, 10.0, 11.0, 8.0, 12.5]) == pytest.approx(100 * 4.5 / 5.1517 / 10, abs=0.01)
    # the MAD wins when the middle is spread and the extremes are not far off
    assert se([8.0, 8.0, 9.0, 10.0, 11.0, 12.0, 12.0] * 2) == pytest.approx(
        100 * 1.2533 * 1.4826 * 2 / math.sqrt(14) / 10, abs=0.01
    )
    # four timings clustered and one far off (a real 4-ms CPU config): the MAD alone reads
    # 1.2% and would stop measuring it; the order statistics say its median is not known
    assert se([4.40, 4.33, 5.02, 4.32, 2.29]) > 12.0
    # with enough timings one wild value no longer counts
    assert se([10.0, 10.1, 9.9, 10.05, 100.0, 10.02, 9.95, 10.03, 10.0, 9.98, 10.04, 10.01]) < 1.0


def _fake_measure(noise: dict[str, float], seen: list):
    """run_config stand-in: a row whose step time is 10 ms times (1 + noise of its config)."""
    rng = random.Random(0)

    def run(spec, out):
        seen.append((spec["kind"], spec["config_id"], spec["repeat"]))
        if spec["kind"] == "reference":
            row = {"config_id": spec["config_id"], "repeat": spec["repeat"], "status": "ok"}
            return results.append_row(out + "/reference", row | {"step_ms_median": 10.0})
        ms = 10.0 * (1.0 + rng.uniform(-1, 1) * noise[spec["config_id"]])
        row = {"config_id": spec["config_id"], "repeat": spec["repeat"], "kind": "config"}
        return results.append_row(out, row | {"status": "ok", "step_ms_median": ms})

    return run


def test_noisy_configs_are_remeasured_in_rounds_quiet_ones_stop_and_a_rerun_adds_nothing(
    tmp_path, monkeypatch
):
    rows = expand({"n_layer": ["1", "2", "3"], "n_head": ["2"]}, "tiny")
    quiet, noisy, noisier = (config_id(r) for r in rows)
    noise = {quiet: 0.001, noisy: 0.3, noisier: 0.6}
    seen: list = []
    monkeypatch.setattr(sweep, "run_config", _fake_measure(noise, seen))
    opts = SweepOptions(
        str(tmp_path),
        minutes_per_config=0.01,
        repeat=3,
        repeat_until=2.0,
        max_repeat=7,
        progress=False,
    )
    check_options(opts)
    logs: list[str] = []
    sweep.run_sweep(rows, opts, logs.append)
    counts = {c: sum(1 for k, cid, _ in seen if k == "config" and cid == c) for c in noise}
    assert counts == {quiet: 3, noisy: 7, noisier: 7}
    configs = [(cid, rep) for k, cid, rep in seen if k == "config"]
    # base repeats interleaved, then one more of each uncertain config per round
    assert configs[:9] == [(c, r) for r in range(3) for c in (quiet, noisy, noisier)]
    assert configs[9:] == [(c, r) for r in range(3, 7) for c in (noisy, noisier)]
    assert any("round 4, 2 config(s)" in m for m in logs)
    ratios = [float(m.split("took ")[1].split("x")[0]) for m in logs if "x their median" in m]
    assert len(ratios) == 4 and all(0.5 < r < 1.6 for r in ratios)
    assert "1 of 3 config(s)" in logs[-1] and "3-7 measurements" in logs[-1]
    seen.clear()
    sweep.run_sweep(rows, opts, logs.append)  # everything is done: the rerun measures nothing
    assert seen == []
    # a larger cap resumes the rounds from the rows in the folder, at the next repeat index
    sweep.run_sweep(rows, SweepOptions(**{**opts.__dict__, "max_repeat": 8}), logs.append)
    assert [(cid, rep) for k, cid, rep in seen if k == "config"] == [(noisy, 7), (noisier, 7)]


def test_round_ratio_reports_a_machine_that_sped_up():
    before = {"a": [10.0, 11.0, 12.0], "b": [20.0, 20.0, 22.0]}
    got = [
        {"config_id": "a", "status": "ok", "step_ms_median": 8.8},
        {"config_id": "b", "status": "ok", "step_ms_median": 16.0},
        {"config_id": "b", "status": "oom"},
    ]
    assert adaptive.round_ratio(before, got) == pytest.approx(0.8)
    assert adaptive.round_ratio(before, got[2:]) is None


def test_failed_and_unfinished_configs_take_no_part():
    rows = expand({"n_layer": ["1", "2", "3"], "n_head": ["2"]}, "tiny")
    valid = [(r, config_id(r)) for r in rows]
    a, b, c = (cid for _, cid in valid)

    def row(cid, rep, ms, status="ok"):
        return {"config_id": cid, "repeat": rep, "status": status, "step_ms_median": ms}

    have = [row(a, k, ms) for k, ms in enumerate([10.0, 14.0, 7.0])]
    have += [row(b, 0, 10.0), row(b, 1, 14.0), row(b, 2, 0.0, "oom")]  # failed: left alone
    have += [row(c, 0, 10.0), row(c, 1, 14.0)]  # base repeat 2 not measured yet
    assert adaptive.next_repeats(valid, have, 3, 2.0, 9) == [(rows[0], a, 3)]
    have.append(row(a, 3, 0.0, "error"))  # a harness failure: retried under the same index
    assert adaptive.next_repeats(valid, have, 3, 2.0, 9) == [(rows[0], a, 3)]
    assert adaptive.next_repeats(valid, have, 3, 50.0, 9) == []  # within the target


@pytest.mark.parametrize(
    "change,msg",
    [
        ({"repeat_until": 2.0}, "--repeat-until needs --repeat 3 or more"),
        ({"repeat_until": -1.0, "repeat": 3}, "--repeat-until must be a percentage >= 0"),
        ({"repeat_until": math.nan, "repeat": 3}, "--repeat-until must be a percentage >= 0"),
        ({"max_repeat": 9, "repeat": 3}, "--max-repeat caps --repeat-until"),
        ({"repeat_until": 2.0, "repeat": 5, "max_repeat": 4}, "--max-repeat 4 is below --repeat 5"),
    ],
)
def test_adaptive_options_are_checked(tmp_path, change, msg):
    with pytest.raises(UserError, match=msg):
        check_options(SweepOptions(out_dir=str(tmp_path), minutes_per_config=0.1, **change))


def test_default_cap_is_three_times_the_repeats(tmp_path):
    assert (
        SweepOptions(str(tmp_path), minutes_per_config=0.1, repeat=4, repeat_until=3.0).repeat_cap
        == 12
    )
