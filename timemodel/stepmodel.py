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
from timemodel import calibrate, honest, roofline
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
    outer_seeds: int = 5,
    peaks: dict | None = None,
    select: str = "cv",
    aggregate: str = "rows",
    raw_groups: np.ndarray | None = None,
    raw_y: np.ndarray | None = None,
) -> dict:
    """Everything `timemodel fit` reports and saves, from feature columns and step seconds `y`.

    Linear family: every set is scored on `cv_repeats` random k-fold splits; its pick is the
    fewest-feature set whose mean held-out MAPE is within one SE of the lowest
    (`timemodel.fit.one_se_choice`). Physical family: the roofline of `timemodel.roofline` when
    `peaks` are known. The saved model is the family with the lower mean CV MAPE over the same
    splits (`select` "cv") or the lower mean extrapolation MAPE over the splits of
    `timemodel.honest.splits`, selection re-run inside each (`select` "extrapolate").
    Headline numbers: `timemodel.honest.nested_cv` over `outer_seeds` outer splits."""
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
        "family": "linear",
        "select": select,
    }
    res["linear_checks"] = linear_checks(res["coefficients"], peaks)
    ctx = honest.Context(F, y, groups, sets, pool, peaks, objective, folds)
    if peaks is not None:
        phys = roofline.fit(F, y, peaks, objective=objective)
        pcv = [
            _roofline_cv(F, y, groups, folds, seed, peaks, objective) for seed in range(cv_repeats)
        ]
        res["physical"] = phys | {
            "cv": {
                "mape_mean": float(np.mean([m["mape"] for m, _ in pcv])),
                "mape_range": [
                    float(min(m["mape"] for m, _ in pcv)),
                    float(max(m["mape"] for m, _ in pcv)),
                ],  # fmt: skip
                "max_ape": float(max(m["max_ape"] for m, _ in pcv)),
            },
            "train_metrics": tfit.metrics(y, roofline.predict(phys, F)),
        }
        res["_physical_held_out_pred"] = pcv[0][1]
    if len(np.unique(groups)) >= 2 * folds:
        res["nested_cv"] = honest.nested_cv(ctx, outer_seeds, features)
    if raw_groups is not None:
        res["noise_floor"] = honest.noise_floor(raw_groups, raw_y, aggregate)
    if extrapolate or select == "extrapolate":
        res["extrapolation"] = honest.extrapolation(ctx, df, features)
    _choose_family(res, select)
    res["reference_configs"] = calibrate.reference_configs(df, F)
    if res["family"] == "physical":
        used = roofline.features_of(res["physical"])
        res["feature_ranges"] = {f: [float(F[f].min()), float(F[f].max())] for f in used}
    return res


def _roofline_cv(F, y, groups, folds, seed, peaks, objective):
    pred = np.empty_like(y)
    for te in tfit.group_folds(groups, folds, seed):
        tr = np.setdiff1d(np.arange(len(y)), te)
        m = roofline.fit({n: v[tr] for n, v in F.items()}, y[tr], peaks, objective=objective)
        pred[te] = roofline.predict(m, {n: v[te] for n, v in F.items()})
    return tfit.metrics(y, pred, groups), pred


def _choose_family(res: dict, select: str) -> None:
    """Save the physical model instead of the linear one when it scores lower by `select`."""
    if "physical" not in res:
        res["family_choice"] = "linear: no device peaks known (give --peak-flops/--peak-bandwidth)"
        return
    if select == "extrapolate":
        ex = res["extrapolation"]
        lin = float(np.mean([r[honest.LINEAR]["mape"] for r in ex.values()])) if ex else np.inf
        phy = float(np.mean([r[honest.PHYSICAL]["mape"] for r in ex.values()])) if ex else np.inf
        how = f"mean extrapolation MAPE over {len(ex)} splits"
    else:
        lin, phy = res["cv"][res["feature_set"]]["mape_mean"], res["physical"]["cv"]["mape_mean"]
        how = f"mean {res['folds']}-fold CV MAPE over {res['cv_repeats']} splits"
    pick = "physical" if phy <= lin else "linear"
    res["family"] = pick
    res["family_choice"] = f"{pick} by {how}: physical {phy:.2f}% vs linear {lin:.2f}%"
    over = [c["feature"] for c in res.get("linear_checks", []) if c["above_peak"]]
    if over and pick == "linear":  # a rate no device has is an error, not a fit
        pick = res["family"] = "physical"
        res["family_choice"] = (
            f"physical: the linear family ({lin:.2f}% by {how}, physical {phy:.2f}%) has rates "
            f"above the device's peak ({', '.join(over)}), so it is not saved"
        )
    if pick == "physical":
        res["form"] = "roofline"
        res["terms"], res["peaks"] = res["physical"]["terms"], res["physical"]["peaks"]


