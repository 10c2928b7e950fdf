"""Write grid.json: the >= 100-config CPU step-time sweep of examples/cpu_sweep.

A seeded sample of the product depth x width x heads x batch x sequence x acc_steps, kept to the
configs whose rough step-time estimate lies in [3 ms, 400 ms] on one CPU core, so that the sweep
spans at least two decades of step time and finishes in about half an hour. Run from the repo root:

    python examples/cpu_sweep/make_grid.py          # writes examples/cpu_sweep/grid.json
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from model import costs
from model.config import ModelConfig

N_CONFIGS = 112
SEED = 0
AXES = {
    "n_layer": [1, 2, 3, 4, 6],
    "n_embd": [64, 96, 128, 192, 256, 384],
    "n_head": [2, 4, 8],
    "batch_size": [2, 4, 8, 16, 32],
    "sequence_length": [32, 64, 128, 256],
    "acc_steps": [1, 2, 4],
}


def rough_ms(row: dict) -> float:
    """A deliberately crude one-core estimate, only used to bound the grid."""
    cfg = ModelConfig(
        vocab_size=256,
        n_layer=row["n_layer"],
        n_embd=row["n_embd"],
        n_head=row["n_head"],
        multiple_of=32,
        sequence_length=row["sequence_length"],
    )
    f = costs.step_features(cfg, row["batch_size"], acc_steps=row["acc_steps"])
    return 1.0 + f["launches"] * 0.012 + f["flops"] / 60e9 * 1e3


def main() -> None:
    rows = []
    for values in itertools.product(*AXES.values()):
        row = dict(zip(AXES, values))
        if row["n_embd"] // row["n_head"] < 16:
            continue
        if 3.0 <= rough_ms(row) <= 400.0:
            rows.append(row)
    rows.sort(key=rough_ms)
    ends = rows[:4] + rows[-4:]  # the extremes, so the span is there whatever the sample draws
    picked = ends + random.Random(SEED).sample(rows[4:-4], N_CONFIGS - len(ends))
    picked.sort(key=rough_ms)
    grid = [
        {"vocab_size": 256, "multiple_of": 32, "ffn_hidden": None, "lr": 0.001, **r} for r in picked
    ]
    out = Path(__file__).with_name("grid.json")
    out.write_text(json.dumps(grid, indent=1) + "\n")
    ms = [rough_ms(r) for r in picked]
    print(f"{len(grid)} configs of {len(rows)} eligible; rough step {min(ms):.1f}-{max(ms):.1f} ms")


if __name__ == "__main__":
    main()
