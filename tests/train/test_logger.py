"""RunLogger: metrics records -> wandb (offline run files) and TensorBoard event files."""

from __future__ import annotations

import glob
import json
import os
import struct
import sys
import time

import pytest

from core import UserError
from train.logger import WANDB_ID_FILE, RunLogger, log_run, scalars

RECORDS = [
    {"kind": "train", "step": 1, "loss": 3.0, "lr": 1e-3, "grad_norm": 0.5, "mfu": None},
    {"kind": "train", "step": 2, "loss": 2.5, "lr": 1e-3, "grad_norm": 0.4, "mfu": None},
    {"kind": "eval", "step": 2, "val_loss": 2.75, "val_loss_swa": 2.7, "val_loss_ema": 2.8},
]


def test_scalar_names_follow_the_seed_charts():
    assert scalars(RECORDS[0]) == {"train/loss": 3.0, "train/lr": 1e-3, "train/grad_norm": 0.5}
    assert scalars(RECORDS[2]) == {"val/loss": 2.75, "val/loss_swa": 2.7, "val/loss_ema": 2.8}
    assert scalars({"step": 3, "time_s": 1.5, "ok": True, "name": "x"}) == {"time_s": 1.5}


def test_disabled_logger_writes_nothing(tmp_path):
    with RunLogger(str(tmp_path / "run"), config={"a": 1}) as lg:
        assert not lg.enabled
        for r in RECORDS:
            lg.log(r)
    assert not (tmp_path / "run").exists()


def test_tensorboard_event_files_hold_the_records(tmp_path):
    pytest.importorskip(
        "tensorboard", reason="tensorboard not installed: pip install 'steptime[tensorboard]'"
    )
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(
        str(tmp_path / "runA"), tensorboard=str(tmp_path / "tb"), config={"lr": 1}
    ) as lg:
        for r in RECORDS:
            lg.log(r)
        lg.summary({"val_loss": 2.75, "device": "cpu"})
    log_run(str(tmp_path / "runB"), RECORDS[:1], config={}, tensorboard=str(tmp_path / "tb"))
    assert sorted(os.listdir(tmp_path / "tb")) == ["runA", "runB"]  # one folder per run
    ea = EventAccumulator(str(tmp_path / "tb" / "runA"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/loss_swa", "val/loss_ema"} <= tags
    assert [(e.step, e.value) for e in ea.Scalars("train/loss")] == [(1, 3.0), (2, 2.5)]
    assert [(e.step, e.value) for e in ea.Scalars("val/loss_swa")] == [(2, pytest.approx(2.7))]
    assert [e.value for e in ea.Scalars("summary/val_loss")] == [2.75]


def _wandb_records(run_file: str) -> list:
    """Records of a .wandb file: a 7-byte header, then 32 KiB blocks of LevelDB-log chunks
    (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(run_file, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + n > len(data):  # a chunk still being written
            break
        chunk, pos = data[pos + 7 : pos + 7 + n], pos + 7 + n
        if kind in (1, 2):
            buf = chunk
        else:
            buf += chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
    return out


def _finished_records(run_file: str, timeout: float = 30.0) -> list:
    """The file's records once its "exit" record is there: wandb's service process writes the
    file asynchronously and may still be flushing when `finish()` returns."""
    deadline = time.monotonic() + timeout
    while True:
        recs = _wandb_records(run_file)
        if any(r.WhichOneof("record_type") == "exit" for r in recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.2)


def test_wandb_offline_run_files_hold_the_records(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed: pip install 'steptime[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = str(tmp_path / "run")
    with RunLogger(out, wandb=True, experiment_name="exp1", config={"lr": 0.001}) as lg:
        for r in RECORDS:
            lg.log(r)
        lg.summary({"val_loss": 2.75})
    files = glob.glob(os.path.join(out, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(files) == 1
    history = {}
    for rec in _finished_records(files[0]):
        if rec.WhichOneof("record_type") == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item
            }
            history[rec.history.step.num] = {k: v for k, v in items.items() if k[0] != "_"}
    assert history[1] == {"train/loss": 3.0, "train/lr": 0.001, "train/grad_norm": 0.5}
    assert history[2]["val/loss_swa"] == 2.7 and history[2]["train/loss"] == 2.5
    # A resumed run in the same folder continues the same wandb run id; a new one does not.
    run_id = open(os.path.join(out, WANDB_ID_FILE)).read().strip()
    assert files[0].endswith(f"run-{run_id}.wandb")
    with RunLogger(out, wandb=True, config={}, resume=True) as lg:
        lg.log({"kind": "train", "step": 3, "loss": 2.0})
    again = glob.glob(os.path.join(out, "wandb", "offline-run-*", "run-*.wandb"))
    assert len(again) == 2 and all(f.endswith(f"run-{run_id}.wandb") for f in again)
    with RunLogger(out, wandb=True, config={}) as lg:
        lg.log({"kind": "train", "step": 1, "loss": 2.0})
    new_id = open(os.path.join(out, WANDB_ID_FILE)).read().strip()
    assert new_id != run_id


def test_missing_packages_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(UserError, match=r"--wandb needs the wandb package: pip install"):
        RunLogger(str(tmp_path / "r"), wandb=True, config={})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(UserError, match=r"--tensorboard needs the tensorboard package"):
        RunLogger(str(tmp_path / "r"), tensorboard=str(tmp_path / "tb"), config={})
