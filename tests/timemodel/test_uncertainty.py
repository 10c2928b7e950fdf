"""Uncertainty reaches the answer (issue 26, item 6): the time model's held-out error and the law's
bootstrap propagated into each predicted loss, ties with #1, what to measure next, and the same
warnings from predict and search for the same config."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from timemodel import honest
from timemodel import uncertainty as unc
from timemodel.cli import main

LAW = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37, "convention": "porian"}
COLS = {"step_s": [0.01, 0.02], "batch_tokens": [512, 512], "law_params": [1e5, 3e5]}


def _prop(law=LAW, sigma=0.0, draws=None, cols=COLS, hours=0.1):
    return unc.propagate(cols, law, hours=hours, sigma_t=sigma, law_params=draws)


def test_no_uncertainty_gives_the_point():
    p = _prop()
    assert np.allclose(p.lo, p.point) and np.allclose(p.hi, p.point)
    step, bt, N = 0.01, 512, 1e5
    D = math.floor(0.1 * 3600 / step) * bt
    assert p.point[0] == pytest.approx(1.8 + 480 / N**0.35 + 2100 / D**0.37)


def test_step_time_error_propagates_as_a_lognormal_power():
    """With L = E + B / D^beta and D ~ 1 / (step x exp(sigma z)): L - E = (point - E) x
    exp(beta sigma z), so the 95% interval is E + (point - E) exp(+-1.96 beta sigma)."""
    law = LAW | {"A": 1e-12}
    sigma = 0.3
    p = _prop(law, sigma=sigma)
    for i in range(2):
        excess = p.point[i] - law["E"]
        lo, hi = (law["E"] + excess * math.exp(s * 1.96 * 0.37 * sigma) for s in (-1, 1))
        # 2000 draws: a tail percentile is good to ~0.5%; a missing beta would be off by 2.7x.
        assert p.lo[i] == pytest.approx(lo, rel=1e-2) and p.hi[i] == pytest.approx(hi, rel=1e-2)


def test_law_draws_are_paired_across_candidates():
    """Draws that move only E shift every candidate alike: wide intervals, yet #2 is never
    below #1, so it is not tied; independent draws would overlap and call it a tie."""
    E = np.random.default_rng(0).normal(1.8, 1.0, 200)
    draws = {k: np.full(200, LAW[k]) for k in ("A", "B", "alpha", "beta")} | {"E": E}
    cols = COLS | {"law_params": [1e5, 1e5]}  # #2: the same model, half the tokens
    p = _prop(draws=draws, cols=cols)
    assert p.hi[0] - p.lo[0] > 0.5 and p.lo[1] < p.hi[0]  # the intervals overlap
    assert p.point[1] > p.point[0] and not p.tied[1] and p.p_beats_first[1] == 0.0


def test_degenerate_refits_are_dropped_not_propagated():
    """A bootstrap refit on a few resampled runs can end in a corner (a critical batch of 1e-308
    tokens): its loss is inf at every candidate, and one such draw made every interval's upper
    end NaN. Such sets are dropped and counted; under 2 left, the law is not propagated."""
    law = LAW | {"b_crit": 300.0}
    rng = np.random.default_rng(1)
    draws = {k: np.full(50, LAW[k]) for k in ("A", "B", "alpha", "beta")}
    draws |= {"E": rng.normal(1.8, 0.05, 50), "b_crit": np.full(50, 300.0)}
    draws["b_crit"][[3, 17]] = 5e-308
    kept, dropped = unc.finite_draws(draws, COLS, law, 0.1)
    assert dropped == 2 and len(kept["E"]) == 48 and np.all(kept["b_crit"] == 300.0)
    p = _prop(law, draws=kept)
    assert np.isfinite(p.lo).all() and np.isfinite(p.hi).all()
    assert (p.lo <= p.point).all() and (p.point <= p.hi).all()
    with np.errstate(all="ignore"):
        bad = _prop(law, draws=draws)  # what the search did before: NaN upper ends
    assert not np.isfinite(bad.hi).all()
    stored = [{k: float(v[i]) for k, v in draws.items()} for i in range(50)]
    kept, src = unc.law_draws_for(law | {"bootstrap": {"draws": stored}}, COLS, 0.1)
    assert len(kept["E"]) == 48 and src.endswith("2 dropped: a non-finite loss at a candidate")
    draws["b_crit"][1:] = 5e-308  # one set left: no spread to propagate
    assert unc.finite_draws(draws, COLS, law, 0.1) == (None, 49)


