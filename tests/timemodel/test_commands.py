"""A search row's printed `train` and `bench sweep` commands build exactly the ModelConfig the
search scored (issue 26, item 4), parsed by train's and bench's own parsers; and everything not in
--space comes from what the models were fitted on, or is refused (item 5)."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pandas as pd
import pytest

from core import UserError
from model import costs
from timemodel import commands, fitted
from timemodel.cli import main

TM = {
    "features": ["launches", "flops", "bytes"],
    "intercept": 2e-3,
    "coefficients": {"launches": 5e-6, "flops": 1e-11, "bytes": 2e-10},
    "feature_ranges": {"launches": [10, 1e5], "flops": [1e7, 1e11], "bytes": [1e6, 1e10]},
    "dtype": "float32",
    "kernels": "torch",
}
LAW = {"E": 1.8, "A": 480.0, "B": 2100.0, "alpha": 0.35, "beta": 0.37, "convention": "porian"}
# What a sweep of tied-embedding byte models at T 32 records (non-default rounding and eps too).
REF = {"vocab_size": 256, "sequence_length": 32, "tie_embeddings": True, "n_layer": 2,
       "n_embd": 64, "n_head": 4, "batch_size": 8, "acc_steps": 2, "dp": 1, "arch": "llama",
       "bias": False, "dtype": "float32", "kernels": "torch", "multiple_of": 32}  # fmt: skip
SPACE = "n_layer=1:3,n_embd=32:96:32,head_dim=16,ffn_mult=2,3,batch_size=4,8"


def _ctx(**train) -> fitted.Context:
    model = {"vocab_size": 256, "sequence_length": 32, "tie_embeddings": True, "arch": "llama",
             "bias": False, "n_kv_head": None, "acc_steps": 2, "dp": 1,
             "activation_checkpointing": False}  # fmt: skip
    base = {"multiple_of": 32, "norm_eps": 1e-6, "lr": 0.003, "scheduler": "wsd",
            "warmup_steps": 10, "wsd_fract_decay": 0.2, "decay_type": "sqrt", "device": "cpu",
            "dtype": "float32", "kernels": "torch"}  # fmt: skip
    return fitted.Context(model, base | train, {"dtype": "float32", "kernels": "torch"}, [], {})


def _train_config(cmd: str):
    """train's TrainConfig and ModelConfig from a printed `train ...` command."""
    from train.cli import build_parser, new_config
    from train.cli_flags import normalize
    from train.config import field_index, model_config

    argv = shlex.split(cmd)
    assert argv[0] == "train"
    ns = build_parser().parse_args(normalize(argv[1:]))
    cfg = new_config({k: v for k, v in vars(ns).items() if k in field_index()})
    return cfg, model_config(cfg, 256, "torch")


def _sweep_configs(cmd: str):
    """bench sweep's (TrainConfig, ModelConfig) of every grid row of a printed command."""
    from bench.cli import build_parser
    from bench.sweep.cli import _train_flags, grid_rows
    from bench.sweep.options import base_train_config
    from train.config import model_config

    argv = shlex.split(cmd)
    assert argv[:2] == ["bench", "sweep"]
    a = build_parser().parse_args(argv[1:])
    base = base_train_config(_train_flags(a))
    out = []
    for row in grid_rows(a):
        cfg = base.with_(**{k: v for k, v in row.items() if k != "inject"})
        out.append((cfg, model_config(cfg, 256, "torch"), a))
    return out


