"""Chinchilla Approach 3 (spec/seeds.md §4.1): L(N, D) = E + A/N^alpha + B/D^beta.

Fitted in log space, pred = LSE(a - alpha log N, b - beta log D, e), objective sum Huber_1e-3(pred - log L),
L-BFGS(-B) with analytic gradient from every point of the 5*5*5*6*6 = 4500 grid, best final objective kept.
Speed: the objective is evaluated at all grid points at once (numpy), then L-BFGS runs from each start in
order of initial objective; with `max_starts` the tail of poor starts can be cut for quick tests.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

DELTA = 1e-3
GRID = {
    "alpha": np.arange(0.0, 2.01, 0.5),
    "beta": np.arange(0.0, 2.01, 0.5),
    "e": np.arange(-1.0, 1.01, 0.5),
    "a": np.arange(0.0, 26.0, 5.0),
    "b": np.arange(0.0, 26.0, 5.0),
}


def huber(r: np.ndarray, delta: float = DELTA) -> np.ndarray:
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r**2, delta * (ar - 0.5 * delta))


def _objective(theta: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray) -> tuple[float, np.ndarray]:
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    lse = logsumexp(terms, axis=0)
    r = lse - logL
    w = np.exp(terms - lse)  # softmax weights = d lse / d term
    dh = np.clip(r, -DELTA, DELTA)  # Huber derivative
    grad = np.array([
        np.sum(dh * w[0]),
        np.sum(dh * w[1]),
        np.sum(dh * w[2]),
        np.sum(dh * w[0] * -logN),
        np.sum(dh * w[1] * -logD),
    ])
    return float(np.sum(huber(r))), grad


def grid_starts() -> np.ndarray:
    """All 4500 starts as rows (a, b, e, alpha, beta)."""
    return np.array(list(itertools.product(GRID["a"], GRID["b"], GRID["e"], GRID["alpha"], GRID["beta"])))


def fit_chinchilla(N: np.ndarray, D: np.ndarray, L: np.ndarray, max_starts: int | None = None) -> dict:
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    starts = grid_starts()
    # Vectorised initial objective over all starts: order the L-BFGS runs best-first.
    t = np.stack([
        starts[:, [0]] - starts[:, [3]] * logN,
        starts[:, [1]] - starts[:, [4]] * logD,
        np.repeat(starts[:, [2]], len(logN), axis=1),
    ])
    init = huber(logsumexp(t, axis=0) - logL).sum(axis=1)
    order = np.argsort(init)
    if max_starts is not None:
        order = order[:max_starts]
    best = None
    for i in order:
        res = minimize(_objective, starts[i], args=(logN, logD, logL), jac=True, method="L-BFGS-B")
        if res.success and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise RuntimeError("no L-BFGS start converged")
    a, b, e, alpha, beta = best.x
    return {"A": float(np.exp(a)), "B": float(np.exp(b)), "E": float(np.exp(e)),
            "alpha": float(alpha), "beta": float(beta), "objective": float(best.fun), "n": int(len(N))}


def compute_optimal(law: dict, C: float) -> dict:
    """C ~ 6ND: N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b (spec/seeds.md §4.1)."""
    A, B, al, be = law["A"], law["B"], law["alpha"], law["beta"]
    G = (al * A / (be * B)) ** (1.0 / (al + be))
    n = G * (C / 6) ** (be / (al + be))
    d = (C / 6) ** (al / (al + be)) / G
    return {"C": C, "N_opt": n, "D_opt": d, "tokens_per_param": d / n}


def predict_loss(law: dict, N, D):
    return law["E"] + law["A"] / N ** law["alpha"] + law["B"] / D ** law["beta"]


def bootstrap(N, D, L, n_boot: int, seed: int = 0, max_starts: int | None = 200) -> dict:
    """Percentile 95% CIs from refits on resampled rows (fewer starts per refit: each costs a full fit)."""
    rng = np.random.default_rng(seed)
    keys = ("A", "B", "E", "alpha", "beta")
    vals = {k: [] for k in keys}
    for _ in range(n_boot):
        idx = rng.integers(0, len(N), len(N))
        f = fit_chinchilla(N[idx], D[idx], L[idx], max_starts=max_starts)
        for k in keys:
            vals[k].append(f[k])
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in vals.items()}
