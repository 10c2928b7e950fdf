"""Run folders and resume safety: runs never mix, resume writes where the user points (never where a
checkpoint says), metrics hold every step exactly once, finished runs stay finished, and a WSD run
keeps the checkpoint its cooldowns branch from."""

import json
import os

import pytest
import torch

from train.cli import main

TINY = ["--preset", "tiny", "--batch-size", "2", "--acc-steps", "1", "--warmup-steps", "2"]
TINY += ["--eval-batches", "1", "--eval-interval", "0", "--log-interval", "5", "--no-progress"]


def _steps(run_dir):
    recs = [json.loads(x) for x in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [r["step"] for r in recs if r["kind"] == "train"]


def _fails(capsys, argv, needle, after_progress=False):
    """`train ARGV` exits 2 with one `error:` line containing `needle` (and nothing else, unless
    the failure comes `after_progress` lines of a run that had started)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    if after_progress:
        assert "Traceback" not in err and err.count("error:") == 1
        err = err.splitlines()[-1]
    assert err.startswith("error: ") and "\n" not in err and needle in err, err


def test_existing_run_dir_refused_unless_overwrite(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(TINY + ["--iterations", "4", "--out", out]) == 0
    _fails(capsys, TINY + ["--iterations", "4", "--out", out], "--overwrite")
    assert _steps(out) == [1, 2, 3, 4]  # untouched
    assert main(TINY + ["--iterations", "3", "--out", out, "--overwrite"]) == 0
    assert _steps(out) == [1, 2, 3]  # replaced, not appended


def test_resume_in_place_truncates_metrics_and_finished_runs_stay_finished(tmp_path, capsys):
    out = str(tmp_path / "r")
    args = TINY + ["--iterations", "12", "--permanent-ckpt-interval", "6", "--out", out]
    assert main(args + ["--latest-ckpt-interval", "12"]) == 0
    # as if killed after step 9: resume from the step-6 checkpoint inside the same run folder
    assert main(["--resume-from", os.path.join(out, "ckpts", "6")]) == 0
    assert _steps(out) == list(range(1, 13))  # every step exactly once
    before = {f: open(os.path.join(out, f), "rb").read() for f in ("metrics.jsonl", "summary.json")}
    capsys.readouterr()
    assert main(["--resume-from", out]) == 0  # latest = step 12 = --iterations: nothing to do
    assert "already finished" in capsys.readouterr().err
    after = {f: open(os.path.join(out, f), "rb").read() for f in before}
    assert after == before
    _fails(capsys, ["--resume-from", out, "--iterations", "8"], "past --iterations 8")
    assert main(["--resume-from", out, "--iterations", "14"]) == 0  # grows: continues
    assert _steps(out) == list(range(1, 15))


def test_resume_writes_in_the_checkpoints_folder_not_the_stored_out(tmp_path):
    out = str(tmp_path / "orig")
    assert main(TINY + ["--iterations", "6", "--latest-ckpt-interval", "3", "--out", out]) == 0
    # a copy of the step-3 checkpoint whose stored settings point somewhere else entirely
    evil = tmp_path / "evil"
    ck = torch.load(os.path.join(out, "latest", "ckpt.pt"), weights_only=True)
    assert ck["step"] == 6 and ck["config"]["schema_version"] == 3
    ck["step"], ck["data_step"] = 3, 3
    ck["config"]["io"]["out"] = str(evil)
    ck["config"]["io"]["tensorboard"] = str(evil / "tb")
    copy = tmp_path / "copy"
    copy.mkdir()
    torch.save(ck, copy / "ckpt.pt")
    orig_summary = open(os.path.join(out, "summary.json")).read()
    assert main(["--resume-from", str(copy / "ckpt.pt")]) == 0
    assert not evil.exists()
    assert os.path.isfile(copy / "summary.json") and _steps(copy) == [4, 5, 6]
    assert open(os.path.join(out, "summary.json")).read() == orig_summary
    assert main(["--resume-from", str(copy / "ckpt.pt"), "--out", str(tmp_path / "b")]) == 0
    assert _steps(tmp_path / "b") == [4, 5, 6]


def _ckpt(tmp_path):
    out = str(tmp_path / "src")
    assert main(TINY + ["--iterations", "4", "--latest-ckpt-interval", "2", "--out", out]) == 0
    return torch.load(os.path.join(out, "latest", "ckpt.pt"), weights_only=True)


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda c: c.update(config={}), "no training settings"),
        (lambda c: c.update(config=None, args={}), "no training settings"),
        (lambda c: c["config"]["schedule"].pop("scheduler"), "lack scheduler"),
        (lambda c: c["config"]["schedule"].update(iterations="20"), "iterations must be int"),
        (lambda c: c.update(rng={}), "rng"),
        (lambda c: c.update(step=-3), "'step'"),
        (lambda c: c["config"].update(schema_version=99), "schema version 99"),
    ],
)
def test_damaged_checkpoint_contents_are_one_line(tmp_path, capsys, damage, needle):
    ck = _ckpt(tmp_path)
    damage(ck)
    path = tmp_path / "bad" / "ckpt.pt"
    path.parent.mkdir()
    torch.save(ck, path)
    capsys.readouterr()
    for flag in ("--resume-from", "--cooldown-from"):
        _fails(capsys, [flag, str(path)], needle)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--warmup-tokens", "inf"], "warmup tokens"),
        (["--device", "foo"], "device"),
        (["--grad-clip", "nan"], "grad-clip"),
        (["--eval-batches", "0"], "eval-batches"),
        (["--minutes", "inf"], "minutes"),
        (["--scheduler", "cos", "--minutes", "1"], "--minutes needs"),
    ],
)
def test_bad_settings_refused_before_any_work(tmp_path, capsys, extra, needle):
    out = tmp_path / "r"
    _fails(capsys, TINY + ["--iterations", "3", "--out", str(out)] + extra, needle)
    assert not out.exists()  # refused up front: nothing trained, nothing written


def test_output_path_errors_name_the_path(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    _fails(capsys, TINY + ["--iterations", "2", "--out", str(afile)], str(afile))
    # a full disk while writing a checkpoint: one line naming it, no temporary file left
    out = tmp_path / "r"

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    _fails(
        capsys,
        TINY + ["--iterations", "2", "--latest-ckpt-interval", "2", "--out", str(out)],
        os.path.join(str(out), "latest", "ckpt.pt"),
        after_progress=True,
    )
    leftovers = [f for _, _, fs in os.walk(out) for f in fs if ".tmp." in f]
    assert not leftovers
    assert _steps(out) == [1, 2]  # metrics up to the failed checkpoint were kept


def test_wsd_run_keeps_its_branch_checkpoint_for_cooldowns(tmp_path):
    """The README walkthrough: a WSD run, then a different cooldown from its branch point."""
    out = str(tmp_path / "a")
    wsd = ["--scheduler", "wsd", "--iterations", "10", "--wsd-fract-decay", "0.2"]
    assert main(TINY + wsd + ["--out", out]) == 0
    assert sorted(os.listdir(os.path.join(out, "ckpts"))) == ["8"]  # T - int(0.2 T)
    ck = os.path.join(out, "ckpts", "8")
    assert main(["--cooldown-from", ck, "--iterations", "10", "--wsd-fract-decay", "0.2"]) == 0
    branch = os.path.join(out, "cooldown_10_linear_0.2")
    assert _steps(branch) == [9, 10]
    assert main(["--cooldown-from", ck, "--decay-type", "sqrt"]) == 0  # the parent's T and f
    assert _steps(os.path.join(out, "cooldown_10_sqrt_0.2")) == [9, 10]
    assert main(TINY + wsd + ["--out", str(tmp_path / "b"), "--branch-ckpt", "false"]) == 0
    assert not os.path.exists(tmp_path / "b" / "ckpts")


def test_swa_and_ema_together_live_in_the_optimizer_and_resume_exactly(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    avg = ["--weight-average", "--wa-interval", "2", "--wa-horizon", "4"]
    avg += ["--exponential-moving-average", "--ema-interval", "1", "--ema-decay", "0.9"]
    args = TINY + avg + ["--iterations", "8", "--eval-interval", "4"]
    assert main(args + ["--permanent-ckpt-interval", "4", "--out", a]) == 0
    ck = torch.load(os.path.join(a, "ckpts", "4", "ckpt.pt"), weights_only=True)
    kinds = set().union(*(set(s) for s in ck["optimizer"]["state"].values()))
    assert {"swa", "ema"} <= kinds  # both running averages are optimizer state
    assert main(["--resume-from", os.path.join(a, "ckpts", "4"), "--out", b]) == 0
    sa = json.load(open(os.path.join(a, "summary.json")))
    sb = json.load(open(os.path.join(b, "summary.json")))
    for key in ("val_loss", "val_loss_swa", "val_loss_ema"):
        assert sa[key] == sb[key], key
