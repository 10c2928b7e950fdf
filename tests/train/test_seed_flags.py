"""The `train` command line: one flag per TrainConfig field (help with its default, readable
metavar), the seed code's flags accepted with their meaning or refused with a reason, llm-baselines
spellings, subcommands, logging, and configs that are derived, never mutated."""

import dataclasses
import json
import os
import re
import sys

import pytest

from model.config import PRESETS
from train.cli import build_parser, main, new_config
from train.cli_flags import REFUSED, normalize
from train.config import SECTIONS, TrainConfig

TINY = ["--preset", "tiny", "--batch-size", "2", "--acc-steps", "1", "--warmup-steps", "1"]
TINY += ["--eval-batches", "1", "--eval-interval", "0", "--no-progress"]


def _cfg(argv):
    ns = vars(build_parser().parse_args(normalize(argv)))
    from train.config import field_index

    return new_config({k: v for k, v in ns.items() if k in field_index()})


def _fails(capsys, argv, needle):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and needle in err, err


def test_every_setting_has_a_flag_with_help_default_and_metavar(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cls in SECTIONS.values():
        for f in dataclasses.fields(cls):
            flag = "--" + f.metadata.get("flag", f.name).replace("_", "-")
            assert flag in out, flag
    flat = " ".join(out.split())
    n_flags = sum(len(dataclasses.fields(c)) for c in SECTIONS.values())
    assert flat.count("(default:") >= n_flags
    metavars = set(re.findall(r"--[a-z0-9-]+ ([A-Z][A-Z_|]*)", out))
    assert metavars and not any("_" in m for m in metavars), metavars  # no G_N_LAYER


def test_seed_spellings_and_aliases():
    cfg = _cfg(["--eval-freq", "7", "--batch_size", "3", "--wsd_fract_decay=0.2"])
    assert cfg.io.eval_interval == 7 and cfg.data.batch_size == 3
    assert cfg.schedule.wsd_fract_decay == 0.2
    assert _cfg(["--eval_interval", "9"]).io.eval_interval == 9
    # seed-style booleans: a bare flag, or an explicit value (`--bias False` means False here)
    assert _cfg(["--bias", "False"]).model.bias is False and _cfg(["--bias"]).model.bias is True
    assert _cfg(["--weight-average"]).averaging.weight_average is True
    c = _cfg(
        ["--model", "base", "--dropout", "0.1", "--multiple-of", "128", "--rmsnorm-eps", "1e-6"]
    )
    assert (c.model.arch, c.model.dropout, c.model.multiple_of) == ("gpt2", 0.1, 128)
    from train.config import model_config

    m = model_config(c.with_(preset="tiny"), 256)
    assert (m.arch, m.dropout, m.multiple_of, m.norm_eps) == ("gpt2", 0.1, 128, 1e-6)
    c = _cfg(["--experiment-name", "exp1", "--results-base-folder", "/tmp/base"])
    assert c.io.out == os.path.join("/tmp/base", "exp1")


@pytest.mark.parametrize("flag", sorted(REFUSED))
def test_refused_seed_flags_say_why(capsys, flag):
    _fails(capsys, TINY + [flag, "x"], f"{flag} is not supported")


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--scheduler", "none"], "--scheduler constant"),
        (["--opt", "sgd"], "sgd is not supported"),
        (["--wa-dtype", "float64"], "float32"),
        (["--opt", "SFAdamW", "--weight-average"], "FusedAdamW"),
        (["--bias", "maybe"], "true or false"),
        (["--dataset", "nope", "--datasets-dir", "/nonexistent"], "train prepare"),
    ],
)
def test_refused_values_say_why(tmp_path, capsys, extra, needle):
    _fails(capsys, TINY + ["--iterations", "2", "--out", str(tmp_path / "r")] + extra, needle)


def test_schedule_free_adamw_and_base_model_train(tmp_path, monkeypatch, capsys):
    for extra, name in (
        (["--opt", "SFAdamW", "--beta1", "0.95"], "sf"),
        (["--model", "base"], "b"),
    ):
        out = tmp_path / name
        assert main(TINY + ["--iterations", "3", "--out", str(out)] + extra) == 0
        assert json.load(open(out / "summary.json"))["val_loss"] > 0
    monkeypatch.setitem(sys.modules, "schedulefree", None)  # not installed
    _fails(capsys, TINY + ["--opt", "SFAdamW", "--out", str(tmp_path / "x")], "pip install")


def test_prepare_and_sample_subcommands_and_dataset_names(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--help"])
    assert e.value.code == 0 and "train prepare" in capsys.readouterr().out
    text = tmp_path / "a.txt"
    text.write_text("hello world, a small corpus for a tiny model. " * 400)
    data = tmp_path / "datasets" / "mini"
    assert main(["prepare", str(text), "--out", str(data), "--val-fraction", "0.1"]) == 0
    out = tmp_path / "r"
    args = ["--dataset", "mini", "--datasets-dir", str(tmp_path / "datasets"), "--out", str(out)]
    assert main(TINY + ["--iterations", "2", "--latest-ckpt-interval", "2"] + args) == 0
    assert json.load(open(out / "config.json"))["config"]["data"]["dataset"] == "mini"
    capsys.readouterr()
    assert main(["sample", str(out), "--max-new-tokens", "4", "--prompt", "he"]) == 0
    assert capsys.readouterr().out.strip()


def test_tensorboard_logging_and_auto_resume(tmp_path):
    out, tb = tmp_path / "r", tmp_path / "tb"
    args = TINY + ["--out", str(out), "--latest-ckpt-interval", "2", "--tensorboard", str(tb)]
    assert main(args + ["--iterations", "2"]) == 0
    assert any("tfevents" in f for _, _, fs in os.walk(tb) for f in fs)
    assert main(args + ["--iterations", "4", "--auto-resume"]) == 0  # continues from latest/
    recs = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2, 3, 4]


def test_configs_are_derived_not_mutated():
    from train.config import resolve_warmup

    cfg = TrainConfig.from_flat({"warmup_tokens": "params", "batch_size": 8, "acc_steps": 1})
    cfg = cfg.with_(preset="tiny", scheduler="constant", iterations=400)
    resolved = resolve_warmup(cfg, PRESETS["tiny"], 1)
    assert cfg.schedule.warmup_tokens == "params" and cfg.schedule.warmup_steps == 300
    assert resolved.schedule.warmup_tokens is None and 0 < resolved.schedule.warmup_steps < 300
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.schedule.iterations = 3
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
