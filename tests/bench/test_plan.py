"""Sweep planning without workers: repeats, references, drift, folder settings, CLI flags."""

from __future__ import annotations

import json
import math

import pytest

from bench.cli import build_parser
from bench.sweep import drift, results
from bench.sweep.grid import config_id, expand
from bench.sweep.options import (
    SweepOptions,
    check_folder_settings,
    check_options,
    measure_config,
    measurement_settings,
)
from bench.sweep.run import _queue_with_references, plan
from core import UserError


def _rows():
    return expand({"n_layer": ["1", "2", "3"], "n_head": ["2"]}, "tiny")


def test_repeats_are_interleaved_and_only_pending_ones_are_planned(tmp_path):
    rows = _rows()
    ids = [config_id(r) for r in rows]
    opts = SweepOptions(out_dir=str(tmp_path), minutes_per_config=0.1, repeat=2)
    specs = plan(rows, opts)
    assert [(s["config_id"], s["repeat"]) for s in specs] == [(c, r) for r in (0, 1) for c in ids]
    done = [
        {"config_id": ids[0], "repeat": 0, "status": "ok"},
        {"config_id": ids[1], "repeat": 1, "status": "nan"},
        {"config_id": ids[2], "repeat": 0, "status": "error"},  # retried by default
    ]
    left = [(s["config_id"], s["repeat"]) for s in plan(rows, opts, done)]
    assert left == [(ids[1], 0), (ids[2], 0), (ids[0], 1), (ids[2], 1)]
    opts.retry = ("error", "timeout", "nan")
    assert (ids[1], 1) in [(s["config_id"], s["repeat"]) for s in plan(rows, opts, done)]
    s = specs[0]
    assert s["measure"] == measure_config(opts) and s["timeout_s"] == opts.timeout_s
    assert s["train"] == opts.base.to_dict()


def test_reference_is_timed_first_every_n_and_last(tmp_path):
    rows = _rows()
    opts = SweepOptions(out_dir=str(tmp_path), minutes_per_config=0.1, reference_every=2)
    q = _queue_with_references(plan(rows, opts), rows, opts)
    kinds = [s["kind"][0] for s in q]
    assert kinds == list("rccrcr")
    refs = [s for s in q if s["kind"] == "reference"]
    assert [s["repeat"] for s in refs] == [0, 1, 2]
    assert {s["config_id"] for s in refs} == {config_id(rows[0])}
    assert all(s["subdir"] == "reference" for s in refs)


def test_drift_is_interpolated_between_reference_timings_and_corrects_rows(tmp_path):
    out = str(tmp_path)
    ref = tmp_path / "reference"
    for i, (t, ms) in enumerate([(100.0, 10.0), (200.0, 12.0), (300.0, 11.0)]):
        results.append_row(
            str(ref),
            {"config_id": "r", "repeat": i, "status": "ok", "step_ms_median": ms, "measured_at": t},
        )
    for cid, t in (("a", 150.0), ("b", 250.0), ("c", 400.0)):
        results.append_row(
            out,
            {
                "config_id": cid,
                "kind": "config",
                "status": "ok",
                "step_ms_median": 22.0,
                "measured_at": t,
                "ref_group": "reference",
            },
        )
    opts = SweepOptions(out_dir=out, minutes_per_config=0.1, reference_every=1, drift_correct=True)
    lines: list[str] = []
    rep = drift.report(opts, lines.append)
    assert rep["reference_timings"] == 3 and rep["drift_max_pct"] == pytest.approx(20.0)
    assert "+20.0%" in lines[0] and json.loads((ref / "drift.json").read_text())["corrected"] == 3
    by = {r["config_id"]: r for r in results.load_rows(out)}
    assert by["a"]["drift"] == pytest.approx(1.1) and by["b"]["drift"] == pytest.approx(1.15)
    assert by["c"]["drift"] == pytest.approx(1.1)  # flat after the last timing
    assert by["a"]["step_ms_corrected"] == pytest.approx(20.0)
    assert by["a"]["step_ms_median"] == 22.0  # the raw measurement is kept


