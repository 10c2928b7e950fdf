"""Uncertainty carried into a predicted loss: the time model's held-out error and the law's
bootstrap, propagated by Monte Carlo through tokens = budget / step time to L(N, D[, batch]).

What is propagated, and how:
- Step time. The saved procedure's held-out error (`timemodel fit`'s nested CV headline MAPE,
  selection inside every fold; the plain k-fold MAPE for older models) is taken as a log-normal
  multiplicative error with sigma = sqrt(pi / 2) x MAPE (the mean absolute value of a normal error
  is sqrt(2 / pi) sigma). Each draw multiplies each candidate's step time by its own exp(sigma z):
  the errors of two configs are treated as independent, which makes their difference no smaller
  than it is.
- Law parameters. The law's bootstrap refits (`timemodel fit-loss --bootstrap K`: runs resampled
  with replacement, refitted) are the joint draws of (E, A, B, alpha, beta[, b_crit]); they keep
  the strong correlation of A with alpha and B with beta that separate intervals would lose.
  A law that stores them ("bootstrap": {"draws": ...}) is used as is; else the same refits are
  recomputed here from the law's source runs (checked against its data_hash).
- Not propagated: the law's own misfit (its held-out MAE is printed beside it) and a run's seed
  noise, which the measured loss of one run adds (`seed_noise` measures it from a sweep with
  seeds, and `recommend` uses it).

A draw evaluates every candidate under the same law parameters, so the difference of two
candidates is paired: a shift shared by both (E) cancels. Candidate i is tied with #1 when the 95%
interval of L_i - L_1 over the draws contains 0 (i beats #1 in at least 2.5% of the draws).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core import UserError
from timemodel import honest, lawfit, losslaw
from timemodel.io import data_hash, ok_rows, read_tables

N_DRAWS = 2000
TIE_SHARE = 0.025  # i is tied with #1 when it is lower in at least this share of the draws
LAW_KEYS = ("E", "A", "B", "alpha", "beta")
# Columns that tell configs apart when seeds repeat them (a sweep row's config without its seed).
SEED_KEY = ("vocab_size", "n_layer", "n_embd", "n_head", "ffn_hidden", "sequence_length",
            "batch_size", "acc_steps", "lr", "budget_s")  # fmt: skip


def time_error(tm: dict) -> tuple[float, str]:
    """(sigma of log step time, where the number comes from)."""
    fams = (tm.get("nested_cv") or {}).get("families") or {}
    mape = (fams.get(honest.CHOSEN) or {}).get("mape_mean")
    where = "nested-CV MAPE of the fit procedure"
    if mape is None:
        mape = (tm.get("held_out") or {}).get("mape")
        where = "k-fold held-out MAPE"
    if mape is None or not math.isfinite(float(mape)):
        return 0.0, "no held-out error recorded (refit with this version)"
    return math.sqrt(math.pi / 2) * float(mape) / 100.0, f"{where} {float(mape):.1f}%"


def _law_runs(law: dict):
    """(N, D, L, batch) of the runs the law was fitted on, or a reason they cannot be had."""
    srcs = law.get("sources") or []
    if not srcs:
        return None, "the law records no source runs"
    try:
        df = ok_rows(read_tables(list(srcs)))
        N, D, L, b, _ = lawfit.sweep_runs(
            df, convention=law.get("convention", "porian"), loss_col="val_loss", what="law sources"
        )
    except UserError as exc:
        return None, f"its source runs cannot be read ({exc})"
    want = law.get("data_hash")
    if want and data_hash(pd.DataFrame({"N": N, "D": D, "L": L}), ["N", "D", "L"]) != want:
        return None, "its source runs changed since the fit (data_hash differs)"
    return (N, D, L, b), None


def law_draws(law: dict, seed: int = 0) -> tuple[dict | None, str]:
    """{param: array over bootstrap refits} of the law, or (None, why not)."""
    boot = law.get("bootstrap") or {}
    stored = boot.get("draws")
    if isinstance(stored, list) and len(stored) >= 2:
        keys = LAW_KEYS + (("b_crit",) if law.get("b_crit") else ())
        try:
            out = {k: np.array([float(d[k]) for d in stored]) for k in keys}
        except (KeyError, TypeError, ValueError):
            return None, "the law's stored bootstrap draws are malformed"
        return out, f"{len(stored)} bootstrap refits stored in the law"
    n = int(boot.get("n") or law.get("bootstrap_n") or 0)
    if n < 2:
        return None, "the law has no bootstrap (fit-loss --bootstrap K)"
    runs, why = _law_runs(law)
    if runs is None:
        return None, why
    N, D, L, b = runs
    batch = b if law.get("b_crit") else None
    rng = np.random.default_rng(seed)
    vals: dict[str, list] = {k: [] for k in LAW_KEYS + (("b_crit",) if batch is not None else ())}
    for _ in range(n):
        idx = rng.integers(0, len(N), len(N))
        try:
            f = losslaw.fit_chinchilla(
                N[idx], D[idx], L[idx], max_starts=losslaw.BOOT_STARTS,
                batch_tokens=None if batch is None else batch[idx],
                delta=law.get("huber_delta", losslaw.DELTA),
                extra_starts=[law["theta"]] if "theta" in law else None,
            )  # fmt: skip
        except (UserError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
        for k in vals:
            vals[k].append(f[k])
    if len(vals["E"]) < 2:
        return None, "its bootstrap refits failed"
    return {k: np.asarray(v, float) for k, v in vals.items()}, (
        f"{len(vals['E'])} bootstrap refits of the law's {len(N)} runs"
    )


def _loss(params: dict, N, D, b) -> np.ndarray:
    """L(N, D[, b]) with one parameter set per row: params arrays of shape (K, 1)."""
    D = np.asarray(D, dtype=float)
    if "b_crit" in params:
        D = D / (1.0 + b / params["b_crit"])
    return params["E"] + params["A"] / N ** params["alpha"] + params["B"] / D ** params["beta"]


def finite_draws(law_params: dict, cols: dict, law: dict, hours: float) -> tuple[dict | None, int]:
    """The law's parameter sets whose predicted loss is finite at every candidate (at its point
    token count), and how many were dropped. A refit on a few resampled runs can land on a
    degenerate corner (a critical batch of 1e-308 tokens sends D / (1 + b / b_crit) to 0 and the
    loss to inf); such a set says nothing about the law's spread. None when fewer than 2 remain."""
    step = np.asarray(cols["step_s"], float)[None, :]
    bt = np.asarray(cols["batch_tokens"], float)[None, :]
    N = np.asarray(cols["law_params"], float)[None, :]
    tokens = np.floor(hours * 3600.0 / step) * bt
    with np.errstate(all="ignore"):
        loss = _loss({k: v[:, None] for k, v in law_params.items()}, N, tokens, bt)
    keep = np.isfinite(loss).all(axis=1)
    dropped = int((~keep).sum())
    if keep.sum() < 2:
        return None, dropped
    return {k: v[keep] for k, v in law_params.items()}, dropped


