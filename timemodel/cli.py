"""`timemodel` CLI: `fit` (step-time regression) and `fit-loss` (Chinchilla approach 3).

Bad input -> one `error: ...` line on stderr and exit code 2. predict/search/describe are not written yet.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from timemodel import fit as tfit
from timemodel import losslaw
from timemodel.io import InputError, data_hash, positive_numeric, read_table, require_columns, write_json

VERSION = "0.1"


def _cmd_fit(args: argparse.Namespace) -> int:
    df = read_table(args.results)
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "ok"]
    feats = args.features.split(",") if args.features else [f for f in tfit.FEATURES]
    require_columns(df, feats + [tfit.TARGET], str(args.results))
    df = positive_numeric(df, feats + [tfit.TARGET], str(args.results))
    if args.folds < 2 or len(df) < max(args.folds, len(feats) + 2):
        raise InputError(f"{len(df)} ok rows is too few for {args.folds}-fold CV of {len(feats)} features")
    res = tfit.fit_step_time(df, feats, folds=args.folds)
    measured, held = res.pop("_measured"), res.pop("_held_out")
    first = lambda c: (str(df[c].iloc[0]) if c in df.columns else None)  # noqa: E731
    res |= {"device_name": first("device_name"), "dtype": first("dtype"), "kernels": first("kernels"),
            "n_rows": int(len(df)), "data_hash": data_hash(df, feats + [tfit.TARGET]),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steptime_version": VERSION}
    write_json(res, args.out)
    print(f"{'feature set':40s} {'R2':>8s} {'MAPE%':>8s} {'maxAPE%':>8s}  ({args.folds}-fold held out)")
    for name, m in res["cv"].items():
        print(f"{name:40s} {m['r2']:8.4f} {m['mape']:8.2f} {m['max_ape']:8.2f}")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(np.array(measured) * 1e3, np.array(held) * 1e3, s=10)
        lim = [0, max(max(measured), max(held)) * 1.05e3]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set_xlabel("measured step ms"); ax.set_ylabel("predicted (held out) step ms")
        fig.tight_layout(); fig.savefig(args.plot); plt.close(fig)
    return 0


def _cmd_fit_loss(args: argparse.Namespace) -> int:
    df = read_table(args.runs)
    cols = [args.params_col, args.loss_col] + ([] if args.tokens_from_flops else [args.tokens_col])
    if args.tokens_from_flops:
        cols.append(args.flops_col)
    require_columns(df, cols, str(args.runs))
    df = positive_numeric(df, cols, str(args.runs))
    if args.drop_highest:
        df = df.sort_values(args.loss_col).iloc[: -args.drop_highest]
    if len(df) < 6:
        raise InputError(f"{len(df)} rows is too few to fit 5 parameters")
    N = df[args.params_col].to_numpy(float)
    D = df[args.flops_col].to_numpy(float) / (6 * N) if args.tokens_from_flops else df[args.tokens_col].to_numpy(float)
    L = df[args.loss_col].to_numpy(float)
    law = losslaw.fit_chinchilla(N, D, L, max_starts=args.max_starts)
    if args.bootstrap:
        law["ci95"] = losslaw.bootstrap(N, D, L, args.bootstrap, max_starts=min(args.max_starts or 20, 20))
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b]
    except ValueError:
        raise InputError(f"bad --budgets {args.budgets!r}") from None
    law["compute_optimal"] = [losslaw.compute_optimal(law, c) for c in budgets]
    law |= {"convention": args.convention, "data_hash": data_hash(df, cols), "steptime_version": VERSION}
    write_json(law, args.out)
    print(" ".join(f"{k}={law[k]:.4g}" for k in ("E", "A", "B", "alpha", "beta")))
    for r in law["compute_optimal"]:
        print(f"C={r['C']:.3g}: N_opt={r['N_opt']:.3g} D_opt={r['D_opt']:.3g} tokens/param={r['tokens_per_param']:.1f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timemodel", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit step time on bench results")
    f.add_argument("results"); f.add_argument("--out", required=True)
    f.add_argument("--features", default=None, help="comma list of params,flops_per_step,memory_traffic")
    f.add_argument("--folds", type=int, default=5); f.add_argument("--plot", default=None)
    f.set_defaults(func=_cmd_fit)
    g = sub.add_parser("fit-loss", help="Chinchilla approach 3 loss law")
    g.add_argument("runs"); g.add_argument("--out", required=True)
    g.add_argument("--params-col", default="params"); g.add_argument("--tokens-col", default="tokens")
    g.add_argument("--loss-col", default="loss"); g.add_argument("--flops-col", default="Training FLOP")
    g.add_argument("--tokens-from-flops", action="store_true", help="D = FLOP/(6N) from --flops-col")
    g.add_argument("--drop-highest", type=int, default=0, help="drop the K highest-loss rows (Epoch: 5)")
    g.add_argument("--convention", choices=("porian", "kaplan"), default="porian")
    g.add_argument("--budgets", default="1e21,5.88e23"); g.add_argument("--bootstrap", type=int, default=0)
    g.add_argument("--max-starts", type=int, default=None, help="L-BFGS from the K best grid starts (default all 4500)")
    g.set_defaults(func=_cmd_fit_loss)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InputError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
