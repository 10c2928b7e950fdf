"""timemodel fit-loss (from sweep folders, batch term, fitted ranges), the Chinchilla replication
on the in-repo Epoch CSV, and approach 2 (fit-isoflop) on the in-repo Porian iso-FLOP points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model import costs
from model.config import ModelConfig
from timemodel import isoflop, lawfit, losslaw
from timemodel.cli import main

DATA = Path(__file__).resolve().parents[2] / "timemodel" / "data"
LAW = {"E": 1.5, "A": 30.0, "B": 60.0, "alpha": 0.4, "beta": 0.35, "b_crit": 600.0}


def _sweep_rows(seed: int = 0) -> pd.DataFrame:
    """Rows as a bench sweep writes them: configs, tokens_seen, val_loss from a law with b_crit."""
    rng = np.random.default_rng(seed)
    rows = []
    for L in (1, 2, 4, 8):
        for d in (32, 64, 128, 256):
            for b in (2, 8, 32):
                T = 64
                cfg = ModelConfig(vocab_size=256, n_layer=L, n_embd=d, n_head=4, sequence_length=T)
                N = costs.law_params(cfg, "porian")
                D = float(rng.uniform(3e5, 3e7))
                loss = losslaw.predict_loss(LAW, N, D, b * T) * np.exp(0.003 * rng.normal())
                rows.append(
                    {
                        "n_layer": L,
                        "n_embd": d,
                        "n_head": 4,
                        "vocab_size": 256,
                        "sequence_length": T,
                        "batch_size": b,
                        "tokens_seen": D,
                        "val_loss": loss,
                        "status": "ok",
                    }
                )
    return pd.DataFrame(rows)


def test_fit_loss_reads_several_sweeps_and_fits_the_batch_term(tmp_path, capsys):
    df = _sweep_rows()
    dirs = [tmp_path / "s2min", tmp_path / "s5min"]
    for part, d in zip((df.iloc[::2], df.iloc[1::2]), dirs):
        d.mkdir()
        part.to_csv(d / "results.csv", index=False)
    out = tmp_path / "law.json"
    assert main(["fit-loss", *map(str, dirs), "--out", str(out), "--max-starts", "5"]) == 0
    law = json.loads(out.read_text())
    assert law["n"] == len(df) and law["convention"] == "porian"
    assert law["alpha"] == pytest.approx(LAW["alpha"], abs=0.03)
    assert law["b_crit"] == pytest.approx(LAW["b_crit"], rel=0.35)
    N = [
        costs.law_params(
            ModelConfig(
                vocab_size=256, n_layer=r.n_layer, n_embd=r.n_embd, n_head=4, sequence_length=64
            ),
            "porian",
        )
        for r in df.itertuples()
    ]
    assert law["fit_range"]["N"] == [min(N), max(N)]
    assert law["fit_range"]["D"] == [df.tokens_seen.min(), df.tokens_seen.max()]
    assert law["fit_range"]["batch_tokens"] == [128.0, 2048.0]
    assert "b_crit" in capsys.readouterr().out


def test_no_batch_variation_means_no_batch_term():
    df = _sweep_rows()
    df = df[df.batch_size == 8]
    N, D, L, b, _ = lawfit.sweep_runs(df, convention="kaplan", loss_col="val_loss", what="t")
    law = lawfit.fit_law(N, D, L, b, max_starts=3)
    assert law["b_crit"] is None and law["batch_term"].startswith("none")


def test_predict_warns_once_outside_the_law_range(tmp_path, capsys):
    tm = {"intercept": 1e-3, "coefficients": {"flops": 1e-11}, "device_name": None}
    law = dict(LAW, convention="porian", fit_range={"N": [1e4, 1e6], "D": [1e5, 1e8]})
    (tmp_path / "tm.json").write_text(json.dumps(tm))
    (tmp_path / "law.json").write_text(json.dumps(law))
    base = [
        "predict",
        str(tmp_path / "tm.json"),
        "--loss-law",
        str(tmp_path / "law.json"),
        "--batch-size",
        "4",
    ]
    assert main(base + ["--preset", "tiny", "--hours", "0.001"]) == 0
    assert capsys.readouterr().err == ""
    assert main(base + ["--preset", "124M", "--hours", "1"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "outside its fitted range" in err[0] and "N" in err[0]


def test_replicate_chinchilla_reads_the_in_repo_csv(tmp_path, capsys):
    """Epoch's exact replication (Besiroglu et al. 2024) on the CSV copied into timemodel/data."""
    out = tmp_path / "chinchilla.json"
    assert main(["replicate-chinchilla", "--out", str(out), "--max-starts", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("REPLICATION of a published fit")
    law = json.loads(out.read_text())
    assert law["n"] == 240 and "replication" in law["kind"]
    assert law["E"] == pytest.approx(1.817, abs=0.03)
    assert law["alpha"] == pytest.approx(0.3473, abs=0.02)
    assert law["beta"] == pytest.approx(0.3672, abs=0.02)
    assert law["A"] == pytest.approx(477.8, rel=0.1) and law["B"] == pytest.approx(2143.9, rel=0.1)
    assert law["fit_range"]["N"][0] > 1e7  # predict/search warn for CPU-sized models


def _porian(config: str) -> pd.DataFrame:
    df = pd.read_csv(DATA / "porian" / "isoflop_points.csv")
    return df[df["config"] == config]


def test_isoflop_porian_tuned_refinedweb_exponent():
    """Setting: RefinedWeb, tuned hyperparameters, short warmup, constant LR, N with the head, val
    loss (`rw/tuned/short/const/standard/val`). Porian et al. 2024 (arXiv:2406.19146) fit
    a = 0.497 (95% CI 0.491-0.505) for N* ~ C^a on it; approach 2 must land within +-0.03."""
    g = _porian("rw/tuned/short/const/standard/val")
    res = isoflop.fit_isoflop(g["flops"], g["n"], g["t"], g["loss"], bootstrap=50)
    assert res["kept"] == 12
    assert res["a"] == pytest.approx(0.497, abs=0.03)
    assert res["a"] + res["b"] == pytest.approx(1.0, abs=0.05)  # C ~ 6ND: a + b ~ 1
    lo, hi = res["a_ci95"]
    assert lo < res["a"] < hi
    pairs = pd.read_csv(DATA / "porian" / "isoflop_optimal_pairs.csv")
    pairs = pairs[pairs["config"] == "rw/tuned/short/const/standard/val"].set_index("flops")
    for r in res["groups"]:  # each budget's N* within a factor 1.5 of the paper's optimum
        assert r["N_opt"] / pairs.loc[r["C"], "n"] == pytest.approx(1.0, abs=0.5)


def test_fit_isoflop_cli_writes_json_and_plot(tmp_path, capsys):
    out, png = tmp_path / "iso.json", tmp_path / "iso.png"
    argv = [
        "fit-isoflop",
        str(DATA / "porian" / "isoflop_points.csv"),
        "--group-col",
        "flops",
        "--params-col",
        "n",
        "--tokens-col",
        "t",
        "--loss-col",
        "loss",
        "--where",
        "config=owt2/tuned/short/const/standard/val",
        "--bootstrap",
        "20",
        "--out",
        str(out),
        "--plot",
        str(png),
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["a"] == pytest.approx(0.518, abs=0.03)  # OpenWebText2, tuned: the paper's 0.518
    assert "N* = " in capsys.readouterr().out and png.stat().st_size > 10_000


def test_fit_isoflop_porian_by_name_from_an_empty_folder(tmp_path, capsys, monkeypatch):
    """`fit-isoflop porian` needs no column flags and fits the paper's tuned RefinedWeb setting."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit-isoflop", "porian", "--bootstrap", "0", "--out", "iso.json"]) == 0
    res = json.loads((tmp_path / "iso.json").read_text())
    text = capsys.readouterr().out
    assert "rw/tuned/short/const/standard/val" in text and "report a = 0.497" in text
    assert res["a"] == pytest.approx(0.497, abs=0.03) and res["kept"] == 12


def test_parabola_vertex_edge_and_downward_groups_are_dropped():
    x = np.log(np.array([1e6, 2e6, 4e6, 8e6]))
    assert isoflop.vertex(x, (x - np.log(3e6)) ** 2) is not None
    assert isoflop.vertex(x, (x - np.log(1e8)) ** 2) is None  # minimum beyond the measured range
    assert isoflop.vertex(x, -((x - np.log(3e6)) ** 2)) is None
