"""`timemodel`: step-time and loss models for wall-clock training budgets (no torch).

  timemodel fit TABLE|SWEEP_DIR --out tm.json [--folds 5] [--extrapolate] [--plot fit.png]
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

from model.config import ArgParser, run_cli
from timemodel import cli_fit, cli_use, models


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions keep their line breaks; every flag's help shows its default."""


class Parser(ArgParser):
    """ArgParser (one-line errors) with `Formatter` for the command and every subcommand."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)


def _fit_parser(sub) -> None:
    f = sub.add_parser(
        "fit",
        help="fit step time on a measured table (any trainer's, or a sweep)",
        description=cli_fit.FIT_HELP,
    )
    f.add_argument(
        "tables",
        nargs="+",
        metavar="TABLE",
        help="CSV/JSONL/Parquet with one row per measured config, or a bench sweep folder",
    )
    f.add_argument("--out", required=True, metavar="JSON", help="where the time model is written")
    f.add_argument(
        "--time-col",
        default="step_ms_median",
        metavar="COL",
        help="column holding the measured step time",
    )
    f.add_argument("--time-unit", default="ms", choices=("ms", "s"), help="unit of --time-col")
    f.add_argument(
        "--features",
        default=None,
        metavar="LIST",
        help="fit this comma list of costs.STEP_FEATURES instead of choosing by CV",
    )
    f.add_argument("--folds", type=int, default=5, metavar="K", help="k of the k-fold CV")
    f.add_argument(
        "--objective",
        default="relative",
        choices=("relative", "absolute"),
        help="relative: least squares on (pred-y)/y; absolute: on pred-y",
    )
    f.add_argument(
        "--extrapolate",
        action="store_true",
        help="also score extrapolation splits (small->large params, one T -> another)",
    )
    f.add_argument(
        "--cv-repeats",
        type=int,
        default=5,
        metavar="R",
        help="score every feature set on R random k-fold splits; choose by the mean MAPE",
    )
    f.add_argument("--plot", default=None, metavar="PNG", help="held-out predicted vs measured")
    f.add_argument(
        "--color-by",
        default="batch_size",
        metavar="COL",
        help="table column that colours the --plot points",
    )
    f.set_defaults(func=cli_fit.cmd_fit)


def _loss_parser(sub) -> None:
    g = sub.add_parser(
        "fit-loss",
        help="loss law L(N, D[, batch]) from sweep results",
        description=cli_fit.FIT_LOSS_HELP,
    )
    g.add_argument(
        "sweeps",
        nargs="+",
        metavar="SWEEP_DIR",
        help="bench sweep folders (or tables) with val_loss and tokens_seen; combined",
    )
    g.add_argument("--out", required=True, metavar="JSON", help="where the law is written")
    g.add_argument(
        "--convention",
        default="porian",
        metavar="NAME",
        help="N convention for costs.law_params (see costs.LAW_CONVENTIONS)",
    )
    g.add_argument("--loss-col", default="val_loss", metavar="COL", help="loss column")
    g.add_argument(
        "--params-col",
        default=None,
        metavar="COL",
        help="table mode: N from this column instead of the sweep's configs",
    )
    g.add_argument("--tokens-col", default="tokens", metavar="COL", help="table mode: D column")
    g.add_argument(
        "--tokens-from-flops",
        default=None,
        metavar="COL",
        help="table mode: D = COL / (6 N) from a training-FLOP column",
    )
    g.add_argument(
        "--drop-highest",
        type=int,
        default=0,
        metavar="K",
        help="drop the K highest-loss runs before fitting",
    )
    g.add_argument(
        "--no-batch-term",
        action="store_true",
        help="fit E + A/N^alpha + B/D^beta only, even when the batch varies",
    )
    g.add_argument(
        "--budgets",
        default="",
        metavar="LIST",
        help="FLOP budgets (comma list, > 0) for the compute-optimal N and D; warns outside the "
        "fitted range",
    )
    g.add_argument(
        "--bootstrap",
        type=int,
        default=0,
        metavar="K",
        help="K bootstrap refits for 95%% CIs (0: none)",
    )
    g.add_argument(
        "--max-starts",
        type=int,
        default=100,
        metavar="K",
        help="BFGS from the K best of the 4500 grid starts (0: all)",
    )
    g.set_defaults(func=cli_fit.cmd_fit_loss)


def _replicate_parser(sub) -> None:
    r = sub.add_parser(
        "replicate-chinchilla",
        help="REPLICATION of Hoffmann et al.'s approach 3 on Epoch's digitised points",
        description=cli_fit.REPLICATE_HELP,
    )
    r.add_argument(
        "--csv",
        default=str(cli_fit.EPOCH_CSV),
        metavar="CSV",
        help="Epoch's svg_extracted_data.csv (a copy ships in timemodel/data)",
    )
    r.add_argument("--out", default=None, metavar="JSON", help="write the replicated law here")
    r.add_argument(
        "--max-starts",
        type=int,
        default=10,
        metavar="K",
        help="BFGS from the K best of the 4500 grid starts (0: all)",
    )
    r.set_defaults(func=cli_fit.cmd_replicate)


def _isoflop_parser(sub) -> None:
    s = sub.add_parser(
        "fit-isoflop",
        help="Chinchilla approach 2: N*, D* per budget, power laws",
        description=cli_fit.ISOFLOP_HELP,
    )
    s.add_argument("tables", nargs="+", metavar="TABLE", help="tables or sweep folders")
    s.add_argument(
        "--group-col",
        required=True,
        metavar="COL",
        help="column whose value is each group's budget (FLOPs, or minutes)",
    )
    s.add_argument(
        "--params-col",
        default=None,
        metavar="COL",
        help="N column (default: costs.law_params of each sweep row's config)",
    )
    s.add_argument("--tokens-col", default="tokens_seen", metavar="COL", help="D column")
    s.add_argument("--loss-col", default="val_loss", metavar="COL", help="loss column")
    s.add_argument(
        "--convention",
        default="porian",
        metavar="NAME",
        help="N convention when N comes from the configs",
    )
    s.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COL=VALUE",
        help="keep rows whose COL equals VALUE (repeatable)",
    )
    s.add_argument(
        "--window",
        type=float,
        default=8.0,
        metavar="X",
        help="parabola only on runs within a factor X of the group's best N (0: all)",
    )
    s.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        metavar="K",
        help="bootstrap refits for the 95%% CIs (0: none)",
    )
    s.add_argument("--out", default=None, metavar="JSON", help="write the fit here")
    s.add_argument("--plot", default=None, metavar="PNG", help="profiles and power laws")
    s.set_defaults(func=cli_fit.cmd_isoflop)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="timemodel", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=Parser)
    _fit_parser(sub)
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
