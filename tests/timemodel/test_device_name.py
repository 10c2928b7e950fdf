"""`timemodel fit --device-name` names the device a table without one was measured on; predict
prints it, warns on another device, and never prints "fitted on None" (issue 26, item 8)."""

from __future__ import annotations

import json

import pandas as pd

from model import costs
from model.config import ModelConfig
from timemodel.cli import main


def _table(path) -> str:
    rows = []
    for L in (1, 2, 3):
        for d in (32, 64):
            for b in (4, 8):
                cfg = ModelConfig(vocab_size=256, n_layer=L, n_embd=d, n_head=2,
                                  sequence_length=64)  # fmt: skip
                f = costs.step_features(cfg, b)
                rows.append({"n_layer": L, "n_embd": d, "n_head": 2, "vocab_size": 256,
                             "sequence_length": 64, "batch_size": b,
                             "step_ms_median": 1.0 + 1e-8 * f["flops"]})  # fmt: skip
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_fit_device_name_reaches_predict(tmp_path, capsys):
    table, tm = _table(tmp_path / "t.csv"), str(tmp_path / "tm.json")
    fit = ["fit", table, "--folds", "3", "--cv-repeats", "1", "--outer-seeds", "1"]
    assert main(fit + ["--out", tm]) == 0
    assert json.loads(open(tm).read())["device_name"] is None
    assert main(["predict", tm, "--preset", "tiny"]) == 0
    assert "fitted on" not in capsys.readouterr().out
    assert main(fit + ["--out", tm, "--device-name", "Lab CPU 7"]) == 0
    assert json.loads(open(tm).read())["device_name"] == "Lab CPU 7"
    capsys.readouterr()
    assert main(["predict", tm, "--preset", "tiny", "--device-name", "Lab CPU 7"]) == 0
    cap = capsys.readouterr()
    assert "(model fitted on Lab CPU 7)" in cap.out and "predicting for" not in cap.err
    assert main(["predict", tm, "--preset", "tiny", "--device-name", "Other"]) == 0
    assert "time model was fitted on 'Lab CPU 7', predicting for 'Other'" in capsys.readouterr().err
    assert main(fit + ["--out", tm, "--device-name", " "]) == 2
    assert capsys.readouterr().err.strip() == "error: --device-name must not be empty"