@pytest.mark.parametrize("row", [
    {"n_layer": 3, "n_embd": 96, "n_head": 6, "ffn_hidden": 264, "batch_size": 8},
    {"n_layer": 1, "n_embd": 32, "n_head": 2, "ffn_hidden": 88, "batch_size": 4},
], ids=["L3d96", "L1d32"])  # fmt: skip
def test_train_and_sweep_commands_build_the_scored_config(row):
    ctx = _ctx()
    scored = commands.model_config(row, ctx)
    cfg, built = _train_config(commands.train_command(row, ctx, 0.5, seed=3, out="/tmp/x"))
    assert built == scored
    assert (cfg.data.batch_size, cfg.data.acc_steps, cfg.runtime.seed) == (row["batch_size"], 2, 3)
    assert (cfg.optim_lr if hasattr(cfg, "optim_lr") else cfg.to_flat()["lr"]) == 0.003
    flat = cfg.to_flat()
    assert (flat["minutes"], flat["scheduler"], flat["decay_type"]) == (0.5, "wsd", "sqrt")
    sweeps = _sweep_configs(commands.sweep_command(row, ctx, 0.5, seeds=2, out="/tmp/s"))
    assert [c.runtime.seed for c, _, _ in sweeps] == [0, 1]
    for c, m, a in sweeps:
        assert m == scored and a.minutes == 0.5
        assert (c.data.batch_size, c.data.acc_steps) == (row["batch_size"], 2)
        assert c.to_flat()["lr"] == 0.003 and c.to_flat()["wsd_fract_decay"] == 0.2


def test_every_modelconfig_field_reaches_train(monkeypatch):
    """A non-default value of every field the commands carry survives train's parser; a field
    dropped from the command would fall back to train's base and fail this."""
    ctx = _ctx(norm_eps=3e-6, rope_theta=5e5, init_std=0.01, dropout=0.1, multiple_of=64)
    ctx.model |= {"arch": "gpt2", "bias": True, "n_kv_head": 2, "tie_embeddings": False}
    row = {"n_layer": 2, "n_embd": 64, "n_head": 4, "ffn_hidden": 100, "batch_size": 2}
    scored = commands.model_config(row, ctx)
    _, built = _train_config(commands.train_command(row, ctx, 1.0, out="o"))
    assert built == scored and built.to_dict() == scored.to_dict()
    ((_, swept, _),) = _sweep_configs(commands.sweep_command(row, ctx, 1.0, out="o"))
    assert swept == scored


def _write(tmp_path, tm=TM, law=LAW):
    (tmp_path / "tm.json").write_text(json.dumps(tm))
    (tmp_path / "law.json").write_text(json.dumps(law))
    return str(tmp_path / "tm.json"), str(tmp_path / "law.json")


