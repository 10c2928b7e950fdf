"""Chinchilla approach 3 (Hoffmann et al. 2022, arXiv:2203.15556, §3.3):
L(N, D) = E + A/N^alpha + B/D^beta, fitted as Epoch AI's replication does it (Besiroglu et al.
2024, arXiv:2404.10102; notebook epoch-research/analyzing-chinchilla/data_analysis.ipynb).

Fitted in log space: pred = LSE(a - alpha log N, b - beta log D, e), objective
sum Huber_delta(pred - log L), minimised by BFGS with the analytic gradient from the best
`max_starts` (default 100) of the 4*4*5*6*6 = 2880 grid starts, best final objective kept;
alpha and beta are kept inside their bounds by a logistic map of the solver's coordinates.

Bounds. alpha and beta are searched in EXPONENTS = [0.05, 1.5]: published fits sit at 0.2-0.6
(Hoffmann et al. 2022: 0.34 / 0.28; Besiroglu et al. 2024: 0.35 / 0.37; Porian et al. 2024), and
an exponent of 3-5 on a small sweep only says that the term is not identified. An exponent that
ends on a bound is reported as such.

Huber delta. Epoch (and Hoffmann) use delta = 1e-3 on log-loss residuals of ~1e-2: effectively an
L1 fit. `delta="auto"` (fit-loss) scales it to the residuals: a first fit at 1e-3, then
delta = 1.345 x the robust residual scale (1.4826 x MAD), Huber's choice for 95% efficiency at
normal errors (Huber 1964, Ann. Math. Stat. 35(1); Holland & Welsch 1977), and a refit from the
first optimum and the best starts. `replicate-chinchilla` keeps 1e-3 (the replicated procedure).

Optional batch term: with the tokens per optimizer step `b` of every run, D becomes the effective
D / (1 + b / b_crit) (`effective_tokens`) and log b_crit is a sixth parameter of the same fit,
started from a few values across the measured batch range.

Speed: the objective is evaluated at every grid start at once (numpy), and BFGS runs from the
`max_starts` best of them (0 or None = every start). The solver minimises objective / delta: with
delta = 1e-3 the raw gradients are ~1e-3 smaller and the gradient-norm stop fires early; a
positive scale leaves the minimiser unchanged.

Bootstrap: refits on runs resampled with replacement, each from the full fit's optimum and the
best BOOT_STARTS grid starts (a refit from 100 starts costs a full fit); a refit that fails is
dropped and counted, never fatal.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize

from core import UserError

DELTA = 1e-3
EXPONENTS = (0.05, 1.5)  # alpha, beta bounds of every fit
GRID = {
    "alpha": np.array([0.05, 0.5, 1.0, 1.5]),
    "beta": np.array([0.05, 0.5, 1.0, 1.5]),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 26.0, 5.0),
    "b": np.arange(0.0, 26.0, 5.0),
}
DEFAULT_MAX_STARTS = 100
BOOT_STARTS = 10
READ_EXPONENT_MAX = 10.0  # a saved law with an exponent above this is refused (older fits: 2.7)
HUBER_K = 1.345
BATCH_SPAN = 1e3  # b_crit above max(b) * 1e3 means "no batch penalty within the data"
BATCH_STARTS = (0.1, 1.0, 10.0)  # b_crit starts, times the geometric mean of the batches


def huber(r: np.ndarray, delta: float = DELTA) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r**2, delta * (ar - 0.5 * delta))


def _lse3(t0, t1, e):
    m = np.maximum(np.maximum(t0, t1), e)
    e0, e1, e2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
    return m, e0, e1, e2


def _objective(theta, logN, logD, logL, logb=None, delta=DELTA) -> tuple[float, np.ndarray]:
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
    dh = np.clip(r, -delta, delta) / s
    grad = [dh @ e0, dh @ e1, dh @ e2, -(dh * e0) @ logN, -(dh * e1) @ logD]
    if logb is not None:
        grad.append(-(dh * e1) @ (beta * sig))
    return float(huber(r, delta).sum()) / delta, np.array(grad) / delta


def grid_starts(lcs: np.ndarray | None = None) -> np.ndarray:
    """All grid starts as rows (a, b, e, alpha, beta[, log b_crit])."""
    axes = [GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"]]
    return np.array(list(itertools.product(*axes, *([lcs] if lcs is not None else []))))


def _initial(starts, logN, logD, logL, logb, delta=DELTA) -> np.ndarray:
    """Objective of every start at once ((starts, runs) arrays), to order the BFGS runs."""
    if logb is not None:
        logD = logD - np.logaddexp(0.0, logb - starts[:, [5]])
    m, e0, e1, e2 = _lse3(
        starts[:, [0]] - starts[:, [3]] * logN,
        starts[:, [1]] - starts[:, [4]] * logD,
        starts[:, [2]],
    )
    return huber(m + np.log(e0 + e1 + e2) - logL, delta).sum(axis=1)


def _to_x(z: np.ndarray) -> np.ndarray:
    """Solver coordinates -> parameters: alpha, beta = lo + (hi - lo) sigmoid(z)."""
    x = np.array(z, dtype=float)
    lo, hi = EXPONENTS
    x[3:5] = lo + (hi - lo) / (1.0 + np.exp(-np.clip(z[3:5], -50, 50)))
    return x


def _to_z(x: np.ndarray) -> np.ndarray:
    z = np.array(x, dtype=float)
    lo, hi = EXPONENTS
    p = np.clip((x[3:5] - lo) / (hi - lo), 1e-6, 1 - 1e-6)
    z[3:5] = np.log(p / (1 - p))
    return z


def _objective_z(z, *args):
    x = _to_x(z)
    f, g = _objective(x, *args)
    lo, hi = EXPONENTS
    s = (x[3:5] - lo) / (hi - lo)
    g = g.copy()
    g[3:5] *= (hi - lo) * s * (1 - s)
    return f, g


def _solve(starts, args):
    """Best BFGS result over `starts`, in coordinates that keep alpha and beta inside EXPONENTS
    (a logistic map; scipy's L-BFGS-B took 25x the time here). None if no start succeeded;
    the result's x is in parameter space."""
    best = None
    for x0 in starts:
        res = minimize(_objective_z, _to_z(np.asarray(x0, float)), args=args, jac=True,
                       method="BFGS")  # fmt: skip
        ok = res.success or res.status == 2  # 2: precision loss at the optimum (a Huber kink)
        if ok and np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
            best = res
    if best is not None:
        best.x = _to_x(best.x)
    return best


def fit_chinchilla(
    N,
    D,
    L,
    max_starts: int | None = DEFAULT_MAX_STARTS,
    batch_tokens=None,
    delta: float | str = DELTA,
    extra_starts=None,
) -> dict:
    """Fit E, A, B, alpha, beta (and b_crit with `batch_tokens`); `objective` is the plain
    Huber sum at the final delta. delta: a number, or "auto" (scaled to the residuals, see the
    module doc). extra_starts: parameter vectors tried besides the grid's best."""
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    logb = lcs = None
    if batch_tokens is not None:
        logb = np.log(np.asarray(batch_tokens, dtype=float))
        lcs = logb.mean() + np.log(BATCH_STARTS)
    starts = grid_starts(lcs)
    d0 = DELTA if delta == "auto" else float(delta)
    order = np.argsort(_initial(starts, logN, logD, logL, logb, d0), kind="stable")
    if max_starts:  # None or 0: every grid point
        order = order[:max_starts]
    tries = [starts[i] for i in order] + [np.asarray(x, float) for x in (extra_starts or [])]
    best = _solve(tries, (logN, logD, logL, logb, d0))
    if best is None:
        raise UserError("the loss-law fit did not converge from any start; check the data")
    if delta == "auto":
        r = _residuals(best.x, logN, logD, logL, logb)
        scale = 1.4826 * float(np.median(np.abs(r - np.median(r))))
        d0 = max(HUBER_K * scale, 1e-4)
        again = [best.x] + [starts[i] for i in order[:BOOT_STARTS]]
        best = _solve(again, (logN, logD, logL, logb, d0)) or best
    a, b, e, alpha, beta = best.x[:5]
    lo = -690.0  # exp(-690) ~ 1e-300: a coefficient that ran to 0 stays a positive number
    out = {
        "A": float(np.exp(max(a, lo))),
        "B": float(np.exp(max(b, lo))),
        "E": float(np.exp(max(e, lo))),
        "alpha": float(alpha),
        "beta": float(beta),
        "objective": float(best.fun) * d0,
        "huber_delta": d0,
        "n": int(len(N)),
        "starts": int(len(tries)),
        "theta": [float(v) for v in best.x],
        "at_bound": [
            k
            for k, v in (("alpha", alpha), ("beta", beta))
            if min(abs(v - EXPONENTS[0]), abs(v - EXPONENTS[1])) < 1e-3
        ],  # fmt: skip
    }
    if logb is not None:
        with np.errstate(over="ignore"):  # inf: no batch effect in reach (a bootstrap drops it)
            out["b_crit"] = float(np.exp(best.x[5]))
        out["b_crit_at_bound"] = bool(best.x[5] >= logb.max() + np.log(BATCH_SPAN))
    return out


def _residuals(theta, logN, logD, logL, logb=None) -> np.ndarray:
    a, b, e, alpha, beta = theta[:5]
    if logb is not None:
        logD = logD - np.logaddexp(0.0, logb - theta[5])
    m, e0, e1, e2 = _lse3(a - alpha * logN, b - beta * logD, e)
    return m + np.log(e0 + e1 + e2) - logL


def log_likelihood_aic(law: dict, N, D, L, batch=None) -> float:
    """AIC = n ln(RSS/n) + 2k of the log-loss residuals (Gaussian errors; Akaike 1974, IEEE TAC
    19(6)), k = 5 or 6 (with b_crit): the batch term must buy more than its parameter."""
    pred = predict_loss(law, N, D, batch if law.get("b_crit") else None)
    r = np.log(pred) - np.log(L)
    k = 6 if law.get("b_crit") else 5
    n = len(L)
    return float(n * np.log(max(float(np.sum(r**2)), 1e-300) / n) + 2 * k)


def fit_tokens_only(D, L, delta: float = DELTA) -> dict:
    """The tokens-only baseline L = E + B / D^beta (no model-size term), the same Huber fit in
    log space (A -> 0), beta inside EXPONENTS."""
    logD, logL = np.log(D), np.log(L)
    lo, hi = EXPONENTS

    def f(z):
        beta_s = 1.0 / (1.0 + np.exp(-np.clip(z[2], -50, 50)))
        beta = lo + (hi - lo) * beta_s
        t = np.logaddexp(z[0] - beta * logD, z[1])
        r = t - logL
        w = np.exp(z[0] - beta * logD - t)
        dh = np.clip(r, -delta, delta)
        g = [dh @ w, dh @ (1 - w), -(dh * w) @ logD * (hi - lo) * beta_s * (1 - beta_s)]
        return float(huber(r, delta).sum()) / delta, np.array(g) / delta

    best = None
    for b0 in (0.0, 5.0, 10.0, 20.0):
        for e0 in (-1.0, 0.0, 1.0):
            for z2 in (-2.0, 0.0):
                res = minimize(f, [b0, e0, z2], jac=True, method="BFGS")
                if best is None or res.fun < best.fun:
                    best = res
    z = best.x
    return {"B": float(np.exp(z[0])), "E": float(np.exp(z[1])),
            "beta": float(lo + (hi - lo) / (1.0 + np.exp(-np.clip(z[2], -50, 50))))}  # fmt: skip


def predict_tokens_only(law: dict, D):
    return law["E"] + law["B"] / np.asarray(D, dtype=float) ** law["beta"]


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


def bootstrap(
    N, D, L, n_boot: int, seed: int = 0, batch=None, law: dict | None = None, delta=DELTA
) -> dict:
    """Percentile 95% CIs, SDs, the share of draws at an exponent bound, and the draws themselves
    (joint parameter sets, for propagating the law's uncertainty), from refits on resampled runs
    (each from `law`'s optimum and the best BOOT_STARTS grid starts). A refit that fails is
    dropped and counted in "failed", as is one that ends at a non-finite parameter (a critical
    batch of infinitely many tokens: no CI, SD or stored draw can hold it)."""
    rng = np.random.default_rng(seed)
    keys = ("A", "B", "E", "alpha", "beta") + (("b_crit",) if batch is not None else ())
    vals = {k: [] for k in keys}
    failed = 0
    extra = [law["theta"]] if law and "theta" in law else None
    draws = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(N), len(N))
        b = None if batch is None else np.asarray(batch)[idx]
        try:
            f = fit_chinchilla(N[idx], D[idx], L[idx], max_starts=BOOT_STARTS, batch_tokens=b,
                               delta=delta, extra_starts=extra)  # fmt: skip
        except (UserError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            failed += 1
            continue
        if not all(np.isfinite(float(f[k])) for k in keys):
            failed += 1
            continue
        for k in keys:
            vals[k].append(f[k])
        draws.append({k: float(f[k]) for k in keys})
    out = {"n": int(n_boot), "failed": int(failed), "ci95": {}, "sd": {}, "at_bound": {},
           "draws": draws}  # fmt: skip
    if len(vals["alpha"]) < 2:
        return out
    for k, v in vals.items():
        v = np.asarray(v, dtype=float)
        out["ci95"][k] = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
        out["sd"][k] = float(v.std(ddof=1))
    for k in ("alpha", "beta"):
        v = np.asarray(vals[k])
        out["at_bound"][k] = float(np.mean((v < EXPONENTS[0] + 5e-3) | (v > EXPONENTS[1] - 5e-3)))
    return out


def identified(law: dict, boot: dict) -> dict:
    """Per exponent: identified when its bootstrap 95% CI is narrower than the estimate itself
    (relative half-width < 50%) and under 10% of the refits end on a bound. Else the law says
    that this exponent is not identified by the data."""
    out = {}
    for k in ("alpha", "beta"):
        ci = boot.get("ci95", {}).get(k)
        if ci is None:
            out[k] = None
            continue
        width = (ci[1] - ci[0]) / 2
        out[k] = bool(width < 0.5 * law[k] and boot["at_bound"].get(k, 0.0) < 0.1)
    return out
