"""Learning-rate schedules with the seed code's exact values.

The seed is the code of Hägele et al. 2024 (arXiv:2405.18392), upstream epfml/schedules-and-scaling:
`src/optim/utils.py::wsd_schedule` (WSD, §3 Eq. 1 of the paper) and `src/main.py` (cos/linear via
torch's OneCycleLR, cos_inf).

Standard library only: `timemodel`, the CLI's `--print-schedule` and tests use it without torch.
`lr_factor(step, ...)` is the multiplier of the peak LR after `step` optimizer steps, the same
quantity the seed's `LambdaLR` / `OneCycleLR` produce (step 0 is the LR of the first update).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core import UserError
from train.fields import doc_field

SCHEDULERS = ("wsd", "cos", "linear", "cos_inf", "constant")
DECAY_TYPES = ("linear", "sqrt", "cosine", "square", "mirror_cosine", "exp")
# The seed spells it "miror_cosine"; accept that too so its command lines work unchanged.
_DECAY_ALIASES = {"miror_cosine": "mirror_cosine"}
_INIT_DIV = 1e2  # warmup starts at lr/100 in every seed scheduler
_FINAL_DIV = 0.1  # OneCycle final_div_factor: min lr = (lr/100)/0.1 = lr/10


def _decay_type(text: str) -> str:
    """The seed's spelling "miror_cosine" is read as mirror_cosine (a CLI alias only)."""
    return _DECAY_ALIASES.get(text, text)


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule (Hägele et al. 2024, §2-3; seed `src/optim/utils.py`)."""

    scheduler: str = doc_field(
        "cos",
        "LR schedule: " + ", ".join(SCHEDULERS) + " (a sweep: constant or wsd)",
        metavar="NAME",
    )
    iterations: int = doc_field(15000, "number of optimizer steps (the schedule's length)")
    warmup_steps: int = doc_field(300, "linear warmup steps from lr/100")
    warmup_tokens: str | None = doc_field(
        None,
        "'params' (warmup tokens = parameter count) or a token count; overrides warmup steps",
        metavar="params|N",
    )
    lr: float = doc_field(1e-3, "peak learning rate")
    wsd_fract_decay: float = doc_field(0.1, "WSD cooldown length as a fraction of the run")
    decay_type: str = doc_field(
        "linear", "WSD cooldown shape", choices=DECAY_TYPES, type=_decay_type
    )
    wsd_final_lr_scale: float = doc_field(0.0, "final LR as a fraction of peak (WSD)")
    cos_inf_steps: int = doc_field(0, "constant tail steps for cos_inf")
    minutes: float | None = doc_field(
        None,
        "wall-clock budget: measure the step time and set the step count so warmup, stable phase "
        "and cooldown fit M minutes (wsd or constant)",
        metavar="M",
    )


def check_schedule(s: ScheduleConfig) -> None:
    """Raise UserError for settings the seed would accept but that silently misbehave."""
    scheduler, iterations, warmup_steps = s.scheduler, s.iterations, s.warmup_steps
    wsd_fract_decay, decay_type, wsd_final_lr_scale = (
        s.wsd_fract_decay,
        s.decay_type,
        s.wsd_final_lr_scale,
    )
    cos_inf_steps = s.cos_inf_steps
    if scheduler not in SCHEDULERS:
        raise UserError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    if iterations <= 0:
        raise UserError(f"iterations must be > 0, got {iterations}")
    if warmup_steps < 0:
        raise UserError(f"warmup steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= wsd_fract_decay <= 1.0:
        raise UserError(f"wsd fract decay must be in [0, 1], got {wsd_fract_decay}")
    dt = _DECAY_ALIASES.get(decay_type, decay_type)
    if dt not in DECAY_TYPES:
        raise UserError(f"decay type must be one of {DECAY_TYPES}, got {decay_type!r}")
    if not 0.0 <= wsd_final_lr_scale <= 1.0:
        raise UserError(f"wsd final lr scale must be in [0, 1], got {wsd_final_lr_scale}")
    if scheduler == "wsd" and dt == "exp" and wsd_final_lr_scale <= 0.0:
        # final**p is 0 for every p > 0: the seed silently zeroes the LR at cooldown start.
        raise UserError("decay type exp needs --wsd-final-lr-scale > 0 (final**p is 0 else)")
    if scheduler in ("cos", "linear") and warmup_steps > iterations:
        raise UserError(f"warmup steps {warmup_steps} exceed iterations {iterations}")
    if scheduler == "cos_inf" and not 0 <= cos_inf_steps < iterations:
        raise UserError(f"cos_inf steps must be in [0, iterations), got {cos_inf_steps}")


def decay_shape(p: float, decay_type: str, final: float) -> float:
    """g(p) for p in [0, 1): the cooldown's multiplier (upstream `wsd_schedule`'s decay forms)."""
    dt = _DECAY_ALIASES.get(decay_type, decay_type)
    if dt == "linear":
        return final + (1 - final) * (1 - p)
    if dt == "sqrt":
        return final + (1 - final) * (1 - math.sqrt(p))
    if dt == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))
    if dt == "square":
        return final + (1 - final) * (1 - p * p)
    if dt == "mirror_cosine":
        lin = final + (1 - final) * (1 - p)
        cos = final + (1 - final) * 0.5 * (1 + math.cos(math.pi * p))
        return 2 * lin - cos
    if dt == "exp":
        return final**p
    raise UserError(f"unknown decay type {decay_type!r}")


def wsd_boundaries(iterations: int, wsd_fract_decay: float) -> tuple[int, int]:
    """(n_hold, n_anneal): the seed truncates the decay length with int()."""
    n_anneal = int(wsd_fract_decay * iterations)
    return iterations - n_anneal, n_anneal


def _one_cycle(step: int, iterations: int, warmup_steps: int, strategy: str) -> float:
    # torch OneCycleLR two-phase semantics: phase ends at (pct_start*total - 1) and (total - 1);
    # both phases use the same anneal function, so `cos` also warms up along a cosine.
    start, peak = 1.0 / _INIT_DIV, 1.0
    end = start / _FINAL_DIV
    warm_end = float(warmup_steps) - 1.0
    last = float(iterations) - 1.0

    def anneal(a: float, b: float, pct: float) -> float:
        if strategy == "cos":
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (b - a) * pct + a

    step = min(step, iterations - 1) if iterations > 0 else 0
    if step <= warm_end:
        pct = step / warm_end if warm_end > 0 else 1.0
        return anneal(start, peak, pct)
    span = last - warm_end
    pct = (step - warm_end) / span if span > 0 else 1.0
    return anneal(peak, end, pct)


def lr_factor(step: int, s: ScheduleConfig) -> float:
    """Multiplier of the peak LR for the update made after `step` previous updates."""
    check_schedule(s)
    scheduler, iterations, warmup_steps = s.scheduler, s.iterations, s.warmup_steps
    if step < 0:
        raise UserError(f"step must be >= 0, got {step}")
    if scheduler in ("cos", "linear"):
        return _one_cycle(step, iterations, warmup_steps, scheduler)
    # wsd, cos_inf, constant share the linear warmup from lr/100 (checked first, as in the seed).
    if step < warmup_steps:
        return step / warmup_steps + (1 - step / warmup_steps) / _INIT_DIV
    if scheduler == "constant":
        return 1.0
    if scheduler == "cos_inf":
        end = 1.0 / _INIT_DIV / _FINAL_DIV
        cos_end = iterations - s.cos_inf_steps
        if step < cos_end:
            span = cos_end - warmup_steps
            p = (step - warmup_steps) / span if span > 0 else 1.0
            return end + (1.0 - end) * 0.5 * (1 + math.cos(math.pi * p))
        return end
    n_hold, n_anneal = wsd_boundaries(iterations, s.wsd_fract_decay)
    if step < n_hold:
        return 1.0
    if step < iterations:
        return decay_shape((step - n_hold) / n_anneal, s.decay_type, s.wsd_final_lr_scale)
    return s.wsd_final_lr_scale


def schedule_csv(s: ScheduleConfig) -> str:
    """`step,lr_factor` lines for step = 0 … iterations (what `--print-schedule` prints)."""
    lines = ["step,lr_factor"]
    for t in range(s.iterations + 1):
        lines.append(f"{t},{lr_factor(t, s):.10g}")
    return "\n".join(lines) + "\n"
