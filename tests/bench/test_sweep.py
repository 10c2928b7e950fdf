"""End-to-end sweeps with real worker processes on tiny byte-level models (CPU).

Covers the issue's acceptance: a 2x2 sweep at --minutes 0.1 gives 4 ok rows with every
non-GPU column filled; NaN / injected error / per-config timeout / invalid config become rows
while the sweep goes on; SIGKILL mid-sweep then rerun gives every config exactly once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import results
from bench.cli import main
from bench.telemetry import COLUMNS as TELEMETRY

ROOT = Path(__file__).resolve().parents[2]
# Empty by design on a CPU: GPU telemetry/identity, and MFU (peak FLOPs are known for GPUs only).
GPU_ONLY = set(TELEMETRY) | {"gpu_name", "driver", "cuda", "mfu"}
TINY = [
    "--preset",
    "tiny",
    "--n-head",
    "2",
    "--n-kv-head",
    "2",
    "--batch-size",
    "4",
    "--no-progress",
]


def _rows(d) -> list[dict]:
    return results.load_rows(str(d))


def test_2x2_sweep_fills_every_column(tmp_path, capsys):
    out = tmp_path / "sweep"
    rc = main(
        [
            "sweep",
            "--minutes",
            "0.1",
            "--n-layer",
            "1,2",
            "--n-embd",
            "32,64",
            *TINY,
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = _rows(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}, rows
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 4
    for col in df.columns:
        if col in GPU_ONLY or col == "message":
            assert col in GPU_ONLY or (df[col].isna() | (df[col] == "")).all()
            continue
        assert df[col].notna().all(), f"column {col} has blanks"
    for r in rows:
        assert r["steps_timed"] >= 3 and r["step_ms_median"] > 0
        assert r["step_ms_p10"] <= r["step_ms_median"] <= r["step_ms_p90"]
        assert r["tokens_per_s"] == pytest.approx(4 * 64 / (r["step_ms_median"] / 1e3), rel=1e-6)
        assert 0.8 <= r["timed_fraction"] <= 1.05
        assert math.isfinite(r["val_loss"]) and r["loss_end"] < r["loss_start"]
        assert r["params"] > 0 and r["flops_per_step"] > 0 and r["memory_traffic"] > 0
        assert r["device_name"] and r["torch"]
    by = {(r["n_layer"], r["n_embd"]): r for r in rows}
    assert by[(2, 64)]["params"] > by[(1, 32)]["params"]
    assert set(TELEMETRY) <= set(df.columns)
    assert "config_id" in capsys.readouterr().out  # the closing table
    # plot works on the real rows
    assert main(["plot", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 5


def test_failures_become_rows_and_the_sweep_goes_on(tmp_path):
    base = {"n_layer": 1, "n_embd": 32, "n_head": 2, "batch_size": 4}
    grid = [
        {**base, "lr": 1e30},  # absurd lr -> non-finite loss
        {**base, "inject": "error"},
        {**base, "inject": "hang"},
        {**base, "n_embd": 30, "n_head": 4},  # invalid: skipped with its reason
        base,  # still measured after all of the above
    ]
    g = tmp_path / "grid.json"
    g.write_text(json.dumps(grid))
    out = tmp_path / "out"
    rc = main(
        [
            "sweep",
            "--minutes",
            "0.02",
            "--preset",
            "tiny",
            "--grid",
            str(g),
            "--out",
            str(out),
            "--timeout-factor",
            "1",
            "--timeout-grace",
            "30",
            "--no-progress",
        ]
    )
    assert rc == 0
    rows = _rows(out)
    status = {(r.get("inject"), r["lr"], r["n_embd"]): r for r in rows}
    assert len(rows) == 5
    assert status[(None, 1e30, 32)]["status"] == "nan"
    assert "non-finite" in status[(None, 1e30, 32)]["message"]
    assert status[("error", 1e-3, 32)]["status"] == "error"
    assert "injected error" in status[("error", 1e-3, 32)]["message"]
    assert status[("hang", 1e-3, 32)]["status"] == "timeout"
    assert status[(None, 1e-3, 30)]["status"] == "skipped"
    assert "divisible" in status[(None, 1e-3, 30)]["message"]
    assert status[(None, 1e-3, 32)]["status"] == "ok"


def test_sigkill_then_resume_runs_every_config_once(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "sweep",
        "--minutes",
        "0.01",
        "--n-layer",
        "1,2,3",
        "--n-embd",
        "32",
        *TINY,
        "--out",
        str(out),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(_rows(out)) < 1:
            time.sleep(0.1)
        assert len(_rows(out)) == 1, "first config never finished"
        os.kill(p.pid, signal.SIGKILL)  # mid-sweep: the second config is running
        p.wait()
        first = _rows(out)
        assert len(first) == 1
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "already done" in r.stderr
    finally:
        try:  # the killed sweep's orphaned worker, if still alive (our own process group)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    rows = _rows(out)
    ids = [x["config_id"] for x in rows]
    assert len(ids) == 3 and len(set(ids)) == 3
    assert sorted(x["n_layer"] for x in rows) == [1, 2, 3]
    assert {x["status"] for x in rows} == {"ok"}
    # the first row was kept, not re-measured
    assert next(x for x in rows if x["config_id"] == first[0]["config_id"]) == first[0]
    assert len(pd.read_csv(out / "results.csv")) == 3


def test_shard_plans_partition_the_cli_grid():
    """--shard i/n on the same flag grid: the planned configs partition the grid exactly."""
    from bench.grid import config_id, expand
    from bench.sweep import SweepOptions, plan

    rows = expand(
        {
            "n_layer": ["1", "2", "3"],
            "n_embd": ["32", "64"],
            "batch_size": ["2", "4"],
            "n_head": ["2", "3"],
        },
        "tiny",
    )  # n_head 3 rows are invalid -> skipped
    everything = {config_id(r) for r in rows}
    seen: list[str] = []
    for i in range(3):
        runnable, skipped = plan(rows, SweepOptions(out_dir="unused", minutes=1, shard=(i, 3)))
        seen += [c for _, c in runnable] + [c for _, c, _ in skipped]
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
