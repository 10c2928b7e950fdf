"""Handlers of the fitting commands: fit, fit-loss, replicate-chinchilla, fit-isoflop."""

from __future__ import annotations

import json
import time
from collections import Counter

import pandas as pd

from core import UserError, atomic_write
from model import costs
from timemodel import (
    calibrate,
    honest,
    isoflop,
    lawfit,
    losslaw,
    models,
    plots,
    roofline,
    stepmodel,
)
from timemodel import table as ttable
from timemodel.io import (
    DATASETS,
    data_hash,
    dataset_path,
    finite,
    ok_rows,
    parse_floats,
    positive_numeric,
    read_table,
    read_tables,
    require_columns,
    unread_reference,
    write_json,
)
from timemodel.table import IDENTITY, load_step_table

VERSION = "0.2"
EPOCH_CSV = DATASETS["chinchilla"]
# `timemodel fit-isoflop porian`: the columns of the shipped Porian et al. table, and the setting
# (RefinedWeb, tuned hyperparameters, short warmup, constant LR, N with the head, validation loss)
# whose exponent the paper reports as a = 0.497 (arXiv:2406.19146, results table).
PORIAN_SETTING = "rw/tuned/short/const/standard/val"
PORIAN_COLUMNS = {"group_col": "flops", "params_col": "n", "tokens_col": "t", "loss_col": "loss"}
PORIAN_PAPER_A = {PORIAN_SETTING: 0.497, "owt2/tuned/short/const/standard/val": 0.518}
# Epoch's exact replication of the approach-3 procedure on these points (Besiroglu et al. 2024,
# arXiv:2404.10102; epoch-research/analyzing-chinchilla data_analysis.ipynb).
EPOCH_PUBLISHED = {"E": 1.817, "A": 477.8, "B": 2143.9, "alpha": 0.3473, "beta": 0.3672}

FIT_HELP = ttable.__doc__ + (
    "\nTwo families are fitted. Linear: the feature set chosen by k-fold held-out MAPE among the\n"
    "Time Matters comparison sets and ours (timemodel/stepmodel.py), relative error, coefficients\n"
    ">= 0, each rate printed beside the device's peak. Physical: a roofline per op class with\n"
    "efficiencies in (0, 1] of the peaks (timemodel/roofline.py; peaks from the device table or\n"
    "--peak-flops/--peak-bandwidth). --select cv saves the family with the lower CV error,\n"
    "--select extrapolate the one with the lower error on the extrapolation splits. The headline\n"
    "is nested CV over --outer-seeds outer splits (selection inside every fold), with the mean\n"
    "and FLOPs-only baselines and the bootstrap noise floor of the fitted aggregate\n"
    "(timemodel/honest.py)."
)
FIT_LOSS_HELP = lawfit.__doc__
REPLICATE_HELP = (
    "A REPLICATION of a published fit, not a law for your models: Chinchilla approach 3\n"
    "(Hoffmann et al. 2022, arXiv:2203.15556) on the 245 points Epoch AI digitised from its\n"
    "Fig. 4 (Besiroglu et al. 2024, arXiv:2404.10102), 5 highest-loss points dropped as Epoch\n"
    "do. The law it writes records its N and D range (57M-16B params, 0.8B-320B tokens), so\n"
    "predict and search warn when it is applied to small models."
)
ISOFLOP_HELP = isoflop.__doc__


def _first(df: pd.DataFrame, col: str):
    if col not in df.columns:
        return None
    vals = [v for v in df[col].tolist() if v is not None and v == v and str(v) != ""]
    return str(Counter(map(str, vals)).most_common(1)[0][0]) if vals else None


def _stamp() -> dict:
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "steptime_version": VERSION,
    }


def _fit_features(text: str | None) -> list[str] | None:
    if not text:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in costs.STEP_FEATURES]
    if bad or not names:
        raise UserError(
            f"--features: unknown {', '.join(bad) or '(empty)'}; choose from "
            f"{', '.join(costs.STEP_FEATURES)}"
        )
    return names


