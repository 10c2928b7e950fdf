"""End-to-end runs through `train.cli.main` (tiny model, embedded corpus): exact resume, cooldown
branches equal to straight WSD runs, the cooldown-targets recipe, averaging evals, outputs, plot."""

import csv
import json
import os

import pytest
import torch

from train.cli import main

TINY = [
    "--preset",
    "tiny",
    "--batch-size",
    "4",
    "--acc-steps",
    "2",
    "--warmup-steps",
    "3",
    "--lr",
    "3e-3",
    "--eval-batches",
    "2",
    "--eval-interval",
    "10",
    "--log-interval",
    "5",
    "--no-progress",
]


def _losses(run_dir):
    out = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as fh:
        for line in fh:
            r = json.loads(line)
            if r["kind"] == "train":
                out[r["step"]] = r["loss"]
    return out


def _state(path):
    return torch.load(os.path.join(path, "ckpt.pt"), weights_only=True)


def _assert_same_state(a, b):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            if torch.is_tensor(v):
                assert torch.equal(v, sb[i][k]), (i, k)


def test_resume_is_bitwise(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = TINY + [
        "--scheduler",
        "cos",
        "--iterations",
        "20",
        "--latest-ckpt-interval",
        "10",
        "--weight-average",
        "--wa-interval",
        "2",
        "--wa-horizon",
        "4",
    ]
    assert main(common + ["--out", a, "--permanent-ckpt-interval", "10"]) == 0
    assert os.path.isfile(os.path.join(a, "ckpts", "10", "ckpt.pt"))
    assert main(["--resume-from", os.path.join(a, "ckpts", "10"), "--out", b]) == 0
    la, lb = _losses(a), _losses(b)
    assert sorted(lb) == list(range(11, 21))
    assert all(la[s] == lb[s] for s in lb)  # bitwise equal losses
    _assert_same_state(_state(os.path.join(a, "latest")), _state(os.path.join(b, "latest")))
    sa = json.load(open(os.path.join(a, "summary.json")))
    sb = json.load(open(os.path.join(b, "summary.json")))
    assert sa["val_loss"] == sb["val_loss"] and sa["val_loss_swa"] == sb["val_loss_swa"]


def test_cooldown_branch_equals_straight_wsd(tmp_path, capsys):
    straight, stable = str(tmp_path / "straight"), str(tmp_path / "stable")
    wsd = ["--iterations", "20", "--wsd-fract-decay", "0.4", "--decay-type", "sqrt"]
    assert (
        main(TINY + ["--scheduler", "wsd", *wsd, "--out", straight, "--latest-ckpt-interval", "20"])
        == 0
    )
    assert (
        main(
            TINY
            + [
                "--scheduler",
                "constant",
                "--iterations",
                "30",
                "--permanent-ckpt-interval",
                "12",
                "--out",
                stable,
            ]
        )
        == 0
    )
    before = sorted(os.listdir(stable))
    ck = os.path.join(stable, "ckpts", "12")
    assert main(["--cooldown-from", ck, *wsd, "--latest-ckpt-interval", "20"]) == 0
    branch = os.path.join(stable, "cooldown_20_sqrt_0.4")
    assert sorted(os.listdir(stable)) == sorted(before + ["cooldown_20_sqrt_0.4"])  # untouched
    ls, lb = _losses(straight), _losses(branch)
    assert sorted(lb) == list(range(13, 21)) and all(ls[s] == lb[s] for s in lb)
    _assert_same_state(
        _state(os.path.join(straight, "latest")), _state(os.path.join(branch, "latest"))
    )
    # a checkpoint at the wrong step for these boundaries is refused in one line
    capsys.readouterr()
    assert main(["--cooldown-from", ck, "--iterations", "30", "--wsd-fract-decay", "0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint is at step 12") and "24" in err and "\n" not in err


def test_cooldown_targets_recipe(tmp_path, capsys):
    out = str(tmp_path / "recipe")
    args = TINY + [
        "--scheduler",
        "wsd",
        "--wsd-fract-decay",
        "0.2",
        "--decay-type",
        "sqrt",
        "--cooldown-targets",
        "10,20",
        "--iterations",
        "20",
        "--out",
        out,
        "--exponential-moving-average",
        "--ema-interval",
        "1",
        "--ema-decay",
        "0.9",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "saved" in printed
    with open(os.path.join(out, "cooldown_table.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["target_steps"] for r in rows] == ["10", "20", "total"]
    assert rows[0]["branch_step"] == "8" and rows[1]["branch_step"] == "16"
    assert int(rows[1]["target_tokens"]) == 20 * 4 * 2 * 64
    fps = float(rows[1]["scratch_flops"]) / 20
    assert float(rows[0]["cooldown_flops"]) == pytest.approx(2 * fps)
    # recipe = stable run to 16 + cooldowns of 2 and 4 steps, vs 10 + 20 from scratch
    assert float(rows[2]["cooldown_flops"]) == pytest.approx(22 * fps)
    assert float(rows[2]["scratch_flops"]) == pytest.approx(30 * fps)
    assert float(rows[2]["saved_fraction"]) == pytest.approx(1 - 22 / 30)
    assert rows[0]["avg_kind"] == "ema" and float(rows[0]["val_loss_avg"]) > 0
    # the 20-step branch replays a straight WSD run exactly
    straight = str(tmp_path / "straight")
    assert (
        main(
            TINY
            + [
                "--scheduler",
                "wsd",
                "--wsd-fract-decay",
                "0.2",
                "--decay-type",
                "sqrt",
                "--iterations",
                "20",
                "--out",
                straight,
            ]
        )
        == 0
    )
    s1 = json.load(open(os.path.join(straight, "summary.json")))
    s2 = json.load(open(os.path.join(out, "cooldown_20", "summary.json")))
    assert s1["val_loss"] == s2["val_loss"]
    # plot draws the main run and both branches
    assert main(["--plot", out]) == 0
    assert os.path.getsize(os.path.join(out, "plot.png")) > 10_000


def test_outputs_logs_and_averages(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert (
        main(
            TINY
            + [
                "--scheduler",
                "wsd",
                "--iterations",
                "16",
                "--out",
                out,
                "--weight-average",
                "--wa-interval",
                "2",
                "--wa-horizon",
                "4",
                "--wa-sweep-horizon",
                "--max-num-wa-sweeps",
                "3",
                "--wa-save-windows",
                "--eval-interval",
                "8",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "warning: --wa-save-windows writes 4 window file(s)" in err
    line = [ln for ln in err.splitlines() if ln.startswith("step 15/16")][0]
    parts = line.split(" | ")
    assert parts[0] == "step 15/16" and parts[1].startswith("loss ") and parts[2].startswith("lr ")
    assert parts[3].endswith(" ms") and parts[4].endswith("tok/s") and parts[5] == "MFU n/a"
    recs = [json.loads(ln) for ln in open(os.path.join(out, "metrics.jsonl"))]
    train = [r for r in recs if r["kind"] == "train"]
    assert len(train) == 16 and {
        "loss",
        "lr",
        "grad_norm",
        "step_ms",
        "tokens_per_s",
        "mfu",
    } <= set(train[0])
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [8, 16]
    # 4 windows complete by step 16; sweep keeps the last 3
    assert {
        "val_loss",
        "val_loss_swa",
        "val_loss_swa_k1",
        "val_loss_swa_k2",
        "val_loss_swa_k3",
    } == set(evals[1]) - {"kind", "step", "time_s"}
    assert evals[1]["val_loss_swa"] == evals[1]["val_loss_swa_k1"]
    assert sorted(os.listdir(os.path.join(out, "avgs"))) == ["12.pt", "16.pt", "4.pt", "8.pt"]
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["final_step"] == 16 and summary["tokens"] == 16 * 4 * 2 * 64


def test_tiny_demo_loss_falls(tmp_path):
    out = str(tmp_path / "demo")
    assert (
        main(
            [
                "--preset",
                "tiny",
                "--scheduler",
                "wsd",
                "--iterations",
                "150",
                "--warmup-steps",
                "15",
                "--lr",
                "3e-3",
                "--batch-size",
                "16",
                "--acc-steps",
                "1",
                "--eval-interval",
                "0",
                "--eval-batches",
                "4",
                "--out",
                out,
                "--no-progress",
                "--log-interval",
                "0",
            ]
        )
        == 0
    )
    losses = _losses(out)
    assert losses[1] > 5.0 and sum(losses[s] for s in range(141, 151)) / 10 < 3.2


def test_window_average_runs_through_the_fused_optimizer():
    """The SWA window lives in FusedAdamW's state and equals the explicit window mean."""
    import torch

    from model.config import PRESETS
    from model.transformer import Transformer
    from train.averaging import WindowSnapshots
    from train.optim import build_optimizer

    torch.manual_seed(0)
    model = Transformer(PRESETS["tiny"])
    opt = build_optimizer(
        model,
        lr=1e-2,
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.95,
        swa=True,
        swa_interval=2,
        swa_horizon=4,
    )
    avg = WindowSnapshots(model, opt, swa=True, horizon=4, max_windows=2)
    assert not avg.windows  # nothing kept outside the optimizer until a window completes
    idx = torch.randint(0, 256, (2, 16))
    snaps = []
    for t in range(8):
        opt.zero_grad()
        model(idx, idx)[1].backward()
        opt.step()
        if t % 2 == 0:
            snaps.append([p.detach().clone() for p in model.parameters()])
        avg.update(t + 1)
    # Window 2 covers steps 4..7 and averages the weights after steps 4 and 6.
    count, window = avg.windows[-1]
    assert count == 8
    for i, w in enumerate(window):
        expect = (snaps[2][i] + snaps[3][i]) / 2
        torch.testing.assert_close(w, expect, rtol=1e-6, atol=1e-7)
