"""Tests for timemodel predict / search / describe: numbers match model.costs + the fit, ranking, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from model import costs
from model.config import get_preset
from timemodel import search as tsearch
from timemodel.cli import main

LAW = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37, "convention": "porian"}


def _tm(device: str = "Test Device 9000") -> dict:
    return {
        "features": ["params", "flops_per_step", "memory_traffic"],
        "intercept": 2e-3,
        "coefficients": {"params": 1e-9, "flops_per_step": 1e-11, "memory_traffic": 2e-10},
        "feature_ranges": {
            "params": [1e4, 1e7],
            "flops_per_step": [1e7, 1e12],
            "memory_traffic": [1e6, 1e10],
        },
        "device_name": device,
        "dtype": "float32",
        "kernels": "torch",
    }


@pytest.fixture()
def files(tmp_path):
    tm, law = tmp_path / "tm.json", tmp_path / "law.json"
    tm.write_text(json.dumps(_tm()))
    law.write_text(json.dumps(LAW))
    return tm, law


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_predict_matches_costs_and_fit(files, capsys):
    tm, law = files
    rc = main(
        [
            "predict",
            str(tm),
            "--preset",
            "tiny",
            "--batch-size",
            "8",
            "--hours",
            "0.5",
            "--loss-law",
            str(law),
            "--device-name",
            "Test Device 9000",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0 and err == ""  # same device and in range: no warning
    cfg = get_preset("tiny")
    P, F = costs.num_params(cfg), costs.train_flops(cfg, 8)["exact"]
    M = costs.memory_traffic(cfg, 8, dtype="float32", kernels="torch")["total"]
    step = 2e-3 + 1e-9 * P + 1e-11 * F + 2e-10 * M
    assert f"step time {step * 1e3:.3f} ms" in out
    steps = int(0.5 * 3600 / step)
    tokens = steps * 8 * cfg.sequence_length
    assert f"{steps} steps" in out
    pb = costs.param_breakdown(cfg)
    loss = (
        LAW["E"]
        + LAW["A"] / (pb["non_embedding"] + pb["embedding"]) ** 0.35
        + LAW["B"] / tokens**0.37
    )
    assert f"predicted final loss {loss:.4f}" in out


def test_predict_kaplan_convention_and_flags(tmp_path, files, capsys):
    tm, _ = files
    law = tmp_path / "k.json"
    law.write_text(json.dumps(LAW | {"convention": "kaplan"}))
    rc = main(
        [
            "predict",
            str(tm),
            "--n-layer",
            "2",
            "--n-embd",
            "64",
            "--n-head",
            "4",
            "--vocab-size",
            "256",
            "--sequence-length",
            "32",
            "--hours",
            "0.1",
            "--loss-law",
            str(law),
            "--device-name",
            "Test Device 9000",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    line = [ln for ln in out.splitlines() if ln.startswith("predicted final loss")][0]
    cfg = get_preset("tiny").replace(ffn_hidden=None, sequence_length=32)
    assert f"N={costs.param_breakdown(cfg)['non_embedding']:.4g}" in line


def test_device_mismatch_and_extrapolation_warn(files, capsys):
    tm, _ = files
    rc = main(["predict", str(tm), "--preset", "124M", "--device-name", "Another GPU"])
    out, err = capsys.readouterr()
    assert rc == 0 and "step time" in out
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(ln.startswith("warning: ") for ln in lines)
    assert "Test Device 9000" in lines[0] and "Another GPU" in lines[0]
    assert "outside the fitted range" in lines[1]


def test_describe_roofline(capsys):
    assert main(["describe", "--preset", "124M", "--batch-size", "16", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    cfg = get_preset("124M")
    F = costs.train_flops(cfg, 16)["exact"]
    M = costs.memory_traffic(cfg, 16, dtype="bfloat16")["total"]
    floor = max(F / 989e12, M / 3.0e12)
    assert f"= {floor * 1e3:.4g} ms/step" in out
    assert ("memory bandwidth binds" if M / 3.0e12 > F / 989e12 else "compute (FLOPs) binds") in out
    for k in costs.FLOP_KEYS:
        assert f"{k} {costs.flops_per_token(cfg)[k]:.4g}" in out
    assert f"total {costs.num_params(cfg):,}" in out


def test_candidates_exclude_invalid():
    space = tsearch.parse_space("n_layer=1,2,n_embd=24:48:8,n_head=3,4,ffn_hidden=64,batch_size=2")
    cand = tsearch.candidates(space)
    assert tsearch.space_size(space) == 2 * 4 * 2
    # n_embd 24, 32, 40, 48 with 3 or 4 heads: valid only where n_embd % n_head == 0 and the head dim is even.
    ok = {(d, h) for d in (24, 32, 40, 48) for h in (3, 4) if d % h == 0 and (d // h) % 2 == 0}
    got = set(zip(cand["n_embd"].astype(int), cand["n_head"].astype(int)))
    assert got == ok and len(cand["n_layer"]) == 2 * len(ok)


@pytest.mark.parametrize(
    "spec",
    [
        "n_layer=1:3,n_embd=64",
        "n_layer=0:2,n_embd=64,n_head=2,ffn_mult=2,batch_size=2",
        "depth=2,n_embd=64,n_head=2,ffn_mult=2,batch_size=2",
        "n_layer=a:b",
    ],
)
def test_parse_space_rejects(spec):
    with pytest.raises(ValueError):
        tsearch.parse_space(spec)


def test_search_small_ranks_by_loss(files, tmp_path, capsys):
    tm, law = files
    csv, png = tmp_path / "top.csv", tmp_path / "f.png"
    rc = main(
        [
            "search",
            "--time-model",
            str(tm),
            "--loss-law",
            str(law),
            "--hours",
            "0.05",
            "--space",
            "n_layer=1:4,n_embd=16:96:16,n_head=2,3,4,ffn_mult=2,4,batch_size=4,16",
            "--vocab-size",
            "256",
            "--sequence-length",
            "32",
            "--top",
            "500",
            "--max-memory-gb",
            "0.02",
            "--out",
            str(csv),
            "--plot",
            str(png),
            "--device-name",
            "Test Device 9000",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    df = pd.read_csv(csv)
    assert len(df) > 20 and np.all(np.diff(df["loss"]) >= 0)
    assert (df["n_embd"] % df["n_head"] == 0).all() and (
        (df["n_embd"] // df["n_head"]) % 2 == 0
    ).all()
    assert (df["memory_bytes"] <= 0.02e9).all()
    # Recompute a row from scratch: costs -> step time -> tokens -> law.
    r = df.iloc[0]
    c = costs.vectorized(
        256, r.n_layer, r.n_embd, r.n_head, r.n_head, r.ffn_hidden, 32, r.batch_size
    )
    step = 2e-3 + 1e-9 * c["params"] + 1e-11 * c["flops"] + 2e-10 * c["memory_traffic"]
    tokens = np.floor(0.05 * 3600 / step) * r.batch_size * 32
    assert r.step_s == pytest.approx(step, rel=1e-9) and r.tokens == pytest.approx(tokens)
    n_law = c["params"] - 256 * r.n_embd  # porian: untied, so drop wte only
    assert r.loss == pytest.approx(
        LAW["E"] + LAW["A"] / n_law**0.35 + LAW["B"] / tokens**0.37, rel=1e-9
    )
    assert png.stat().st_size > 0 and "rank n_layer" in out


def test_search_small_space_defaults(files, capsys):
    tm, law = files
    assert (
        main(
            [
                "search",
                "--time-model",
                str(tm),
                "--loss-law",
                str(law),
                "--hours",
                "0.01",
                "--space",
                "small",
                "--top",
                "3",
                "--device-name",
                "Test Device 9000",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "4608 grid points" in out and "vocab 256, T 64" in out


def test_default_space_is_1e6():
    assert 9e5 <= tsearch.space_size(tsearch.parse_space("default")) <= 1.2e6


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "{tm}", "--preset", "nope"],
        ["predict", "{tm}", "--n-layer", "2", "--n-embd", "30", "--n-head", "4"],
        ["predict", "{tm}", "--n-layer", "2"],
        ["predict", "{missing}", "--preset", "tiny"],
        ["predict", "{law}", "--preset", "tiny"],
        ["predict", "{tm}", "--preset", "tiny", "--hours", "-1"],
        [
            "search",
            "--time-model",
            "{tm}",
            "--loss-law",
            "{missing}",
            "--hours",
            "1",
            "--space",
            "small",
        ],
        [
            "search",
            "--time-model",
            "{tm}",
            "--loss-law",
            "{law}",
            "--hours",
            "1",
            "--space",
            "n_layer=1",
        ],
        [
            "search",
            "--time-model",
            "{tm}",
            "--loss-law",
            "{law}",
            "--hours",
            "1",
            "--space",
            "small",
            "--max-memory-gb",
            "1e-9",
        ],
        ["describe", "--n-layer", "2", "--n-embd", "64", "--n-head", "8", "--n-kv-head", "3"],
        ["describe", "--preset", "tiny", "--batch-size", "0"],
    ],
)
def test_bad_input_one_error_line(files, tmp_path, capsys, args):
    tm, law = files
    argv = [a.format(tm=tm, law=law, missing=tmp_path / "none.json") for a in args]
    assert main(argv) == 2
    _one_error(capsys)


def test_fit_loss_tokens_from_flops_column(tmp_path, capsys):
    """`--tokens-from-flops COL` (the demo's spelling) names the FLOP column; D = C / 6N."""
    rng = np.random.default_rng(3)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), 80))
    D = np.exp(rng.uniform(np.log(1e8), np.log(1e11), 80))
    L = LAW["E"] + LAW["A"] / N**0.35 + LAW["B"] / D**0.37
    path = tmp_path / "runs.csv"
    pd.DataFrame({"N": N, "C": 6 * N * D, "loss": L}).to_csv(path, index=False)
    out = tmp_path / "law.json"
    assert (
        main(
            [
                "fit-loss",
                str(path),
                "--out",
                str(out),
                "--params-col",
                "N",
                "--tokens-from-flops",
                "C",
                "--max-starts",
                "5",
            ]
        )
        == 0
    )
    law = json.loads(out.read_text())
    assert law["E"] == pytest.approx(1.8, abs=0.01) and law["alpha"] == pytest.approx(
        0.35, abs=0.01
    )
    assert law["starts"] == 5
    assert (
        main(
            [
                "fit-loss",
                str(path),
                "--out",
                str(out),
                "--params-col",
                "N",
                "--tokens-from-flops",
                "X",
            ]
        )
        == 2
    )
    assert "X" in _one_error(capsys)


def test_search_module_no_torch():
    code = "import sys, timemodel.search, timemodel.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
