"""What every run leaves behind: a final checkpoint (so `train sample RUN` needs no flags), no
folder after a failed start, no stale checkpoint temporaries after a resume; resume continues the
wandb run; --overwrite forgets it; --plot-log; MFU at the dtype that ran."""

import os

import pytest
import torch

from model import costs
from train.cli import main

TINY = ["--preset", "tiny", "--batch-size", "2", "--acc-steps", "1", "--warmup-steps", "1"]
TINY += ["--eval-batches", "1", "--eval-interval", "0", "--log-interval", "2", "--no-progress"]


def _step(path):
    return torch.load(os.path.join(path, "ckpt.pt"), weights_only=True)["step"]


class FakeLogger:
    """Stands in for train.logger.RunLogger: records how the trainer opened it."""

    opened: list[dict] = []

    def __init__(self, out_dir, **kw):
        FakeLogger.opened.append({"out": out_dir, **kw})

    def log(self, record):
        pass

    def close(self):
        pass


def test_final_checkpoint_resume_continues_the_logger_run_and_mfu_dtype(tmp_path, monkeypatch):
    import train.logger

    FakeLogger.opened = []
    monkeypatch.setattr(train.logger, "RunLogger", FakeLogger)
    dtypes = []
    real_mfu = costs.mfu

    def mfu(*args, **kw):
        dtypes.append(kw.get("dtype", args[3] if len(args) > 3 else None))
        return real_mfu(*args, **kw)

    monkeypatch.setattr(costs, "mfu", mfu)
    out, tb = tmp_path / "r", str(tmp_path / "tb")
    assert main(TINY + ["--iterations", "3", "--out", str(out), "--tensorboard", tb]) == 0
    assert _step(out / "latest") == 3 and not (out / "ckpts").exists()
    assert dtypes and set(dtypes) == {"float32"}  # CPU runs float32 whatever --dtype says
    assert main(["--resume-from", str(out), "--iterations", "5", "--tensorboard", tb]) == 0
    assert _step(out / "latest") == 5
    assert [o["resume"] for o in FakeLogger.opened] == [False, True]


def test_final_checkpoint_is_one_file_with_a_kept_one_and_can_be_turned_off(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert (
        main(TINY + ["--iterations", "4", "--permanent-ckpt-interval", "2", "--out", str(a)]) == 0
    )
    assert sorted(os.listdir(a / "ckpts")) == ["2", "4"] and _step(a / "latest") == 4
    assert os.path.samefile(a / "latest" / "ckpt.pt", a / "ckpts" / "4" / "ckpt.pt")  # a link
    assert main(TINY + ["--iterations", "2", "--final-ckpt", "false", "--out", str(b)]) == 0
    assert not (b / "latest").exists() and (b / "summary.json").exists()


def test_resume_removes_stale_checkpoint_temporaries(tmp_path):
    out = tmp_path / "r"
    assert (
        main(TINY + ["--iterations", "4", "--permanent-ckpt-interval", "2", "--out", str(out)]) == 0
    )
    (out / "ckpts" / "6").mkdir()  # a kill during the first write of ckpts/6
    stale = [out / "latest" / "ckpt.pt.tmp.999999", out / "ckpts" / "2" / "ckpt.pt.tmp.999998"]
    stale += [out / "ckpts" / "6" / "ckpt.pt.tmp.999997", out / "summary.json.tmp.999996"]
    for f in stale + [out / "notes.tmp.7"]:
        f.write_bytes(b"partial")
    assert main(["--resume-from", str(out / "ckpts" / "2")]) == 0
    assert not [f for f in stale if f.exists()]
    assert not (out / "ckpts" / "6").exists()
    assert (out / "notes.tmp.7").exists()  # not a file train writes: left alone
    assert _step(out / "latest") == 4 and _step(out / "ckpts" / "2") == 2


def test_overwrite_forgets_the_wandb_run(tmp_path):
    out = tmp_path / "r"
    assert main(TINY + ["--iterations", "1", "--out", str(out)]) == 0
    (out / "wandb_id.txt").write_text("abc123\n")
    (out / "wandb").mkdir()
    (out / "wandb" / "run.wandb").write_text("x")
    assert main(TINY + ["--iterations", "1", "--out", str(out), "--overwrite"]) == 0
    assert not (out / "wandb_id.txt").exists() and not (out / "wandb").exists()


@pytest.mark.parametrize("bad", ["batch", "tensorboard"])
def test_failed_start_leaves_no_folder(tmp_path, capsys, bad):
    afile = tmp_path / "afile"
    afile.write_text("x")
    extra = {"batch": ["--batch-size", "100000"], "tensorboard": ["--tensorboard", str(afile)]}
    out, kept = tmp_path / "new", tmp_path / "mine"
    kept.mkdir()  # a folder the user made stays, even empty
    for target in (out, kept):
        assert main(TINY + ["--iterations", "2", "--out", str(target)] + extra[bad]) == 2
        assert capsys.readouterr().err.count("error:") == 1
    assert not out.exists() and kept.is_dir() and not os.listdir(kept)


def test_plot_log(tmp_path, monkeypatch, capsys):
    import train.plot

    calls = []
    monkeypatch.setattr(train.plot, "plot_run", lambda d, **kw: calls.append((d, kw)) or "p.png")
    assert main(["--plot", str(tmp_path), "--plot-log"]) == 0
    assert main(["--plot", str(tmp_path)]) == 0
    assert calls == [(str(tmp_path), {"log_loss": True}), (str(tmp_path), {"log_loss": False})]
    assert main(["--plot-log"]) == 2
    assert "--plot-log goes with --plot" in capsys.readouterr().err


def test_cooldown_targets_refuse_a_warmup_past_the_first_branch_up_front(tmp_path, capsys):
    out = tmp_path / "wsd"
    argv = TINY + ["--scheduler", "wsd", "--cooldown-targets", "100,200", "--out", str(out)]
    assert main(argv + ["--wsd-fract-decay", "0.2", "--warmup-steps", "300"]) == 2
    err = capsys.readouterr().err
    assert "pass --warmup-steps below 80" in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing trained