def _peaks(args, table: pd.DataFrame) -> dict | None:
    """Device peaks for the physical model: the peak table for --device (else the table's
    device_name / gpu_name), overridden by --peak-flops/--peak-bandwidth/--link-bandwidth."""
    vals = {}
    for flag, v in (("--peak-flops", args.peak_flops), ("--peak-bandwidth", args.peak_bandwidth),
                    ("--link-bandwidth", args.link_bandwidth)):  # fmt: skip
        vals[flag] = None if v is None else finite(flag, v, hi=1e18)
    device = args.device or _device_name(args, table)
    peaks = roofline.peaks_for(
        device,
        _first(table, "dtype"),
        flops=vals["--peak-flops"],
        bandwidth=vals["--peak-bandwidth"],
        link=vals["--link-bandwidth"],
    )
    if peaks is None:
        print(
            f"note: no peak FLOP/s and bandwidth known for device {device!r}; the physical "
            "(roofline) model needs --peak-flops and --peak-bandwidth"
        )
    return peaks


def _device_name(args, table: pd.DataFrame) -> str | None:
    """--device-name, else the table's device_name (a sweep's) or gpu_name column; None when
    nothing names it (predict and search then neither print nor compare a device)."""
    if args.device_name is not None:
        if not args.device_name.strip():
            raise UserError("--device-name must not be empty")
        return args.device_name.strip()
    return _first(table, "device_name") or _first(table, "gpu_name")


def cmd_fit(args) -> int:
    what = ", ".join(args.inputs)
    df = read_tables(args.inputs)
    for ref in unread_reference(args.inputs):
        print(f"note: {ref} holds the sweep's re-timings of its reference config, measurements "
              f"like any other; add `{ref}` to the tables to fit with them too")  # fmt: skip
    table, y = load_step_table(df, time_col=args.time_col, time_unit=args.time_unit, what=what)
    feats = _fit_features(args.features)
    raw_repeatability = ttable.repeatability(table["group"].to_numpy(), y)
    raw_groups, raw_y = table["group"].to_numpy(), y
    n_measured = len(y)
    table, y = ttable.aggregate(table, y, args.aggregate)
    n_cfg = table["group"].nunique()
    if not 1 <= args.cv_repeats <= 1000:
        raise UserError(f"--cv-repeats must be in 1..1000, got {args.cv_repeats}")
    if not 1 <= args.outer_seeds <= 50:
        raise UserError(f"--outer-seeds must be in 1..50, got {args.outer_seeds}")
    peaks = _peaks(args, table)
    if args.folds < 2 or n_cfg < args.folds:
        raise UserError(
            f"{n_cfg} distinct configs is too few for --folds {args.folds} "
            "(need 2 <= folds <= configs)"
        )
    res = stepmodel.fit_table(
        table,
        y,
        folds=args.folds,
        features=feats,
        objective=args.objective,
        extrapolate=args.extrapolate,
        cv_repeats=args.cv_repeats,
        outer_seeds=args.outer_seeds,
        peaks=peaks,
        select=args.select,
        aggregate=args.aggregate,
        raw_groups=raw_groups,
        raw_y=raw_y,
    )
    held = res.pop("_held_out_pred")
    phys_held = res.pop("_physical_held_out_pred", None)
    res["repeatability"] = raw_repeatability  # of single measurements, whatever --aggregate
    res |= {
        "aggregate": args.aggregate,
        "n_measurements": n_measured,
        "kind": "steptime time model",
        "device_name": _device_name(args, table),
        "dtype": _first(table, "dtype"),
        "kernels": _first(table, "kernels"),
        "attention": _first(table, "attention"),
        "time_col": args.time_col,
        "data_hash": data_hash(table.assign(_y=y), list(IDENTITY) + ["_y"]),
        "sources": list(args.inputs),
    } | _stamp()
    for line in stepmodel.table_lines(res):
        print(line)
    if "extrapolation" in res:
        for line in stepmodel.extrapolation_lines(res):
            print(line)
    for line in stepmodel.coefficient_lines(res):
        print(line)
    saved = honest.PHYSICAL if res.get("form") == "roofline" else honest.LINEAR
    for line in honest.usability_lines(res.get("nested_cv") or {}, res.get("noise_floor"), saved):
        print(line)
    write_json(res, args.out)
    print(f"wrote {args.out}")
    if args.plot:
        res["_held_out_pred"] = phys_held if res["family"] == "physical" else held
        col = args.color_by if args.color_by in table.columns else "batch_size"
        color = pd.to_numeric(table[col], errors="coerce").fillna(1.0).to_numpy(float)
        plots.fit_plot(args.plot, res, y, color, col)
        print(f"wrote {args.plot}")
    return 0


