"""Validation of a TrainConfig: every setting that cannot run becomes one UserError line.

Standard library only (imported by `train.config`); whether a model fits its device is checked
where the device is known (`train.session.check_fits`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from core import UserError
from core.owner import safe_name
from model.config import parse_kernels
from train.schedules import SCHEDULERS, check_schedule


def validate(cfg: Any) -> None:
    """Raise UserError for any setting of `cfg` (a TrainConfig) that cannot run."""
    _check_types(cfg)
    s, o, a, d, io = cfg.schedule, cfg.optim, cfg.averaging, cfg.data, cfg.io
    if s.scheduler == "none":  # the seed accepts it, then crashes on the first step
        raise UserError("--scheduler none is not supported; --scheduler constant keeps the LR")
    if s.scheduler not in SCHEDULERS:
        raise UserError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got {s.scheduler!r}")
    if s.minutes is not None and s.scheduler not in ("wsd", "constant"):
        raise UserError(
            "--minutes needs --scheduler wsd or constant (the other schedules fix their "
            "shape from step 0, before the step count is known)"
        )
    _positive("iterations", s.iterations)
    _at_least("warmup_steps", s.warmup_steps, 0)
    check_schedule(cfg.schedule)
    _finite_at_least("lr", s.lr, 0.0)
    if s.minutes is not None:
        _finite_positive("minutes", s.minutes)
    if s.warmup_tokens is not None and s.warmup_tokens != "params":
        try:
            tok = float(s.warmup_tokens)
        except (TypeError, ValueError):
            raise UserError(
                f"warmup tokens must be 'params' or a number, got {s.warmup_tokens!r}"
            ) from None
        if not (math.isfinite(tok) and tok >= 0):
            raise UserError(f"warmup tokens must be a finite number >= 0, got {tok}")
    if o.opt not in ("adamw", "SFAdamW"):
        raise UserError(f"--opt must be adamw or SFAdamW (sgd is not supported), got {o.opt!r}")
    if o.opt == "SFAdamW" and a.enabled:
        raise UserError("weight averages live in FusedAdamW: use --opt adamw with them")
    if a.wa_dtype != "float32":
        raise UserError(f"--wa-dtype must be float32 (FusedAdamW's averages), got {a.wa_dtype!r}")
    if a.wa_use_temp_dir and a.wa_save_windows:
        raise UserError("--wa-use-temp-dir keeps windows out of the run folder: drop one")
    _finite_at_least("weight_decay", o.weight_decay, 0.0)
    _finite_at_least("eps", o.eps, 0.0)
    _finite_at_least("grad_clip", o.grad_clip, 0.0)
    for name in ("beta1", "beta2"):
        v = getattr(o, name)
        if not 0.0 <= v < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {v}")
    for name in ("batch_size", "acc_steps", "eval_batches"):
        _positive(name, getattr(d, name))
    # A step holds batch_size * acc_steps sequences in memory at once (its micro-batches).
    if d.batch_size * d.acc_steps > MAX_SEQUENCES_PER_STEP:
        raise UserError(
            f"--batch-size {d.batch_size} x --acc-steps {d.acc_steps} is over "
            f"{MAX_SEQUENCES_PER_STEP:,} sequences a step: no machine holds that batch"
        )
    for name, v in (("iterations", s.iterations), ("warmup_steps", s.warmup_steps)):
        if v > MAX_STEPS:  # steps stay exact in the float schedule math
            raise UserError(f"--{name.replace('_', '-')} must be <= 2**53, got {v}")
    if d.data_dtype not in ("uint16", "uint32"):
        raise UserError(f"data dtype must be uint16 or uint32, got {d.data_dtype!r}")
    for name in ("eval_interval", "log_interval", "permanent_ckpt_interval"):
        _at_least(name, getattr(io, name), 0)
    _at_least("latest_ckpt_interval", io.latest_ckpt_interval, 0)
    if a.weight_average:
        _positive("wa_interval", a.wa_interval)
        _positive("wa_horizon", a.wa_horizon)
        if a.wa_horizon % a.wa_interval:
            raise UserError(
                f"--wa-interval {a.wa_interval} must divide --wa-horizon {a.wa_horizon}"
            )
    if a.exponential_moving_average:
        _positive("ema_interval", a.ema_interval)
        if not 0.0 <= a.ema_decay < 1.0:
            raise UserError(f"--ema-decay must be in [0, 1), got {a.ema_decay}")
    _positive("max_num_wa_sweeps", a.max_num_wa_sweeps)
    if d.data is not None and d.dataset is not None:
        raise UserError("give --data or --dataset, not both")
    _finite_positive("mlp_dim_exp_factor", cfg.model.mlp_dim_exp_factor)
    r = cfg.runtime
    if r.threads is not None:
        _positive("threads", r.threads)
    modes = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
    if r.compile_mode not in modes:
        raise UserError(f"--compile-mode must be one of {', '.join(modes)}, got {r.compile_mode!r}")
    r = cfg.runtime
    if r.dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"dtype must be float32, bfloat16 or float16, got {r.dtype!r}")
    parse_kernels(r.kernels, auto=True)
    for name, v in (("seed", r.seed), ("data_seed", d.data_seed)):
        if not 0 <= v <= MAX_SEED:  # numpy's seeds are 32-bit; torch's and Python's take them too
            raise UserError(f"--{name.replace('_', '-')} must be in 0..{MAX_SEED}, got {v}")
    if io.experiment_name is not None:
        safe_name(io.experiment_name, "--experiment-name")  # a folder under --results-base-folder
    dev = r.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {dev!r}")


MAX_SEED = 2**32 - 1
MAX_SEQUENCES_PER_STEP = 2**20  # GPT-3's 3.2M-token batch is ~1.6k sequences of 2048
MAX_STEPS = 2**53


def _check_types(cfg: Any) -> None:
    for sec in ("schedule", "optim", "averaging", "data", "io", "model", "runtime"):
        obj = getattr(cfg, sec)
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
            if v is None:
                if "None" not in want:
                    raise UserError(f"{f.name} must not be empty")
                continue
            if want.startswith("bool"):
                ok = isinstance(v, bool)
            elif want.startswith("int"):
                ok = isinstance(v, int) and not isinstance(v, bool)
            elif want.startswith("float"):
                ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            elif want.startswith("str"):
                ok = isinstance(v, str)
            else:
                ok = True
            if not ok:
                raise UserError(f"{f.name} must be {want.split(' ')[0]}, got {v!r}")


def _positive(name: str, v: int) -> None:
    if v <= 0:
        raise UserError(f"--{name.replace('_', '-')} must be > 0, got {v}")


def _at_least(name: str, v: int, lo: int) -> None:
    if v < lo:
        raise UserError(f"--{name.replace('_', '-')} must be >= {lo}, got {v}")


def _finite_at_least(name: str, v: float, lo: float) -> None:
    if not (math.isfinite(v) and v >= lo):
        raise UserError(f"--{name.replace('_', '-')} must be a finite number >= {lo:g}, got {v}")


def _finite_positive(name: str, v: float) -> None:
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")
