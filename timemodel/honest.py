"""Held-out numbers that score the whole fitting procedure, selection included.

Every family below is a *procedure*: given training rows it chooses what it chooses (the linear
family picks its feature set by inner CV on those rows only) and fits; the held-out rows never
touch the choice. Scores:

- Nested CV: outer k-fold by config over several outer seeds (each seed a different split); the
  headline is the mean MAPE over seeds with its range, and the worst APE over every seed (one
  split's worst case is one draw of a noisy maximum). Selection runs inside each outer training
  fold (Varma & Simon 2006, "Bias in error estimation when using cross-validation for model
  selection", BMC Bioinformatics 7:91; Hastie, Tibshirani & Friedman, ESL 2nd ed., section 7.10.2).
- Extrapolation: train on one part of the space, test on the other, the procedure (selection
  included) re-run on the training part: smaller half -> larger half by params and by FLOPs,
  shorter sequence lengths -> longer (and each length -> each other), micro-batch smallest ->
  larger, one micro-step -> several.
- Baselines beside every number: the training mean, and FLOPs only (c0 + c * FLOPs).
- Noise floor: the bootstrap standard error of the aggregate each config is fitted on (its median
  over repeats, or a single row), relative to it; an error on that same aggregate cannot be
  expected below about sqrt(2/pi) x that SE (the mean absolute value of a normal error).
"""

from __future__ import annotations

import numpy as np

from timemodel import fit as tfit
from timemodel import roofline

LINEAR = "linear (features selected by CV)"
PHYSICAL = "physical (roofline)"
TIME_MATTERS = "Time Matters linear (params+FLOPs+bytes)"
MEAN = "baseline: mean"
FLOPS_ONLY = "baseline: FLOPs only"
CHOSEN = "chosen procedure"
SHORT = {
    CHOSEN: "chosen",
    LINEAR: "linear",
    PHYSICAL: "physical",
    TIME_MATTERS: "TM",
    MEAN: "mean",
    FLOPS_ONLY: "FLOPs",
}


def _sub(F: dict, idx: np.ndarray) -> dict:
    return {n: v[idx] for n, v in F.items()}


class Context:
    """What every procedure needs: features, targets, groups, the candidate sets, the peaks."""

    def __init__(self, F, y, groups, sets, pool, peaks, objective="relative", folds=5, seed=0):
        self.F, self.y, self.groups = F, np.asarray(y, dtype=float), np.asarray(groups)
        self.sets, self.pool, self.peaks = sets, pool, peaks
        self.objective, self.folds, self.seed = objective, folds, seed
        self.cache: dict = {}
        self.above_peak: dict = {}  # training rows -> the linear fit has a rate above a peak

    def memo(self, key: str, tr: np.ndarray, make):
        """One fit per (procedure, training rows): families share the roofline and linear fits."""
        k = (key, tr.tobytes())
        if k not in self.cache:
            self.cache[k] = make()
        return self.cache[k]


def _inner_folds(ctx: Context, tr: np.ndarray) -> list[np.ndarray]:
    k = min(ctx.folds, len(np.unique(ctx.groups[tr])))
    return tfit.group_folds(ctx.groups[tr], k, seed=ctx.seed + 101)


def linear_selected(ctx: Context, tr: np.ndarray, given: list[str] | None = None):
    """(predictor, what was picked, inner CV MAPE) of the linear family fitted on rows `tr`."""
    return ctx.memo("linear", tr, lambda: _linear_selected(ctx, tr, given))


def _linear_selected(ctx: Context, tr: np.ndarray, given: list[str] | None):
    F, y = _sub(ctx.F, tr), ctx.y[tr]
    folds = _inner_folds(ctx, tr)
    if given:
        names, picked = tfit.usable(F, given), "given"
        inner = tfit.cv_score(F, names, y, folds, ctx.objective, ctx.groups[tr])["mape"]
    else:
        picked, sc = tfit.select(F, ctx.sets, y, folds, ctx.objective, ctx.pool, ctx.groups[tr])
        names, inner = sc[picked]["features"], sc[picked]["mape"]
    c0, c = tfit.fit_nnls(tfit.matrix(F, names), y, ctx.objective)
    ctx.above_peak[tr.tobytes()] = _above_peak(dict(zip(names, c)), ctx.peaks)
    return (lambda G: tfit.predict(c0, c, tfit.matrix(G, names))), picked, inner


