"""End-to-end sweeps with real worker processes on tiny byte-level models (CPU).

A sweep started from another directory with relative paths fills every column; WSD-in-time rows
record the planned cooldown; failures become rows, harness failures are retried on a rerun and a
sweep whose every config failed exits 1; a 2-process config runs under torchrun with gloo.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.sweep import results
from bench.worker.telemetry import COLUMNS as TELEMETRY

ROOT = Path(__file__).resolve().parents[2]
# Empty by design on a CPU: GPU telemetry/identity, MFU (peak FLOPs are known for GPUs only),
# and settings this sweep does not use.
UNSET = set(TELEMETRY) | {"gpu_name", "driver", "cuda", "mfu", "message", "ref_group"}
UNSET |= {"wsd_fract_decay", "decay_type", "wsd_final_lr_scale", "threads_requested"}
UNSET |= {"cooldown_start_step", "cooldown_start_s", "n_kv_head", "static_error"}
TINY = [
    "--preset",
    "tiny",
    "--n-head",
    "2",
    "--batch-size",
    "4",
    "--no-progress",
    "--acc-steps",
    "1",
]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _rows(d) -> list[dict]:
    return results.load_rows(str(d))


def test_sweep_from_another_directory_with_relative_paths(tmp_path):
    """Issue: the worker started in the repository root and lost every relative path."""
    (tmp_path / "corpus.txt").write_bytes(bytes(range(256)) * 300)
    cmd = [sys.executable, "-m", "bench", "sweep", "--minutes", "0.02", "--n-layer", "1,2"]
    cmd += [*TINY, "--data", "corpus.txt", "--out", "s/a"]
    env = {**_env(), "PYTHONPATH": str(ROOT)}
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "s" / "a"
    rows = _rows(out)
    assert len(rows) == 2 and {x["status"] for x in rows} == {"ok"}, rows
    df = pd.read_csv(out / "results.csv")
    for col in df.columns:
        if col not in UNSET:
            assert df[col].notna().all(), f"column {col} has blanks"
    for x in rows:
        assert x["data"] == str(tmp_path / "corpus.txt")  # absolute, as the user meant it
        # what ran on this CPU, not what the grid asked for
        assert (x["device"], x["kernels"], x["dtype"]) == ("cpu", "torch", "float32")
        assert (x["kernels_requested"], x["dtype_requested"]) == ("auto", "bfloat16")
        assert x["threads"] == 1 and len(x["cpu_affinity"].split(",")) == 1  # pinned
        assert x["cpu_malloc"] == ("recycle" if platform.libc_ver()[0] == "glibc" else "system")
        assert x["windows"] >= 2 and x["window_steps"] > 1 and x["step_spread"] >= 1.0
        assert 0 < x["host_ms"] and x["step_ms_p10"] <= x["step_ms_median"] <= x["step_ms_p90"]
        assert x["tokens_per_s"] == pytest.approx(4 * 64 / (x["step_ms_median"] / 1e3))
        assert x["tokens_seen"] == x["steps_total"] * 4 * 64 and x["world_size"] == 1
        assert 0.8 <= x["timed_fraction"] <= 1.25  # the last window is cut to fit the budget
        assert math.isfinite(x["val_loss"]) and x["loss_end"] < x["loss_start"]
    by = {x["n_layer"]: x for x in rows}
    assert by[2]["params"] > by[1]["params"]
    assert json.loads((out / "sweep.json").read_text())["settings"]["budget_s"] == 1.2


def test_wsd_in_time_records_its_schedule(tmp_path, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "w"
    argv = ["sweep", "--minutes", "0.03", "--n-layer", "1", *TINY, "--out", str(out)]
    argv += ["--scheduler", "wsd", "--wsd-fract-decay", "0.2", "--decay-type", "sqrt"]
    first = min(os.sched_getaffinity(0))  # not the core pinning would choose by default
    assert main([*argv, "--warmup-steps", "5", "--cpu-cores", str(first)]) == 0
    (x,) = _rows(out)
    assert x["cpu_affinity"] == str(first)
    assert x["status"] == "ok" and x["scheduler"] == "wsd" and x["decay_type"] == "sqrt"
    total = x["steps_total"]
    # the cooldown starts where the plan of its time put it; then its length follows the clock
    # (re-planned at every window, test_timing.py), so it ends near, not exactly at, 20 %
    assert 0 < x["cooldown_start_step"] < total
    assert x["cooldown_start_step"] / total == pytest.approx(0.8, abs=0.1)
    # exact on a steady clock (test_timing.py); a loaded CI machine adds noise here
    assert x["cooldown_start_s"] / x["timed_s"] == pytest.approx(0.8, abs=0.15)
    assert x["timed_fraction"] == pytest.approx(1.0, abs=0.25)
    assert x["tokens_seen"] == total * 4 * 64 and math.isfinite(x["val_loss"])


@pytest.mark.slow
def test_failures_are_rows_retried_by_policy_and_all_failed_exits_1(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    base = {"n_layer": 1, "n_embd": 32, "n_head": 2, "batch_size": 4}
    g = tmp_path / "grid.json"
    g.write_text(json.dumps([{**base, "lr": 1e30}, {**base, "inject": "error"}]))
    out = tmp_path / "out"
    argv = ["sweep", "--minutes", "0.01", "--preset", "tiny", "--grid", str(g), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 1  # nothing succeeded: not a success
    err = capsys.readouterr().err
    assert "error: every config failed (1 error, 1 nan)" in err
    first = {x.get("inject"): x for x in _rows(out)}
    assert first[None]["status"] == "nan" and "non-finite" in first[None]["message"]
    assert first["error"]["status"] == "error" and "injected error" in first["error"]["message"]
    assert main([*argv, "--no-progress"]) == 1  # rerun: the error row is retried, nan is final
    again = {x.get("inject"): x for x in _rows(out)}
    assert again["error"]["written_at"] > first["error"]["written_at"]
    assert again[None]["written_at"] == first[None]["written_at"]
    assert main([*argv, "--no-progress", "--retry", "nan"]) == 1
    assert {x.get("inject"): x for x in _rows(out)}[None]["written_at"] > first[None]["written_at"]


@pytest.mark.slow
def test_two_process_config_runs_under_torchrun(tmp_path, monkeypatch):
    """--nproc-per-config 2: gloo DDP; the row has world_size 2 and tokens/s of both ranks."""
    from bench.sweep.grid import config_id, expand
    from bench.sweep.options import SweepOptions
    from bench.sweep.run import make_spec, run_config

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    row = expand(
        {"n_layer": ["1"], "n_head": ["2"], "batch_size": ["4"], "acc_steps": ["1"]}, "tiny"
    )[0]
    opts = SweepOptions(out_dir=str(tmp_path), minutes_per_config=0.01, nproc_per_config=2)
    x = run_config(make_spec(row, config_id(row), 0, opts), str(tmp_path))
    assert x["status"] == "ok", x["message"]
    assert x["world_size"] == 2 and x["dp"] == 2 and x["global_batch"] == 8
    assert x["tokens_per_s"] == pytest.approx(2 * 4 * 64 / (x["step_ms_median"] / 1e3))
    assert _rows(tmp_path) == [x]


def test_shard_plans_partition_the_cli_grid():
    """--shard i/n on the same flag grid: the planned configs partition the grid exactly."""
    from bench.sweep.grid import config_id, expand
    from bench.sweep.run import SweepOptions, prepare

    lists = {"n_layer": ["1", "2", "3"], "n_embd": ["32", "64"], "batch_size": ["2", "4"]}
    rows = expand({**lists, "n_head": ["2", "3"]}, "tiny")  # n_head 3 rows are invalid
    everything = {config_id(r) for r in rows}
    seen: list[str] = []
    for i in range(3):
        valid, invalid = prepare(
            rows, SweepOptions(out_dir="unused", minutes_per_config=1, shard=(i, 3))
        )
        seen += [c for _, c in valid] + [c for _, c, _ in invalid]
    assert sorted(seen) == sorted(everything) and len(everything) == 24


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--n-layer", "four"], "n_layer: cannot read 'four'"),
        (["--n-embd", "30", "--n-head", "4"], "every config is invalid"),
        (["--grid", "EMPTY"], "the grid is empty"),
        (["--shard", "3/2"], "--shard"),
        (["--depth", "2"], "unrecognized arguments"),
    ],
    ids=["unknown-value", "all-invalid", "empty", "bad-shard", "bad-flag"],
)
def test_bad_grids_exit_2_with_one_line(tmp_path, capsys, argv, msg):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    argv = [str(empty) if a == "EMPTY" else a for a in argv]
    rc = main(
        ["sweep", "--minutes", "0.1", "--preset", "tiny", *argv, "--out", str(tmp_path / "o")]
    )
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and msg in err[0], err


def test_seeds_add_a_seed_dimension_that_changes_the_loss_not_the_config(tmp_path):
    """--seeds K measures K initialisations of each config, so loss noise is measured; the
    default seed keeps the id a config had before seeds existed (old folders still resume)."""
    from bench.sweep import grid

    one = grid.expand({"n_layer": ["1"], "n_head": ["2"]}, "tiny")[0]
    assert "seed" in one and one["seed"] == 0
    import hashlib
    import json as js

    old_keys = [k for k in grid.known_keys() if k != "seed"]  # the key set before seeds
    old = js.dumps({k: one.get(k) for k in old_keys}, sort_keys=True, default=str)
    assert grid.config_id(one) == hashlib.sha256(old.encode()).hexdigest()[:12]
    out = tmp_path / "s"
    argv = ["sweep", "--minutes", "0.01", "--preset", "tiny", "--n-layer", "1", "--n-embd", "32"]
    argv += ["--n-head", "2", "--batch-size", "2", "--seeds", "2", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    rows = results.load_rows(str(out))
    assert sorted(r["seed"] for r in rows) == [0, 1] and len({r["config_id"] for r in rows}) == 2
    assert rows[0]["loss_curve"] != rows[1]["loss_curve"]  # another initialisation
    assert main([*argv, "--seed", "3", "--out", str(tmp_path / "t")]) == 2
