# ruff: noqa: E501  (the case table reads best one case per line)
"""Reliability: every bad input is one clean line, and results survive kills and concurrent runs.

1. A table of (CLI, arguments, expected exit code, expected message fragment) covering the bad
   inputs of `bench`, `train` and `timemodel`: each must print exactly one `error: ...` line (no
   traceback) and exit with the expected code. The CLIs run in this process for speed (their
   `main` is the console script), with placeholders such as {file} made in a temporary folder.
2. Kills: a sweep SIGKILLed at random moments keeps every config exactly once, leaves no worker
   behind and no temp file; two shards sharing one folder keep every row; Ctrl-C prints one line;
   a hung worker dies at its timeout; train SIGKILLed while checkpointing resumes with every step's
   metrics exactly once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.sweep import results

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--n-head", "2", "--batch-size", "4", "--no-progress"]
SWEEP = ["sweep", "--minutes", "0.01", *TINY]
MANY = ",".join(str(i) for i in range(1, 1001))

# (id, cli, argv, exit code, fragment of the one error line)
BENCH_CASES = [
    ("minutes-inf", "bench", ["sweep", "--minutes", "inf", "--out", "{tmp}/o"], 2, "--minutes must be a finite number > 0"),
    ("minutes-zero", "bench", ["sweep", "--minutes", "0", "--out", "{tmp}/o"], 2, "--minutes must be a finite"),
    ("grace-nan", "bench", [*SWEEP, "--timeout-grace", "nan", "--out", "{tmp}/o"], 2, "--timeout-grace must be a finite number >= 0"),
    ("factor-inf", "bench", [*SWEEP, "--timeout-factor", "inf", "--out", "{tmp}/o"], 2, "--timeout-factor must be a finite"),
    ("threads-0", "bench", [*SWEEP, "--threads", "0", "--out", "{tmp}/o"], 2, "--threads must be"),
    ("data-missing", "bench", [*SWEEP, "--data", "/nonexistent.bin", "--out", "{tmp}/o"], 2, "--data /nonexistent.bin: no such file"),
    ("data-dir-empty", "bench", [*SWEEP, "--data", "{dir}", "--out", "{tmp}/o"], 2, "cannot read it"),
    ("grid-1e6", "bench", [*SWEEP, "--n-layer", MANY, "--n-embd", MANY, "--out", "{tmp}/o"], 2, "1000000 configs, more than --max-configs 10000"),
    ("max-configs-0", "bench", [*SWEEP, "--max-configs", "0", "--out", "{tmp}/o"], 2, "--max-configs must be >= 1"),
    ("csv-bare-row", "bench", [*SWEEP[:3], "--grid", "{csv_bare}", "--out", "{tmp}/o"], 2, "more values than header columns"),
    ("grid-missing", "bench", [*SWEEP[:3], "--grid", "{tmp}/none.json", "--out", "{tmp}/o"], 2, "grid file not found"),
    ("grid-not-json", "bench", [*SWEEP[:3], "--grid", "{bad_json}", "--out", "{tmp}/o"], 2, "cannot parse grid file"),
    ("grid-and-flags", "bench", [*SWEEP, "--grid", "{bad_json}", "--out", "{tmp}/o"], 2, "--grid FILE sets the grid"),
    ("all-invalid", "bench", [*SWEEP, "--n-embd", "30", "--n-head", "4", "--out", "{tmp}/o"], 2, "every config is invalid"),
    ("value-type", "bench", [*SWEEP, "--n-layer", "four", "--out", "{tmp}/o"], 2, "n_layer: cannot read 'four' as int"),
    ("out-is-file", "bench", [*SWEEP, "--out", "{file}"], 2, "is a file, not a folder"),
    ("out-under-file", "bench", [*SWEEP, "--out", "{file}/sub"], 2, "cannot create --out"),
    ("gpus-missing", "bench", [*SWEEP, "--gpus", "0,1", "--out", "{tmp}/o"], 2, "--gpus 0,1: this machine has no CUDA GPU"),
    ("retry-unknown", "bench", [*SWEEP, "--retry", "ok", "--out", "{tmp}/o"], 2, "--retry takes oom, nan"),
    ("settings-changed", "bench", [*SWEEP, "--out", "{measured}"], 2, "was measured with --minutes 0.1, this run asks 0.01"),
    ("shard", "bench", [*SWEEP, "--shard", "3/2", "--out", "{tmp}/o"], 2, "--shard needs 0 <= i < n"),
    ("fract-decay", "bench", [*SWEEP, "--wsd-fract-decay", "2", "--out", "{tmp}/o"], 2, "must be in [0, 1], got 2"),
    ("drift-alone", "bench", [*SWEEP, "--drift-correct", "--out", "{tmp}/o"], 2, "--drift-correct needs --reference-every"),
    ("nproc-0", "bench", [*SWEEP, "--nproc-per-config", "0", "--out", "{tmp}/o"], 2, "--nproc-per-config must be >= 1"),
    ("bad-flag", "bench", [*SWEEP, "--depth", "2", "--out", "{tmp}/o"], 2, "unrecognized arguments: --depth 2 (see 'bench --help')"),
    ("no-minutes", "bench", ["sweep", "--out", "{tmp}/o"], 2, "the following arguments are required: --minutes"),
    ("no-command", "bench", [], 2, "required: COMMAND"),
    ("bad-choice", "bench", [*SWEEP, "--timing", "fast", "--out", "{tmp}/o"], 2, "invalid choice: 'fast'"),
    ("row-no-id", "bench", ["show", "{no_id}"], 2, "line 1 has no config_id"),
    ("show-missing", "bench", ["show", "{tmp}/nothing"], 2, "no bench results in"),
    ("show-column", "bench", ["show", "{results}", "--sort", "nope"], 2, "unknown column(s): nope"),
    ("filter-code", "bench", ["show", "{results}", "--filter", '@df.to_csv("{tmp}/x") == 0'], 2, "bad --filter"),
    ("filter-syntax", "bench", ["show", "{results}", "--filter", "status =="], 2, "bad --filter"),
    ("filter-column", "bench", ["show", "{results}", "--filter", "nope == 1"], 2, "unknown column(s) nope"),
    ("merge-missing", "bench", ["merge", "{tmp}/nothing", "--out", "{tmp}/m"], 2, "no bench results in"),
    ("merge-out-file", "bench", ["merge", "{results}", "--out", "{file}"], 2, "cannot write"),
    ("kernels-shape", "bench", ["kernels", "--op", "rmsnorm", "--shapes", "12"], 2, "bad shape '12' for rmsnorm"),
    # issue 23: folders have one owner and never nest (1, 6, 8), data checked up front (10, 20),
    # nesting bombs (12)
    ("merge-settings-differ", "bench", ["merge", "{sweep_a}", "{sweep_b}", "--out", "{tmp}/m"], 2, "merge only sweeps measured with the same settings"),
    ("merge-out-empty", "bench", ["merge", "{results}", "--out", ""], 2, "--out must name a folder"),
    ("merge-out-existing", "bench", ["merge", "{sweep_a}", "--out", "{results}"], 2, "already holds a sweep"),
    ("merge-out-in-run", "bench", ["merge", "{results}", "--out", "{run}/sub"], 2, "lies inside the train run"),
    ("merge-out-owned", "bench", ["merge", "{results}", "--out", "{held}"], 2, "is in use by pid"),
    ("sweep-into-train-run", "bench", [*SWEEP, "--out", "{run}"], 2, "holds a train run"),
    ("sweep-inside-train-run", "bench", [*SWEEP, "--out", "{run}/ckpts/4"], 2, "lies inside the train run"),
    ("sweep-data-odd", "bench", [*SWEEP, "--data", "{odd_bin}", "--out", "{tmp}/o"], 2, "is not a whole number of uint16 tokens"),
    ("sweep-data-fifo", "bench", [*SWEEP, "--data", "{fifo}", "--out", "{tmp}/o"], 2, "not a regular file"),
    ("sweep-data-ids", "bench", [*SWEEP, "--data", "{big_ids}", "--out", "{tmp}/o"], 2, "holds token id 300"),
    ("grid-nesting-bomb", "bench", [*SWEEP[:3], "--grid", "{bomb_json}", "--out", "{tmp}/o"], 2, "cannot parse grid file"),
    ("view-nesting-bomb", "bench", ["show", "{bomb_view}"], 2, "nested too deeply"),
    ("sweep-json-bomb", "bench", [*SWEEP, "--out", "{bomb_sweep}"], 2, "sweep.json is unreadable"),
    ("rows-symlink", "bench", ["show", "{rows_link}"], 2, "it is a symlink"),
    ("rows-dir-symlink", "bench", ["show", "{rows_dir_link}"], 2, "rows is a symlink"),
    ("jobs-dir-symlink", "bench", ["status", "{jobs_dir_link}"], 2, ".jobs is a symlink"),
    ("repeat-1e9", "bench", [*SWEEP, "--repeat", "1000000000", "--out", "{tmp}/o"], 2, "--repeat must be <= 1,000"),
    ("nproc-1e5", "bench", [*SWEEP, "--nproc-per-config", "100000", "--out", "{tmp}/o"], 2, "--nproc-per-config must be <= 1,024"),
]  # fmt: skip

T = [
    "--preset",
    "tiny",
    "--n-layer",
    "1",
    "--iterations",
    "4",
    "--batch-size",
    "2",
    "--acc-steps",
    "1",
]
T += ["--warmup-steps", "0", "--eval-batches", "1", "--no-progress"]
TRAIN_CASES = [
    ("warmup-tokens-inf", "train", [*T, "--warmup-tokens", "inf", "--out", "{tmp}/o"], 2, "warmup tokens must be a finite number"),
    ("device-foo", "train", [*T, "--device", "foo", "--out", "{tmp}/o"], 2, "device must be auto, cpu, cuda or cuda:N, got 'foo'"),
    ("grad-clip-nan", "train", [*T, "--grad-clip", "nan", "--out", "{tmp}/o"], 2, "--grad-clip must be a finite number >= 0"),
    ("eval-batches-0", "train", [*T, "--eval-batches", "0", "--out", "{tmp}/o"], 2, "--eval-batches must be > 0"),
    ("train-data-missing", "train", [*T, "--data", "/nonexistent.bin", "--out", "{tmp}/o"], 2, "data file not found: /nonexistent.bin"),
    ("train-out-file", "train", [*T, "--out", "{file}"], 2, "it is a file"),
    ("train-bad-flag", "train", [*T, "--bogus"], 2, "--bogus (see 'train --help')"),
    ("plot-no-step", "train", ["--plot", "{plot_run}"], 2, "record has no 'step'"),
    ("ckpt-config-empty", "train", ["--resume-from", "{ckpt_config_empty}", "--out", "{tmp}/r"], 2, "no training settings"),
    ("ckpt-iterations-str", "train", ["--resume-from", "{ckpt_iterations_str}", "--out", "{tmp}/r"], 2, "iterations must be int, got '20'"),
    ("ckpt-rng-empty", "train", ["--resume-from", "{ckpt_rng_empty}", "--out", "{tmp}/r"], 2, "'rng' state is malformed"),
    ("resume-past-end", "train", ["--resume-from", "{ckpt}", "--iterations", "2", "--out", "{tmp}/r"], 2, "checkpoint is at step 4, past --iterations 2"),
    # issue 23: one owner, no nesting, no symlinks (1, 7, 8)
    ("train-out-owned", "train", [*T, "--out", "{held}"], 2, "is in use by pid"),
    ("train-out-in-run", "train", [*T, "--out", "{run}/ckpts/4"], 2, "lies inside the train run"),
    ("train-out-is-sweep", "train", [*T, "--out", "{results}"], 2, "holds a sweep"),
    ("train-experiment-name", "train", [*T, "--experiment-name", "../escape"], 2, "is not a plain name"),
    ("train-metrics-link", "train", [*T, "--out", "{metrics_link}"], 2, "is a symlink"),
    ("train-latest-link", "train", [*T, "--auto-resume", "--out", "{latest_link}"], 2, "is a symlink"),
    ("prepare-out-owned", "train", ["prepare", "{text}", "--out", "{held}"], 2, "is in use by pid"),
    ("prepare-out-in-run", "train", ["prepare", "{text}", "--out", "{run}/data"], 2, "lies inside the train run"),
    ("prepare-out-empty", "train", ["prepare", "{text}", "--out", ""], 2, "--out must name a folder"),
    ("prepare-workers-1e5", "train", ["prepare", "{text}", "--out", "{tmp}/d", "--workers", "100000"], 2, "--workers must be in 1..256"),
    # 12 nesting bombs; 13 seeds; 14 degenerate schedules; 15 sizes; 17 token ids; 21 nonsense
    ("prepare-jsonl-bomb", "train", ["prepare", "{bomb_jsonl}", "--out", "{tmp}/d"], 2, "not a JSON object"),
    ("meta-nesting-bomb", "train", [*T, "--data", "{bomb_dataset}", "--out", "{tmp}/o"], 2, "nested too deeply"),
    ("metrics-nesting-bomb", "train", ["--plot", "{bomb_metrics}"], 2, "nested too deeply"),
    ("seed-negative", "train", [*T, "--seed", "-1", "--out", "{tmp}/o"], 2, "--seed must be in 0..4294967295"),
    ("seed-20-digits", "train", [*T, "--seed", "12345678901234567890", "--out", "{tmp}/o"], 2, "--seed must be in 0..4294967295"),
    ("data-seed-negative", "train", [*T, "--data-seed", "-1", "--out", "{tmp}/o"], 2, "--data-seed must be in 0..4294967295"),
    ("sample-seed-negative", "train", ["sample", "{ckpt}", "--seed", "-1"], 2, "--seed must be in 0..2**63-1"),
    ("cooldown-zero-length", "train", [*T, "--cooldown-targets", "4", "--scheduler", "wsd", "--wsd-fract-decay", "0.1", "--out", "{tmp}/o"], 2, "has a cooldown of 0 steps"),
    ("acc-steps-1e30", "train", [*T[:8], "--acc-steps", "1" + "0" * 30, *T[10:], "--out", "{tmp}/o"], 2, "sequences a step: no machine holds that batch"),
    ("iterations-1e20", "train", [*T[:6], "--iterations", "1" + "0" * 20, *T[8:], "--out", "{tmp}/o"], 2, "--iterations must be <= 2**53"),
    ("vocab-1e12", "train", [*T, "--vocab-size", "1000000000000", "--out", "{tmp}/o"], 2, "vocab_size 1000000000000 is over 2,147,483,647"),
    ("n-embd-1e11", "train", [*T, "--n-embd", "100000000000", "--out", "{tmp}/o"], 2, "n_embd 100000000000 is over 2,147,483,647"),
    ("vocab-1e9-memory", "train", [*T, "--vocab-size", "1000000000", "--out", "{tmp}/o"], 2, "GiB for weights, gradients and AdamW moments alone, more than"),
    ("token-ids-past-vocab", "train", [*T, "--data", "{big_ids}", "--out", "{tmp}/o"], 2, "holds token id 300, but its meta.json vocab_size is 256"),
    ("rmsnorm-eps-inf", "train", [*T, "--rmsnorm-eps", "inf", "--out", "{tmp}/o"], 2, "norm_eps must be a finite number > 0, got inf"),
    ("init-std-inf", "train", [*T, "--init-std", "inf", "--out", "{tmp}/o"], 2, "init_std must be a finite number > 0, got inf"),
    ("ckpt-optimizer-shape", "train", ["--resume-from", "{ckpt_opt_shape}", "--iterations", "6", "--out", "{tmp}/r"], 2, "optimizer exp_avg of parameter 0 has shape (3,)"),
    ("ckpt-optimizer-moment", "train", ["--resume-from", "{ckpt_opt_moment}", "--iterations", "6", "--out", "{tmp}/r"], 2, "lacks some moments"),
]  # fmt: skip
P = ["--preset", "tiny", "--batch-size", "4"]
TIMEMODEL_CASES = [
    ("budgets-0", "timemodel", ["fit-loss", "{tmp}", "--out", "{tmp}/l.json", "--budgets", "0"], 2, "--budgets must be a finite number > 0"),
    ("budgets-neg", "timemodel", ["fit-loss", "{tmp}", "--out", "{tmp}/l.json", "--budgets=-1e21"], 2, "--budgets must be a finite number > 0"),
    ("bootstrap-neg", "timemodel", ["fit-loss", "{tmp}", "--out", "{tmp}/l.json", "--bootstrap", "-1"], 2, "--bootstrap must be in 0.."),
    ("hours-inf", "timemodel", ["predict", "{tm}", *P, "--hours", "inf"], 2, "--hours must be a finite number > 0"),
    ("hours-1e308", "timemodel", ["predict", "{tm}", *P, "--hours", "1e308"], 2, "--hours must be a finite number > 0"),
    ("tm-string-coef", "timemodel", ["predict", "{tm_str}", *P, "--hours", "1"], 2, "coefficient flops must be a number, got 'abc'"),
    ("tm-bad-ranges", "timemodel", ["predict", "{tm_ranges}", *P, "--hours", "1"], 2, "feature_ranges.params must be [min, max], got 5"),
    ("law-alpha-1e6", "timemodel", ["predict", "{tm}", *P, "--hours", "1", "--loss-law", "{law_alpha}"], 2, "alpha = 1000000.0 is out of range"),
    ("search-hours-inf", "timemodel", ["search", "--time-model", "{tm}", "--loss-law", "{law}", "--hours", "inf"], 2, "--hours must be a finite number > 0"),
    ("search-space-1e9", "timemodel", ["search", "--time-model", "{tm}", "--loss-law", "{law}", "--hours", "1", "--space", "n_layer=1:1e9,n_embd=64"], 2, "over --max-candidates"),
    ("timemodel-bad-command", "timemodel", ["bogus"], 2, "invalid choice: 'bogus'"),
    ("timemodel-bad-flag", "timemodel", ["predict", "--bogus"], 2, "(see 'timemodel"),
    # issue 23: count caps (11), nesting bombs (12), sizes (15)
    ("bootstrap-1e9", "timemodel", ["fit-loss", "{tmp}", "--out", "{tmp}/l.json", "--bootstrap", "1000000000"], 2, "--bootstrap must be in 0.."),
    ("tm-nesting-bomb", "timemodel", ["predict", "{bomb_tm}", *P, "--hours", "1"], 2, "not valid JSON"),
    ("law-nesting-bomb", "timemodel", ["predict", "{tm}", *P, "--hours", "1", "--loss-law", "{bomb_law}"], 2, "not valid JSON"),
    ("describe-300-digits", "timemodel", ["describe", "--preset", "tiny", "--n-embd", "1" + "0" * 300], 2, "is over 2,147,483,647"),
]  # fmt: skip

CASES = BENCH_CASES + TRAIN_CASES + TIMEMODEL_CASES

TIME_MODEL = {
    "kind": "steptime time model",
    "intercept": 0.001,
    "coefficients": {"flops": 1e-11},
    "features": ["flops"],
    "feature_ranges": {"flops": [1e5, 1e12]},
    "device_name": "test cpu",
    "dtype": "float32",
    "kernels": "torch",
    "attention": "sdpa",
}
LOSS_LAW = {  # Hoffmann et al. 2022 approach 3 (arXiv:2203.15556), Besiroglu et al.'s values
    "kind": "loss law",
    "E": 1.817,
    "A": 477.8,
    "B": 2143.9,
    "alpha": 0.3473,
    "beta": 0.3672,
    "b_crit": None,
    "convention": "total",
    "fit_range": {"N": [5.7e7, 1.6e10], "D": [8.2e8, 3.2e11]},
}
_CKPT: dict = {}


def _checkpoint() -> Path:
    """A 4-step tiny run's checkpoint (trained once per session, in this process)."""
    if "base" not in _CKPT:
        from train.cli import main

        out = _CKPT["factory"].mktemp("ckpt") / "run"
        assert main([*T, "--permanent-ckpt-interval", "4", "--out", str(out)]) == 0
        _CKPT["base"] = next(out.rglob("ckpt.pt"))
    return _CKPT["base"]