def law_draws_for(law: dict, cols: dict, hours: float) -> tuple[dict | None, str]:
    """`law_draws` without the sets that predict a non-finite loss at a candidate of `cols`
    (`finite_draws`); the text says where the draws come from and how many were dropped."""
    draws, src = law_draws(law)
    if draws is None:
        return None, src
    kept, dropped = finite_draws(draws, cols, law, hours)
    if kept is None:
        return None, f"{src}, of which {dropped} predict a non-finite loss: under 2 left"
    if dropped:
        src = f"{src}; {dropped} dropped: a non-finite loss at a candidate"
    return kept, src


class Propagated:
    """Loss draws of candidates (K draws x n candidates), their intervals and ties with #0."""

    def __init__(self, draws: np.ndarray, point: np.ndarray):
        self.draws, self.point = draws, point
        self.lo, self.hi = np.percentile(draws, [2.5, 97.5], axis=0)
        self.sd = draws.std(axis=0, ddof=1) if len(draws) > 1 else np.zeros(draws.shape[1])
        diff = draws - draws[:, [0]]
        self.p_beats_first = np.mean(diff < 0, axis=0)
        self.diff_lo, self.diff_hi = np.percentile(diff, [2.5, 97.5], axis=0)
        self.tied = self.p_beats_first >= TIE_SHARE
        self.tied[0] = True


