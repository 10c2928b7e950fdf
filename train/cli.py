"""`train` command line: the seed code's flags (Hägele et al. 2024, arXiv:2405.18392; upstream
epfml/schedules-and-scaling `src/config/base.py`) plus preset, data, out, kernels and device.

Modes: a new run; `--resume-from CKPT` (continue exactly, in the checkpoint's own run folder or
--out); `--cooldown-from CKPT` (a WSD branch into its own folder); `--cooldown-targets T1,T2,...`
(the whole WSD recipe); `--minutes M` (fit the schedule into a time budget); `--print-schedule`;
`--plot RUN_DIR [--plot-log]`. Every run ends with a checkpoint in OUT/latest (none with
`--final-ckpt false`). Subcommands: `train prepare ...` (text -> token files), `train sample ...`.
This is the one place a TrainConfig is built from user input; resume and cooldown derive theirs
from the checkpoint's with `TrainConfig.with_`. Bad input prints one `error: ...` line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from core import ArgParser, UserError, run_cli
from train.cli_flags import add_config_flags, add_refused_flags, normalize
from train.config import TrainConfig, field_default, field_index

SUBCOMMANDS = ("prepare", "sample")
# Settings of where and how this process writes: taken from this command line on resume and
# cooldown, never from the checkpoint (a crafted checkpoint must not choose where train writes).
RUN_LOCAL = (
    "out",
    "overwrite",
    "auto_resume",
    "tensorboard",
    "wandb",
    "wandb_project",
    "wandb_run_prefix",
    "experiment_name",
    "results_base_folder",
    "no_progress",
    "minutes",
)


def build_parser() -> ArgParser:
    desc = "Train a Llama-style (or GPT-2 style) LM with WSD/cosine schedules."
    p = ArgParser(prog="train", description=desc, argument_default=argparse.SUPPRESS)
    sub = p.add_subparsers(title="subcommands", metavar="{prepare,sample}")
    for name, what in (
        ("prepare", "text/JSONL/Parquet -> train.bin, val.bin, meta.json"),
        ("sample", "generate text from a checkpoint"),
    ):
        sp = sub.add_parser(name, help=f"{what} (see 'train {name} --help')", add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=_subcommand(name))
    modes = p.add_argument_group("modes")
    modes.add_argument(
        "--resume-from", metavar="CKPT", help="checkpoint (file, dir or run) to continue exactly"
    )
    modes.add_argument(
        "--cooldown-from",
        metavar="CKPT",
        help="constant-LR checkpoint to branch a WSD cooldown from",
    )
    modes.add_argument(
        "--cooldown-targets",
        metavar="LIST",
        help="comma-separated run lengths: one stable run + a cooldown each",
    )
    modes.add_argument(
        "--print-schedule",
        action="store_true",
        help="print step,lr_factor CSV for 0..iterations and exit",
    )
    modes.add_argument(
        "--plot", metavar="DIR", help="write DIR/plot.png (loss and LR vs step) and exit"
    )
    modes.add_argument("--plot-log", action="store_true", help="with --plot: loss on a log scale")
    add_config_flags(p)
    add_refused_flags(p)
    p.set_defaults(func=_train)
    return p


def _subcommand(name: str):
    def dispatch(ns: argparse.Namespace) -> int:
        if name == "prepare":
            from train.prepare import main as sub_main
        else:
            from train.sample import main as sub_main
        return int(sub_main(ns.rest) or 0)

    return dispatch


_RUN = {"out": None}  # the run folder of this command, once known (for the Ctrl-C line)


def _how_to_resume() -> str:
    out = _RUN["out"]
    return f"continue with train --resume-from {out}" if out else ""


def main(argv: Sequence[str] | None = None) -> int:
    _RUN["out"] = None
    return run_cli(_body, argv, interrupted=_how_to_resume)


def _body(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv and argv[0] in SUBCOMMANDS:  # the subcommand parses its own flags (--help included)
        ns = build_parser().parse_args(argv[:1])
        ns.rest = argv[1:]
    else:
        parser, argv = build_parser(), normalize(argv)
        parser.check_flags(argv)  # a misspelt flag, not the subcommand that swallowed its value
        ns = parser.parse_args(argv)
    return int(ns.func(ns) or 0)


def _train(ns: argparse.Namespace) -> int:
    a = vars(ns)
    explicit = absolute_data_paths({k: v for k, v in a.items() if k in field_index()})
    if a.get("plot") is not None:
        from train.plot import plot_run

        print(plot_run(a["plot"], log_loss=bool(a.get("plot_log"))))
        return 0
    if a.get("plot_log"):
        raise UserError("--plot-log goes with --plot RUN_DIR")
    if a.get("resume_from") is not None and a.get("cooldown_from") is not None:
        raise UserError("give --resume-from or --cooldown-from, not both")
    if a.get("cooldown_from") is not None:
        return _cooldown(a["cooldown_from"], explicit)
    if a.get("resume_from") is not None:
        return _resume(a["resume_from"], explicit)
    cfg = new_config(explicit)
    _RUN["out"] = cfg.io.out
    if a.get("print_schedule"):
        return _print_schedule(cfg)
    if a.get("cooldown_targets") is not None:  # resumes itself where a kill stopped it
        from train.cooldown import cooldown_targets

        cooldown_targets(cfg, _targets(a["cooldown_targets"]))
        return 0
    if cfg.io.auto_resume:  # the newest checkpoint, or from scratch if the kill came before one
        from train import rundir

        ckpt, cfg = rundir.auto_resume(cfg)
        if ckpt is not None:
            return _resume(ckpt, explicit)
    from train import loop

    loop.run(cfg)
    return 0


def new_config(explicit: dict) -> TrainConfig:
    """The TrainConfig of a new run: defaults, the typed flags, the smoke scale-down, the OUT."""
    from train import smoke

    flat = {k: field_default(k) for k in field_index()}
    flat.update(explicit)
    flat = absolute_data_paths(smoke.scale_train(flat))
    named = "experiment_name" in explicit or "results_base_folder" in explicit
    if "out" not in explicit and named:
        name = flat["experiment_name"] or _auto_name(flat)
        flat["out"] = os.path.join(flat["results_base_folder"], name)
    _fit_default_warmup(flat, explicit)
    _warn_unused_schedule_flags(flat, explicit)
    return TrainConfig.from_flat(flat)


# Schedule flags that only one scheduler reads.
SCHEDULER_FLAGS = {
    "wsd_fract_decay": ("wsd",),
    "decay_type": ("wsd",),
    "wsd_final_lr_scale": ("wsd",),
    "cos_inf_steps": ("cos_inf",),
}


def _warn_unused_schedule_flags(flat: dict, explicit: dict) -> None:
    for k, schedulers in SCHEDULER_FLAGS.items():
        if k in explicit and flat["scheduler"] not in schedulers:
            flag = "--" + k.replace("_", "-")
            print(
                f"note: {flag} applies to --scheduler {' or '.join(schedulers)} only; it has no "
                f"effect under --scheduler {flat['scheduler']}",
                file=sys.stderr,
            )


def _fit_default_warmup(flat: dict, explicit: dict) -> None:
    """The default warmup (300 steps) in a run it does not fit is scaled to a tenth of the run,
    and the run says so; a warmup the user gave is kept (and checked). --minutes runs scale it
    when they plan (`train.timebudget.warmup_for`)."""
    from train.timebudget import warmup_for

    if "warmup_steps" in explicit or "warmup_tokens" in explicit or flat["minutes"] is not None:
        return
    iters = flat["iterations"]
    if isinstance(iters, int) and iters > 0:
        w = warmup_for(flat["warmup_steps"], iters)
        if w != flat["warmup_steps"]:
            print(
                f"note: the default warmup of {flat['warmup_steps']} steps does not fit "
                f"{iters} iterations: warmup {w} steps (a tenth); pass --warmup-steps to choose",
                file=sys.stderr,
            )
            flat["warmup_steps"] = w


def absolute_data_paths(flat: dict) -> dict:
    """--data, --datasets-dir and a --dataset folder as absolute paths, so the stored config
    finds the data from any working directory (`train sample RUN`, a resume from elsewhere)."""
    out = dict(flat)
    for k in ("data", "datasets_dir"):
        if isinstance(out.get(k), str):
            out[k] = os.path.abspath(out[k])
    if isinstance(out.get("dataset"), str) and os.path.isdir(out["dataset"]):
        out["dataset"] = os.path.abspath(out["dataset"])
    return out


def _auto_name(flat: dict) -> str:
    model = flat["preset"] or f"{flat['arch']}{flat['n_layer'] or ''}"
    return f"{model}_{flat['scheduler']}_lr{flat['lr']:g}_T{flat['iterations']}_seed{flat['seed']}"


def _derived(payload: dict, explicit: dict) -> dict:
    """This command line's settings on top of a checkpoint's, with run-local ones reset."""
    local = {k: field_default(k) for k in RUN_LOCAL}
    return {**local, **explicit}


def _resume(path: str, explicit: dict) -> int:
    from train import checkpoint as ckpt_io
    from train import loop

    payload = ckpt_io.load(path)
    changes = _derived(payload, explicit)
    changes["out"] = explicit.get("out") or ckpt_io.run_dir_of(payload["path"])
    cfg = payload["train_config"].with_(**changes)
    _RUN["out"] = cfg.io.out
    step, total = int(payload["step"]), cfg.schedule.iterations
    if step > total:
        raise UserError(
            f"checkpoint is at step {step}, past --iterations {total}; "
            f"pass --iterations > {step} to train further"
        )
    if step == total:
        print(
            f"{cfg.io.out}: run already finished at step {step}; nothing to do "
            f"(pass --iterations > {step} to train further)",
            file=sys.stderr,
        )
        return 0
    loop.run(cfg, start=payload, resume=True)
    return 0


def _cooldown(path: str, explicit: dict) -> int:
    from train import checkpoint as ckpt_io
    from train.cooldown import branch_config, branch_dir, cooldown_from

    payload = ckpt_io.load(path)
    cfg = branch_config(payload["train_config"], _derived(payload, explicit))
    if "out" not in explicit:
        cfg = cfg.with_(out=branch_dir(payload, cfg))
    cooldown_from(payload, cfg)
    return 0


def _print_schedule(cfg: TrainConfig) -> int:
    from train.schedules import schedule_csv

    if cfg.schedule.warmup_tokens is not None:
        from train.config import model_config, resolve_warmup
        from train.session import load_data, vocab_from_data

        _, _, vocab = load_data(cfg)
        model_cfg = model_config(cfg, vocab, from_data=vocab_from_data(cfg))
        cfg = resolve_warmup(cfg, model_cfg, 1)
    sys.stdout.write(schedule_csv(cfg.schedule))
    return 0


def _targets(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--cooldown-targets must be comma-separated integers, got {s!r}") from None
    if not out or min(out) <= 0:
        raise UserError("--cooldown-targets needs positive step counts")
    return out