def test_intervals_cover_the_true_loss_when_the_step_error_is_as_measured():
    """Calibration: true step times off the model by log-normal errors; the held-out MAPE of
    those errors gives sigma; 95% intervals then hold the true loss of ~95% of the configs (the
    law exact here, so the step-time part is what is tested)."""
    rng = np.random.default_rng(3)
    n = 600
    pred = rng.uniform(0.005, 0.05, n)
    true = pred * np.exp(rng.normal(0.0, 0.3, n))
    mape = float(np.mean(np.abs(pred - true) / true) * 100)
    sigma, _ = unc.time_error({"held_out": {"mape": mape}})
    assert sigma == pytest.approx(0.3, rel=0.1)
    cols = {"step_s": pred, "batch_tokens": np.full(n, 512.0), "law_params": np.full(n, 1e5)}
    p = _prop(sigma=sigma, cols=cols)
    truth = _prop(cols=cols | {"step_s": true}).point
    cover = float(np.mean((p.lo <= truth) & (truth <= p.hi)))
    assert 0.92 <= cover <= 0.98, cover
    # Without the step-time error the intervals are points and hold almost none of them.
    assert np.mean(np.isclose(_prop(cols=cols).point, truth)) < 0.05


def test_close_candidates_are_tied_and_far_ones_are_not():
    cols = {"step_s": [0.01, 0.0101, 0.05], "batch_tokens": [512] * 3, "law_params": [1e5] * 3}
    p = _prop(sigma=0.2, cols=cols)
    assert p.tied.tolist() == [True, True, False]
    assert 0.3 < p.p_beats_first[1] < 0.5 and p.p_beats_first[2] < unc.TIE_SHARE


def test_time_error_comes_from_the_nested_cv_headline():
    tm = {"nested_cv": {"families": {honest.CHOSEN: {"mape_mean": 20.0}}}}
    sigma, where = unc.time_error(tm)
    assert sigma == pytest.approx(math.sqrt(math.pi / 2) * 0.2) and "nested-CV" in where
    assert unc.time_error({"held_out": {"mape": 10.0}})[0] == pytest.approx(0.1253, rel=1e-3)
    assert unc.time_error({})[0] == 0.0


def test_seed_noise_and_seeds_to_resolve():
    rows = []
    for d, base in ((32, 3.0), (64, 2.5)):
        for s, eps in enumerate((-0.05, 0.05)):
            rows.append({"n_layer": 1, "n_embd": d, "batch_size": 8, "seed": s,
                         "val_loss": base + eps, "status": "ok"})  # fmt: skip
    df = pd.DataFrame(rows)
    noise = unc.seed_noise_of(df)
    assert noise["configs"] == 2 and noise["sd"] == pytest.approx(math.sqrt(0.005))
    assert unc.seeds_to_resolve(0.05, 0.05) == math.ceil(2 * 2.8**2)  # 16
    assert unc.seeds_to_resolve(0.0, 0.05) is None


def _table(tmp_path, seeds=2):
    """A sweep-like table of byte models whose loss follows LAW (+ seed noise)."""
    rng = np.random.default_rng(1)
    rows = []
    for L in (1, 2, 4):
        for d in (32, 64, 128):
            for steps in (200, 800):
                for s in range(seeds):
                    from model import costs
                    from model.config import ModelConfig

                    cfg = ModelConfig(vocab_size=256, n_layer=L, n_embd=d, n_head=d // 16,
                                      ffn_hidden=3 * d, sequence_length=64)  # fmt: skip
                    N = costs.law_params(cfg, "porian")
                    D = steps * 8 * 64
                    loss = LAW["E"] + LAW["A"] / N**0.35 + LAW["B"] / D**0.37
                    rows.append({"vocab_size": 256, "n_layer": L, "n_embd": d, "n_head": d // 16,
                                 "ffn_hidden": 3 * d, "sequence_length": 64, "batch_size": 8,
                                 "tokens_seen": D, "seed": s, "status": "ok",
                                 "val_loss": loss + rng.normal(0, 0.02)})  # fmt: skip
    path = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_law_draws_recomputed_from_the_sources(tmp_path, capsys):
    """A law without stored draws gets its bootstrap refits recomputed from its source runs, and
    refused when those runs changed since the fit (data_hash)."""
    table = _table(tmp_path)
    law_path = tmp_path / "law.json"
    argv = ["fit-loss", str(table), "--bootstrap", "6", "--cv-seeds", "0", "--max-starts", "20"]
    assert main(argv + ["--out", str(law_path)]) == 0
    capsys.readouterr()
    law = json.loads(law_path.read_text())
    stored = law.get("bootstrap", {}).pop("draws", None)
    draws, why = unc.law_draws(law)
    assert draws is not None and len(draws["E"]) >= 2 and "bootstrap refits" in why
    # The same refits as fit-loss's bootstrap (same resamples, same starts): its CIs come back.
    for k, (lo, hi) in law["ci95"].items():
        got = np.percentile(draws[k], [2.5, 97.5])
        assert got == pytest.approx([lo, hi], rel=1e-9), k
    if stored:  # fit-loss saved them: the recomputed refits are the same parameter sets
        assert draws["alpha"].tolist() == pytest.approx([d["alpha"] for d in stored], rel=1e-9)
    two = [{k: law[k] * f for k in ("E", "A", "B", "alpha", "beta")} for f in (0.9, 1.1)]
    stored, how = unc.law_draws(law | {"bootstrap": {"draws": two}})
    assert "stored" in how and stored["E"].tolist() == [law["E"] * 0.9, law["E"] * 1.1]
    df = pd.read_csv(table)
    df.loc[0, "val_loss"] += 1.0
    df.to_csv(table, index=False)
    draws, why = unc.law_draws(law)
    assert draws is None and "changed since the fit" in why
    assert unc.law_draws(LAW)[0] is None