def _above_peak(coefs: dict, peaks: dict | None) -> bool:
    """A linear coefficient implies a rate above the device's peak (see stepmodel.linear_checks:
    FLOP-type features against peak FLOP/s, byte-type against the bandwidth)."""
    if not peaks:
        return False
    for f, v in coefs.items():
        if v <= 0:
            continue
        if f in ("flops", "matmul_flops", "other_flops", "attention_scores"):
            if 1.0 / v > peaks["flops"]:
                return True
        elif f.startswith("bytes") and 1.0 / v > peaks["bandwidth"]:
            return True
    return False


def fixed_linear(ctx: Context, tr: np.ndarray, names: list[str]):
    F = _sub(ctx.F, tr)
    names = tfit.usable(F, names)
    c0, c = tfit.fit_nnls(tfit.matrix(F, names), ctx.y[tr], ctx.objective)
    return lambda G: tfit.predict(c0, c, tfit.matrix(G, names))


def physical(ctx: Context, tr: np.ndarray):
    def make():
        m = roofline.fit(_sub(ctx.F, tr), ctx.y[tr], ctx.peaks, objective=ctx.objective)
        return lambda G: roofline.predict(m, G)

    return ctx.memo("physical", tr, make)


def physical_inner(ctx: Context, tr: np.ndarray) -> float:
    """Inner CV MAPE of the roofline on rows `tr` (what the chosen procedure compares)."""
    return ctx.memo("physical_inner", tr, lambda: _physical_inner(ctx, tr))


def _physical_inner(ctx: Context, tr: np.ndarray) -> float:
    pred = np.empty(len(tr))
    for te in _inner_folds(ctx, tr):
        itr = np.setdiff1d(np.arange(len(tr)), te)
        m = roofline.fit(_sub(ctx.F, tr[itr]), ctx.y[tr[itr]], ctx.peaks, objective=ctx.objective)
        pred[te] = roofline.predict(m, _sub(ctx.F, tr[te]))
    return float(np.mean(np.abs(pred - ctx.y[tr]) / ctx.y[tr]) * 100)


def chosen(ctx: Context, tr: np.ndarray, given: list[str] | None = None):
    """The whole `fit` procedure: the linear family's pick and the roofline, the one with the
    lower inner CV MAPE kept (the roofline only when peaks are known; the linear fit never when
    one of its rates is above a peak)."""
    lin, picked, lin_cv = linear_selected(ctx, tr, given)
    if ctx.peaks is None:
        return lin, f"linear: {picked}"
    if ctx.above_peak.get(tr.tobytes()) or physical_inner(ctx, tr) <= lin_cv:
        return physical(ctx, tr), "physical"
    return lin, f"linear: {picked}"


def families(ctx: Context, given: list[str] | None = None) -> dict:
    """{name: procedure(tr) -> (predictor, label)} of every family scored."""
    out = {
        CHOSEN: lambda tr: chosen(ctx, tr, given),
        LINEAR: lambda tr: linear_selected(ctx, tr, given)[:2],
    }
    if ctx.peaks is not None:
        out[PHYSICAL] = lambda tr: (physical(ctx, tr), "physical")
    out[TIME_MATTERS] = lambda tr: (fixed_linear(ctx, tr, ["params", "flops", "bytes"]), "TM")
    out[FLOPS_ONLY] = lambda tr: (fixed_linear(ctx, tr, ["flops"]), "flops")
    out[MEAN] = lambda tr: (_mean_predictor(float(ctx.y[tr].mean())), "mean")
    return out


def _mean_predictor(m: float):
    return lambda G: np.full(len(next(iter(G.values()))), m)


