"""`bench` command line: sweep, status, merge, show, plot, kernels.

    bench sweep --minutes 0.1 --n-layer 1,2 --n-embd 32,64 --n-head 2 --out results/sweep
    bench sweep --minutes 1 --grid grid.json --out DIR --shard 0/4 --gpus 0,1,2,3
    bench sweep --minutes 2 --preset tiny --n-layer 1,2 --scheduler wsd --wsd-fract-decay 0.2 \\
        --decay-type sqrt --warmup-steps 20 --repeat 3 --reference-every 5 --out DIR
    bench status DIR
    bench merge DIR1 DIR2 --out DIR
    bench show DIR --sort -step_ms_median --filter 'status == ok and n_layer >= 2'
    bench plot DIR --color-by n_layer
    bench kernels --op all --dtype bf16 --out results/kernels

Bad input prints one `error: ...` line on stderr and exits 2; a sweep in which every config
failed exits 1; Ctrl-C exits 130 and the same command resumes.
"""

from __future__ import annotations

import sys

from bench import kernelbench as kernels
from bench.sweep import status
from bench.sweep.cli import add_sweep
from core import ArgParser, run_cli
from core.errors import HelpFormat

RESUME_HINT = "rerun the same command to resume: finished configs are kept"


def build_parser() -> ArgParser:
    p = ArgParser(prog="bench", description=__doc__.splitlines()[0], formatter_class=HelpFormat)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND", parser_class=ArgParser)
    add_sweep(sub)
    status.add_parser(sub)
    m = sub.add_parser(
        "merge",
        help="join result folders, one row per config (later dirs win)",
        formatter_class=HelpFormat,
    )
    m.add_argument("dirs", nargs="+", metavar="DIR", help="sweep output folders to merge")
    m.add_argument("--out", required=True, metavar="DIR", help="folder for the merged table")
    m.set_defaults(func=_merge)
    sh = sub.add_parser("show", help="print the results table", formatter_class=HelpFormat)
    sh.add_argument("dir", metavar="DIR", help="sweep output folder")
    sh.add_argument(
        "-s", "--sort", default=None, metavar="COL", help="sort by COL; -COL sorts descending"
    )
    sh.add_argument("--desc", action="store_true", help="sort descending")
    sh.add_argument(
        "--filter",
        default=None,
        metavar="EXPR",
        help="keep rows matching 'COL OP VALUE [and|or ...]', OP one of == != < <= > >=",
    )
    sh.add_argument("--columns", default=None, metavar="LIST", help="comma list of columns")
    sh.set_defaults(func=_show)
    pl = sub.add_parser(
        "plot", help="write PNGs of the results into DIR", formatter_class=HelpFormat
    )
    pl.add_argument("dir", metavar="DIR", help="sweep output folder")
    pl.add_argument("--out", default=None, metavar="DIR", help="PNG folder (default: DIR)")
    pl.add_argument(
        "--color-by",
        default="batch_size",
        metavar="COL",
        help="column that colours the step-time scatter (one fit line per value)",
    )
    pl.add_argument(
        "--loss-color-by",
        default="params",
        metavar="COL",
        help="column that colours the loss-vs-time curves",
    )
    pl.set_defaults(func=_plot)
    kernels.add_parser(sub)
    return p


def _merge(a) -> int:
    from bench.sweep import results

    rows = results.merge_into(a.dirs, a.out)
    print(f"merged {len(rows)} rows into {a.out}", file=sys.stderr)
    return 0


def _show(a) -> int:
    from bench.sweep.show import format_table, load_frame

    cols = [c.strip() for c in a.columns.split(",") if c.strip()] if a.columns else None
    print(format_table(load_frame(a.dir), a.sort, a.filter, cols, descending=a.desc))
    return 0


def _plot(a) -> int:
    from bench.sweep.plot import plot_dir

    for path in plot_dir(a.dir, a.out, color_by=a.color_by, loss_color_by=a.loss_color_by):
        print(path)
    return 0


def _join_dash_values(argv: list[str]) -> list[str]:
    """`-s -col` -> `-s=-col`: argparse would read a value starting with '-' as a flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in ("-s", "--sort") and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            nxt = argv[i + 1]
            if len(nxt) > 1 and not nxt.startswith("--") and nxt[1:2].isalpha():
                out.append(f"{tok}={nxt}")
                i += 2
                continue
        out.append(tok)
        i += 1
    return out


def _body(argv) -> int:
    a = build_parser().parse_args(_join_dash_values(list(argv)))
    return a.func(a)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_body, argv, interrupted=RESUME_HINT)


if __name__ == "__main__":
    raise SystemExit(main())