def _crafted(tmp: Path, name: str) -> str:
    import torch

    d = torch.load(_checkpoint(), weights_only=False)
    if name == "ckpt_config_empty":
        d["config"] = {}
    elif name == "ckpt_iterations_str":
        d["config"]["schedule"]["iterations"] = "20"
    elif name == "ckpt_rng_empty":
        d["rng"] = {}
    elif name == "ckpt_opt_shape":  # torch would broadcast it into the parameter's shape
        d["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    elif name == "ckpt_opt_moment":  # FusedAdamW would start this moment at zero
        del d["optimizer"]["state"][1]["exp_avg_sq"]
    path = tmp / f"{name}.pt"
    torch.save(d, path)
    return str(path)


def _make(tmp: Path, name: str) -> str:
    """Create the file or folder a placeholder names; return its path."""
    if name == "tmp":
        return str(tmp)
    if name == "ckpt":
        return str(_checkpoint())
    if name.startswith("ckpt_"):
        return _crafted(tmp, name)
    if name == "run":
        from train.checkpoint import run_dir_of

        return run_dir_of(str(_checkpoint()))
    if name == "held":  # a folder another live process owns
        return _held_folder(tmp)
    p = tmp / name
    bomb = "[" * 100_000
    if name == "file":
        p.write_text("not a folder\n")
    elif name == "dir":
        p.mkdir()
    elif name == "csv_bare":
        p = tmp / "grid.csv"
        p.write_text("n_layer\n1,2\n")
    elif name == "bad_json":
        p = tmp / "grid.json"
        p.write_text("[{")
    elif name == "no_id":
        p.mkdir()
        (p / "results.jsonl").write_text('{"status": "ok", "step_ms_median": 1.0}\n')
    elif name == "results":
        results.write_rows(str(p), [{"config_id": "a", "status": "ok", "n_layer": 1}])
    elif name == "measured":
        from bench.sweep.options import SweepOptions, check_folder_settings, measurement_settings

        p.mkdir()
        check_folder_settings(
            str(p), measurement_settings(SweepOptions(str(p), minutes_per_config=0.1))
        )
    elif name == "plot_run":
        p.mkdir()
        (p / "metrics.jsonl").write_text('{"kind": "train", "loss": 1.0}\n')
    elif name in ("sweep_a", "sweep_b"):
        from bench.sweep.options import SweepOptions, check_folder_settings, measurement_settings

        p.mkdir()
        minutes = 0.1 if name == "sweep_a" else 0.2
        check_folder_settings(
            str(p), measurement_settings(SweepOptions(str(p), minutes_per_config=minutes))
        )
        results.append_row(str(p), {"config_id": name, "status": "ok"})
    elif name == "odd_bin":
        p = tmp / "odd.bin"
        p.write_bytes(b"abc")
    elif name == "fifo":
        os.mkfifo(p)
    elif name == "big_ids":  # token 300 in a dataset whose meta.json says 256 tokens
        import numpy as np

        p.mkdir()
        np.full(4096, 7, dtype=np.uint16).tofile(p / "train.bin")
        np.full(1024, 300, dtype=np.uint16).tofile(p / "val.bin")
        (p / "meta.json").write_text(json.dumps({"vocab_size": 256, "dtype": "uint16"}))
    elif name == "text":
        p = tmp / "text.txt"
        p.write_text("hello world\n" * 400)
    elif name == "bomb_json":
        p = tmp / "bomb.json"
        p.write_text(bomb)
    elif name == "bomb_view":
        p.mkdir()
        (p / "results.jsonl").write_text(bomb + "\n")
    elif name == "bomb_sweep":
        p.mkdir()
        (p / "sweep.json").write_text(bomb)
    elif name == "bomb_jsonl":
        p = tmp / "bomb.jsonl"
        p.write_text(bomb + "\n")
    elif name == "bomb_dataset":
        p.mkdir()
        (p / "meta.json").write_text(bomb)
        (p / "train.bin").write_bytes(b"\0" * 4096)
    elif name == "bomb_metrics":
        p.mkdir()
        (p / "metrics.jsonl").write_text(bomb + "\n")
    elif name in ("bomb_tm", "bomb_law"):
        p = tmp / f"{name}.json"
        p.write_text(bomb)
    elif name == "rows_link":
        (p / "rows").mkdir(parents=True)
        (tmp / "outside.jsonl").write_text('{"config_id": "x", "status": "ok"}\n')
        (p / "rows" / "h-1.jsonl").symlink_to(tmp / "outside.jsonl")
    elif name in ("rows_dir_link", "jobs_dir_link"):  # another sweep's records, linked in
        other = tmp / "other"
        results.append_row(str(other), {"config_id": "x", "status": "ok"})
        (other / ".jobs").mkdir()
        p.mkdir()
        (p / "results.jsonl").write_text('{"config_id": "y", "status": "ok"}\n')
        sub = "rows" if name == "rows_dir_link" else ".jobs"
        (p / sub).symlink_to(other / sub)
    elif name == "metrics_link":  # a dangling link: appending would create a file elsewhere
        p.mkdir()
        (p / "metrics.jsonl").symlink_to(tmp / "elsewhere.jsonl")
    elif name == "latest_link":  # a checkpoint folder pointing elsewhere
        p.mkdir()
        (tmp / "elsewhere").mkdir()
        (p / "latest").symlink_to(tmp / "elsewhere")
        (p / "config.json").write_text("{}")
    elif name.startswith(("tm", "law")):
        base = TIME_MODEL if name.startswith("tm") else LOSS_LAW
        bad = {
            "tm_str": {"coefficients": {"flops": "abc"}},
            "tm_ranges": {"feature_ranges": {"params": 5}},
            "law_alpha": {"alpha": 1e6},
        }
        p = tmp / f"{name}.json"
        p.write_text(json.dumps({**base, **bad.get(name, {})}))
    else:
        raise KeyError(name)
    return str(p)


_HOLDERS: list[subprocess.Popen] = []


def _held_folder(tmp: Path) -> str:
    """A folder that a second, live process owns (core.owner), as a concurrent run would."""
    folder = tmp / "held"
    code = "import sys, time; from core import owner; owner.own(sys.argv[1]); print('ok', flush=True); time.sleep(60)"
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, env=_env()
    )
    assert p.stdout.readline().strip() == b"ok"
    _HOLDERS.append(p)
    return str(folder)


