"""`train` command line: the seed codebase's flags (spec/seeds.md §1.1) plus preset, data, out,
kernels and device.

Modes: a normal run; `--resume-from CKPT`; `--cooldown-from CKPT` (a branch into its own directory);
`--cooldown-targets T1,T2,...` (the whole WSD recipe); `--print-schedule`; `--plot RUN_DIR`.
Bad input prints one `error: ...` line and exits 2.
"""

from __future__ import annotations

import argparse
import sys

from train.schedules import DECAY_TYPES, SCHEDULERS, ScheduleError, check_schedule, schedule_csv


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    # suppress=True gives a parser whose namespace holds only the flags typed on the command line,
    # which is how resume/cooldown tell "override the checkpoint's args" from "use them".
    kw = {"argument_default": argparse.SUPPRESS} if suppress else {}
    desc = "Train a Llama-style LM with WSD/cosine schedules."
    p = argparse.ArgumentParser(prog="train", description=desc, **kw)

    def add(*names, **opts):
        if suppress:
            opts.pop("default", None)
        p.add_argument(*names, **opts)

    # schedule
    add("--scheduler", default="cos", choices=SCHEDULERS, help="LR schedule (seed default cos)")
    add("--iterations", type=int, default=15000, help="number of optimizer steps")
    add("--warmup-steps", type=int, default=300, help="linear warmup steps from lr/100")
    add(
        "--warmup-tokens",
        default=None,
        help="'params' (warmup tokens = parameter count) or a token count; "
        "overrides --warmup-steps",
    )
    add("--lr", type=float, default=1e-3, help="peak learning rate")
    add(
        "--wsd-fract-decay",
        type=float,
        default=0.1,
        help="WSD cooldown length as a fraction of --iterations",
    )
    add(
        "--decay-type",
        default="linear",
        choices=DECAY_TYPES + ("miror_cosine",),
        help="WSD cooldown shape",
    )
    add(
        "--wsd-final-lr-scale", type=float, default=0.0, help="final LR as a fraction of peak (WSD)"
    )
    add("--cos-inf-steps", type=int, default=0, help="constant tail steps for cos_inf")
    add(
        "--print-schedule",
        action="store_true",
        default=False,
        help="print step,lr_factor CSV for 0..iterations and exit",
    )
    # optimizer
    add("--weight-decay", type=float, default=0.1, help="decoupled weight decay on matrices")
    add("--beta1", type=float, default=0.9, help="AdamW beta1")
    add("--beta2", type=float, default=0.95, help="AdamW beta2")
    add("--grad-clip", type=float, default=1.0, help="global-norm clip (0 = off)")
    # averaging
    add(
        "--weight-average",
        action="store_true",
        default=False,
        help="window SWA (evaluated beside raw weights)",
    )
    add(
        "--wa-interval",
        type=int,
        default=5,
        help="steps between SWA snapshots (must divide the horizon)",
    )
    add("--wa-horizon", type=int, default=500, help="SWA window length in steps")
    add(
        "--wa-sweep-horizon",
        action="store_true",
        default=False,
        help="also evaluate the mean of the last k windows, k=1..max",
    )
    add("--max-num-wa-sweeps", type=int, default=5, help="most windows kept for --wa-sweep-horizon")
    add(
        "--wa-save-windows",
        action="store_true",
        default=False,
        help="write each completed window to OUT/avgs/ (one model-size file each)",
    )
    add(
        "--exponential-moving-average",
        action="store_true",
        default=False,
        help="track an EMA of the weights",
    )
    add("--ema-decay", type=float, default=0.95, help="EMA decay per update")
    add("--ema-interval", type=int, default=10, help="steps between EMA updates")
    # batch and model
    add("--batch-size", type=int, default=50, help="sequences per micro-batch per process")
    add("--acc-steps", type=int, default=4, help="gradient accumulation micro-batches per step")
    add(
        "--sequence-length",
        type=int,
        default=None,
        help="tokens per sequence (default: preset, else 512)",
    )
    add("--preset", default=None, help="model preset from model.config.PRESETS (e.g. tiny, 124M)")
    add("--n-layer", type=int, default=None, help="transformer blocks (default: preset, else 24)")
    add("--n-embd", type=int, default=None, help="model width (default: preset, else 768)")
    add("--n-head", type=int, default=None, help="attention heads (default: preset, else 12)")
    add(
        "--vocab-size", type=int, default=None, help="vocabulary size (default: preset, else 50304)"
    )
    add(
        "--kernels",
        default="torch",
        choices=("torch", "triton"),
        help="torch references or fused Triton kernels",
    )
    add("--compile", action="store_true", default=False, help="torch.compile the model")
    add(
        "--dtype",
        default="bfloat16",
        choices=("float32", "bfloat16", "float16"),
        help="autocast dtype on CUDA (params stay fp32)",
    )
    add("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    add("--seed", type=int, default=0, help="model init / RNG seed")
    add("--data-seed", type=int, default=1337, help="data order seed")
    # data and output
    add(
        "--data",
        default=None,
        help="FILE.bin (uint16 tokens) or FILE.txt (bytes); default: embedded stdlib corpus",
    )
    add(
        "--data-dtype",
        default="uint16",
        choices=("uint16", "uint32"),
        help="token dtype of a .bin file",
    )
    add("--out", default="runs/train", help="run directory")
    add("--eval-interval", type=int, default=200, help="steps between evaluations (and at the end)")
    add("--eval-batches", type=int, default=32, help="validation batches per evaluation")
    add("--log-interval", type=int, default=10, help="steps between log lines")
    add(
        "--no-progress",
        action="store_true",
        default=False,
        help="no progress bar even on a terminal",
    )
    add(
        "--permanent-ckpt-interval",
        type=int,
        default=0,
        help="keep a checkpoint every N steps in OUT/ckpts/<step>/ (0 = off)",
    )
    add(
        "--latest-ckpt-interval",
        type=int,
        default=0,
        help="overwrite OUT/latest/ every N steps (0 = off)",
    )
    add("--resume-from", default=None, help="checkpoint file or directory to continue exactly")
    add(
        "--cooldown-from", default=None, help="constant-LR checkpoint to branch a WSD cooldown from"
    )
    add(
        "--cooldown-targets",
        default=None,
        help="comma-separated run lengths: one stable run + a cooldown each",
    )
    add(
        "--plot",
        default=None,
        metavar="RUN_DIR",
        help="write RUN_DIR/plot.png (loss and LR vs step) and exit",
    )
    return p


def _validate(a: argparse.Namespace) -> None:
    check_schedule(
        scheduler=a.scheduler,
        iterations=a.iterations,
        warmup_steps=a.warmup_steps,
        wsd_fract_decay=a.wsd_fract_decay,
        decay_type=a.decay_type,
        wsd_final_lr_scale=a.wsd_final_lr_scale,
        cos_inf_steps=a.cos_inf_steps,
    )
    for name in ("batch_size", "acc_steps"):
        if getattr(a, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0")
    bad_wa = a.wa_interval <= 0 or a.wa_horizon <= 0 or a.wa_horizon % a.wa_interval
    if a.weight_average and bad_wa:
        raise ValueError(f"--wa-interval {a.wa_interval} must divide --wa-horizon {a.wa_horizon}")
    if a.exponential_moving_average and not 0.0 <= a.ema_decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1), got {a.ema_decay}")


def _targets(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        msg = f"--cooldown-targets must be comma-separated integers, got {s!r}"
        raise ValueError(msg) from None
    if not out or min(out) <= 0:
        raise ValueError("--cooldown-targets needs positive step counts")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    explicit = vars(build_parser(suppress=True).parse_args(argv))
    # Imported late: --help and --print-schedule stay fast and torch-free where possible.
    from model.config import ConfigError
    from train.checkpoint import CheckpointError
    from train.data import DataError
    from train.loop import TrainError

    try:
        if a.plot is not None:
            from train.plot import plot_run

            print(plot_run(a.plot))
            return 0
        if a.cooldown_from is not None or a.resume_from is not None:
            from train import checkpoint as ckpt_io
            from train import loop

            path = a.cooldown_from or a.resume_from
            payload = ckpt_io.load(path)
            if a.cooldown_from is not None:
                ca = loop.cooldown_args(payload["args"], explicit)
                _validate(ca)
                loop.cooldown_from(payload, explicit)
            else:
                ra = argparse.Namespace(**{**payload["args"], **explicit})
                ra.resume_from = None
                _validate(ra)
                loop.run(ra, start=payload)
            return 0
        _validate(a)
        if a.print_schedule:
            if a.warmup_tokens is not None:
                from train.data import get_data
                from train.loop import model_config, resolve_warmup

                _, _, vocab = get_data(a.data, uint32=a.data_dtype == "uint32")
                resolve_warmup(a, model_config(a, vocab), 1)
            sys.stdout.write(
                schedule_csv(
                    scheduler=a.scheduler,
                    iterations=a.iterations,
                    warmup_steps=a.warmup_steps,
                    wsd_fract_decay=a.wsd_fract_decay,
                    decay_type=a.decay_type,
                    wsd_final_lr_scale=a.wsd_final_lr_scale,
                    cos_inf_steps=a.cos_inf_steps,
                )
            )
            return 0
        from train import loop

        if a.cooldown_targets is not None:
            loop.cooldown_targets(a, _targets(a.cooldown_targets))
        else:
            loop.run(a)
        return 0
    except (ScheduleError, ConfigError, CheckpointError, DataError, TrainError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
