"""`timemodel`: step-time and loss models for wall-clock training budgets (no torch).

  timemodel fit TABLE|SWEEP_DIR --out tm.json [--folds 5] [--extrapolate] [--plot fit.png]
  timemodel calibrate tm.json --plan grid.json | --table MEASURED --out tm2.json
  timemodel fit-loss SWEEP_DIR [SWEEP_DIR ...] --out law.json        (approach 3 + batch term)
  timemodel fit-isoflop TABLE --group-col flops [--plot iso.png]     (Chinchilla approach 2)
  timemodel replicate-chinchilla --out chinchilla.json    (a published fit, not a law for you)
  timemodel predict tm.json --preset 124M --batch-size 32 --hours 1 [--loss-law law.json]
  timemodel search --time-model tm.json --loss-law law.json --hours 1 [--space small]
  timemodel describe --preset 124M --batch-size 32

Bad input: one `error: ...` line and exit code 2. Warnings (a model used outside its fitted
range, a time model fitted on another device) are one `warning: ...` line each, printed once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from core import run_cli
from timemodel import cli_fit, cli_use, models
from timemodel import table as ttable
from timemodel.cli_args import Parser, opt


def _command(sub, name: str, handler, help: str, description: str, inputs: tuple[str, str]):
    """A subcommand parser with its handler and its positional input list (METAVAR, help)."""
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("inputs", nargs="+", metavar=inputs[0], help=inputs[1])
    p.set_defaults(func=handler)
    return p


def _flag(p, flag: str, help: str) -> None:
    p.add_argument(flag, action="store_true", help=help)


def _fit_parser(sub) -> None:
    f = _command(
        sub,
        "fit",
        cli_fit.cmd_fit,
        "fit step time on a measured table (any trainer's, or a sweep)",
        cli_fit.FIT_HELP,
        ("TABLE", "CSV/JSONL/Parquet (a row per config), a sweep folder, or `cpu_sweep` (example)"),
    )
    opt(f, "--out", None, "JSON", "where the time model is written", required=True)
    opt(f, "--time-col", "step_ms_median", "COL", "column holding the measured step time")
    opt(f, "--time-unit", "ms", "UNIT", "unit of --time-col", choices=("ms", "s"))
    opt(f, "--features", None, "LIST", "fit this comma list of costs.STEP_FEATURES, not CV's")
    opt(f, "--folds", 5, "K", "k of the k-fold CV")
    objectives = ("relative", "absolute")
    opt(f, "--objective", "relative", "NAME", "fit (pred-y)/y or pred-y", choices=objectives)
    _flag(f, "--extrapolate", "also score extrapolation splits (small->large params, T -> T')")
    opt(f, "--cv-repeats", 5, "R", "R random k-fold splits per feature set; the mean MAPE decides")
    opt(
        f,
        "--aggregate",
        "rows",
        "HOW",
        "repeats of a config: rows (each its own sample), median or min (one target per config)",
        choices=ttable.AGGREGATES,
    )
    opt(
        f,
        "--select",
        "cv",
        "HOW",
        "saved family: cv (lower CV MAPE) or extrapolate (lower error on the extrapolation "
        "splits, selection re-run inside each: the search's use)",
        choices=("cv", "extrapolate"),
    )
    opt(f, "--outer-seeds", 5, "S", "outer splits of the nested CV headline (1..50)")
    opt(f, "--device", None, "NAME", "device for the peak table (default: the table's device_name)")
    opt(
        f,
        "--device-name",
        None,
        "NAME",
        "the device the table was measured on, saved in the model (default: the table's "
        "device_name or gpu_name column); predict and search warn on another device",
    )
    opt(f, "--peak-flops", None, "FLOP/S", "peak FLOP/s of the device (overrides the table)")
    opt(f, "--peak-bandwidth", None, "B/S", "peak memory (copy) bandwidth in B/s")
    opt(f, "--link-bandwidth", None, "B/S", "all-reduce link bandwidth per direction in B/s")
    opt(f, "--plot", None, "PNG", "held-out predicted vs measured")
    opt(f, "--color-by", "batch_size", "COL", "table column that colours the --plot points")


def _calibrate_parser(sub) -> None:
    c = sub.add_parser(
        "calibrate",
        help="carry a time model to this machine from a handful of measured reference configs",
        description=cli_fit.CALIBRATE_HELP,
    )
    c.add_argument("time_model", metavar="TM", help="time model JSON written by `timemodel fit`")
    opt(c, "--table", None, "TABLE", "measured reference configs (sweep folder or table)",
        nargs="+")  # fmt: skip
    opt(c, "--out", None, "JSON", "where the calibrated time model is written")
    opt(c, "--plan", None, "GRID", "write the reference configs as a bench sweep --grid file")
    opt(c, "--time-col", "step_ms_median", "COL", "column holding the measured step time")
    opt(c, "--time-unit", "ms", "UNIT", "unit of --time-col", choices=("ms", "s"))
    opt(c, "--aggregate", "median", "HOW", "repeats of a config", choices=ttable.AGGREGATES)
    c.set_defaults(func=cli_fit.cmd_calibrate)


def _loss_parser(sub) -> None:
    g = _command(
        sub,
        "fit-loss",
        cli_fit.cmd_fit_loss,
        "loss law L(N, D[, batch]) from sweep results",
        cli_fit.FIT_LOSS_HELP,
        ("SWEEP_DIR", "bench sweep folders (or tables) with val_loss and tokens_seen; combined"),
    )
    opt(g, "--out", None, "JSON", "where the law is written", required=True)
    opt(g, "--convention", "porian", "NAME", "N convention (costs.LAW_CONVENTIONS)")
    opt(g, "--loss-col", "val_loss", "COL", "loss column")
    opt(g, "--params-col", None, "COL", "table mode: N from this column, not the configs")
    opt(g, "--tokens-col", "tokens", "COL", "table mode: D column")
    opt(g, "--tokens-from-flops", None, "COL", "table mode: D = COL / (6 N), COL training FLOPs")
    opt(g, "--drop-highest", 0, "K", "drop the K highest-loss runs before fitting")
    _flag(g, "--no-batch-term", "fit E + A/N^alpha + B/D^beta only, even when the batch varies")
    opt(g, "--budgets", "", "LIST", "FLOP budgets (comma list) for compute-optimal N and D")
    opt(g, "--bootstrap", 0, "K", "K bootstrap refits for 95%% CIs, 0..2000 (0: none)")
    opt(g, "--max-starts", 100, "K", "BFGS from the K best of the 2880 grid starts (0: all)")
    opt(g, "--cv-seeds", 3, "S", "seeds of the held-out MAE check (5-fold by run; 0: skip)")


def _replicate_parser(sub) -> None:
    r = sub.add_parser(
        "replicate-chinchilla",
        help="REPLICATION of Hoffmann et al.'s approach 3 on Epoch's digitised points",
        description=cli_fit.REPLICATE_HELP,
    )
    opt(r, "--csv", str(cli_fit.EPOCH_CSV), "CSV", "Epoch's svg_extracted_data.csv (shipped)")
    opt(r, "--out", None, "JSON", "write the replicated law here")
    opt(r, "--max-starts", 10, "K", "BFGS from the K best of the 2880 grid starts (0: all)")
    r.set_defaults(func=cli_fit.cmd_replicate)


def _isoflop_parser(sub) -> None:
    s = _command(
        sub,
        "fit-isoflop",
        cli_fit.cmd_isoflop,
        "Chinchilla approach 2: N*, D* per budget, power laws",
        cli_fit.ISOFLOP_HELP,
        ("TABLE", "tables or sweep folders, or `porian` (the shipped Porian et al. 2024 points)"),
    )
    opt(s, "--group-col", None, "COL", "each group's budget (FLOPs, minutes); `porian`: flops")
    opt(s, "--params-col", None, "COL", "N column (default: costs.law_params of the configs)")
    opt(s, "--tokens-col", None, "COL", "D column (default: tokens_seen; `porian`: t)")
    opt(s, "--loss-col", None, "COL", "loss column (default: val_loss; `porian`: loss)")
    opt(s, "--convention", "porian", "NAME", "N convention when N comes from the configs")
    opt(
        s,
        "--where",
        [],
        "COL=VALUE",
        "keep rows whose COL equals VALUE (repeatable)",
        action="append",
    )
    opt(s, "--method", "akima", "HOW", "per-budget optimum: akima (Porian et al.) or parabola",
        choices=("akima", "parabola"))  # fmt: skip
    opt(s, "--window", 8.0, "X", "parabola: runs within a factor X of the best N (0: all)")
    opt(s, "--bootstrap", 200, "K", "bootstrap refits for the 95%% CIs (0: none)")
    opt(s, "--out", None, "JSON", "write the fit here")
    opt(s, "--plot", None, "PNG", "profiles and power laws")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="timemodel", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=Parser)
    _fit_parser(sub)
    _calibrate_parser(sub)
    _loss_parser(sub)
    _replicate_parser(sub)
    _isoflop_parser(sub)
    cli_use.add_parsers(sub)
    return p


def _body(argv: Sequence[str]) -> int:
    models.reset_warnings()
    args = build_parser().parse_args(list(argv))
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_body, argv)
