"""Fit a step-time model on a measured table: candidate feature sets, CV, selection, extrapolation.

The comparison Inbar & Sernau 2024 ("Time Matters", arXiv:2406.18922) make, params-only,
FLOPs-only, memory-copies-only and their three-feature regression on all three, is scored under the
same k-fold CV beside our sets, which add the per-op overhead (kernel launches), split FLOPs into
matmul and the rest, break memory traffic down by op class, and carry the gradient-accumulation
(micro-steps) and data-parallel (all-reduce bytes) terms when the table varies them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from model import costs
from timemodel import fit as tfit
from timemodel.table import repeatability

EXTRAS = ("micro_steps", "allreduce_bytes")


def byte_classes() -> list[str]:
    return [f for f in costs.STEP_FEATURES if f.startswith("bytes_")]


def paper_sets() -> dict[str, list[str]]:
    return {
        "params only": ["params"],
        "FLOPs only": ["flops"],
        "memory copies only": ["bytes"],
        "Time Matters: params+FLOPs+bytes": ["params", "flops", "bytes"],
    }


def our_sets() -> dict[str, list[str]]:
    ex = list(EXTRAS)
    return {
        "launches+FLOPs+bytes": ["launches", "flops", "bytes"] + ex,
        "launches+matmul/other FLOPs+bytes": ["launches", "matmul_flops", "other_flops", "bytes"]
        + ex,
        "launches+matmul FLOPs+bytes by class": ["launches", "matmul_flops"] + byte_classes() + ex,
    }


UNITS = {
    "intercept": ("s per step", None),
    "params": ("s per parameter", "params/s"),
    "flops": ("s per FLOP", "FLOP/s"),
    "matmul_flops": ("s per FLOP", "FLOP/s"),
    "other_flops": ("s per FLOP", "FLOP/s"),
    "launches": ("s per launch", "launches/s"),
    "attention_scores": ("s per attention score", "scores/s"),
    "micro_steps": ("s per micro-step", None),
    "allreduce_bytes": ("s per all-reduced byte", "B/s"),
    "tokens": ("s per token", "tokens/s"),
}


def unit_of(feature: str) -> tuple[str, str | None]:
    if feature.startswith("bytes"):
        return ("s per byte", "B/s")
    return UNITS.get(feature, ("s per unit", None))


def feature_arrays(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {f: df[f].to_numpy(float) for f in costs.STEP_FEATURES if f in df.columns}


def fit_table(
    df: pd.DataFrame,
    y: np.ndarray,
    *,
    folds: int = 5,
    features: list[str] | None = None,
    objective: str = "relative",
    extrapolate: bool = False,
    cv_repeats: int = 5,
) -> dict:
    """Everything `timemodel fit` reports and saves, from feature columns and step seconds `y`.

    Every set is scored on `cv_repeats` different random k-fold splits (one split of a small table
    is a noisy score); the winner is the fewest-feature set whose mean held-out MAPE over them is
    within one standard error of the lowest (`timemodel.fit.one_se_choice`)."""
    F, groups = feature_arrays(df), df["group"].to_numpy()
    cv_folds = tfit.group_folds(groups, folds)
    sets = paper_sets() | ({"given": features} if features else our_sets())
    pool = None if features else [f for f in costs.STEP_FEATURES if f in F]
    best, scores = tfit.select(F, sets, y, cv_folds, objective, forward_pool=pool, groups=groups)
    path = scores.get("forward selection", {}).pop("_path", [])
    _resplit(scores, F, y, groups, folds, cv_repeats, objective)
    best = tfit.one_se_choice(scores, key="mape_mean")
    if features:  # the user's set is the one saved; the paper's sets are only compared
        best = "given"
    names = scores[best]["features"]
    c0, c = tfit.fit_nnls(tfit.matrix(F, names), y, objective)
    train = tfit.metrics(y, tfit.predict(c0, c, tfit.matrix(F, names)))
    held = scores[best].pop("_pred")
    cv = {n: {k: v for k, v in s.items() if k != "_pred"} for n, s in scores.items()}
    res = {
        "feature_set": best,
        "features": names,
        "intercept": c0,
        "coefficients": {f: float(v) for f, v in zip(names, c)},
        "units": {f: unit_of(f)[0] for f in ["intercept"] + names},
        "objective": objective,
        "folds": folds,
        "selected_by": f"fewest features within one standard error of the lowest mean {folds}-fold "
        f"held-out MAPE over {cv_repeats} random splits (never training error)",
        "forward_path": [
            {"features": p["features"], "mape": p["mape"], "se": p["se"], "max_ape": p["max_ape"]}
            for p in path
        ],
        "cv_repeats": cv_repeats,
        "held_out": cv[best],
        "cv": cv,
        "train_metrics": train,
        "feature_ranges": {f: [float(F[f].min()), float(F[f].max())] for f in names},
        "repeatability": repeatability(groups, y),
        "n_rows": int(len(y)),
        "n_configs": int(len(np.unique(groups))),
        "_held_out_pred": held,
    }
    if not features and len(np.unique(groups)) >= 2 * folds:
        res["nested_cv"] = tfit.nested_cv(F, sets, y, groups, folds, objective, pool)
    if extrapolate:
        res["extrapolation"] = extrapolation(df, F, y, groups, cv, best, objective)
    return res


def _resplit(scores: dict, F, y, groups, folds: int, repeats: int, objective: str) -> None:
    """Add mape_mean and mape_range (min, max) over `repeats` k-fold splits (seeds 0..R-1)."""
    for s in scores.values():
        mapes = [s["mape"]] + [
            tfit.cv_score(F, s["features"], y, tfit.group_folds(groups, folds, seed), objective)[
                "mape"
            ]
            for seed in range(1, repeats)
        ]
        s["mape_mean"] = float(np.mean(mapes))
        s["mape_range"] = [float(min(mapes)), float(max(mapes))]


def extrapolation(df, F, y, groups, cv: dict, best: str, objective: str) -> dict:
    """Each extrapolation split scored for every feature set of the CV table."""
    out = {}
    for split, (tr, te) in tfit.extrapolation_splits(df, groups).items():
        out[split] = {
            name: tfit.split_score(F, s["features"], y, tr, te, objective) for name, s in cv.items()
        } | {"_n_train": int(len(tr)), "_n_test": int(len(te))}
    return out


def fails(split_scores: dict, best: str, cv_mape: float) -> bool:
    """An extrapolation fails when the chosen model's MAPE there is over 1.5x its CV MAPE (and
    over 5%): the model does not carry to that part of the space."""
    m = split_scores[best]["mape"]
    return m > max(5.0, 1.5 * cv_mape)


def table_lines(res: dict) -> list[str]:
    """The CV table (paper's sets first, then ours), the selection, and nested CV."""
    k = res["folds"]
    r = res["cv_repeats"]
    lines = [
        f"{'feature set':40s} {'MAPE%':>6s} {'worst%':>6s} {'R2':>6s} "
        f"{'MAPE% over ' + str(r) + ' splits':>20s}  ({k}-fold held out)"
    ]
    for name, m in res["cv"].items():
        mark = "  <- chosen" if name == res["feature_set"] else ""
        r2 = f"{m['r2']:6.3f}" if m["r2"] is not None else "   n/a"
        lo, hi = m["mape_range"]
        spread = f"{m['mape_mean']:.2f} [{lo:.2f}-{hi:.2f}]"
        lines.append(f"{name:40s} {m['mape']:6.2f} {m['max_ape']:6.1f} {r2} {spread:>20s}{mark}")
        if name not in paper_sets() and name != "given":
            lines.append(f"    = {'+'.join(m['features']) or '(intercept only)'}")
    best = res["cv"][res["feature_set"]]
    low = min(res["cv"].values(), key=lambda m: m["mape_mean"])
    lines.append(
        f"chosen: the fewest features within one SE of the lowest mean MAPE "
        f"({low['mape_mean']:.2f}% + SE {low.get('se', 0.0):.2f}) -> {res['feature_set']} "
        f"({best['mape_mean']:.2f}%)"
    )
    path = res.get("forward_path") or []
    if path:
        steps = [f"{p['features'][-1]} {p['mape']:.2f}" for p in path]
        lines.append("forward path (feature added: held-out MAPE%): " + " -> ".join(steps))
    rep = res.get("repeatability")
    if rep:
        lines.append(
            f"repeatability MAPE {rep['mape']:.2f}% (worst {rep['max_ape']:.1f}%, "
            f"{rep['configs']} configs measured more than once) vs held-out MAPE "
            f"{res['held_out']['mape']:.2f}% of the chosen model"
            + (
                f" (fitted and scored on each config's {res['aggregate']} over its repeats)"
                if res.get("aggregate") not in (None, "rows")
                else ""
            )
        )
    nested = res.get("nested_cv")
    if nested:
        lines.append(
            f"nested {k}-fold CV of the selection itself: MAPE {nested['mape']:.2f}%, worst "
            f"{nested['max_ape']:.1f}% (picked: {', '.join(sorted(set(nested['picked'])))})"
        )
    return lines


SHORT = {
    "params only": "params",
    "FLOPs only": "FLOPs",
    "memory copies only": "bytes",
    "Time Matters: params+FLOPs+bytes": "TM",
    "launches+FLOPs+bytes": "L+F+B",
    "launches+matmul/other FLOPs+bytes": "L+mo+B",
    "launches+matmul FLOPs+bytes by class": "L+m+Bc",
    "forward selection": "forward",
}


def extrapolation_lines(res: dict) -> list[str]:
    """One line per split: the chosen model's MAPE / worst APE, verdict, then every set's MAPE."""
    best, cv_mape = res["feature_set"], res["held_out"]["mape"]
    names = list(res["cv"])
    short = [SHORT.get(n, n[:8]) for n in names]
    lines = [
        "extrapolation (train on one part, test on the other): the chosen model's MAPE% / worst% "
        f"(FAILS: over 1.5x its CV MAPE {cv_mape:.2f}% and 5%), then every set's MAPE%",
        f"  {'split':36s} {'train':>5s} {'test':>5s} {'chosen':20s}"
        + " ".join(f"{c:>7s}" for c in short),
    ]
    for split, sc in res.get("extrapolation", {}).items():
        m = sc[best]
        verdict = "FAILS" if fails(sc, best, cv_mape) else "holds"
        lines.append(
            f"  {split.replace('sequence_length', 'T'):36s} {sc['_n_train']:5d} {sc['_n_test']:5d} "
            f"{m['mape']:6.2f} / {m['max_ape']:5.1f} {verdict} "
            + " ".join(f"{sc[n]['mape']:7.2f}" for n in names)
        )
    legend = [f"{c} = {n}" for c, n in zip(short, names) if c != n]
    if legend:
        lines.append("  (" + "; ".join(legend) + ")")
    return lines


def coefficient_lines(res: dict) -> list[str]:
    lines = [f"saved feature set: {res['feature_set']} ({'+'.join(res['features'])})"]
    lines.append(f"  intercept        {res['intercept']:.4g} s per step")
    for f, v in res["coefficients"].items():
        unit, rate = unit_of(f)
        extra = f"  (= {1 / v:.4g} {rate})" if rate and v > 0 else ""
        lines.append(f"  {f:16s} {v:.4g} {unit}{extra}")
    h = res["held_out"]
    r2 = f"{h['r2']:.4f}" if h["r2"] is not None else "n/a"
    lines.append(
        f"held-out ({res['folds']}-fold) MAPE {h['mape']:.2f}%, worst {h['max_ape']:.1f}%, "
        f"R2 {r2}, n {h['n']}"
    )
    return lines
