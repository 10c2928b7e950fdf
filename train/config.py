"""TrainConfig: every training setting, typed, frozen, documented, shared by `train` and `bench`.

The trainer never sees an `argparse.Namespace`: `train/cli.py` builds a TrainConfig from the
command line, `bench/worker.py` builds one from a sweep row, and resume/cooldown derive new configs
with `dataclasses.replace`. Each field carries its one-line doc in `metadata["help"]`, which is
also the CLI's help text, so the flag, its default and its doc cannot drift apart.

Flag names and defaults follow the seed code (epfml/schedules-and-scaling, `src/config/base.py`;
Hägele et al. 2024, arXiv:2405.18392): `--n-layer` is `model.n_layer`, `--wsd-fract-decay` is
`schedule.wsd_fract_decay`, and so on. A flat mapping {flag_dest: value} converts both ways
(`from_flat` / `to_flat`), which is also the checkpoint format (with `SCHEMA_VERSION`).

Standard library only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from model.config import UserError
from train.schedules import SCHEDULERS

SCHEMA_VERSION = 2  # 1 = the flat `vars(args)` dicts written before TrainConfig existed


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002  (argparse's own word)
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class ScheduleConfig:
    """The learning-rate schedule (Hägele et al. 2024, §2-3; seed `src/optim/utils.py`)."""

    scheduler: str = _f("cos", "LR schedule: cos, wsd, constant, linear, cos_inf, none")
    iterations: int = _f(15000, "number of optimizer steps (the schedule's length)")
    warmup_steps: int = _f(300, "linear warmup steps from lr/100")
    warmup_tokens: str | None = _f(
        None, "'params' (warmup tokens = parameter count) or a token count; overrides warmup steps"
    )
    lr: float = _f(1e-3, "peak learning rate")
    wsd_fract_decay: float = _f(0.1, "WSD cooldown length as a fraction of the run")
    decay_type: str = _f("linear", "WSD cooldown shape")
    wsd_final_lr_scale: float = _f(0.0, "final LR as a fraction of peak (WSD)")
    cos_inf_steps: int = _f(0, "constant tail steps for cos_inf")
    minutes: float | None = _f(
        None, "wall-clock budget: fit the whole schedule into M minutes (sets the step count)"
    )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW hyperparameters (decoupled weight decay on matrices only)."""

    opt: str = _f("adamw", "optimizer: adamw (FusedAdamW) or SFAdamW (schedule-free, optional)")
    weight_decay: float = _f(0.1, "decoupled weight decay on matrices")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    eps: float = _f(1e-8, "AdamW epsilon")
    grad_clip: float = _f(1.0, "global-norm gradient clip (0 = off)")


@dataclass(frozen=True)
class AveragingConfig:
    """Weight averages evaluated beside the raw weights (Hägele et al. 2024, §4; seed §1.5)."""

    weight_average: bool = _f(False, "window SWA, evaluated beside the raw weights")
    wa_interval: int = _f(5, "steps between SWA updates (must divide the horizon)")
    wa_horizon: int = _f(500, "SWA window length in steps")
    wa_sweep_horizon: bool = _f(False, "also evaluate the mean of the last k windows, k=1..max")
    max_num_wa_sweeps: int = _f(5, "most windows kept for the last-k sweep")
    wa_save_windows: bool = _f(False, "write each completed window to OUT/avgs/ (model-size files)")
    exponential_moving_average: bool = _f(False, "track an EMA of the weights")
    ema_decay: float = _f(0.95, "EMA decay per update")
    ema_interval: int = _f(10, "steps between EMA updates")

    @property
    def enabled(self) -> bool:
        return self.weight_average or self.exponential_moving_average


@dataclass(frozen=True)
class DataConfig:
    """Where tokens come from and how they are batched."""

    data: str | None = _f(None, "FILE.bin / FILE.txt / prepared DIR; default: embedded corpus")
    data_dtype: str = _f("uint16", "token dtype of a .bin file")
    batch_size: int = _f(50, "sequences per micro-batch per process")
    acc_steps: int = _f(4, "gradient-accumulation micro-batches per step")
    data_seed: int = _f(1337, "data order seed")
    eval_batches: int = _f(32, "validation batches per evaluation")


