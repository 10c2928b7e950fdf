"""examples/researcher/run.py at CI size (issue 26's acceptance example): a sweep with seeds, fit,
fit-loss with a bootstrap, a search with intervals, the top 3 and 2 random configs trained with
the search's printed commands at 2 seeds, and the verdict: is the measured best in the tied set,
and the regret against seed noise beside a random pick's."""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_researcher_ci_answers_with_intervals_and_commands(tmp_path: Path) -> None:
    out = tmp_path / "r"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "researcher" / "run.py"),
            "--ci",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    # 1. the sweep ran every config at 2 seeds
    sweep = pd.read_csv(out / "sweep" / "results.csv")
    assert sorted(sweep["seed"].unique()) == [0, 1] and res["sweep_runs_ok"] == len(sweep) == 8
    # 2. the law carries its bootstrap
    law = json.loads((out / "law.json").read_text())
    assert law["bootstrap"]["n"] == 8
    # 3. the search's rows: intervals around the point, #1 tied with itself, a command each
    search = pd.read_csv(out / "search.csv")
    assert ((search["loss_lo"] <= search["loss"]) & (search["loss"] <= search["loss_hi"])).all()
    assert search["tied_with_1"].iloc[0] and search["train_cmd"].str.startswith("train ").all()
    text = (out / "search.txt").read_text()
    assert "95% interval" in text and "bootstrap refits" in text and "measure next" in text
    # 4. the trained runs are the search's top 3 (its commands, verbatim but for --seed/--out)
    runs = pd.read_csv(out / "trained.csv")
    assert list(runs["role"]) == ["pick 1", "pick 2", "pick 3", "random", "random"]
    assert list(runs["train_cmd"].head(3)) == list(search["train_cmd"].head(3))
    for r in runs.itertuples():
        seeds = json.loads(r.loss_seeds)
        assert len(seeds) == 2 and all(_finite(x) and x > 0 for x in seeds)
        argv = shlex.split(r.train_cmd)
        assert argv[argv.index("--n-layer") + 1] == str(r.n_layer)
        assert argv[argv.index("--ffn-hidden") + 1] == str(r.ffn_hidden)
    assert (out / "runs").is_dir() and len(list((out / "runs").iterdir())) == 10
    # 5. the verdict's numbers
    assert isinstance(res["best_measured_in_tied_set"], bool)
    for k in ("regret_pick1", "regret_random_mean", "seed_sd", "se_of_a_difference"):
        assert _finite(res[k]) and res[k] >= 0, k
    assert res["regret_pick1"] == runs["measured"].iloc[0] - runs["measured"].min()
    assert 0 <= res["measured_inside_interval"] <= 5
    assert "Regret of pick 1" in (out / "RESULTS.md").read_text()
