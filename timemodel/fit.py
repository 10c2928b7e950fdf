"""Step-time regression: step_s = c0 + sum_k c_k * feature_k, all c >= 0, fitted for relative error.

Objective. Scaling-law sweeps hold step times that span 100x or more; plain least squares serves the
largest times and leaves the small ones with 30-100% errors. We minimise the sum of squared relative
errors, sum_i ((pred_i - y_i) / y_i)^2, i.e. least squares weighted by 1/y^2, under non-negativity
(scipy's NNLS on the rows divided by y). The intercept c0 (a fixed per-step cost) is one more
non-negative coefficient. Columns are scaled to unit RMS before the solve (features span 1e0..1e15)
and the coefficients are unscaled afterwards; a positive rescaling keeps them >= 0.

Scoring. Every number we report is held out: k-fold CV over distinct configs (repeats of a config
stay in one fold), scored as MAPE, worst APE and R^2 of the held-out predictions. The feature set is
chosen by that held-out MAPE, never by training error; nested CV scores the choice itself.

Choice. Among the candidate sets, the one with the fewest features whose held-out MAPE is within
one standard error of the lowest (the one-standard-error rule of Breiman et al. 1984, Hastie,
Tibshirani & Friedman, "The Elements of Statistical Learning", 2nd ed., section 7.10). The SE is
that of the best set's MAPE over configs (a config's rows averaged first). Greedy forward
selection adds features while they lower the held-out MAPE, and takes the shortest prefix of its
path under the same rule. Sets within the noise of the best fit it equally well in CV, and the
smaller one carries further outside the fitted range: on an earlier examples/cpu_sweep the
8-feature minimum extrapolated from one sequence length to another with up to 2.5x the error of a
5-feature set one SE away.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from timemodel import roofline

OBJECTIVES = ("relative", "absolute")


def fit_nnls(X: np.ndarray, y: np.ndarray, objective: str = "relative") -> tuple[float, np.ndarray]:
    """(c0, c) >= 0 minimising sum(((c0 + X c - y) / w)^2), w = y (relative) or 1 (absolute)."""
    A = np.hstack([np.ones((X.shape[0], 1)), X])
    w = y if objective == "relative" else np.ones_like(y)
    A, b = A / w[:, None], y / w
    scale = np.sqrt(np.mean(A**2, axis=0))
    scale[scale == 0] = 1.0
    coef, _ = nnls(A / scale, b, maxiter=50 * A.shape[1])
    coef = coef / scale
    return float(coef[0]), coef[1:]


def metrics(y: np.ndarray, pred: np.ndarray, groups: np.ndarray | None = None) -> dict:
    """MAPE and worst APE in %, R^2 of the step times (seconds), and `se`, the standard error of
    the MAPE over configs (`groups`: a config's rows count once; None: every row a config)."""
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    ape = np.abs(pred - y) / y * 100.0
    per = ape if groups is None else np.array([ape[groups == g].mean() for g in np.unique(groups)])
    se = float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else 0.0
    return {
        "mape": float(ape.mean()),
        "max_ape": float(ape.max()),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None,
        "se": se,
        "n": int(len(y)),
    }


def group_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k disjoint test-index arrays; all rows of a config (its repeats) land in the same fold."""
    uniq = np.unique(groups)
    perm = np.random.default_rng(seed).permutation(uniq)
    return [np.flatnonzero(np.isin(groups, part)) for part in np.array_split(perm, k)]


def predict(c0: float, c: np.ndarray, X: np.ndarray) -> np.ndarray:
    return c0 + X @ c


def held_out(
    X: np.ndarray, y: np.ndarray, folds: list[np.ndarray], objective: str = "relative"
) -> np.ndarray:
    """Held-out prediction of every row: fitted on the other folds."""
    pred = np.empty_like(y)
    for te in folds:
        tr = np.setdiff1d(np.arange(len(y)), te)
        c0, c = fit_nnls(X[tr], y[tr], objective)
        pred[te] = predict(c0, c, X[te])
    return pred


def usable(F: dict[str, np.ndarray], names: list[str]) -> list[str]:
    """Features present and not constant over the rows (a constant is the intercept's job)."""
    out = []
    for n in names:
        v = F.get(n)
        if v is not None and np.ptp(v) > 1e-12 * max(1.0, float(np.abs(v).max())):
            out.append(n)
    return out


def matrix(F: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    n = len(next(iter(F.values())))
    return np.stack([F[f] for f in names], axis=1) if names else np.zeros((n, 0))


Folds = list[np.ndarray]  # test-index arrays, one per fold (see group_folds)


def cv_score(
    F: dict, names: list[str], y: np.ndarray, folds: Folds, objective="relative", groups=None
) -> dict:
    pred = held_out(matrix(F, names), y, folds, objective)
    return metrics(y, pred, groups) | {"features": list(names), "_pred": pred}


def one_se_choice(scores: dict[str, dict], key: str = "mape") -> str:
    """The fewest-feature set whose `key` is within one SE of the lowest (ties: lower `key`)."""
    best = min(scores, key=lambda n: scores[n][key])
    bar = scores[best][key] + scores[best].get("se", 0.0)
    near = [n for n in scores if scores[n][key] <= bar + 1e-12]
    return min(near, key=lambda n: (len(scores[n]["features"]), scores[n][key]))


def forward_path(
    F: dict, pool: list[str], y, folds: Folds, objective="relative", min_gain=0.01, groups=None
) -> list[dict]:
    """Greedy forward selection by held-out MAPE: add the feature that lowers it most, stop when
    the best addition gains less than `min_gain` (relative). Returns the scores of every prefix."""
    path: list[dict] = []
    chosen: list[str] = []
    best = cv_score(F, [], y, folds, objective, groups)["mape"]
    while True:
        trials = [
            cv_score(F, chosen + [f], y, folds, objective, groups) for f in pool if f not in chosen
        ]
        if not trials:
            return path
        top = min(trials, key=lambda t: t["mape"])
        if top["mape"] >= best * (1 - min_gain):
            return path
        chosen, best = top["features"], top["mape"]
        path.append(top)


def shortest_within_se(path: list[dict]) -> list[str]:
    """The forward path's shortest prefix within one SE of its best (see one_se_choice)."""
    if not path:
        return []
    scores = {str(i): p for i, p in enumerate(path)}
    return scores[one_se_choice(scores)]["features"]


def forward_select(F: dict, pool: list[str], y, folds: Folds, objective="relative", groups=None):
    return shortest_within_se(forward_path(F, pool, y, folds, objective, groups=groups))


def select(
    F: dict[str, np.ndarray],
    sets: dict[str, list[str]],
    y: np.ndarray,
    folds: list[np.ndarray],
    objective: str = "relative",
    forward_pool: list[str] | None = None,
    groups: np.ndarray | None = None,
) -> tuple[str, dict[str, dict]]:
    """Score every named set (and a greedy forward set) by CV; the winner is the fewest-feature
    set within one SE of the lowest held-out MAPE. Returns (winner name, {name: scores})."""
    scores = {n: cv_score(F, usable(F, s), y, folds, objective, groups) for n, s in sets.items()}
    if forward_pool:
        path = forward_path(F, usable(F, forward_pool), y, folds, objective, groups=groups)
        fwd = shortest_within_se(path)
        if fwd:
            scores["forward selection"] = cv_score(F, fwd, y, folds, objective, groups)
            scores["forward selection"]["_path"] = path
    return one_se_choice(scores), scores


def split_score(
    F: dict[str, np.ndarray],
    names: list[str],
    y: np.ndarray,
    tr: np.ndarray,
    te: np.ndarray,
    objective: str = "relative",
) -> dict:
    X = matrix(F, names)
    c0, c = fit_nnls(X[tr], y[tr], objective)
    return metrics(y[te], predict(c0, c, X[te]))


def predict_seconds(model: dict, values: dict) -> np.ndarray | float:
    """Step time in seconds; `values` maps feature name -> scalar or numpy array. A physical model
    (`"form": "roofline"`) predicts through `timemodel.roofline.predict`."""
    if model.get("form") == "roofline":
        return roofline.predict(model, values)
    t = model["intercept"]
    for f, c in model["coefficients"].items():
        t = t + c * values[f]
    return t