def nested_cv(ctx: Context, seeds: int, given: list[str] | None = None) -> dict:
    """Per family: MAPE per outer seed, its mean/min/max, the worst APE over all seeds, and the
    labels picked in the outer folds."""
    fams = families(ctx, given)
    per = {n: {"mape": [], "max_ape": [], "r2": [], "picked": []} for n in fams}
    for s in range(seeds):
        folds = tfit.group_folds(ctx.groups, ctx.folds, seed=1000 + s)
        for name, proc in fams.items():
            pred = np.empty_like(ctx.y)
            for te in folds:
                tr = np.setdiff1d(np.arange(len(ctx.y)), te)
                f, label = proc(tr)
                pred[te] = f(_sub(ctx.F, te))
                per[name]["picked"].append(label)
            m = tfit.metrics(ctx.y, pred, ctx.groups)
            per[name]["mape"].append(m["mape"])
            per[name]["max_ape"].append(m["max_ape"])
            per[name]["r2"].append(m["r2"])
    out = {}
    for name, p in per.items():
        out[name] = {
            "mape_mean": float(np.mean(p["mape"])),
            "mape_range": [float(min(p["mape"])), float(max(p["mape"]))],
            "mape_per_seed": [float(v) for v in p["mape"]],
            "worst_ape": float(max(p["max_ape"])),
            "worst_ape_per_seed": [float(v) for v in p["max_ape"]],
            "picked": dict(sorted(_count(p["picked"]).items())),
        }
    return {"seeds": seeds, "folds": ctx.folds, "families": out}


def _count(labels: list[str]) -> dict:
    out: dict[str, int] = {}
    for lab in labels:
        out[lab] = out.get(lab, 0) + 1
    return out


def _halves(v: np.ndarray, groups: np.ndarray):
    """(lower half, upper half) row indices by the median of the configs' values of v."""
    cut = np.median(np.unique(v))
    return np.flatnonzero(v <= cut), np.flatnonzero(v > cut)


