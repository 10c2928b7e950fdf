"""Loss laws from sweep results: (N, D, L[, batch]) per run, approach 3 with an optional batch term.

N = `costs.law_params(cfg, convention)` of each row's config, D = `tokens_seen` (tokens trained on),
L = `val_loss`. When the batch (tokens per optimizer step) varies across the runs, the law gains the
critical-batch term of `losslaw.effective_tokens`, L = E + A/N^alpha + B/(D / (1 + b/b_crit))^beta,
with log b_crit a sixth parameter of the approach-3 fit. It is kept only if it lowers the AIC of the
log-loss residuals (a nested model always lowers the in-sample objective, so that is no test); if
not, or b_crit runs to its upper bound (no penalty within the measured batches), the law says so and
search caps the batch at the largest one measured.

Held-out error: k-fold CV over runs (repeated over seeds), MAE in nats of the law beside two
baselines fitted on the same folds: the mean loss, and a tokens-only law E + B/D^beta. 95% CIs:
percentile bootstrap of the mean absolute held-out error over runs. MAPE of a loss is weak (the
mean alone scores ~13% on a small sweep); nats are the unit regret is measured in.
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
    N,
    D,
    L,
    batch=None,
    *,
    max_starts: int | None = losslaw.DEFAULT_MAX_STARTS,
    batch_term=True,
    delta: float | str = "auto",
) -> dict:
    """Approach 3, with the batch term when `batch` varies, batch_term is on, and the AIC drops;
    `fit_range` records N, D and the batch range (search caps the batch there when the law has no
    batch term)."""
    if len(N) < 6:
        raise UserError(f"{len(N)} runs is too few to fit a 5-parameter loss law (need >= 6)")
    law = losslaw.fit_chinchilla(N, D, L, max_starts=max_starts, delta=delta)
    law["b_crit"] = None
    law["aic"] = losslaw.log_likelihood_aic(law, N, D, L)
    if not batch_term:
        law["batch_term"] = "none: turned off (--no-batch-term); search caps the batch"
    elif batch is None or len(np.unique(batch)) < 2:
        law["batch_term"] = "none: the batch does not vary in the data"
    elif len(N) < 7:
        law["batch_term"] = "none: too few runs for a sixth parameter"
    else:
        b = np.asarray(batch, dtype=float)
        joint = losslaw.fit_chinchilla(N, D, L, max_starts=max_starts, batch_tokens=b, delta=delta)
        joint["aic"] = losslaw.log_likelihood_aic(joint, N, D, L, b)
        if joint.pop("b_crit_at_bound") or joint["aic"] >= law["aic"]:
            law["batch_term"] = (
                f"none: the batch penalty does not lower the AIC ({joint['aic']:.2f} with it, "
                f"{law['aic']:.2f} without); search caps the batch at the largest measured"
            )
        else:
            joint["aic_without_batch_term"] = law["aic"]
            joint["objective_without_batch_term"] = law["objective"]
            joint["batch_term"] = (
                "D_eff = D / (1 + b / b_crit), b = tokens per optimizer step (McCandlish et al. "
                "2018, arXiv:1812.06162; Kaplan et al. 2020, arXiv:2001.08361, §5.1), kept: AIC "
                f"{joint['aic']:.2f} vs {law['aic']:.2f} without"
            )
            law = joint
    law["fit_range"] = _ranges(N, D, None if batch is None else np.asarray(batch, dtype=float))
    law["corr_logN_logD"] = float(np.corrcoef(np.log(N), np.log(D))[0, 1]) if len(N) > 2 else None
    return law


def _ci(err: np.ndarray, rng, n_boot: int = 1000) -> list[float]:
    draws = err[rng.integers(0, len(err), size=(n_boot, len(err)))].mean(axis=1)
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def held_out(
    N, D, L, batch=None, *, law: dict, folds: int = 5, seeds: int = 3, max_starts=10
) -> dict:
    """K-fold CV (by run, `seeds` repeats) MAE in nats of the law's form (batch term as `law`
    has it) beside the mean and tokens-only baselines, each with a 95% bootstrap CI. Each fold's
    refit starts from the full fit's optimum and the `max_starts` best grid starts."""
    n = len(L)
    folds = max(2, min(folds, n // 3))
    b = np.asarray(batch, dtype=float) if (batch is not None and law.get("b_crit")) else None
    errs = {"law": [], "tokens only": [], "mean": []}
    for s in range(seeds):
        perm = np.random.default_rng(500 + s).permutation(n)
        pred = {k: np.empty(n) for k in errs}
        for te in np.array_split(perm, folds):
            tr = np.setdiff1d(np.arange(n), te)
            f = losslaw.fit_chinchilla(
                N[tr], D[tr], L[tr], max_starts=max_starts,
                batch_tokens=None if b is None else b[tr], delta=law.get("huber_delta", "auto"),
                extra_starts=[law["theta"]] if "theta" in law else None,
            )  # fmt: skip
            pred["law"][te] = losslaw.predict_loss(f, N[te], D[te], None if b is None else b[te])
            t = losslaw.fit_tokens_only(D[tr], L[tr], delta=law.get("huber_delta", 1e-3))
            pred["tokens only"][te] = losslaw.predict_tokens_only(t, D[te])
            pred["mean"][te] = L[tr].mean()
        for k in errs:
            errs[k].append(np.abs(pred[k] - L))
    rng = np.random.default_rng(0)
    out = {"folds": folds, "seeds": seeds}
    for k, e in errs.items():
        per_run = np.mean(e, axis=0)  # each run's error averaged over the seeds
        out[k] = {
            "mae_nats": float(per_run.mean()),
            "ci95": _ci(per_run, rng),
            "mape": float(np.mean(per_run / L) * 100),
            "mae_per_seed": [float(x.mean()) for x in e],
        }
    return out


def held_out_lines(h: dict) -> list[str]:
    lines = [
        f"held out ({h['folds']}-fold CV by run, {h['seeds']} seeds): MAE in nats [95% CI], MAPE%"
    ]
    for k in ("law", "tokens only", "mean"):
        m = h[k]
        name = {"law": "this law", "tokens only": "baseline: tokens only E + B/D^beta",
                "mean": "baseline: the mean loss"}[k]  # fmt: skip
        lines.append(
            f"  {name:36s} {m['mae_nats']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}] "
            f"{m['mape']:6.2f}%"
        )
    return lines


def spread_lines(law: dict, boot: dict, ident: dict) -> list[str]:
    if not boot.get("ci95"):
        return [f"bootstrap: {boot['failed']} of {boot['n']} refits failed; no CI"]
    lines = [
        f"bootstrap ({boot['n'] - boot['failed']} refits kept, {boot['failed']} failed and "
        "dropped): 95% CI, SD, share of refits on an exponent bound "
        f"[{losslaw.EXPONENTS[0]}, {losslaw.EXPONENTS[1]}]"
    ]
    for k, (lo, hi) in boot["ci95"].items():
        extra = ""
        if k in ("alpha", "beta"):
            verdict = "identified" if ident.get(k) else "NOT identified by these data"
            extra = f", {boot['at_bound'][k]:.0%} at a bound: {verdict}"
        lines.append(f"  {k:7s} {law[k] if law.get(k) else float('nan'):.4g} "
                     f"[{lo:.4g}, {hi:.4g}] SD {boot['sd'][k]:.3g}{extra}")  # fmt: skip
    if law.get("corr_logN_logD") is not None:
        lines.append(
            f"  corr(log N, log D) = {law['corr_logN_logD']:.2f} over the runs"
            + (
                " (N and D move together: their exponents trade off)"
                if abs(law["corr_logN_logD"]) > 0.8
                else ""
            )  # fmt: skip
        )
    return lines


def law_lines(law: dict) -> list[str]:
    lines = [
        " ".join(f"{k}={law[k]:.4g}" for k in ("E", "A", "B", "alpha", "beta"))
        + f"  (N convention {law.get('convention', 'porian')}; BFGS from {law['starts']} "
        f"starts; exponents in [{losslaw.EXPONENTS[0]}, {losslaw.EXPONENTS[1]}]; Huber delta "
        f"{law.get('huber_delta', losslaw.DELTA):.3g}, objective {law['objective']:.4g})"
    ]
    if law.get("at_bound"):
        lines.append(f"on an exponent bound: {', '.join(law['at_bound'])} (not identified)")
    if law.get("b_crit"):
        lines.append(
            f"batch term: b_crit = {law['b_crit']:.4g} tokens per step (AIC {law['aic']:.2f}, "
            f"{law['aic_without_batch_term']:.2f} without it)"
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