@dataclass(frozen=True)
class IOConfig:
    """Run directory, logging, evaluation and checkpoint cadence."""

    out: str = _f("runs/train", "run directory")
    eval_interval: int = _f(200, "steps between evaluations (and at the end)")
    log_interval: int = _f(10, "steps between log lines (the only steps that read the device)")
    no_progress: bool = _f(False, "no progress bar even on a terminal")
    permanent_ckpt_interval: int = _f(0, "keep a checkpoint every N steps in OUT/ckpts/<step>/")
    latest_ckpt_interval: int = _f(0, "overwrite OUT/latest/ every N steps (0 = off)")
    overwrite: bool = _f(False, "replace an existing run directory instead of refusing")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build (resolved into a `model.config.ModelConfig` by the loop)."""

    preset: str | None = _f(None, "model preset from model.config.PRESETS (e.g. tiny, 124M)")
    n_layer: int | None = _f(None, "transformer blocks (default: preset, else 24)")
    n_embd: int | None = _f(None, "model width (default: preset, else 768)")
    n_head: int | None = _f(None, "attention heads (default: preset, else 12)")
    vocab_size: int | None = _f(None, "vocabulary size (default: data's meta, preset, else 50304)")
    sequence_length: int | None = _f(None, "tokens per sequence (default: preset, else 512)")


@dataclass(frozen=True)
class RuntimeConfig:
    """Device, precision, kernels and seeds."""

    device: str = _f("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    dtype: str = _f("bfloat16", "autocast dtype on CUDA (params stay fp32); CPU runs fp32")
    kernels: str = _f("auto", "auto (triton on CUDA, torch on CPU), torch or triton")
    compile: bool = _f(False, "torch.compile the model")
    seed: int = _f(0, "model init / RNG seed")


SECTIONS = {
    "schedule": ScheduleConfig,
    "optim": OptimConfig,
    "averaging": AveragingConfig,
    "data": DataConfig,
    "io": IOConfig,
    "model": ModelSpec,
    "runtime": RuntimeConfig,
}


@dataclass(frozen=True)
class TrainConfig:
    """All settings of one run, in sections. Build with `from_flat`, derive with `with_`."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    averaging: AveragingConfig = field(default_factory=AveragingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    io: IOConfig = field(default_factory=IOConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    # ------------------------------------------------------------------------------ conversion
    def to_flat(self) -> dict[str, Any]:
        """{flag_dest: value} over every section (field names are unique across sections)."""
        out: dict[str, Any] = {}
        for name in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint / config.json form: nested sections plus the schema version."""
        d = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        d["schema_version"] = SCHEMA_VERSION
        return d

    @classmethod
    def from_flat(cls, flat: dict[str, Any], *, strict: bool = True) -> TrainConfig:
        """Build from {flag_dest: value}; unknown keys are an error when `strict`."""
        where = field_index()
        unknown = sorted(k for k in flat if k not in where)
        if unknown and strict:
            raise UserError(f"unknown training setting(s): {', '.join(unknown)}")
        parts: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for k, v in flat.items():
            if k in where:
                parts[where[k]][k] = v
        cfg = cls(**{name: SECTIONS[name](**kw) for name, kw in parts.items()})
        cfg.validate()
        return cfg

    @classmethod
    def from_dict(cls, d: Any) -> TrainConfig:
        """Load what `to_dict` wrote, or a schema-1 flat `vars(args)` dict; UserError otherwise."""
        if not isinstance(d, dict) or not d:
            raise UserError("checkpoint has no training settings (an empty or missing 'args')")
        version = d.get("schema_version", 1)
        if version == 1:
            flat = {k: v for k, v in d.items() if k in field_index()}
            return cls.from_flat(flat, strict=False)
        if version != SCHEMA_VERSION:
            raise UserError(
                f"training settings have schema version {version!r}; this steptime reads "
                f"{SCHEMA_VERSION} and 1"
            )
        flat: dict[str, Any] = {}
        for name in SECTIONS:
            sec = d.get(name, {})
            if not isinstance(sec, dict):
                raise UserError(f"training settings section {name!r} is not a mapping")
            flat.update(sec)
        return cls.from_flat(flat, strict=False)

    def with_(self, **flat: Any) -> TrainConfig:
        """A copy with some flat settings changed (validated): `cfg.with_(iterations=400)`."""
        where = field_index()
        unknown = sorted(k for k in flat if k not in where)
        if unknown:
            raise UserError(f"unknown training setting(s): {', '.join(unknown)}")
        changes: dict[str, dict[str, Any]] = {}
        for k, v in flat.items():
            changes.setdefault(where[k], {})[k] = v
        cfg = dataclasses.replace(
            self,
            **{s: dataclasses.replace(getattr(self, s), **kw) for s, kw in changes.items()},
        )
        cfg.validate()
        return cfg

    # ------------------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise UserError (one line) for any setting that cannot run; types are checked too."""
        _check_types(self)
        s, o, a, d, io = self.schedule, self.optim, self.averaging, self.data, self.io
        if s.scheduler not in SCHEDULERS:
            raise UserError(
                f"scheduler must be one of {', '.join(SCHEDULERS)}, got {s.scheduler!r}"
            )
        _positive("iterations", s.iterations)
        _at_least("warmup_steps", s.warmup_steps, 0)
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
        _finite_at_least("weight_decay", o.weight_decay, 0.0)
        _finite_at_least("eps", o.eps, 0.0)
        _finite_at_least("grad_clip", o.grad_clip, 0.0)
        for name in ("beta1", "beta2"):
            v = getattr(o, name)
            if not 0.0 <= v < 1.0:
                raise UserError(f"{name} must be in [0, 1), got {v}")
        for name in ("batch_size", "acc_steps", "eval_batches"):
            _positive(name, getattr(d, name))
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
        r = self.runtime
        if r.dtype not in ("float32", "bfloat16", "float16"):
            raise UserError(f"dtype must be float32, bfloat16 or float16, got {r.dtype!r}")
        if r.kernels not in ("auto", "torch", "triton"):
            raise UserError(f"kernels must be auto, torch or triton, got {r.kernels!r}")
        dev = r.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise UserError(f"device must be auto, cpu, cuda or cuda:N, got {dev!r}")

    # ------------------------------------------------------------------------------ derived
    def schedule_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `train.schedules.lr_factor` (warmup already resolved)."""
        s = self.schedule
        return dict(
            scheduler=s.scheduler,
            iterations=s.iterations,
            warmup_steps=s.warmup_steps,
            wsd_fract_decay=s.wsd_fract_decay,
            decay_type=s.decay_type,
            wsd_final_lr_scale=s.wsd_final_lr_scale,
            cos_inf_steps=s.cos_inf_steps,
        )


def field_index() -> dict[str, str]:
    """{flat field name: section name}."""
    return {f.name: sec for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def field_help(name: str) -> str:
    """The one-line doc of a flat field (the CLI's help text)."""
    cls = SECTIONS[field_index()[name]]
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def field_default(name: str) -> Any:
    cls = SECTIONS[field_index()[name]]
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


# ---------------------------------------------------------------------------------- checks
def _check_types(cfg: TrainConfig) -> None:
    for sec in SECTIONS:
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
