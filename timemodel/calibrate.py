"""Carry a fitted time model to another machine from a handful of reference configs.

A step-time model is specific to its machine: a CPU that runs 20% faster, another GPU clock or
driver moves every rate. Refitting from scratch needs a full sweep; what a new machine changes is
mostly the speed of each kind of work, not the counts. `timemodel calibrate` therefore refits
only one scale per kind of term of the saved model:

  compute   FLOP and attention-score rates (for a roofline: its FLOP efficiencies)
  memory    byte rates (a roofline's bandwidth efficiencies)
  overhead  the fixed per-step cost, the per-launch cost and the per-micro-step cost
  link      the all-reduce rate

Each scale multiplies the seconds per unit of its terms; a roofline's rates stay at or below the
peaks (a scaled rate above a peak is clipped to it and the report says so). The scales are fitted
for relative error in log space with a weak pull towards 1 (a ridge of 0.01 per log-scale, so a
scale the reference configs do not constrain stays at 1); with fewer than 3 configs per scale
one common scale is fitted instead. The error on the reference configs is reported before, after
(in-sample) and leave-one-config-out (each config predicted by scales fitted on the others: the
honest number for unmeasured configs).

Measuring: timemodel does not import bench (the layering keeps torch out of it), so
`--plan grid.json` writes the reference configs the fitted model stored (spread over its fitted
FLOPs range) as a `bench sweep --grid` file and prints the command; run it on the new machine,
then `timemodel calibrate TM --table <sweep folder> --out TM2`.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares

from timemodel import fit as tfit
from timemodel.table import IDENTITY

RIDGE = 0.01
SCALE_BOUNDS = (0.05, 20.0)
GROUPS = ("compute", "memory", "overhead", "link")
N_REFERENCE = 8


def group_of(feature_or_kind: str) -> str:
    f = feature_or_kind
    if f in ("flops", "scores", "matmul_flops", "other_flops", "attention_scores", "params"):
        return "compute"
    if f.startswith("bytes") or f == "tokens":
        return "memory"
    if f in ("link", "allreduce_bytes"):
        return "link"
    return "overhead"  # t0, launch, launches, micro_steps, intercept


def _parts(tm: dict, F: dict, n: int) -> tuple[dict, callable]:
    """(the scaled model as a function of {group: scale}) -> predictions, for either form."""
    if tm.get("form") == "roofline":
        groups = [group_of(t["kind"]) for t in tm["terms"]]

        def scaled(k: dict) -> dict:
            terms = []
            for t, g in zip(tm["terms"], groups):
                s = t["seconds_per_unit"] * k.get(g, 1.0)
                if t.get("peak"):
                    s = max(s, 1.0 / t["peak"])  # never faster than the peak
                terms.append(t | {"seconds_per_unit": s})
            return tm | {"terms": terms}

        return set(groups), scaled
    groups = {f: group_of(f) for f in tm["coefficients"]}

    def scaled_lin(k: dict) -> dict:
        coefs = {f: c * k.get(groups[f], 1.0) for f, c in tm["coefficients"].items()}
        return tm | {"coefficients": coefs, "intercept": tm["intercept"] * k.get("overhead", 1.0)}

    return set(groups.values()) | {"overhead"}, scaled_lin


def active_groups(tm: dict, F: dict, n: int) -> list[str]:
    """Groups whose terms contribute to the predicted time of these configs."""
    present, scaled = _parts(tm, F, n)
    base = np.asarray(tfit.predict_seconds(tm, F), dtype=float)
    out = []
    for g in GROUPS:
        if g in present:
            alt = np.asarray(tfit.predict_seconds(scaled({g: 2.0}), F), dtype=float)
            if np.any(np.abs(alt - base) > 1e-3 * base):
                out.append(g)
    return out


def fit_scales(tm: dict, F: dict, y: np.ndarray) -> dict:
    """{group: scale} minimising the relative error on the reference rows (see module doc)."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    _, scaled = _parts(tm, F, n)
    groups = active_groups(tm, F, n)
    common = len(groups) == 0 or n < 3 * len(groups)
    names = ["all"] if common else groups

    def ks(u):
        if common:
            return {g: float(np.exp(u[0])) for g in GROUPS}
        return {g: float(np.exp(v)) for g, v in zip(names, u)}

    def res(u):
        pred = np.asarray(tfit.predict_seconds(scaled(ks(u)), F), dtype=float)
        return np.concatenate([(pred - y) / y, np.sqrt(RIDGE) * u])

    lo, hi = np.log(SCALE_BOUNDS)
    r = least_squares(res, np.zeros(len(names)), bounds=(lo, hi), method="trf")
    return ks(r.x)