CALIBRATE_HELP = calibrate.__doc__


def _saved_cv(tm: dict) -> float | None:
    """The saved family's nested-CV MAPE (mean over outer seeds), as `fit` reported it."""
    fams = (tm.get("nested_cv") or {}).get("families") or {}
    name = honest.PHYSICAL if tm.get("form") == "roofline" else honest.LINEAR
    return (fams.get(name) or {}).get("mape_mean")


def cmd_calibrate(args) -> int:
    tm = models.read_time_model(args.time_model)
    if args.plan:
        rows = calibrate.grid_rows(tm.get("reference_configs") or [])
        if not rows:
            raise UserError(
                f"{args.time_model}: no reference configs stored; refit it with this version"
            )
        write_json_list(rows, args.plan)
        print(f"wrote {args.plan}: {len(rows)} reference configs spread over the fitted range")
        print("measure them on the new machine, then calibrate:")
        print(
            f"  bench sweep --grid {args.plan} --minutes 0.06 --repeat 3 --out runs/calibration"
            + (
                "  --cpu-cores 1"
                if "cpu" in str(tm.get("device_name") or "").lower()
                or str(tm.get("device_name") or "").startswith("AMD")
                else ""
            )  # fmt: skip
        )
        print(f"  timemodel calibrate {args.time_model} --table runs/calibration --out TM2.json")
        return 0
    if not args.table or not args.out:
        raise UserError("give --table MEASURED --out TM2.json (or --plan GRID.json)")
    what = ", ".join(args.table)
    df = read_tables(args.table)
    table, y = load_step_table(df, time_col=args.time_col, time_unit=args.time_unit, what=what)
    table, y = ttable.aggregate(table, y, args.aggregate)
    groups = table["group"].to_numpy()
    n_cfg = len(set(groups.tolist()))
    if n_cfg > 10_000:
        raise UserError(f"{what}: {n_cfg} configs; calibration takes a handful (<= 10000)")
    F = stepmodel.feature_arrays(table)
    res = calibrate.calibrate(tm, F, y, groups)
    for line in calibrate.result_lines(res, _saved_cv(tm)):
        print(line)
    new = {k: v for k, v in res["model"].items() if k not in ("features",)}
    new["calibration"] = {k: v for k, v in res.items() if k != "model"} | {
        "from": args.time_model,
        "tables": list(args.table),
        "device_name": _first(table, "device_name"),
    }
    new |= _stamp()
    write_json(new, args.out)
    print(f"wrote {args.out}")
    return 0


def write_json_list(rows: list, path: str) -> None:
    atomic_write(str(path), json.dumps(rows, indent=1) + "\n")


def _table_runs(args, df: pd.DataFrame, what: str):
    """fit-loss table mode: N, D, L straight from columns (D = C/(6N) with --tokens-from-flops)."""
    dcol = args.tokens_from_flops or args.tokens_col
    cols = [args.params_col, dcol, args.loss_col]
    require_columns(df, cols, what)
    df = positive_numeric(df, cols, what)
    if args.drop_highest:
        df = df.sort_values(args.loss_col).iloc[: -args.drop_highest]
    N = df[args.params_col].to_numpy(float)
    D = df[dcol].to_numpy(float) / (6 * N) if args.tokens_from_flops else df[dcol].to_numpy(float)
    return N, D, df[args.loss_col].to_numpy(float), None, None


MAX_BOOTSTRAP = 2000  # each refit is a fit; 2000 percentile draws are plenty for a 95% CI
MAX_STARTS = 2880  # the grid's size


