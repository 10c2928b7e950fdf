"""Loss laws from sweep results: (N, D, L[, batch]) per run, approach 3 with an optional batch term.

N = `costs.law_params(cfg, convention)` of each row's config, D = `tokens_seen` (tokens trained on),
L = `val_loss`. When the batch (tokens per optimizer step) varies across the runs, the law gains the
critical-batch term of `losslaw.effective_tokens`, L = E + A/N^alpha + B/(D / (1 + b/b_crit))^beta,
with log b_crit a sixth parameter of the approach-3 fit. If it fits no better than the law without
it, or b_crit runs to its upper bound (no penalty within the measured batches), the law says so and
search caps the batch at the largest one measured.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core import UserError
from model import costs
from timemodel import losslaw
from timemodel.io import ok_rows, positive_numeric, require_columns
from timemodel.table import config_of, normalize


def sweep_runs(df: pd.DataFrame, *, convention: str, loss_col: str, what: str) -> tuple:
    """(N, D, L, batch_tokens, note) arrays from sweep rows (status ok only).

    D is `tokens_seen`; older sweeps without it fall back to steps_total (then steps_timed) times
    the global tokens per step, and `note` says so.
    """
    if convention not in costs.LAW_CONVENTIONS:
        raise UserError(f"--convention must be one of {', '.join(costs.LAW_CONVENTIONS)}")
    df = ok_rows(df)
    if len(df) == 0:
        raise UserError(f"{what}: no rows with status ok")
    require_columns(df, [loss_col], f"{what} (loss column; choose it with --loss-col)")
    df = positive_numeric(normalize(df, what), [loss_col], what)
    per_step = np.array(
        [r.batch_size * r.acc_steps * r.dp * r.sequence_length for r in df.itertuples()], float
    )
    note = None
    for col in ("tokens_seen", "steps_total", "steps_timed"):
        if col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().all():
            break
    else:
        raise UserError(
            f"{what}: no tokens_seen column (nor steps_total/steps_timed); re-run "
            "the sweep with this version of bench"
        )
    D = positive_numeric(df, [col], what)[col].to_numpy(float)
    if col != "tokens_seen":
        D = D * per_step
        note = f"no tokens_seen column: D = {col} x tokens per step"
    N = np.array([costs.law_params(config_of(r)[0], convention) for _, r in df.iterrows()], float)
    return N, D, df[loss_col].to_numpy(float), per_step, note


def _ranges(N, D, b=None) -> dict:
    out = {"N": [float(N.min()), float(N.max())], "D": [float(D.min()), float(D.max())]}
    if b is not None:
        out["batch_tokens"] = [float(b.min()), float(b.max())]
    return out


def fit_law(
    N, D, L, batch=None, *, max_starts: int | None = losslaw.DEFAULT_MAX_STARTS, batch_term=True
) -> dict:
    """Approach 3, with the batch term when `batch` varies (and batch_term); `fit_range` records
    N, D and the batch range (search caps the batch there when the law has no batch term)."""
    if len(N) < 6:
        raise UserError(f"{len(N)} runs is too few to fit a 5-parameter loss law (need >= 6)")
    law = losslaw.fit_chinchilla(N, D, L, max_starts=max_starts)
    law["b_crit"] = None
    if not batch_term:
        law["batch_term"] = "none: turned off (--no-batch-term); search caps the batch"
    elif batch is None or len(np.unique(batch)) < 2:
        law["batch_term"] = "none: the batch does not vary in the data"
    elif len(N) < 7:
        law["batch_term"] = "none: too few runs for a sixth parameter"
    else:
        b = np.asarray(batch, dtype=float)
        joint = losslaw.fit_chinchilla(N, D, L, max_starts=max_starts, batch_tokens=b)
        if joint.pop("b_crit_at_bound") or joint["objective"] >= law["objective"]:
            law["batch_term"] = (
                "none: a batch penalty does not fit the data better; search caps the batch at "
                "the largest measured"
            )
        else:
            joint["objective_without_batch_term"] = law["objective"]
            joint["batch_term"] = (
                "D_eff = D / (1 + b / b_crit), b = tokens per optimizer step (McCandlish et al. "
                "2018, arXiv:1812.06162; Kaplan et al. 2020, arXiv:2001.08361, §5.1)"
            )
            law = joint
    law["fit_range"] = _ranges(N, D, None if batch is None else np.asarray(batch, dtype=float))
    return law


def law_lines(law: dict) -> list[str]:
    lines = [
        " ".join(f"{k}={law[k]:.4g}" for k in ("E", "A", "B", "alpha", "beta"))
        + f"  (N convention {law.get('convention', 'porian')}; BFGS from {law['starts']} "
        f"of 4500 grid starts; Huber objective {law['objective']:.4g})"
    ]
    if law.get("b_crit"):
        lines.append(
            f"batch term: b_crit = {law['b_crit']:.4g} tokens per step (objective "
            f"{law['objective_without_batch_term']:.4g} without it)"
        )
    elif law.get("batch_term"):
        lines.append(f"batch term {law['batch_term']}")
    rng = law.get("fit_range") or {}
    if rng:
        lines.append(
            "fitted on "
            + ", ".join(f"{k} {lo:.3g}..{hi:.3g}" for k, (lo, hi) in rng.items())
            + " (predict/search warn beyond 2x)"
        )
    return lines