def linear_checks(coefs: dict, peaks: dict | None) -> list[dict]:
    """Each linear coefficient's implied rate beside the device peak it cannot exceed: FLOP-type
    features against peak FLOP/s, byte-type against the bandwidth (one FLOP per attention score)."""
    out = []
    if not peaks:
        return out
    for f, v in coefs.items():
        if f in ("flops", "matmul_flops", "other_flops", "attention_scores"):
            peak, unit = peaks["flops"], "FLOP/s"
        elif f.startswith("bytes"):
            peak, unit = peaks["bandwidth"], "B/s"
        elif f == "allreduce_bytes" and peaks.get("link"):
            peak, unit = peaks["link"], "B/s"
        else:
            continue
        rate = 1.0 / v if v > 0 else None
        out.append({"feature": f, "rate": rate, "unit": unit, "peak": peak,
                    "above_peak": bool(rate is not None and rate > peak)})  # fmt: skip
    return out


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
        line = (
            f"repeatability MAPE {rep['mape']:.2f}% (worst {rep['max_ape']:.1f}%, "
            f"{rep['configs']} configs measured more than once) of single measurements"
        )
        if res.get("aggregate") in (None, "rows"):
            line += f" vs held-out MAPE {res['held_out']['mape']:.2f}% on the same rows"
        else:
            line += (
                f"; the fit is scored on each config's {res['aggregate']} over its repeats, "
                "whose noise floor is in the headline below"
            )
        lines.append(line)
    phys = res.get("physical")
    if phys:
        c = phys["cv"]
        lines.append(
            f"{'physical (roofline), no selection':40s} {'':6s} {c['max_ape']:6.1f} {'':6s} "
            f"{c['mape_mean']:.2f} [{c['mape_range'][0]:.2f}-{c['mape_range'][1]:.2f}]"
        )
    lines.append(f"saved family: {res['family_choice']}")
    nested = res.get("nested_cv")
    if nested:
        lines += honest.headline_lines(nested, res.get("noise_floor"), res.get("aggregate", "rows"))
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
    """Every split with every family (selection re-run inside each training part)."""
    extra = res.get("extrapolation") or {}
    if not extra:
        return ["extrapolation: no split has enough configs on both sides"]
    nested = (res.get("nested_cv") or {}).get("families", {})
    cv = {n: m["mape_mean"] for n, m in nested.items()}
    return honest.extrapolation_lines(extra, cv)


def coefficient_lines(res: dict) -> list[str]:
    lines = [f"linear family: feature set {res['feature_set']} ({'+'.join(res['features'])})"]
    lines.append(f"  intercept        {res['intercept']:.4g} s per step")
    checks = {c["feature"]: c for c in res.get("linear_checks", [])}
    for f, v in res["coefficients"].items():
        unit, rate = unit_of(f)
        extra = f"  (= {1 / v:.4g} {rate})" if rate and v > 0 else ""
        ch = checks.get(f)
        if ch and ch["rate"] is not None:
            extra += f" vs peak {ch['peak']:.4g}" + (
                "  ERROR: above the device's peak, not physical" if ch["above_peak"] else ""
            )
        lines.append(f"  {f:16s} {v:.4g} {unit}{extra}")
    h = res["held_out"]
    r2 = f"{h['r2']:.4f}" if h["r2"] is not None else "n/a"
    lines.append(
        f"  held-out ({res['folds']}-fold, seed 0) MAPE {h['mape']:.2f}%, worst "
        f"{h['max_ape']:.1f}%, R2 {r2}, n {h['n']}"
    )
    if res.get("physical"):
        lines += roofline.coefficient_lines(res["physical"])
    lines.append(f"saved: the {res['family']} family")
    return lines
