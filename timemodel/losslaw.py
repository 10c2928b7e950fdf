"""Chinchilla approach 3 (Hoffmann et al. 2022, arXiv:2203.15556, §3.3):
L(N, D) = E + A/N^alpha + B/D^beta, fitted as Epoch AI's replication does it (Besiroglu et al.
2024, arXiv:2404.10102; notebook epoch-research/analyzing-chinchilla/data_analysis.ipynb).

Fitted in log space: pred = LSE(a - alpha log N, b - beta log D, e), objective
sum Huber_1e-3(pred - log L), minimised with the analytic gradient from the 5*5*5*6*6 = 4500 grid
of starts, best final objective kept (fits with an exponent outside [0, EXPONENT_MAX] dropped).
Epoch run L-BFGS; we run BFGS, which reaches the same optimum here in a tenth of the time.

Optional batch term: with the tokens per optimizer step `b` of every run, D becomes the effective
D / (1 + b / b_crit) (`effective_tokens`) and log b_crit is a sixth parameter of the same fit,
started from a few values across the measured batch range.

Speed: the objective is evaluated at every grid start at once (numpy), and BFGS runs from the
`max_starts` best of them (0 or None = every start). On the Epoch data the best starts all reach
the same optimum, so the cut changes only the run time. The solver minimises objective / delta:
with delta = 1e-3 the raw gradients are ~1e-3 smaller and the gradient-norm stop fires early; a
positive scale leaves the minimiser unchanged.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize

from core import UserError

DELTA = 1e-3
GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 26.0, 5.0),
    "b": np.arange(0.0, 26.0, 5.0),
}
DEFAULT_MAX_STARTS = 100
EXPONENT_MAX = 10.0  # alpha, beta are searched in [0, EXPONENT_MAX]; published fits sit near 0.3
BATCH_SPAN = 1e3  # b_crit above max(b) * 1e3 means "no batch penalty within the data"
BATCH_STARTS = (0.1, 1.0, 10.0)  # b_crit starts, times the geometric mean of the batches


def huber(r: np.ndarray, delta: float = DELTA) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r**2, delta * (ar - 0.5 * delta))


def _lse3(t0, t1, e):
    m = np.maximum(np.maximum(t0, t1), e)
    e0, e1, e2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
    return m, e0, e1, e2


def _objective(theta, logN, logD, logL, logb=None) -> tuple[float, np.ndarray]:
    """Sum of Huber(LSE(a - alpha logN, b - beta logDeff, e) - log L) and its gradient in
    (a, b, e, alpha, beta[, log b_crit]), both divided by delta. The three-term LSE is written
    out by hand (max-shifted): it runs ~1e5 times per fit and is ~10x faster than scipy's."""
    a, b, e, alpha, beta = theta[:5]
    if logb is not None:  # logDeff = logD - log(1 + b / b_crit); its d/d log b_crit = sigmoid
        z = logb - theta[5]
        logD = logD - np.logaddexp(0.0, z)
        sig = 0.5 * (1.0 + np.tanh(0.5 * z))
    m, e0, e1, e2 = _lse3(a - alpha * logN, b - beta * logD, e)
    s = e0 + e1 + e2
    r = m + np.log(s) - logL
    # d Huber / d r = clip(r, +-delta); d LSE / d term_k = e_k / s (softmax weight).
    dh = np.clip(r, -DELTA, DELTA) / s
    grad = [dh @ e0, dh @ e1, dh @ e2, -(dh * e0) @ logN, -(dh * e1) @ logD]
    if logb is not None:
        grad.append(-(dh * e1) @ (beta * sig))
    return float(huber(r).sum()) / DELTA, np.array(grad) / DELTA