def propagate(
    cols: dict,
    law: dict,
    *,
    hours: float,
    sigma_t: float,
    law_params: dict | None,
    n_draws: int = N_DRAWS,
    seed: int = 0,
) -> Propagated:
    """Loss draws of the candidates in `cols` (arrays step_s, batch_tokens, law_params; the first
    is the reference "#1"). law_params None: the law's point estimate in every draw."""
    step = np.asarray(cols["step_s"], float)[None, :]
    bt = np.asarray(cols["batch_tokens"], float)[None, :]
    N = np.asarray(cols["law_params"], float)[None, :]
    rng = np.random.default_rng(seed)
    budget = hours * 3600.0
    mult = np.exp(sigma_t * rng.standard_normal((n_draws, step.shape[1]))) if sigma_t else 1.0
    tokens = np.maximum(np.floor(budget / (step * mult)), 1.0) * bt
    if law_params is None:
        keys = LAW_KEYS + (("b_crit",) if law.get("b_crit") else ())
        p = {k: np.full((n_draws, 1), float(law[k])) for k in keys}
    else:
        k = len(law_params["E"])
        pick = np.arange(n_draws) % k
        p = {name: v[pick][:, None] for name, v in law_params.items()}
    draws = _loss(p, N, tokens, bt)
    point_tokens = np.floor(budget / step) * bt
    keys = LAW_KEYS + (("b_crit",) if law.get("b_crit") else ())
    point = _loss({k: np.array([[float(law[k])]]) for k in keys}, N, point_tokens, bt)[0]
    return Propagated(draws, point)


def seed_noise(law: dict) -> dict | None:
    """`seed_noise_of` the law's source runs (None when they cannot be read)."""
    srcs = law.get("sources") or []
    try:
        return seed_noise_of(ok_rows(read_tables(list(srcs)))) if srcs else None
    except UserError:
        return None


def seed_noise_of(df: pd.DataFrame) -> dict | None:
    """Loss noise between model seeds, from runs that repeat a config with several seeds: the
    pooled within-config SD of val_loss {"sd", "configs", "runs"} (None when no config has two
    seeds). A config is SEED_KEY's columns (its budget among them), without the seed."""
    if "seed" not in df.columns or "val_loss" not in df.columns:
        return None
    key = [c for c in SEED_KEY if c in df.columns]
    loss = pd.to_numeric(df["val_loss"], errors="coerce")
    groups = df.assign(_l=loss).dropna(subset=["_l"]).groupby(key, dropna=False)["_l"]
    var, dof, n = 0.0, 0, 0
    for _, g in groups:
        if len(g) >= 2:
            var += float(g.var(ddof=1)) * (len(g) - 1)
            dof += len(g) - 1
            n += 1
    if dof == 0:
        return None
    return {"sd": math.sqrt(var / dof), "configs": n, "runs": dof + n}


def seeds_to_resolve(gap: float, sd: float) -> int | None:
    """Seeds per config to tell two configs `gap` nats apart with a two-sided 5% test at 80%
    power: n = 2 (1.96 + 0.84)^2 sd^2 / gap^2 (two-sample z test)."""
    if gap <= 0 or sd <= 0:
        return None
    return max(2, math.ceil(2 * (1.96 + 0.84) ** 2 * sd**2 / gap**2))


