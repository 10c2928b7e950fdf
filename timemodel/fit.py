"""Step-time model: step_time_s = c0 + sum_k c_k * feature_k with non-negative coefficients.

Features are the cost counts of a training step (Time Matters, spec/seeds.md §3): `params`, `flops_per_step`
(model.costs "exact") and `memory_traffic` (bytes per step). Every single feature and every pair is also fitted
and scored by k-fold cross-validation, so FLOPs-only vs memory-copy models are compared on held-out configs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold

FEATURES = ("params", "flops_per_step", "memory_traffic")
TARGET = "step_ms_median"


def fit_linear(X: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Non-negative least squares in natural units.

    Features span ~1e6..1e15, so each is divided by its RMS before fitting (the solver is badly conditioned
    otherwise) and the coefficients are divided by the same scale afterwards; positivity is unaffected by a
    positive rescaling, so the natural-unit coefficients are still >= 0.

    The intercept c0 (fixed per-step overhead: launches, Python, the optimizer's bookkeeping) is
    constrained to be >= 0 too: it enters as a constant column under the same positivity constraint,
    because sklearn's `positive=True` leaves a free intercept that can go negative and then predicts
    negative step times for small configs.
    """
    scale = np.sqrt(np.mean(X**2, axis=0))
    scale[scale == 0] = 1.0
    ones = np.ones((X.shape[0], 1))
    reg = LinearRegression(positive=True, fit_intercept=False).fit(np.hstack([ones, X / scale]), y)
    return float(reg.coef_[0]), reg.coef_[1:] / scale


def metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ape = np.abs(pred - y) / y * 100.0
    return {
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
        "mape": float(ape.mean()),
        "max_ape": float(ape.max()),
    }


def cross_validate(
    df: pd.DataFrame, features: list[str], y: np.ndarray, folds: int, seed: int = 0
) -> dict:
    """Held-out predictions for every row from a k-fold split; metrics computed on those predictions."""
    X = df[features].to_numpy(float)
    pred = np.empty_like(y)
    for tr, te in KFold(n_splits=folds, shuffle=True, random_state=seed).split(X):
        c0, c = fit_linear(X[tr], y[tr])
        pred[te] = c0 + X[te] @ c
    return metrics(y, pred) | {"held_out_pred": pred.tolist()}


def feature_sets(features: tuple[str, ...] = FEATURES) -> list[tuple[str, ...]]:
    return [s for k in range(1, len(features) + 1) for s in itertools.combinations(features, k)]


def fit_step_time(df: pd.DataFrame, features: list[str], folds: int = 5) -> dict:
    """Fit the chosen feature set on all rows; cross-validate it and every subset of FEATURES present."""
    y = df[TARGET].to_numpy(float) / 1e3  # seconds
    X = df[features].to_numpy(float)
    c0, c = fit_linear(X, y)
    pred = c0 + X @ c
    avail = tuple(f for f in FEATURES if f in df.columns)
    cv = {}
    for s in feature_sets(avail):
        r = cross_validate(df, list(s), y, folds)
        r.pop("held_out_pred")
        cv["+".join(s)] = r
    held = cross_validate(df, features, y, folds)
    ranges = {f: [float(df[f].min()), float(df[f].max())] for f in features}
    return {
        "features": list(features),
        "intercept": c0,
        "coefficients": {f: float(v) for f, v in zip(features, c)},
        "train_metrics": metrics(y, pred),
        "cv": cv,
        "feature_ranges": ranges,
        "_measured": y.tolist(),
        "_held_out": held["held_out_pred"],
    }


def predict_seconds(model: dict, values: dict) -> np.ndarray | float:
    """Step time in seconds; `values` maps feature name -> scalar or numpy array."""
    t = model["intercept"]
    for f, c in model["coefficients"].items():
        t = t + c * values[f]
    return t