def grid_starts(lcs: np.ndarray | None = None) -> np.ndarray:
    """All grid starts as rows (a, b, e, alpha, beta[, log b_crit])."""
    axes = [GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"]]
    return np.array(list(itertools.product(*axes, *([lcs] if lcs is not None else []))))


def _initial(starts, logN, logD, logL, logb) -> np.ndarray:
    """Objective of every start at once ((starts, runs) arrays), to order the BFGS runs."""
    if logb is not None:
        logD = logD - np.logaddexp(0.0, logb - starts[:, [5]])
    m, e0, e1, e2 = _lse3(
        starts[:, [0]] - starts[:, [3]] * logN,
        starts[:, [1]] - starts[:, [4]] * logD,
        starts[:, [2]],
    )
    return huber(m + np.log(e0 + e1 + e2) - logL).sum(axis=1)


def fit_chinchilla(N, D, L, max_starts: int | None = DEFAULT_MAX_STARTS, batch_tokens=None) -> dict:
    """Fit E, A, B, alpha, beta (and b_crit with `batch_tokens`); `objective` is the plain
    Huber sum."""
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    logb = lcs = None
    if batch_tokens is not None:
        logb = np.log(np.asarray(batch_tokens, dtype=float))
        lcs = logb.mean() + np.log(BATCH_STARTS)
    starts = grid_starts(lcs)
    order = np.argsort(_initial(starts, logN, logD, logL, logb), kind="stable")
    if max_starts:  # None or 0: every grid point
        order = order[:max_starts]
    best = None
    for i in order:
        res = minimize(
            _objective, starts[i], args=(logN, logD, logL, logb), jac=True, method="BFGS"
        )
        ok = res.success or res.status == 2  # 2: precision loss at the optimum (a Huber kink)
        exps_ok = all(0.0 <= x <= EXPONENT_MAX for x in res.x[3:5])
        if ok and exps_ok and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise UserError("the loss-law fit did not converge from any start; check the data")
    a, b, e, alpha, beta = best.x[:5]
    out = {
        "A": float(np.exp(a)),
        "B": float(np.exp(b)),
        "E": float(np.exp(e)),
        "alpha": float(alpha),
        "beta": float(beta),
        "objective": float(best.fun) * DELTA,
        "n": int(len(N)),
        "starts": int(len(order)),
    }
    if logb is not None:
        out["b_crit"] = float(np.exp(best.x[5]))
        out["b_crit_at_bound"] = bool(best.x[5] >= logb.max() + np.log(BATCH_SPAN))
    return out


def compute_optimal(law: dict, C: float) -> dict:
    """C ~ 6ND: N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b, G = (alpha A / (beta B))^(1/(alpha+beta)),
    a = beta/(alpha+beta), b = alpha/(alpha+beta) (Hoffmann et al. 2022, arXiv:2203.15556,
    eq. 4)."""
    A, B, al, be = law["A"], law["B"], law["alpha"], law["beta"]
    G = (al * A / (be * B)) ** (1.0 / (al + be))
    n = G * (C / 6) ** (be / (al + be))
    d = (C / 6) ** (al / (al + be)) / G
    return {"C": C, "N_opt": n, "D_opt": d, "tokens_per_param": d / n}


def effective_tokens(law: dict, D, batch_tokens=None):
    """Tokens an optimally small batch would need for the same loss: D / (1 + b / b_crit).

    The critical-batch form of McCandlish et al. 2018 (arXiv:1812.06162, §2.3: the examples to
    reach a loss grow as E_min (1 + B / B_noise)) as Kaplan et al. 2020 write it for loss laws
    (arXiv:2001.08361, §5.1: E_min(E) = E / (1 + B / B_crit)). Here b is the tokens per optimizer
    step and b_crit a constant fitted from a sweep where the batch varies (`fit-loss`). A law
    without `b_crit` (or no batch given) returns D unchanged.
    """
    bc = law.get("b_crit")
    if bc is None or batch_tokens is None:
        return D
    return D / (1.0 + np.asarray(batch_tokens, dtype=float) / bc)


def predict_loss(law: dict, N, D, batch_tokens=None):
    D = effective_tokens(law, D, batch_tokens)
    return law["E"] + law["A"] / N ** law["alpha"] + law["B"] / D ** law["beta"]


def bootstrap(N, D, L, n_boot: int, seed: int = 0, max_starts: int | None = 200, batch=None):
    """Percentile 95% CIs from refits on resampled runs (fewer starts per refit: each costs a
    full fit). With `batch`, b_crit is refitted too."""
    rng = np.random.default_rng(seed)
    keys = ("A", "B", "E", "alpha", "beta") + (("b_crit",) if batch is not None else ())
    vals = {k: [] for k in keys}
    for _ in range(n_boot):
        idx = rng.integers(0, len(N), len(N))
        b = None if batch is None else np.asarray(batch)[idx]
        f = fit_chinchilla(N[idx], D[idx], L[idx], max_starts=max_starts, batch_tokens=b)
        for k in keys:
            vals[k].append(f[k])
    return {
        k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in vals.items()
    }
