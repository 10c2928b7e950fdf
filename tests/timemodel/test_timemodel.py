"""Tests for timemodel fit / fit-loss: coefficient recovery, JSON round trip, CLI errors, no torch import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from timemodel import fit as tfit
from timemodel import losslaw
from timemodel.cli import main


def _synthetic_times(n: int = 60, noise: float = 0.02, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "params": rng.uniform(1e6, 5e8, n),
            "flops_per_step": rng.uniform(1e12, 1e15, n),
            "memory_traffic": rng.uniform(1e9, 5e11, n),
        }
    )
    true = {"c0": 0.01, "params": 2e-10, "flops_per_step": 1.5e-15, "memory_traffic": 4e-12}
    t = true["c0"] + sum(true[f] * df[f] for f in tfit.FEATURES)
    df["step_ms_median"] = t * (1 + noise * rng.standard_normal(n)) * 1e3
    df["status"] = "ok"
    return df, true


def test_linear_law_recovered_within_5pct():
    df, true = _synthetic_times(n=400)
    res = tfit.fit_step_time(df, list(tfit.FEATURES), folds=5)
    for f in ("flops_per_step", "memory_traffic"):
        assert res["coefficients"][f] == pytest.approx(true[f], rel=0.05)
    assert res["cv"]["params+flops_per_step+memory_traffic"]["r2"] > 0.95
    assert all(v >= 0 for v in res["coefficients"].values())


def test_chinchilla_synthetic_recovered():
    rng = np.random.default_rng(1)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 150))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 150))
    law = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37}
    L = losslaw.predict_loss(law, N, D) * np.exp(0.005 * rng.standard_normal(150))
    got = losslaw.fit_chinchilla(N, D, L, max_starts=3)
    assert got["E"] == pytest.approx(1.8, abs=0.03)
    assert got["alpha"] == pytest.approx(0.35, abs=0.02)
    assert got["beta"] == pytest.approx(0.37, abs=0.02)
    opt = losslaw.compute_optimal(got, 5.88e23)
    assert 6 * opt["N_opt"] * opt["D_opt"] == pytest.approx(5.88e23, rel=1e-9)


def test_fit_cli_json_round_trip(tmp_path):
    df, _ = _synthetic_times()
    df.loc[0, "status"] = "oom"
    csv = tmp_path / "r.csv"
    df.to_csv(csv, index=False)
    out = tmp_path / "tm.json"
    assert main(["fit", str(csv), "--out", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    tm = json.loads(out.read_text())
    assert tm["n_rows"] == len(df) - 1
    assert len(tm["cv"]) == 7 and len(tm["data_hash"]) == 64
    row = df.iloc[1]
    pred = tfit.predict_seconds(tm, {f: row[f] for f in tm["features"]})
    assert pred == pytest.approx(row["step_ms_median"] / 1e3, rel=0.1)
    assert (tmp_path / "p.png").stat().st_size > 0


@pytest.mark.parametrize("case", ["missing_col", "too_few", "nonpositive", "unreadable"])
def test_cli_bad_input(tmp_path, capsys, case):
    df, _ = _synthetic_times(n=20)
    path = tmp_path / "r.csv"
    if case == "missing_col":
        df = df.drop(columns=["memory_traffic"])
    elif case == "too_few":
        df = df.iloc[:3]
    elif case == "nonpositive":
        df.loc[2, "step_ms_median"] = -1.0
    df.to_csv(path, index=False)
    if case == "unreadable":
        path = tmp_path / "r.xyz"
        path.write_text("junk")
    assert main(["fit", str(path), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_no_torch_import():
    code = "import sys, timemodel.cli, timemodel.fit, timemodel.losslaw, timemodel.io; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_epoch_replication(tmp_path, capsys):
    """Epoch's exact replication on the digitised Chinchilla points (spec/seeds.md §4.2)."""
    out = tmp_path / "law.json"
    rc = main(
        [
            "fit-loss",
            "/work/shared/data/chinchilla/epoch_svg_extracted_data.csv",
            "--out",
            str(out),
            "--params-col",
            "Model Size",
            "--tokens-from-flops",
            "--drop-highest",
            "5",
            "--max-starts",
            "2",
        ]
    )
    assert rc == 0
    law = json.loads(out.read_text())
    assert law["n"] == 240
    assert law["E"] == pytest.approx(1.817, abs=0.03)
    assert law["alpha"] == pytest.approx(0.3473, abs=0.02)
    assert law["beta"] == pytest.approx(0.3672, abs=0.02)
    assert law["A"] == pytest.approx(477.8, rel=0.1) and law["B"] == pytest.approx(2143.9, rel=0.1)
