"""`STEPTIME_SMOKE=1`: run any documented command at CPU-smoke size, unchanged on the command line.

The README's H100 commands (124M models, 5-minute sweeps, 15000 steps) cannot run in CI, yet every
shell block of the README must be shown to work (tests/test_readme.py runs them all). With
STEPTIME_SMOKE=1 in the environment, `train` and `bench sweep` keep every flag's meaning but shrink
sizes: at most 2 layers of width 64, 64-token sequences, batches of 4, and 2 configs per sweep
(a sweep's or run's preset becomes `tiny`);
runs over 1000 steps get 40, budgets over a minute get 1 second, a sweep's val_loss sample at
most 1024 tokens. Nothing else reads the
variable, and it is off by default.
"""

from __future__ import annotations

import os
from typing import Any

SMOKE_LIMITS = {
    "n_layer": 2,
    "n_embd": 64,
    "n_head": 2,
    "sequence_length": 64,
    "batch_size": 4,
    "acc_steps": 1,
    "eval_batches": 2,
}
SMOKE_ITERATIONS = 40
SMOKE_MINUTES = 1.0 / 60
GPU_SCALE_ITERATIONS = 1000  # longer runs are H100 examples: shrunk to SMOKE_ITERATIONS
GPU_SCALE_MINUTES = 1.0  # longer budgets are H100 examples: shrunk to SMOKE_MINUTES
SMOKE_CONFIGS = 2
SMOKE_VAL_TOKENS = 1024  # a sweep's val_loss sample (bench sweep --val-tokens)


def enabled() -> bool:
    return os.environ.get("STEPTIME_SMOKE", "") not in ("", "0")


def scale_train(flat: dict[str, Any]) -> dict[str, Any]:
    """Shrink a flat training-settings dict (TrainConfig.from_flat form) in smoke mode."""
    if not enabled():
        return flat
    out = dict(flat)
    if out.get("preset") not in (None, "tiny"):
        out["preset"] = "tiny"
    for k, cap in SMOKE_LIMITS.items():  # unset sizes would mean the seed's 24 x 768 model
        out[k] = cap if out.get(k) is None else min(int(out[k]), cap)
    out["n_head"] = SMOKE_LIMITS["n_head"]
    # Step counts and budgets shrink only at GPU scale, so that CPU examples keep their step
    # numbers (a cooldown branched from ckpts/160 must find it).
    if out.get("iterations") is not None and int(out["iterations"]) > GPU_SCALE_ITERATIONS:
        out["iterations"] = SMOKE_ITERATIONS
        if out.get("warmup_steps") is not None:  # keep warmup -> stable -> cooldown in the 40 steps
            out["warmup_steps"] = min(int(out["warmup_steps"]), SMOKE_ITERATIONS // 10)
    if out.get("minutes") is not None and float(out["minutes"]) > GPU_SCALE_MINUTES:
        out["minutes"] = SMOKE_MINUTES
    out["dtype"] = out.get("dtype") if out.get("dtype") != "float16" else "bfloat16"
    return out


def scale_grid(lists: dict[str, list[str]]) -> dict[str, list[str]]:
    """Shrink a sweep's {flag: [values]} grid: values capped, at most SMOKE_CONFIGS configs."""
    if not enabled():
        return lists
    out: dict[str, list[str]] = {}
    budget = SMOKE_CONFIGS
    for k, values in lists.items():
        cap = SMOKE_LIMITS.get(k)
        vals = [str(min(int(float(v)), cap)) for v in values] if cap else list(values)
        vals = list(dict.fromkeys(vals))[: max(1, budget)]
        budget = max(1, budget // len(vals))
        out[k] = vals
    if "n_embd" in out or "n_head" in out:
        out["n_head"] = ["2"]
    return out


def scale_preset(name: str | None) -> str | None:
    """A sweep's --preset: any preset but tiny becomes tiny (its width, vocab and sequence are the
    base of every config the grid flags leave unset, and a 124M base made a smoke sweep slow)."""
    return "tiny" if enabled() and name not in (None, "tiny") else name


def scale_val_tokens(n: int) -> int:
    return min(n, SMOKE_VAL_TOKENS) if enabled() else n


def scale_minutes(minutes: float) -> float:
    return SMOKE_MINUTES if enabled() and minutes > GPU_SCALE_MINUTES else minutes