def test_a_folder_keeps_one_set_of_measurement_settings(tmp_path):
    out = str(tmp_path)
    base = SweepOptions(out_dir=out, minutes_per_config=0.1)
    check_folder_settings(out, measurement_settings(base))
    check_folder_settings(out, measurement_settings(base))  # same settings: fine
    for change, flag in (
        ({"minutes_per_config": 0.2}, "--minutes"),
        ({"train": {"threads": 2}}, "--threads"),
        ({"untimed_steps": 5}, "--untimed-steps"),
        ({"timing": "synced"}, "--timing"),
        ({"train": {"scheduler": "wsd"}}, "--scheduler"),
        ({"train": {"data": __file__}}, "--data"),
    ):
        other = SweepOptions(out_dir=out, **{"minutes_per_config": 0.1, **change})
        with pytest.raises(UserError, match=f"measured with {flag}.*another --out"):
            check_folder_settings(out, measurement_settings(other))


@pytest.mark.parametrize(
    "change,msg",
    [
        ({"minutes_per_config": math.inf}, "--minutes must be a finite number > 0"),
        ({"minutes_per_config": 0.0}, "--minutes must be a finite number > 0"),
        ({"timeout_grace_s": math.nan}, "--timeout-grace must be a finite number >= 0"),
        ({"timeout_factor": -1.0}, "--timeout-factor must be a finite number >= 0"),
        ({"train": {"threads": 0}}, "threads must be"),
        ({"train": {"data": "/nonexistent.bin"}}, "--data /nonexistent.bin: no such file"),
        ({"drift_correct": True}, "--drift-correct needs --reference-every"),
        ({"repeat": 0}, "--repeat must be >= 1"),
    ],
)
def test_options_are_checked_before_any_worker(tmp_path, change, msg):
    with pytest.raises(UserError, match=msg):
        check_options(SweepOptions(out_dir=str(tmp_path), **{"minutes_per_config": 0.1, **change}))


def test_effective_settings_on_this_machine(monkeypatch):
    import torch

    from train.session import effective_dtype, effective_kernels

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert (effective_kernels("auto", cpu), effective_dtype("bfloat16", cpu)) == (
        "torch",
        "float32",
    )
    assert (effective_kernels("auto", cuda), effective_dtype("bfloat16", cuda)) == (
        "triton",
        "bfloat16",
    )
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert (
        effective_kernels("auto", cpu) == "triton" and effective_kernels("torch", cuda) == "torch"
    )
    monkeypatch.setenv("TRITON_INTERPRET", "true")  # Triton itself reads only "1"
    assert effective_kernels("auto", cpu) == "torch"
    monkeypatch.delenv("TRITON_INTERPRET")
    # triton on a CPU runs the torch references (kernels.rms_norm falls back): say so
    assert effective_kernels("triton", cpu) == "torch"


def _actions(parser):
    for a in parser._actions:
        if a.choices and isinstance(a.choices, dict):  # subparsers
            for sub in a.choices.values():
                yield from _actions(sub)
        elif a.option_strings or a.dest not in ("help",):
            yield parser.prog, a


def test_every_flag_has_help_and_a_readable_metavar():
    for prog, a in _actions(build_parser()):
        if a.dest == "help" or not hasattr(a, "help"):
            continue
        assert a.help, f"{prog} {a.option_strings or a.dest} has no help"
        meta = a.metavar or ""
        assert not meta.startswith("G_") and "_" not in str(meta), f"{prog} {a.dest}: {meta}"


def test_progress_bar_only_on_a_terminal(monkeypatch):
    import sys

    from bench.sweep.progress import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert Progress(3, True).tqdm is None


def test_cpu_pinning_takes_the_last_cores_and_keeps_shards_apart():
    from bench.worker.run import pin_cores

    assert pin_cores([0, 1, 2, 3], 1, 0) == [3]
    assert pin_cores([0, 1, 2, 3], 1, 1) == [2]  # shard 1 beside shard 0
    assert pin_cores([0, 1, 2, 3], 2, 1) == [0, 1]
    assert pin_cores([0, 1], 1, 2) == [1]  # more shards than cores: they wrap around
    assert pin_cores([5], 4, 0) == [5]