def _tm(tmp_path, mape=12.0, rep=1.0):
    tm = {
        "intercept": 2e-3,
        "coefficients": {"launches": 5e-6, "flops": 1e-11, "bytes": 2e-10},
        "feature_ranges": {"flops": [1e7, 1e9]},
        "nested_cv": {"families": {honest.CHOSEN: {"mape_mean": mape}}},
        "repeatability": {"mape": rep},
        "dtype": "float32",
        "kernels": "torch",
        "device_name": "Test Device",
        "reference_configs": [
            {
                "vocab_size": 256,
                "sequence_length": 64,
                "tie_embeddings": False,
                "acc_steps": 1,
                "dp": 1,
            }
        ],  # fmt: skip
    }
    (tmp_path / "tm.json").write_text(json.dumps(tm))
    return str(tmp_path / "tm.json")


def test_search_prints_intervals_ties_and_what_to_measure(tmp_path, capsys):
    tm = _tm(tmp_path, mape=30.0, rep=12.0)
    (tmp_path / "law.json").write_text(json.dumps(LAW))
    space = "n_layer=1:3,n_embd=32:128:32,head_dim=16,ffn_mult=3,batch_size=8"
    argv = ["search", "--time-model", tm, "--loss-law", str(tmp_path / "law.json"),
            "--hours", "0.01", "--space", space, "--device-name", "Test Device",
            "--out", str(tmp_path / "s.csv")]  # fmt: skip
    assert main(argv) == 0
    cap = capsys.readouterr()
    df = pd.read_csv(tmp_path / "s.csv")
    assert (df["loss_lo"] <= df["loss"]).all() and (df["loss"] <= df["loss_hi"]).all()
    assert df["tied_with_1"].iloc[0] and "TIED: the top" in cap.out
    assert "sigma 0.376 from the nested-CV MAPE of the fit procedure 30.0%" in cap.out
    # Time error dominates (no law draws) on a machine whose repeats disagree by 12%.
    assert "measure next: the machine: repeats of one config disagree by 12.0%" in cap.out
    assert "parameter uncertainty is not in the intervals" in cap.err


def test_predict_and_search_give_the_same_warnings(tmp_path, capsys):
    """The search's #1 row, given to predict: the same warning lines (the search adds only the
    one about its space's edge)."""
    tm = _tm(tmp_path)
    law = LAW | {"fit_range": {"N": [1e3, 1e4], "D": [1e4, 2e4], "batch_tokens": [512, 512]}}
    (tmp_path / "law.json").write_text(json.dumps(law))
    lp = str(tmp_path / "law.json")
    space = "n_layer=1:2,n_embd=32:64:32,head_dim=16,ffn_mult=3,batch_size=8"
    argv = ["search", "--time-model", tm, "--loss-law", lp, "--hours", "0.01", "--space", space,
            "--top", "1", "--device-name", "Other Device", "--vocab-size", "512",
            "--out", str(tmp_path / "s.csv")]  # fmt: skip
    assert main(argv) == 0
    search_err = set(capsys.readouterr().err.strip().splitlines())
    r = pd.read_csv(tmp_path / "s.csv").iloc[0]
    argv = ["predict", tm, "--n-layer", str(r.n_layer), "--n-embd", str(r.n_embd),
            "--n-head", str(r.n_head), "--ffn-hidden", str(r.ffn_hidden), "--vocab-size", "512",
            "--sequence-length", "64", "--batch-size", str(r.batch_size), "--hours", "0.01",
            "--loss-law", lp, "--device-name", "Other Device"]  # fmt: skip
    assert main(argv) == 0
    cap = capsys.readouterr()
    predict_err = set(cap.err.strip().splitlines())
    edge = {w for w in search_err if "edge of the search space" in w}
    assert predict_err == search_err - edge
    assert len(predict_err) >= 4  # device, the law's range, vocab not fitted, no bootstrap
    assert f"predicted final loss {r.loss:.4f}" in cap.out and "95% interval" in cap.out
    assert "(model fitted on Test Device)" in cap.out


def test_predict_does_not_print_an_unknown_device(tmp_path, capsys):
    tm = json.loads(open(_tm(tmp_path)).read())
    tm.pop("device_name")
    (tmp_path / "tm.json").write_text(json.dumps(tm))
    assert main(["predict", str(tmp_path / "tm.json"), "--preset", "tiny"]) == 0
    assert "fitted on None" not in capsys.readouterr().out
