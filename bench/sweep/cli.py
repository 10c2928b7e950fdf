"""`bench sweep` flags and handler: build the grid, check everything, run it, report."""

from __future__ import annotations

import dataclasses
import os
import sys

from bench.sweep import grid as gridmod
from bench.sweep import results
from bench.sweep.options import (
    TIMINGS,
    TRAIN_BASE,
    TRAIN_FLAGS,
    SweepOptions,
    check_gpus,
    check_options,
)
from bench.sweep.run import prepare, run_sweep
from core import UserError
from core.errors import HelpFormat
from model.config import VAL_TOKENS
from train.cli_flags import add_train_flags

# Grid flags = ModelConfig fields and run settings, kebab-case like `train`'s flags.
GRID_FLAGS = [k for k in gridmod.known_keys() if k != gridmod.INJECT_KEY]
_GRID_HELP = {
    "kernels": "auto (on CUDA measured per op, torch on CPU), torch, triton (all ours) or ops "
    "of ours joined by '+' (rmsnorm, swiglu, linear_ce)",
    "device": "auto (cuda if available), cpu, cuda or cuda:N",
    "dtype": "float32, bfloat16 or float16 (autocast on CUDA; a CPU step runs float32)",
    "compile": "0/1: torch.compile the model",
    "batch_size": "sequences per micro-batch per process",
    "acc_steps": "micro-batches per optimizer step",
    "lr": "peak learning rate",
    "seed": "model init seed (TrainConfig's seed); see --seeds",
}


def _grid_help(name: str) -> str:
    what = _GRID_HELP.get(name, f"ModelConfig {name}")
    default = gridmod.SETTING_DEFAULTS.get(name, "the preset's value, else ModelConfig's")
    if name == "kernels":
        default = "auto"
    return f"comma list of values: {what} (default: {default})"


def add_sweep(sub) -> None:
    s = sub.add_parser(
        "sweep", help="wall-clock sweep, one worker process per config", formatter_class=HelpFormat
    )
    s.add_argument(
        "--minutes",
        type=float,
        required=True,
        metavar="M",
        help="timed budget of each config, in minutes (per config, not for the whole sweep; "
        "train's --minutes budgets a whole run)",
    )
    s.add_argument("--out", required=True, metavar="DIR", help="results folder (resumable)")
    s.add_argument(
        "--preset", default=None, metavar="NAME", help="base config (tiny, small, 124M, ...)"
    )
    s.add_argument(
        "--grid",
        default=None,
        metavar="FILE",
        help="JSON list or CSV of rows instead of flag lists",
    )
    for k in GRID_FLAGS:
        flag = "--" + k.replace("_", "-")
        s.add_argument(flag, dest="g_" + k, default=None, metavar="LIST", help=_grid_help(k))
    s.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="K",
        help="K model seeds per config (the grid's seed dimension, = --seed 0,...,K-1): repeats "
        "measure the machine's noise, seeds the loss's",
    )
    s.add_argument(
        "--max-configs",
        type=int,
        default=gridmod.DEFAULT_MAX_CONFIGS,
        metavar="N",
        help="refuse grids larger than N configs (checked before expanding)",
    )
    _add_timing(s)
    _add_schedule(s)
    _add_running(s)
    try:
        from bench.sweep import executors

        executors.add_flags(s)
    except ImportError:  # bench.sweep.executors is optional
        pass
    s.set_defaults(func=sweep_cmd)


MAX_REPEAT_HELP = "most measurements of one config under --repeat-until (0: 3 * --repeat)"


def _add_timing(s) -> None:
    s.add_argument(
        "--timing",
        choices=TIMINGS,
        default="windows",
        help="windows: k steps between events, no sync inside (steady state); synced: every "
        "step synchronised",
    )
    s.add_argument(
        "--untimed-steps",
        type=int,
        default=2,
        metavar="N",
        help="training steps before timing starts (allocator, autotune, compile)",
    )
    s.add_argument(
        "--val-tokens",
        type=int,
        default=VAL_TOKENS,
        metavar="N",
        help="held-out tokens behind each val_loss: the same sequences for every config of a "
        "sequence length, whatever its batch size",
    )
    s.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="measure every config K times, interleaved (rows get a repeat index)",
    )
    s.add_argument(
        "--repeat-until",
        type=float,
        default=0.0,
        metavar="PCT",
        help="after the K repeats, re-measure (in interleaved rounds) every config whose median "
        "step time has a standard error above PCT%% of it, up to --max-repeat (0: off; needs "
        "--repeat 3 or more)",
    )
    s.add_argument("--max-repeat", type=int, default=0, metavar="M", help=MAX_REPEAT_HELP)
    s.add_argument(
        "--reference-every",
        type=int,
        default=0,
        metavar="N",
        help="re-time the grid's first config every N configs to report machine drift (0: off)",
    )
    s.add_argument(
        "--drift-correct",
        action="store_true",
        help="add step_ms_corrected = step_ms_median / drift (needs --reference-every)",
    )
    s.add_argument(
        "--no-pin", action="store_true", help="do not pin CPU workers to one core per thread"
    )
    s.add_argument(
        "--cpu-cores",
        default=None,
        metavar="LIST",
        help="pin CPU workers to these cores, e.g. 0 or 2-3, one per --threads (default: the last "
        "allowed core, one further down per --shard index): sweeps side by side on other cores",
    )