def _expand(argv: list[str], tmp: Path) -> list[str]:
    import re

    made: dict[str, str] = {}

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in made:
            made[name] = _make(tmp, name)
        return made[name]

    return [re.sub(r"\{(\w+)\}", sub, a) for a in argv]


def _main(cli: str):
    if cli == "bench":
        from bench.cli import main
    elif cli == "train":
        from train.cli import main
    else:
        from timemodel.cli import main
    return main


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clean_line(case, tmp_path, tmp_path_factory, capsys, monkeypatch):
    _, cli, argv, code, fragment = case
    monkeypatch.chdir(tmp_path)
    _CKPT["factory"] = tmp_path_factory
    argv = _expand(argv, tmp_path)
    capsys.readouterr()  # what making the inputs printed
    rc = _main(cli)(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [x for x in err.strip().splitlines() if not x.startswith(("warning: ", "note: "))]
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert _expand([fragment], tmp_path)[0] in lines[0], lines[0]
    assert not list(tmp_path.rglob("*.tmp.*"))
    assert not (tmp_path / "x").exists()  # the filter case wrote nothing
    assert not (tmp_path / "elsewhere.jsonl").exists()  # no write through a symlink
    assert (
        not list((tmp_path / "elsewhere").glob("*")) if (tmp_path / "elsewhere").exists() else True
    )
    while _HOLDERS:
        _HOLDERS.pop().kill()


# ---------------------------------------------------------------------------------- kills


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _sweep_cmd(out: Path, *extra: str, flags: bool = True) -> list[str]:
    cmd = [sys.executable, "-m", "bench", "sweep", "--minutes", "0.005", "--preset", "tiny"]
    cmd += ["--n-head", "2", "--batch-size", "4"] if flags else []
    return [*cmd, "--no-progress", "--out", str(out), *extra]


def _procs_mentioning(text: str) -> list[int]:
    """Live processes whose command line mentions `text` (our workers carry OUT in theirs)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            pids.append(int(d.name))
    return pids


def _assert_no_orphans(out: Path, within_s: float = 5.0) -> None:
    deadline = time.time() + within_s
    while _procs_mentioning(str(out)) and time.time() < deadline:
        time.sleep(0.1)
    left = _procs_mentioning(str(out))
    for pid in left:  # leave nothing behind even when failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"orphaned workers: {left}"


def _per_writer_counts(out: Path) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for f in (out / "rows").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill
            key = (r["config_id"], r.get("repeat", 0))
            counts[key] = counts.get(key, 0) + 1
    return counts


def _rows_written(out: Path) -> int:
    return sum(_per_writer_counts(out).values())


def _kill_after_next_row(p: subprocess.Popen, out: Path, rng: random.Random) -> None:
    """SIGKILL `p` within 0.2 s of its next row (the row, the views, the next worker's start)."""
    before = _rows_written(out)
    deadline = time.time() + 120
    while _rows_written(out) == before and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 0.2))
    p.send_signal(signal.SIGKILL)


