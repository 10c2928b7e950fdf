"""timemodel predict / search / describe: numbers from costs.step_features + the fit, ranking,
the batch term, head dedupe, edge warnings, the candidate cap."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from model import costs
from model.config import ModelConfig, get_preset
from timemodel import search as tsearch
from timemodel.cli import main

LAW = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37, "convention": "porian"}
TM = {
    "features": ["launches", "flops", "bytes"],
    "intercept": 2e-3,
    "coefficients": {"launches": 5e-6, "flops": 1e-11, "bytes": 2e-10},
    "feature_ranges": {"launches": [10, 1e5], "flops": [1e7, 1e11], "bytes": [1e6, 1e10]},
    "device_name": "Test Device 9000",
    "dtype": "float32",
    "kernels": "torch",
}
DEV = ["--device-name", "Test Device 9000"]
SPACE = "n_layer=1:4,n_embd=16:96:16,n_head=2,4,ffn_mult=2,4,batch_size=4,16,64"


def _write(tmp_path, law=LAW, tm=TM):
    (tmp_path / "tm.json").write_text(json.dumps(tm))
    (tmp_path / "law.json").write_text(json.dumps(law))
    return str(tmp_path / "tm.json"), str(tmp_path / "law.json")


def _step(cfg, B, **kw):
    f = costs.step_features(cfg, B, **kw)
    return TM["intercept"] + sum(c * f[k] for k, c in TM["coefficients"].items())


def _search_argv(tm: str, law: str, csv, top: int) -> list[str]:
    """`timemodel search` over SPACE for 0.05 h (vocab 256, T 32), the top rows into csv."""
    flags = f"--hours 0.05 --vocab-size 256 --sequence-length 32 --tie-embeddings 0 --top {top}"
    flags = flags.split()
    return ["search", "--time-model", tm, "--loss-law", law, "--space", SPACE, *flags, *DEV] + [
        "--out",
        str(csv),
    ]


def test_predict_matches_step_features_and_law(tmp_path, capsys):
    tm, law = _write(tmp_path)
    argv = [
        "predict",
        tm,
        "--preset",
        "tiny",
        "--batch-size",
        "8",
        "--acc-steps",
        "2",
        "--dp",
        "2",
        "--hours",
        "0.5",
        "--loss-law",
        law,
        *DEV,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cfg = get_preset("tiny")
    step = _step(cfg, 8, acc_steps=2, dp=2)
    assert f"step time {step * 1e3:.3f} ms" in out
    steps = int(0.5 * 3600 / step)
    tokens = steps * 8 * 2 * 2 * cfg.sequence_length
    assert f"{steps} steps" in out
    N = costs.law_params(cfg, "porian")
    loss = LAW["E"] + LAW["A"] / N**0.35 + LAW["B"] / tokens**0.37
    assert f"predicted final loss {loss:.4f}" in out


def test_predict_device_and_extrapolation_warn_once(tmp_path, capsys):
    tm, _ = _write(tmp_path)
    assert main(["predict", tm, "--preset", "360M", "--device-name", "Another GPU"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("warning: ") for ln in lines)
    assert "Test Device 9000" in lines[0] and "outside the time model's fitted range" in lines[1]


def test_describe_roofline_uses_peak_flops(capsys):
    assert main(["describe", "--preset", "124M", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    f = costs.step_features(get_preset("124M"), 16, dtype="bfloat16")
    peak = costs.peak_flops("H100", "bfloat16")
    floor = max(f["flops"] / peak, f["bytes"] / 3.35e12)
    assert (
        f"= {floor * 1e3:.4g} ms/step" in out
        and f"total {costs.num_params(get_preset('124M')):,}" in out
    )


def test_candidates_exclude_invalid():
    space = tsearch.parse_space("n_layer=1,2,n_embd=24:48:8,n_head=3,4,ffn_hidden=64,batch_size=2")
    cand = tsearch.candidates(space)
    assert tsearch.space_size(space) == 2 * 4 * 2
    ok = {(d, h) for d in (24, 32, 40, 48) for h in (3, 4) if d % h == 0 and (d // h) % 2 == 0}
    assert set(zip(cand["n_embd"].astype(int), cand["n_head"].astype(int))) == ok


def test_space_size_is_checked_before_expanding():
    t = "n_layer=1:1e9,n_embd=64,n_head=2,ffn_mult=2,batch_size=2"
    with pytest.raises(ValueError, match="max-candidates"):
        tsearch.parse_space(t)
    big = t.replace("1e9", "1e5")
    assert tsearch.space_size(tsearch.parse_space(big, max_candidates=10**5)) == 10**5
    assert 9e5 <= tsearch.space_size(tsearch.parse_space("default")) <= 1.2e6


def test_search_scores_rank_and_dedupe_heads(tmp_path, capsys):
    tm, law = _write(tmp_path)
    csv = tmp_path / "top.csv"
    argv = _search_argv(tm, law, csv, 50) + ["--plot", str(tmp_path / "f.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    df = pd.read_csv(csv)
    assert np.all(np.diff(df["loss"]) >= 0) and "differ only in n_head collapsed" in out
    assert not df.duplicated(["n_layer", "n_embd", "ffn_hidden", "batch_size"]).any()
    r = df.iloc[0]
    cfg = ModelConfig(
        vocab_size=256,
        n_layer=int(r.n_layer),
        n_embd=int(r.n_embd),
        n_head=int(r.n_head),
        ffn_hidden=int(r.ffn_hidden),
        sequence_length=32,
    )
    step = _step(cfg, int(r.batch_size))
    tokens = np.floor(0.05 * 3600 / step) * r.batch_size * 32
    assert r.step_s == pytest.approx(step, rel=1e-9) and r.tokens == pytest.approx(tokens)
    N = costs.law_params(cfg, "porian")
    assert r.loss == pytest.approx(LAW["E"] + LAW["A"] / N**0.35 + LAW["B"] / tokens**0.37)
    assert main(argv + ["--keep-heads"]) == 0
    assert pd.read_csv(csv).duplicated(["n_layer", "n_embd", "ffn_hidden", "batch_size"]).any()


def _best_batch(tmp_path, law, capsys) -> tuple[int, str]:
    tm, lawp = _write(tmp_path, law=law)
    csv = tmp_path / "b.csv"
    argv = _search_argv(tm, lawp, csv, 1)
    assert main(argv) == 0
    return int(pd.read_csv(csv)["batch_size"][0]), capsys.readouterr().err


def test_batch_term_and_cap_change_the_pick(tmp_path, capsys):
    free, err = _best_batch(tmp_path, LAW, capsys)
    assert free == 64 and "no batch term" in err and "edge of the search space" in err
    penalised, _ = _best_batch(tmp_path, LAW | {"b_crit": 64.0}, capsys)
    assert penalised < free
    capped, _ = _best_batch(tmp_path, LAW | {"fit_range": {"batch_tokens": [128, 512]}}, capsys)
    assert capped == 16  # 16 sequences x 32 tokens = the largest measured 512 tokens per step