def _add_schedule(s) -> None:
    group = s.add_argument_group(
        "training (TrainConfig's flags, the same for every config; scheduler constant or wsd)"
    )
    add_train_flags(group, TRAIN_FLAGS, TRAIN_BASE)


def _add_running(s) -> None:
    s.add_argument(
        "--timeout-factor",
        type=float,
        default=3.0,
        metavar="F",
        help="per-config timeout = F x budget + --timeout-grace",
    )
    s.add_argument(
        "--timeout-grace",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds added to every per-config timeout",
    )
    s.add_argument(
        "--retry",
        default=None,
        metavar="LIST",
        help="also rerun rows with these final statuses: oom,nan (error and timeout rows are "
        "always retried)",
    )
    s.add_argument(
        "--shard", default=None, metavar="I/N", help="run only this deterministic share of the grid"
    )
    s.add_argument(
        "--gpus",
        default=None,
        metavar="LIST",
        help="comma list of GPU ids, one config per GPU at a time",
    )
    s.add_argument(
        "--nproc-per-config",
        type=int,
        default=1,
        metavar="N",
        help="processes per config under torchrun (DDP; gloo on CPU, NCCL on CUDA)",
    )
    s.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is none off a terminal anyway)",
    )


def parse_cores(text: str) -> tuple[int, ...]:
    """'0,2-3' -> (0, 2, 3): core ids and inclusive ranges, in the order given, no repeats."""
    cores: list[int] = []
    for part in (x.strip() for x in text.split(",")):
        lo, sep, hi = part.partition("-")
        hi = hi if sep else lo
        if not (lo.isdigit() and hi.isdigit() and 0 <= int(hi) - int(lo) < 4096):
            raise UserError(f"--cpu-cores takes core ids like 0,1 or 2-5; got {text!r}")
        cores += range(int(lo), int(hi) + 1)
    return tuple(dict.fromkeys(cores))


def _retry(text: str) -> tuple[str, ...]:
    extra = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in extra if x not in ("oom", "nan", "error", "timeout")]
    if bad:
        raise UserError(f"--retry takes oom, nan, error, timeout; got {', '.join(bad)}")
    return tuple(dict.fromkeys(results.RETRY_DEFAULT + tuple(extra)))


def options(a) -> SweepOptions:
    from train import smoke

    return SweepOptions(
        out_dir=a.out,
        minutes_per_config=smoke.scale_minutes(a.minutes),
        timeout_factor=a.timeout_factor,
        timeout_grace_s=a.timeout_grace,
        shard=gridmod.parse_shard(a.shard) if a.shard else None,
        gpus=[g.strip() for g in a.gpus.split(",") if g.strip()] if a.gpus else [],
        untimed_steps=a.untimed_steps,
        val_tokens=smoke.scale_val_tokens(a.val_tokens),
        train=_train_flags(a),
        timing=a.timing,
        retry=_retry(a.retry or ""),
        repeat=a.repeat,
        repeat_until=a.repeat_until,
        max_repeat=a.max_repeat,
        reference_every=a.reference_every,
        drift_correct=a.drift_correct,
        pin=not a.no_pin,
        cpu_cores=parse_cores(a.cpu_cores) if a.cpu_cores is not None else (),
        nproc_per_config=a.nproc_per_config,
        progress=not a.no_progress,
    )


def _train_flags(a) -> dict:
    """The TrainConfig flags given on this command line (a data path made absolute)."""
    flat = {k: getattr(a, k) for k in TRAIN_FLAGS if hasattr(a, k)}
    if isinstance(flat.get("data"), str):
        flat["data"] = os.path.abspath(flat["data"])
    return flat


def grid_rows(a) -> list[dict]:
    from train import smoke

    lists = {
        k: getattr(a, "g_" + k).split(",") for k in GRID_FLAGS if getattr(a, "g_" + k) is not None
    }
    if a.max_configs < 1:
        raise UserError(f"--max-configs must be >= 1, got {a.max_configs}")
    if a.seeds is not None:
        if "seed" in lists:
            raise UserError("give --seeds K or --seed LIST, not both")
        if not 1 <= a.seeds <= 1000:
            raise UserError(f"--seeds must be between 1 and 1000, got {a.seeds}")
        if not a.grid:
            lists["seed"] = [str(i) for i in range(a.seeds)]
    if a.grid:
        if lists:
            flags = ", ".join("--" + k.replace("_", "-") for k in lists)
            raise UserError(f"--grid FILE sets the grid; drop the grid flag(s) {flags}, or --grid")
        rows = gridmod.read_grid_file(a.grid, a.preset, a.max_configs)
        if a.seeds is not None:  # every row of the file at seeds 0..K-1
            gridmod.check_size(len(rows) * a.seeds, a.max_configs, f"--grid {a.grid} x --seeds")
            rows = [dict(r, seed=i) for r in rows for i in range(a.seeds)]
    else:
        rows = gridmod.expand(smoke.scale_grid(lists), smoke.scale_preset(a.preset), a.max_configs)
    if not rows:
        raise UserError("the grid is empty")
    return rows


