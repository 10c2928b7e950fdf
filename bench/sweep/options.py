"""Sweep settings: the options of one `bench sweep`, checked before any worker starts.

The settings that change what a row measures (budget, data, threads, timing, schedule, untimed
steps, pinning, processes per config) are recorded in OUT/sweep.json by the first sweep into a
folder; a later sweep into the same folder with other values is refused with a one-line error,
so a folder never mixes measurements taken under different settings.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
from dataclasses import dataclass, field

from bench.sweep import results
from bench.worker.timing import MeasureConfig
from core import UserError, atomic_write
from model.config import VAL_TOKENS
from train.config import TrainConfig

TIMINGS = ("windows", "synced")
SCHEDULERS = ("constant", "wsd")  # a sweep's run has no length to plan a cosine over
# The TrainConfig fields a sweep takes as flags (the same for every config; grid flags vary the
# model and the batch). Their types, docs and checks are TrainConfig's.
TRAIN_FLAGS = (
    "scheduler",
    "warmup_steps",
    "wsd_fract_decay",
    "decay_type",
    "wsd_final_lr_scale",
    "data",
    "threads",
    "data_seed",
)
# Where a sweep's base run differs from train's defaults, and why: a constant LR with no warmup
# (a config is timed for seconds, and its length is set by the budget as it runs).
TRAIN_BASE = {"scheduler": "constant", "warmup_steps": 0, "iterations": 1}


def base_train_config(train: dict) -> TrainConfig:
    """The TrainConfig every config of a sweep starts from: TRAIN_BASE, then the sweep's flags.
    Grid rows go on top with `with_`, so every value is validated by TrainConfig."""
    cfg = TrainConfig.from_flat({**TRAIN_BASE, **train})
    if cfg.schedule.scheduler not in SCHEDULERS:
        raise UserError(
            f"--scheduler for a sweep is one of {', '.join(SCHEDULERS)}, got "
            f"{cfg.schedule.scheduler!r}"
        )
    return cfg


@dataclass
class SweepOptions:
    out_dir: str
    minutes_per_config: float  # the timed budget of each config (`--minutes`), not of the sweep
    timeout_factor: float = 3.0  # per-config timeout = factor * budget + grace
    timeout_grace_s: float = 120.0  # process start, build, warmup, eval
    shard: tuple[int, int] | None = None
    gpus: list[str] = field(default_factory=list)
    untimed_steps: int = 2  # steps before timing starts (allocator, autotuning, compile)
    train: dict = field(default_factory=dict)  # TRAIN_FLAGS given on the command line
    timing: str = "windows"  # "windows": k steps between events, no sync inside; "synced": per step
    retry: tuple[str, ...] = results.RETRY_DEFAULT
    repeat: int = 1
    repeat_until: float = 0.0  # re-measure configs until their median's SE is <= this % (0: off)
    max_repeat: int = 0  # most measurements per config with repeat_until (0: 3 * repeat)
    reference_every: int = 0  # re-time the reference config every N configs (0: never)
    drift_correct: bool = False
    pin: bool = True  # CPU workers: pin to cores (one per thread)
    cpu_cores: tuple[int, ...] = ()  # pin to these cores (empty: chosen by the worker)
    nproc_per_config: int = 1
    progress: bool = True
    val_tokens: int = VAL_TOKENS  # held-out tokens per val_loss, the same for every batch

    @property
    def budget_s(self) -> float:
        """The timed budget of one config (not of the sweep), in seconds."""
        return 60.0 * self.minutes_per_config

    @property
    def base(self) -> TrainConfig:
        return base_train_config(self.train)

    @property
    def repeat_cap(self) -> int:
        """Most measurements of one config: --max-repeat, else 3 * --repeat."""
        return self.max_repeat or 3 * self.repeat

    @property
    def timeout_s(self) -> float:
        return self.timeout_factor * self.budget_s + self.timeout_grace_s


def check_options(opts: SweepOptions) -> None:
    """Refuse settings that cannot run, before any worker starts (one-line UserError)."""
    if not (math.isfinite(opts.minutes_per_config) and opts.minutes_per_config > 0):
        raise UserError(f"--minutes must be a finite number > 0, got {opts.minutes_per_config}")
    for flag, v in (
        ("--timeout-factor", opts.timeout_factor),
        ("--timeout-grace", opts.timeout_grace_s),
    ):
        if not (math.isfinite(v) and v >= 0):
            raise UserError(f"{flag} must be a finite number >= 0, got {v}")
    base = opts.base  # TrainConfig checks the training flags
    if opts.untimed_steps < 0:
        raise UserError(f"--untimed-steps must be >= 0, got {opts.untimed_steps}")
    for flag, v in (("--repeat", opts.repeat), ("--nproc-per-config", opts.nproc_per_config)):
        if v < 1:
            raise UserError(f"{flag} must be >= 1, got {v}")
    if not (math.isfinite(opts.repeat_until) and opts.repeat_until >= 0):
        raise UserError(f"--repeat-until must be a percentage >= 0, got {opts.repeat_until}")
    if opts.max_repeat < 0:
        raise UserError(f"--max-repeat must be >= 0, got {opts.max_repeat}")
    if opts.max_repeat and not opts.repeat_until:
        raise UserError("--max-repeat caps --repeat-until PCT: give that too (or drop it)")
    if opts.repeat_until and opts.repeat < 3:
        raise UserError(
            f"--repeat-until needs --repeat 3 or more (a spread to start from), got {opts.repeat}"
        )
    if opts.repeat_until and opts.repeat_cap < opts.repeat:
        raise UserError(f"--max-repeat {opts.max_repeat} is below --repeat {opts.repeat}")
    if opts.val_tokens < 1:
        raise UserError(f"--val-tokens must be >= 1, got {opts.val_tokens}")
    if opts.reference_every < 0:
        raise UserError(f"--reference-every must be >= 0, got {opts.reference_every}")
    if opts.drift_correct and not opts.reference_every:
        raise UserError("--drift-correct needs --reference-every N (a reference to correct by)")
    results.check_count_caps(opts)  # no count so large the sweep cannot plan or start it
    if base.data.data is not None:
        check_data(base.data.data)
    if opts.cpu_cores:
        check_cores(opts)


def check_gpus(gpus: list[str]) -> None:
    """Every --gpus id names a GPU of this machine."""
    if not gpus:
        return
    bad = [g for g in gpus if not g.isdigit()]
    if bad:
        raise UserError(f"--gpus takes GPU ids like 0,1; got {','.join(bad)}")
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"--gpus {','.join(gpus)}: this machine has no CUDA GPU")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in visible.split(",")] if visible else None
    ids = ids or [str(i) for i in range(torch.cuda.device_count())]
    missing = [g for g in gpus if g not in ids]
    if missing:
        raise UserError(f"--gpus {','.join(missing)}: not on this machine (GPUs: {','.join(ids)})")


def check_cores(opts: SweepOptions) -> None:
    """--cpu-cores names cores this process may run on, and pinning is on."""
    if not opts.pin:
        raise UserError("--cpu-cores pins the workers, --no-pin says not to: drop one of them")
    if opts.nproc_per_config > 1:
        raise UserError("--cpu-cores pins one-process configs: drop it or --nproc-per-config")
    if not hasattr(os, "sched_getaffinity"):
        raise UserError("--cpu-cores needs Linux's CPU affinity calls: drop it on this system")
    allowed = sorted(os.sched_getaffinity(0))
    bad = [c for c in opts.cpu_cores if c not in allowed]
    if bad:
        have = ",".join(map(str, allowed))
        raise UserError(
            f"--cpu-cores {','.join(map(str, bad))}: not a core this process may use "
            f"(allowed: {have})"
        )


def check_data(path: str) -> None:
    """The data file (or prepared folder) exists and can be read."""
    if not os.path.exists(path):
        raise UserError(f"--data {path}: no such file or folder")
    from train.data import check_data_path  # opened as every worker will, once, up front

    check_data_path(path)


def measurement_settings(opts: SweepOptions) -> dict:
    """Sweep settings that change what a row measures; a folder keeps one set of them: the
    measurement's own (MeasureConfig: budget per config, untimed steps, timing, val tokens,
    pinning, processes) and the base run's training flags."""
    flat = opts.base.to_flat()
    out = {
        "budget_s": opts.budget_s,
        "untimed_steps": opts.untimed_steps,
        "timing": opts.timing,
        "pin": opts.pin,
        "nproc_per_config": opts.nproc_per_config,
        "val_tokens": opts.val_tokens,
    }
    out.update({k: flat[k] for k in TRAIN_FLAGS})
    return out