def diff_sd(p: Propagated, idx: np.ndarray) -> float:
    """Mean SD over `idx` of the paired difference L_i - L_1 (0 for an empty idx)."""
    if len(idx) == 0:
        return 0.0
    d = p.draws[:, idx] - p.draws[:, [0]]
    return float(np.mean(d.std(axis=0, ddof=1)))


def verdict_lines(
    full: Propagated,
    time_only: Propagated,
    law_only: Propagated | None,
    *,
    shown: int,
    tm: dict,
    noise: dict | None,
) -> list[str]:
    """Whether the top is resolved, and what to measure next: repeats or a quieter machine when
    the step-time error dominates the spread of L_i - L_1 over the tied set, seeds and runs near
    the picks when the law's parameters do, and the seeds a measurement needs against seed noise."""
    tied = np.flatnonzero(full.tied)
    others = tied[tied > 0]
    out = []
    if len(others) == 0:
        second = full.point[1] - full.point[0] if len(full.point) > 1 else float("nan")
        out.append(
            f"#1 is resolved: no other candidate beats it in {TIE_SHARE:.1%} of the draws "
            f"(#2 is {second:.4f} nats behind)"
        )
    else:
        beyond = int(np.sum(tied >= shown))
        every = bool(full.tied.all()) and len(tied) > shown
        more = " (every candidate propagated; more may be)" if every else ""
        out.append(
            f"TIED: the top {len(tied)}{more} candidates"
            + (f" ({beyond} of them below the printed rows)" if beyond else "")
            + f" are within the noise of #1 (predicted gaps up to "
            f"{float(np.max(full.point[tied] - full.point[0])):.4f} nats, 95% interval of the "
            f"gap to #2 [{full.diff_lo[1]:+.4f}, {full.diff_hi[1]:+.4f}]); the ranking among "
            "them is not a prediction"
        )
    sd_t = diff_sd(time_only, others if len(others) else np.arange(1, min(len(full.point), 5)))
    sd_l = (
        diff_sd(law_only, others if len(others) else np.arange(1, min(len(full.point), 5)))
        if law_only is not None
        else 0.0
    )
    out.append(
        f"spread of L_i - L_1 from the step-time error {sd_t:.4f} nats, from the law's "
        f"parameters {sd_l:.4f} nats"
        + ("" if law_only is not None else " (not propagated: no bootstrap)")
    )
    rep = (tm.get("repeatability") or {}).get("mape")
    if len(others) == 0 and noise is None:
        return out
    next_ = []
    if sd_t >= sd_l:
        if rep is not None and rep >= 5.0:
            next_.append(
                f"the machine: repeats of one config disagree by {rep:.1f}% (MAPE), so step "
                "times cannot be told apart; measure on a quieter machine (or pin cores: "
                "bench sweep --cpu-cores), with --repeat 3 --repeat-until 2"
            )
        else:
            next_.append(
                "step times: re-measure the tied configs with repeats (bench sweep --repeat 3 "
                "--repeat-until 2, their commands below) and refit the time model"
            )
    else:
        next_.append(
            "the law: its parameters are uncertain; train the tied configs with seeds (their "
            "bench sweep commands with --seeds 3) and refit the law with those runs"
        )
    if noise is not None and len(full.point) > 1:
        gap = float(full.point[1] - full.point[0])
        n = seeds_to_resolve(gap, noise["sd"])
        if n is not None:
            next_.append(
                f"seeds: one run's loss varies by {noise['sd']:.4f} nats between seeds (SD over "
                f"{noise['configs']} configs); telling #1 from #2 ({gap:.4f} nats apart) by "
                f"measurement takes ~{n} seeds each"
            )
    elif noise is None:
        next_.append(
            "seed noise is unmeasured: sweep with --seeds 2 (or more) so the law's runs hold it"
        )
    out.append("measure next: " + "; ".join(next_))
    return out
