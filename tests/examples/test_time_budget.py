"""The time-budget validation script (examples/time_budget/run.py) at CI size: every number of
the experiment is produced, and the search's picks are the configs that were trained."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_time_budget_ci_produces_every_number(tmp_path: Path) -> None:
    out = tmp_path / "tb"
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "time_budget" / "run.py"), "--ci"]
        + ["--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    b, v = res["heldout_b1"], res["verify_b2"]
    for d in (b, b["law_at_measured_tokens"], b["step_time"], v["prediction"], v["step_time"]):
        for k in ("r2", "mape_pct", "worst_ape_pct"):
            assert _finite(d[k]), (k, d)
        assert d["mape_pct"] >= 0
        # A rank correlation needs >= 3 points: the CI hold-out is 1 config at 2 budgets.
        if d["n"] >= 3:
            assert _finite(d["spearman"]) and -1 <= d["spearman"] <= 1, d
        else:
            assert math.isnan(d["spearman"]), d
    assert b["n_train_configs"] == 3 and b["n_test_configs"] == 1
    for k in ("regret_pick1", "regret_best_of_picks", "best_measured_loss"):
        assert _finite(v[k]) and v[k] >= 0, k
    assert v["regret_best_of_picks"] <= v["regret_pick1"]
    # The B2 runs are the search's top picks (in its order) and the random configs.
    runs = pd.read_csv(out / "verify_b2.csv")
    assert list(runs["role"])[:3] == ["pick 1", "pick 2", "random"]
    # ... and the no-batch-term law's pick, when it is not one of them already.
    assert list(runs["role"])[3:] in ([], ["pick without batch term"])
    assert (v["regret_pick_without_batch_term"] is None) == (len(runs) == 3)
    search = pd.read_csv(out / "search.csv")
    key = ["n_layer", "n_embd", "batch_size"]
    assert runs[key].head(2).to_numpy().tolist() == search[key].head(2).to_numpy().tolist()
    # The script's predictions are the search's own (same arithmetic, same fitted models).
    assert abs(runs["pred_loss"].iloc[0] - search["loss"].iloc[0]) < 1e-9
    assert runs["val_loss"].min() == v["best_measured_loss"]
    before, after = res["search"]["pick_without_batch_term"], res["search"]["pick_with_batch_term"]
    assert _finite(before["loss"]) and _finite(after["loss"])
    for name in ("heldout_b1.png", "verify_b2.png", "search.png", "RESULTS.md", "commands.txt"):
        assert (out / name).stat().st_size > 0, name
    assert "bench sweep" in (out / "commands.txt").read_text()