def apply(tm: dict, scales: dict) -> dict:
    _, scaled = _parts(tm, {}, 0)
    return scaled(scales)


def _sub(F: dict, idx) -> dict:
    return {k: v[idx] for k, v in F.items()}


def calibrate(tm: dict, F: dict, y: np.ndarray, groups: np.ndarray) -> dict:
    """Scales, the calibrated model, and before / after / leave-one-config-out errors."""
    y = np.asarray(y, dtype=float)
    before = np.asarray(tfit.predict_seconds(tm, F), dtype=float)
    scales = fit_scales(tm, F, y)
    new = apply(tm, scales)
    after = np.asarray(tfit.predict_seconds(new, F), dtype=float)
    loo = np.empty_like(y)
    uniq = np.unique(groups)
    for g in uniq:
        te, tr = groups == g, groups != g
        if len(np.unique(groups[tr])) == 0:
            loo[te] = after[te]
            continue
        k = fit_scales(tm, _sub(F, tr), y[tr])
        loo[te] = np.asarray(tfit.predict_seconds(apply(tm, k), _sub(F, te)), dtype=float)
    clipped = []
    if tm.get("form") == "roofline":
        for t_old, t_new in zip(tm["terms"], new["terms"]):
            want = t_old["seconds_per_unit"] * scales.get(group_of(t_old["kind"]), 1.0)
            if t_new["seconds_per_unit"] > want * (1 + 1e-12):
                clipped.append(t_old["name"])
    return {
        "scales": scales,
        "model": new,
        "before": tfit.metrics(y, before, groups),
        "after": tfit.metrics(y, after, groups),
        "leave_one_config_out": tfit.metrics(y, loo, groups) if len(uniq) > 1 else None,
        "clipped_at_peak": clipped,
        "n_configs": int(len(uniq)),
        "mean_ratio_measured_over_predicted": float(np.mean(y / before)),
    }


def reference_configs(df, F: dict, k: int = N_REFERENCE) -> list[dict]:
    """k distinct configs at evenly spaced quantiles of their FLOPs (the fitted range's spread):
    the rows' documented columns, ready for a `bench sweep --grid` file."""
    first = df.drop_duplicates("group")
    order = np.argsort(first["flops"].to_numpy(float), kind="stable")
    pick = sorted(set(np.linspace(0, len(order) - 1, min(k, len(order))).round().astype(int)))
    out = []
    for i in pick:
        row = first.iloc[order[i]]
        cfg = {}
        for c in IDENTITY:
            v = row.get(c)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            cfg[c] = v.item() if hasattr(v, "item") else v
        out.append(cfg)
    return out


GRID_KEYS = (
    "vocab_size", "n_layer", "n_embd", "n_head", "n_kv_head", "ffn_hidden", "multiple_of",
    "sequence_length", "tie_embeddings", "kernels", "attention", "arch", "bias", "batch_size",
    "acc_steps", "dtype",
)  # fmt: skip


def grid_rows(configs: list[dict]) -> list[dict]:
    """Reference configs as `bench sweep --grid` rows (ModelConfig fields and sweep axes)."""
    rows = []
    for c in configs:
        row = {k: c[k] for k in GRID_KEYS if k in c and c[k] is not None}
        for k in ("tie_embeddings", "bias"):
            if k in row:
                row[k] = bool(row[k])
        rows.append(row)
    return rows


def result_lines(res: dict, cv_mape: float | None) -> list[str]:
    sc = ", ".join(f"{g} x{v:.3f}" for g, v in res["scales"].items())
    b, a, loo = res["before"], res["after"], res["leave_one_config_out"]
    lines = [
        f"calibration on {res['n_configs']} reference configs: measured / predicted = "
        f"{res['mean_ratio_measured_over_predicted']:.3f} on average before",
        f"  scales (seconds per unit multiplied by): {sc}",
        f"  {'':28s} {'MAPE%':>7s} {'worst%':>7s}",
        f"  {'before (the fitted model)':28s} {b['mape']:7.2f} {b['max_ape']:7.1f}",
        f"  {'after, in-sample':28s} {a['mape']:7.2f} {a['max_ape']:7.1f}",
    ]
    if loo:
        lines.append(
            f"  {'after, leave-one-config-out':28s} {loo['mape']:7.2f} {loo['max_ape']:7.1f}"
            + (f"   (the fitted model's CV MAPE: {cv_mape:.2f}%)" if cv_mape else "")
        )
    if res["clipped_at_peak"]:
        lines.append(
            "  held at the peak (the new machine looks faster than the peak allows): "
            + ", ".join(res["clipped_at_peak"])
        )
    return lines