def _check_loss_args(args) -> list[float]:
    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise UserError(f"--bootstrap must be in 0..{MAX_BOOTSTRAP}, got {args.bootstrap}")
    if not 0 <= args.max_starts <= MAX_STARTS:
        raise UserError(f"--max-starts must be in 0..{MAX_STARTS} (0: all), got {args.max_starts}")
    if not 0 <= args.drop_highest <= 10_000:
        raise UserError(f"--drop-highest must be in 0..10000, got {args.drop_highest}")
    if not 0 <= args.cv_seeds <= 50:
        raise UserError(f"--cv-seeds must be in 0..50 (0: no held-out check), got {args.cv_seeds}")
    return parse_floats("--budgets", args.budgets, hi=1e40)


def cmd_fit_loss(args) -> int:
    budgets = _check_loss_args(args)
    what = ", ".join(args.inputs)
    df = ok_rows(read_tables(args.inputs))
    if args.params_col:
        N, D, L, batch, note = _table_runs(args, df, what)
    else:
        N, D, L, batch, note = lawfit.sweep_runs(
            df, convention=args.convention, loss_col=args.loss_col, what=what
        )
    if note:
        print(f"note: {note}")
    law = lawfit.fit_law(
        N, D, L, batch, max_starts=args.max_starts or None, batch_term=not args.no_batch_term
    )
    if args.bootstrap:
        boot = losslaw.bootstrap(
            N, D, L, args.bootstrap, batch=batch if law.get("b_crit") else None, law=law,
            delta=law["huber_delta"],
        )  # fmt: skip
        law["bootstrap"] = boot
        law["ci95"] = boot["ci95"]
        law["identified"] = losslaw.identified(law, boot)
    if args.cv_seeds:
        law["held_out"] = lawfit.held_out(N, D, L, batch, law=law, seeds=args.cv_seeds)
    law["compute_optimal"] = [losslaw.compute_optimal(law, c) for c in budgets]
    law |= {
        "kind": "steptime loss law",
        "convention": args.convention,
        "sources": args.inputs,
        "data_hash": data_hash(pd.DataFrame({"N": N, "D": D, "L": L}), ["N", "D", "L"]),
    }
    law |= _stamp()
    for line in lawfit.law_lines(law):
        print(line)
    if "bootstrap" in law:
        for line in lawfit.spread_lines(law, law["bootstrap"], law["identified"]):
            print(line)
    if "held_out" in law:
        for line in lawfit.held_out_lines(law["held_out"]):
            print(line)
    for r in law["compute_optimal"]:
        models.warn_law_range(law, {"N": r["N_opt"], "D": r["D_opt"]})
        print(
            f"C={r['C']:.3g}: N_opt={r['N_opt']:.3g} D_opt={r['D_opt']:.3g} "
            f"tokens/param={r['tokens_per_param']:.1f}"
        )
    write_json(law, args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_replicate(args) -> int:
    if not 0 <= args.max_starts <= MAX_STARTS:
        raise UserError(f"--max-starts must be in 0..{MAX_STARTS} (0: all), got {args.max_starts}")
    df = read_table(args.csv)
    cols = ["Model Size", "Training FLOP", "loss"]
    require_columns(df, cols, args.csv)
    df = positive_numeric(df, cols, args.csv).sort_values("loss").iloc[:-5]
    N = df["Model Size"].to_numpy(float)
    D = df["Training FLOP"].to_numpy(float) / (6 * N)
    law = lawfit.fit_law(
        N, D, df["loss"].to_numpy(float), max_starts=args.max_starts or None, delta=losslaw.DELTA
    )
    law.pop("batch_term", None)
    law |= {
        "kind": "replication of a published fit (not a law for your models)",
        "replication_of": "Hoffmann et al. 2022 approach 3 (arXiv:2203.15556) as replicated by "
        "Besiroglu et al. 2024 (arXiv:2404.10102)",
        "convention": "total",
        "published": EPOCH_PUBLISHED,
        "compute_optimal": [losslaw.compute_optimal(law, 5.88e23)],
    } | _stamp()
    print(
        "REPLICATION of a published fit (Chinchilla approach 3 on Epoch AI's digitised points); "
        "it is not a loss law for CPU-scale models."
    )
    print(f"{'':8s}" + "".join(f"{k:>10s}" for k in EPOCH_PUBLISHED))
    print(f"{'ours':8s}" + "".join(f"{law[k]:10.4g}" for k in EPOCH_PUBLISHED))
    print(f"{'Epoch':8s}" + "".join(f"{v:10.4g}" for v in EPOCH_PUBLISHED.values()))
    opt = law["compute_optimal"][0]
    print(
        f"at C=5.88e23 (Chinchilla's budget): N_opt={opt['N_opt']:.3g} D_opt={opt['D_opt']:.3g} "
        f"tokens/param={opt['tokens_per_param']:.1f}; fitted on {len(N)} runs"
    )
    if args.out:
        write_json(law, args.out)
        print(f"wrote {args.out}")
    return 0


def _where(df: pd.DataFrame, clauses: list[str]) -> pd.DataFrame:
    for c in clauses:
        col, sep, val = c.partition("=")
        if not sep or col not in df.columns:
            raise UserError(f"--where {c!r}: use COL=VALUE with a column of the table")
        df = df[df[col].astype(str) == val]
    if len(df) == 0:
        raise UserError(f"no rows left after --where {' '.join(clauses)}")
    return df


def _isoflop_columns(args) -> str | None:
    """Fill unset column flags: the shipped Porian table's names, else a sweep's. Returns the
    Porian setting fitted (None for other tables)."""
    porian = all(dataset_path(t).resolve() == DATASETS["porian"] for t in args.inputs)
    fallback = PORIAN_COLUMNS if porian else {"tokens_col": "tokens_seen", "loss_col": "val_loss"}
    for k, v in fallback.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.group_col is None:
        raise UserError("give --group-col COL: the column holding each group's budget")
    if not porian:
        return None
    if not args.where:
        args.where = [f"config={PORIAN_SETTING}"]
    print(f"note: Porian et al. 2024 iso-FLOP points, setting {' '.join(args.where)}")
    return next((c.partition("=")[2] for c in args.where if c.startswith("config=")), None)


def cmd_isoflop(args) -> int:
    what = ", ".join(args.inputs)
    setting = _isoflop_columns(args)
    if not 0 <= args.bootstrap <= 10_000:
        raise UserError(f"--bootstrap must be in 0..10000, got {args.bootstrap}")
    window = finite("--window", args.window, lo=0.0, lo_open=False, hi=1e6)
    df = _where(ok_rows(read_tables(args.inputs)), args.where)
    require_columns(df, [args.group_col], f"{what} (group column)")
    df = positive_numeric(df, [args.group_col], what)
    if args.params_col:
        cols = [args.params_col, args.tokens_col, args.loss_col]
        require_columns(df, cols, what)
        df = positive_numeric(df, cols, what)
        N, D, L = (df[c].to_numpy(float) for c in cols)
    else:
        N, D, L, _, note = lawfit.sweep_runs(
            df, convention=args.convention, loss_col=args.loss_col, what=what
        )
        if note:
            print(f"note: {note}")
    C = df[args.group_col].to_numpy(float)
    res = isoflop.fit_isoflop(
        C, N, D, L, window=window, bootstrap=args.bootstrap, method=args.method
    )
    for line in isoflop.result_lines(res, args.group_col):
        print(line)
    if setting in PORIAN_PAPER_A and res["a"] is not None:
        print(f"Porian et al. 2024 report a = {PORIAN_PAPER_A[setting]} for this setting")
    if res["a"] is None:
        raise UserError(
            "fewer than 2 groups have an interior optimum; measure a wider range of N "
            "in each group (or use --window 0)"
        )
    if args.out:
        write_json(res | {"group_col": args.group_col, "sources": args.inputs} | _stamp(), args.out)
        print(f"wrote {args.out}")
    if args.plot:
        plots.isoflop_plot(args.plot, res, C, N, D, L, args.group_col)
        print(f"wrote {args.plot}")
    return 0