def sweep_cmd(a) -> int:
    opts = options(a)
    check_options(opts)
    rows = grid_rows(a)
    _note_big_cpu_configs(rows)
    prepared = valid, invalid = prepare(rows, opts)  # every config validated once, here
    if not valid and not invalid:
        raise UserError("the grid is empty in this shard" if opts.shard else "the grid is empty")
    if not valid:
        raise UserError(f"every config is invalid, e.g. {invalid[0][2]}")
    if getattr(a, "executor", "local") != "local":
        return _submit(a, rows, opts, prepared)
    if hasattr(a, "executor"):  # refuse --slurm-* / --detach without an executor that uses them
        from bench.sweep import executors

        executors.options_from_args(a)
    check_gpus(opts.gpus)
    out = run_sweep(rows, opts, prepared=prepared)
    return report(out["rows"], valid, opts, out["held"])


CPU_PARAMS_NOTE = 50e6  # configs above this many parameters are called out on a CPU machine


def _note_big_cpu_configs(rows: list[dict]) -> None:
    """A sweep without --preset starts from ModelConfig's 12 x 768 defaults: on a machine with no
    GPU, say so before configs time out."""
    import importlib.util

    from model.costs import num_params

    if importlib.util.find_spec("torch") is None:
        return
    import torch

    if torch.cuda.is_available():
        return
    big = []
    for r in rows:
        try:
            if num_params(gridmod.model_config(r)) > CPU_PARAMS_NOTE:
                big.append(r)
        except Exception:  # noqa: BLE001  (an invalid row is reported as skipped later)
            continue
    if big:
        print(
            f"note: {len(big)} of {len(rows)} configs have over {CPU_PARAMS_NOTE / 1e6:.0f}M "
            "parameters and this machine has no GPU; --preset tiny (or small) starts from a "
            "CPU-sized model",
            file=sys.stderr,
        )


def _submit(a, rows, opts: SweepOptions, prepared) -> int:
    from bench.sweep import executors
    from bench.sweep.options import start_folder
    from bench.sweep.run import _write_skipped, plan

    local_only = {"--reference-every": opts.reference_every, "--gpus": opts.gpus}
    local_only["--repeat-until"] = opts.repeat_until  # rounds decided from the rows as they land
    local_only["--cpu-cores"] = opts.cpu_cores  # cores of this machine, not of a job's
    given = [flag for flag, v in local_only.items() if v]
    if given:
        verb = "needs" if len(given) == 1 else "need"
        raise UserError(f"{', '.join(given)} {verb} --executor local")
    eopts = executors.options_from_args(a)
    if eopts.executor == "submitit-local":  # its jobs run side by side: none is pinned
        opts = dataclasses.replace(opts, pin=False)
    start_folder(opts)
    have = results.load_rows(opts.out_dir)
    _write_skipped(rows, opts, have, lambda m: print(m, file=sys.stderr), prepared)
    specs = plan(rows, opts, have, prepared)
    got = executors.run_pending(specs, opts.out_dir, eopts, opts.timeout_s)
    if got is None:
        return 0
    return report(got, prepared[0], opts)


def report(
    rows: list[dict], valid: list[tuple[dict, str]], opts: SweepOptions, held: list[str] = ()
) -> int:
    """Print this grid's rows; exit 1 (one line) when none of its configs has an ok row.

    Configs in `held` are still run by submitit/Slurm jobs: they have not failed (yet).
    """
    import pandas as pd

    from bench.sweep.show import format_table

    ids = {cid for _, cid in valid}
    mine = [r for r in rows if r.get("config_id") in ids and r.get("kind", "config") == "config"]
    print(format_table(pd.DataFrame(mine)) if mine else "(no rows)")
    if any(r.get("status") == "ok" for r in mine):
        return 0
    if held:
        print(
            f"{len(held)} config(s) still run by jobs: `bench status {opts.out_dir}` follows "
            "them; rerun this command when they are done",
            file=sys.stderr,
        )
        return 0
    logs = os.path.join(opts.out_dir, ".work", "*.log")
    counts: dict[str, int] = {}
    for r in mine:
        counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
    if not counts:
        print(
            f"error: no config of this grid has a row in {opts.out_dir}; see {logs}",
            file=sys.stderr,
        )
        return 1
    what = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(
        f"error: every config failed ({what}); see the messages above and {logs}", file=sys.stderr
    )
    return 1