def measure_config(opts: SweepOptions) -> dict:
    """The measurement part of a worker's spec, as plain JSON."""
    m = MeasureConfig(
        budget_s=opts.budget_s,
        untimed_steps=opts.untimed_steps,
        timing=opts.timing,
        val_tokens=opts.val_tokens,
        pin=opts.pin,
    )
    return dataclasses.asdict(m)


def _shown(k: str, v):
    """(flag, value) as the user typed them."""
    if k == "budget_s" and isinstance(v, (int, float)):
        return "--minutes", f"{v / 60:g}"
    if k == "pin":
        return "pinning (--no-pin)", repr(v)
    return "--" + k.replace("_", "-"), repr(v)


def check_folder_settings(out_dir: str, settings: dict) -> None:
    """Record the measurement settings in OUT/sweep.json, or refuse a mismatch with them."""
    path = os.path.join(out_dir, "sweep.json")
    text = json.dumps({"settings": settings}, indent=1, sort_keys=True) + "\n"
    if not os.path.exists(path):
        tmp = f"{path}.tmp.{os.getpid()}"
        atomic_write(tmp, text)
        try:
            os.link(tmp, path)  # atomic create: two shards starting at once agree on one file
        except FileExistsError:
            pass
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}") from None
        finally:
            os.remove(tmp)
    try:
        have = results.folder_settings(out_dir)
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{path} is unreadable: remove it or use another --out") from None
    for k, v in settings.items():
        if k in have and have[k] != v:
            flag, was = _shown(k, have[k])
            now = _shown(k, v)[1]
            raise UserError(
                f"{out_dir} was measured with {flag} {was}, this run asks {now}: use the same "
                "settings or another --out"
            )


def start_folder(opts: SweepOptions) -> None:
    """Create OUT (one clear line if it cannot be), check its settings, drop stale temp files."""
    out = opts.out_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a folder: pick another --out")
    results.check_sweep_folder(out)  # not inside another run, no symlinked entries
    try:
        os.makedirs(os.path.join(out, ".work"), exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create --out {out}: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"cannot write into --out {out}: permission denied")
    check_folder_settings(out, measurement_settings(opts))
    for folder in [out, *glob.glob(os.path.join(out, "reference*"))]:
        results.remove_stale_temps(os.path.join(folder, ".work"))
        results.remove_stale_temps(folder)  # e.g. sweep.json's, from a sweep killed starting
        if results.has_results(folder):  # a kill between a row and its views leaves them stale
            results.refresh_views(folder)