def splits(df, groups: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train/test pairs the search's use meets (measure small, search big), where the table
    varies that axis and both sides hold configs."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def add(name, tr, te):
        if len(np.unique(groups[tr])) >= 6 and len(te) >= 1:
            out[name] = (tr, te)

    for col, label in (("params", "params"), ("flops", "FLOPs")):
        if col in df.columns and df[col].nunique() > 1:
            add(f"{label}: smaller half -> larger half", *_halves(df[col].to_numpy(float), groups))
    T = df["sequence_length"].to_numpy(int)
    seqs = np.unique(T)
    if len(seqs) > 1:
        lo, hi = np.flatnonzero(T <= np.median(seqs)), np.flatnonzero(T > np.median(seqs))
        add(f"T: {','.join(map(str, seqs[seqs <= np.median(seqs)]))} -> longer", lo, hi)
        for a in seqs:
            for b in seqs:
                if a != b:
                    add(f"T: {a} -> {b}", np.flatnonzero(T == a), np.flatnonzero(T == b))
    B = df["batch_size"].to_numpy(int)
    if len(np.unique(B)) > 1:
        b0 = B.min()
        add(f"micro-batch {b0} -> larger", np.flatnonzero(B == b0), np.flatnonzero(B > b0))
    acc = df["acc_steps"].to_numpy(int) if "acc_steps" in df.columns else np.ones(len(df), int)
    if len(np.unique(acc)) > 1:
        add("1 micro-step -> more", np.flatnonzero(acc == 1), np.flatnonzero(acc > 1))
    return out


def extrapolation(ctx: Context, df, given: list[str] | None = None) -> dict:
    """Every split scored with every family, each procedure re-run on the training part."""
    fams = families(ctx, given)
    out = {}
    for split, (tr, te) in splits(df, ctx.groups).items():
        row = {"_n_train": int(len(np.unique(ctx.groups[tr]))),
               "_n_test": int(len(np.unique(ctx.groups[te])))}  # fmt: skip
        for name, proc in fams.items():
            f, label = proc(tr)
            m = tfit.metrics(ctx.y[te], f(_sub(ctx.F, te)))
            row[name] = {"mape": m["mape"], "max_ape": m["max_ape"], "picked": label}
        out[split] = row
    return out


def noise_floor(groups: np.ndarray, y: np.ndarray, how: str, n_boot: int = 200, seed: int = 0):
    """Bootstrap SE of each config's fitted aggregate (median, min, or one row), relative to it,
    over the configs measured more than once: {"se_mean" %, "floor_mape" %, "configs"}."""
    rng = np.random.default_rng(seed)
    rel = []
    for g in np.unique(groups):
        t = y[groups == g]
        if len(t) < 2:
            continue
        if how == "rows":  # one measurement: its SE is the spread of single measurements
            rel.append(t.std(ddof=1) / t.mean())
            continue
        agg = np.median if how == "median" else np.min
        draws = agg(t[rng.integers(0, len(t), size=(n_boot, len(t)))], axis=1)
        rel.append(draws.std(ddof=1) / agg(t))
    if not rel:
        return None
    se = float(np.mean(rel) * 100)
    return {"se_mean": se, "floor_mape": se * float(np.sqrt(2 / np.pi)), "configs": len(rel)}


def headline_lines(nested: dict, floor: dict | None, aggregate: str) -> list[str]:
    k, s = nested["folds"], nested["seeds"]
    lines = [
        f"HEADLINE: nested {k}-fold CV by config over {s} outer seeds (selection inside every "
        "outer training fold)",
        f"  {'procedure':42s} {'MAPE% mean [min-max over seeds]':>32s} {'worst% (all seeds)':>18s}",
    ]
    for name, m in nested["families"].items():
        lo, hi = m["mape_range"]
        picks = ""
        if name == CHOSEN:
            picks = "  picked: " + ", ".join(f"{k} x{v}" for k, v in m["picked"].items())
        lines.append(
            f"  {name:42s} {m['mape_mean']:12.2f} [{lo:.2f}-{hi:.2f}]{'':10s} "
            f"{m['worst_ape']:10.1f}{picks}"
        )
    if floor:
        lines.append(
            f"  noise floor of the fitted aggregate ({aggregate}): bootstrap SE "
            f"{floor['se_mean']:.2f}% per config ({floor['configs']} configs with repeats) -> "
            f"expected MAPE of a perfect model ~{floor['floor_mape']:.2f}%"
        )
    return lines


USABLE_MAPE = 10.0  # % held out: above it, step times (and the tokens a budget buys) are a guess


def usability_lines(nested: dict, floor: dict | None, saved: str) -> list[str]:
    """One WARNING line (and what to do) when the saved family's held-out error is too large to
    rank configs by, or sits far above the measurement's own noise; nothing when it is fine."""
    m = (nested.get("families") or {}).get(saved) or {}
    mape = m.get("mape_mean")
    if mape is None:
        return []
    out = []
    if mape > USABLE_MAPE:
        out.append(
            f"WARNING: the saved model is off by {mape:.1f}% on held-out configs on average (worst "
            f"{m.get('worst_ape', float('nan')):.0f}%): the budgets it plans and the configs it "
            "ranks are that uncertain"
        )
    if floor and floor.get("floor_mape") and mape > 2 * floor["floor_mape"] and out:
        out.append(
            f"  the measurements' own noise allows ~{floor['floor_mape']:.1f}%: the model, not "
            "the noise, limits it (more configs, or --select extrapolate / another family)"
        )
    elif out:
        out.append(
            "  remeasure on a quieter machine with bench sweep --repeat 3 --repeat-until 2 "
            "(noisy step times limit any model), then fit with --aggregate median"
        )
    return out


def extrapolation_lines(extra: dict, cv_mape: dict) -> list[str]:
    names = [n for n in next(iter(extra.values())) if not n.startswith("_")] if extra else []
    lines = [
        "EXTRAPOLATION (the procedure re-run on the training part, selection included): MAPE% / "
        "worst%; ratio = MAPE / that family's nested-CV MAPE",
        f"  {'split':34s} {'train':>5s} {'test':>5s} "
        + " ".join(f"{SHORT.get(n, n[:8]):>17s}" for n in names),
    ]
    for split, row in extra.items():
        cells = []
        for n in names:
            m = row[n]
            ratio = m["mape"] / cv_mape[n] if cv_mape.get(n) else float("nan")
            cells.append(f"{m['mape']:6.2f}/{m['max_ape']:5.1f} x{ratio:4.2f}")
        lines.append(f"  {split:34s} {row['_n_train']:5d} {row['_n_test']:5d} " + " ".join(cells))
    return lines