def test_search_rows_commands_train_what_was_scored(tmp_path, capsys):
    """End to end: the settings the time model records (tied, T 32, acc_steps 2, multiple_of 32)
    reach the scored features and the printed commands; train's ModelConfig of each row's command
    gives the step time and the loss the search printed for it."""
    tm, law = _write(tmp_path, tm=TM | {"reference_configs": [REF]})
    csv = tmp_path / "s.csv"
    argv = ["search", "--time-model", tm, "--loss-law", law, "--hours", "0.02", "--space", SPACE]
    assert main(argv + ["--top", "6", "--out", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "vocab 256, T 32, tied embeddings, acc_steps 2" in out
    df = pd.read_csv(csv)
    assert len(df) == 6 and out.count("\n   1 train ") == 1 and "bench sweep " in out
    for r in df.itertuples():
        cfg, mc = _train_config(r.train_cmd)
        assert mc.tie_embeddings and mc.multiple_of == 32 and mc.sequence_length == 32
        f = costs.step_features(mc, cfg.data.batch_size, acc_steps=cfg.data.acc_steps)
        step = TM["intercept"] + sum(c * f[k] for k, c in TM["coefficients"].items())
        assert r.step_s == pytest.approx(step, rel=1e-9)
        tokens = np.floor(0.02 * 3600 / step) * cfg.data.batch_size * 2 * 32
        N = costs.law_params(mc, "porian")
        assert r.loss == pytest.approx(LAW["E"] + LAW["A"] / N**0.35 + LAW["B"] / tokens**0.37)
        ((_, swept, _),) = _sweep_configs(r.sweep_cmd)
        assert swept == mc


def test_unrecorded_settings_are_refused_not_defaulted(tmp_path, capsys):
    tm, law = _write(tmp_path)  # neither model records vocab, T or tied embeddings
    argv = ["search", "--time-model", tm, "--loss-law", law, "--hours", "0.02", "--space", SPACE]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "give --vocab-size" in err
    ok = argv + ["--vocab-size", "256", "--sequence-length", "32", "--tie-embeddings", "false"]
    assert main(ok) == 0


def test_a_custom_space_keeps_the_fitted_vocab_and_length(tmp_path, capsys):
    """The issue's case: a custom --space switched to vocab 50304 and T 512 silently."""
    tm, law = _write(tmp_path, tm=TM | {"reference_configs": [REF, REF | {"n_layer": 4}]})
    argv = ["search", "--time-model", tm, "--loss-law", law, "--hours", "0.02", "--space", SPACE]
    assert main(argv + ["--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "vocab 256, T 32" in out and "--vocab-size 256 --sequence-length 32" in out
    assert "50304" not in out
    # A value the models never saw is used as asked, with a warning that it extrapolates.
    assert main(argv + ["--top", "2", "--sequence-length", "128"]) == 0
    cap = capsys.readouterr()
    assert "--sequence-length 128 is not what the models were fitted on (32)" in cap.err


def test_several_fitted_values_must_be_chosen():
    tm = TM | {"reference_configs": [REF, REF | {"sequence_length": 64}]}
    with pytest.raises(UserError, match="several sequence_length values .*--sequence-length"):
        fitted.resolve(tm, None)
    assert fitted.resolve(tm, None, {"sequence_length": 64}).model["sequence_length"] == 64
    with pytest.raises(UserError, match="several acc_steps values"):
        fitted.resolve(TM | {"reference_configs": [REF, REF | {"acc_steps": 1}]}, None)


def test_training_settings_come_from_the_source_sweep(tmp_path):
    """The commands train with the fitted runs' schedule and LR (read from the sweep the models
    name in `sources`); a varying LR goes in at its most common value, with a note."""
    sched = {"scheduler": "wsd", "warmup_steps": 7, "decay_type": "linear", "wsd_fract_decay": 0.3}
    rows = [REF | sched | {"lr": lr, "status": "ok"} for lr in (1e-3, 3e-3, 3e-3)]
    pd.DataFrame(rows).to_csv(tmp_path / "sweep.csv", index=False)
    ctx = fitted.resolve(TM | {"sources": [str(tmp_path / "sweep.csv")]}, None)
    assert ctx.model["sequence_length"] == 32 and ctx.model["tie_embeddings"] is True
    assert ctx.train["lr"] == 0.003 and ctx.train["warmup_steps"] == 7
    assert any("several lr values" in n for n in ctx.command_notes)
    row = {"n_layer": 1, "n_embd": 32, "n_head": 2, "ffn_hidden": 96, "batch_size": 4}
    cfg, _ = _train_config(commands.train_command(row, ctx, 0.5, out="o"))
    flat = cfg.to_flat()
    assert (flat["lr"], flat["warmup_steps"], flat["decay_type"], flat["wsd_fract_decay"]) == (
        0.003, 7, "linear", 0.3)  # fmt: skip
    gone = fitted.resolve(TM | {"sources": [str(tmp_path / "nope")], "reference_configs": [REF]},
                          None)  # fmt: skip
    assert gone.train["scheduler"] == "constant" and any("gone" in n for n in gone.command_notes)
    assert gone.notes == []


def test_predict_names_what_the_models_did_not_see(tmp_path, capsys):
    """predict takes any config: settings the fitted runs never had are warnings, not refusals
    (several fitted values included)."""
    tm = TM | {"reference_configs": [REF, REF | {"n_kv_head": 2}, REF | {"n_kv_head": 1}]}
    tm_path, _ = _write(tmp_path, tm=tm)
    argv = ["predict", tm_path, "--n-layer", "2", "--n-embd", "64", "--n-head", "4",
            "--vocab-size", "256", "--sequence-length", "32", "--batch-size", "8"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "acc_steps 1 is not what the models were fitted on (2)" in err
    assert "--tie-embeddings False is not what the models were fitted on (True)" in err
