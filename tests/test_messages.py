"""What a new user reads: misspelt flags, conflicting flags, Ctrl-C, --help, and the notes that a
command will not do what its flags suggest (found by a user trying the README on a fresh clone)."""

from __future__ import annotations

import re

import pytest

from bench.cli import main as bench_main
from train import loop
from train.cli import main as train_main

TINY = ["--preset", "tiny", "--batch-size", "2", "--acc-steps", "1", "--eval-batches", "1"]


def _err(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_a_misspelt_flag_is_named_with_the_nearest_real_one(capsys):
    assert train_main(["--iteratons", "10"]) == 2
    err = _err(capsys)
    assert err.startswith("error: unknown flag --iteratons; did you mean --iterations?"), err
    assert "\n" not in err and "invalid choice" not in err
    assert train_main(["--iter", "3", "--out", "x", "--print-schedule"]) == 0  # abbreviation
    assert train_main(["--zzzz"]) == 2 and "unknown flag --zzzz (see" in _err(capsys)


def test_grid_file_with_grid_flags_names_the_flags(tmp_path, capsys):
    g = tmp_path / "g.json"
    g.write_text('[{"n_layer": 1}]')
    argv = ["sweep", "--minutes", "0.01", "--grid", str(g), "--n-layer", "1,2", "--n-embd", "32"]
    assert bench_main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = _err(capsys)
    assert "--n-layer" in err and "--n-embd" in err and "\n" not in err


def test_ctrl_c_names_the_run_folder(tmp_path, monkeypatch, capsys):
    def interrupted(cfg, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run", interrupted)
    out = tmp_path / "myrun"
    assert train_main([*TINY, "--iterations", "3", "--out", str(out)]) == 130
    err = _err(capsys)
    assert err.endswith(f"continue with train --resume-from {out}"), err
    assert "OUT" not in err.replace(str(out), "")


TM = ["fit", "fit-loss", "predict", "search", "describe", "calibrate", "fit-isoflop"]


@pytest.mark.parametrize(
    "argv",
    [["train", "--help"], ["bench", "sweep", "--help"], ["bench", "kernels", "--help"]]
    + [["timemodel", c, "--help"] for c in TM],
)
def test_help_states_each_default_once_and_no_none(argv, capsys):
    from timemodel.cli import main as timemodel_main

    main = {"train": train_main, "bench": bench_main, "timemodel": timemodel_main}[argv[0]]
    with pytest.raises(SystemExit):
        main(argv[1:])
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert not re.search(r"\(default[^)]*\) \(default", text)
    assert "(default: None)" not in text and "miror_cosine" not in text


def test_flags_of_another_scheduler_are_called_out(tmp_path, capsys):
    argv = [*TINY, "--iterations", "2", "--scheduler", "cos", "--wsd-fract-decay", "0.3"]
    assert train_main([*argv, "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    assert "--wsd-fract-decay applies to --scheduler wsd only" in _err(capsys)


def test_a_big_model_on_a_cpu_is_called_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "CPU_WORK_NOTE", 1.0)  # the tiny model stands in for a big one
    assert train_main([*TINY, "--iterations", "2", "--out", str(tmp_path / "r")]) == 0
    assert "on a CPU will take long; --preset tiny" in _err(capsys)
    from bench.sweep import grid
    from bench.sweep.cli import _note_big_cpu_configs

    _note_big_cpu_configs(grid.expand({"n_layer": ["12"]}))  # ModelConfig's 12 x 768 defaults
    assert "1 of 1 configs have over 50M parameters" in _err(capsys)
    _note_big_cpu_configs(grid.expand({"n_layer": ["2"]}, "tiny"))
    assert _err(capsys) == ""


def test_a_too_small_split_is_named_with_what_to_change(tmp_path, capsys):
    from train.prepare import main as prepare_main

    text = tmp_path / "c.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 400)
    assert prepare_main([str(text), "--out", str(tmp_path / "d"), "--val-fraction", "0.01"]) == 0
    capsys.readouterr()
    argv = [*TINY, "--iterations", "2", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r")]
    assert train_main(argv) == 2
    err = _err(capsys)
    assert "the val split has" in err and "--val-fraction" in err and "-1 sequences" not in err


def test_sampled_text_cannot_drive_the_terminal():
    from train.sample import printable

    assert printable("a\x1b[31mred\x07\n\tb é") == "a\\x1b[31mred\\x07\n\tb é"


def test_train_and_sweep_share_one_cpu_thread_policy_and_print_it(tmp_path, capsys):
    """A sweep's step times carry over to `train` only if both run the same thread count: on a
    CPU both default to one thread (the sweep worker's check is in tests/bench/test_worker.py)."""
    import torch

    torch.set_num_threads(2)
    assert train_main([*TINY, "--iterations", "2", "--out", str(tmp_path / "r")]) == 0
    assert "| threads 1" in _err(capsys) and torch.get_num_threads() == 1
    argv = [*TINY, "--iterations", "2", "--threads", "2", "--out", str(tmp_path / "s")]
    assert train_main(argv) == 0 and "| threads 2" in _err(capsys)
    torch.set_num_threads(1)


def test_the_demo_installs_only_the_package_and_prints_runnable_commands():
    from pathlib import Path

    from examples import demo

    make = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    demo_rule = make.split("\ndemo:")[1].splitlines()[0]
    assert "$(STAMP)" in demo_rule and "STAMP_TEST" not in demo_rule  # not the test extras
    base = make.split("\n$(STAMP): pyproject.toml")[1].split("\n\n")[0]
    assert "install -q -e ." in base and "[test]" not in base
    assert demo.shown("-m kernels.aot") == "python -m kernels.aot"
    assert all(not demo.shown(cmd).startswith("-m") for _, cmd in demo.STEPS)