@pytest.mark.slow
def test_sweep_killed_at_random_moments_keeps_every_config_once(tmp_path):
    out = tmp_path / "out"
    cmd = _sweep_cmd(out, "--n-layer", "1,2,3")
    rng = random.Random(1234)
    # Kills inside a worker's life (start-up, timing) and right around a row being written; the
    # latter also let the sweep make progress, so the final rerun is short.
    for when in ("any", "row", "any", "row", "row"):
        p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if when == "row":
            _kill_after_next_row(p, out, rng)
        else:
            time.sleep(rng.uniform(0.3, 4.0))
            p.send_signal(signal.SIGKILL)
        p.wait()
        _assert_no_orphans(out)
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = results.load_rows(str(out))
    assert sorted(x["n_layer"] for x in rows) == [1, 2, 3]
    assert {x["status"] for x in rows} == {"ok"}
    assert set(_per_writer_counts(out).values()) == {1}  # no config measured twice
    assert len((out / "results.csv").read_text().strip().splitlines()) == 4
    assert not list(out.rglob("*.tmp*"))
    _assert_no_orphans(out)


@pytest.mark.slow
def test_two_shards_share_one_folder(tmp_path):
    out = tmp_path / "out"
    grid = ["--n-layer", "1,2", "--n-embd", "32,64"]
    procs = [
        subprocess.Popen(
            _sweep_cmd(out, *grid, "--shard", f"{i}/2"),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    rows = results.load_rows(str(out))
    assert len(rows) == 4 and {x["status"] for x in rows} == {"ok"}
    assert len((out / "results.csv").read_text().strip().splitlines()) == 5


def _hang_grid(tmp: Path) -> str:
    g = tmp / "hang.json"
    g.write_text(json.dumps([{"n_layer": 1, "n_head": 2, "inject": "hang"}]))
    return str(g)


def test_ctrl_c_is_one_line_and_kills_the_worker(tmp_path):
    out = tmp_path / "out"
    cmd = _sweep_cmd(out, "--grid", _hang_grid(tmp_path), flags=False)

    def default_sigint() -> None:  # a shell's background job would ignore it
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    p = subprocess.Popen(
        cmd, env=_env(), stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    deadline = time.time() + 120
    while not list(out.glob(".work/*.spec.json")) and time.time() < deadline:
        assert p.poll() is None, p.communicate()[1]
        time.sleep(0.1)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        "interrupted; rerun the same command to resume: finished configs are kept"
    ]
    _assert_no_orphans(out)


def test_hung_worker_dies_at_its_timeout(tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "out"
    argv = ["sweep", "--minutes", "0.01", "--preset", "tiny", "--grid", _hang_grid(tmp_path)]
    argv += ["--timeout-factor", "0", "--timeout-grace", "2", "--out", str(out)]
    t = time.perf_counter()
    assert main(argv) == 1  # every config failed
    assert time.perf_counter() - t < 60
    (row,) = results.load_rows(str(out))
    assert row["status"] == "timeout" and "killed" in row["message"]
    assert "every config failed (1 timeout)" in capsys.readouterr().err
    _assert_no_orphans(out, within_s=1.0)


def _kill_while_checkpointing(p: subprocess.Popen, latest: Path, rng: random.Random) -> bool:
    """SIGKILL `p` while it writes its checkpoint (its temp file exists); False if it finished."""
    mine = f"ckpt.pt.tmp.{p.pid}"
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        try:
            names = os.listdir(latest)
        except FileNotFoundError:
            names = []
        if mine in names and "ckpt.pt" in names:
            time.sleep(rng.uniform(0.0, 0.005))
            p.kill()
            p.wait()
            return True
        time.sleep(0.0005)
    p.kill()
    p.wait()
    return False


@pytest.mark.slow
def test_train_killed_while_checkpointing_resumes_with_every_step_once(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "train", *T[:4], "--iterations", "20", *T[6:]]
    cmd += ["--log-interval", "1", "--latest-ckpt-interval", "1", "--eval-interval", "10"]
    cmd += ["--scheduler", "constant", "--out", str(out)]
    rng = random.Random(7)
    kills = 0
    while kills < 5:
        resume = ["--resume-from", str(out)] if (out / "latest" / "ckpt.pt").exists() else []
        p = subprocess.Popen(
            cmd + resume, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        assert _kill_while_checkpointing(p, out / "latest", rng), "the run ended unkilled"
        kills += 1
    r = subprocess.run(
        cmd + ["--resume-from", str(out)], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in records if x.get("kind") == "train"]
    assert steps == list(range(1, 21))  # every step exactly once, in order
    assert [x["step"] for x in records if x.get("kind") == "eval"] == [10, 20]


def _empty_group():
    import torch

    from kernels import FusedAdamW

    FusedAdamW([{"params": [torch.nn.Parameter(torch.ones(2))]}, {"params": []}])


def _torch_adamw_state():
    import torch

    from kernels import FusedAdamW

    q = torch.nn.Parameter(torch.ones(4))
    ref = torch.optim.AdamW([q])
    q.grad = torch.ones_like(q)
    ref.step()
    FusedAdamW([q]).load_state_dict(ref.state_dict())


def _negative_eps():
    import torch

    from kernels import rms_norm

    rms_norm(torch.ones(2, 4), torch.ones(4), eps=-1)


def _nan_lr():
    import torch

    from kernels import FusedAdamW

    q = torch.nn.Parameter(torch.ones(4))
    opt = FusedAdamW([q])
    q.grad = torch.ones_like(q)
    opt.param_groups[0]["lr"] = float("nan")
    opt.step()


API_CASES = [
    ("empty-param-group", _empty_group, "has no parameters"),
    ("torch-adamw-state", _torch_adamw_state, "not FusedAdamW's"),
    ("rms-norm-eps", _negative_eps, "eps must be a finite number >= 0"),
    ("nan-lr", _nan_lr, "lr must be a finite number >= 0, got nan"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_api_input_is_a_valueerror_that_says_what_to_do(case):
    _, call, fragment = case
    with pytest.raises(ValueError, match=fragment):
        call()
