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

from core import UserError
from model.config import ModelConfig, get_preset
from model.costs import num_params
from train.fields import doc_field
from train.schedules import ScheduleConfig

SCHEMA_VERSION = 3


_f = doc_field


@dataclass(frozen=True)
class OptimConfig:
    """AdamW hyperparameters (decoupled weight decay on matrices only)."""

    opt: str = _f(
        "adamw",
        "adamw (FusedAdamW) or SFAdamW (schedule-free, needs the schedulefree package)",
        metavar="{adamw,SFAdamW}",
    )
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
    ema_after_warmup: bool = _f(False, "restart the EMA from the weights when the warmup ends")
    wa_dtype: str = _f(
        "float32", "dtype of the averages (FusedAdamW keeps them in float32)", metavar="float32"
    )
    wa_use_temp_dir: bool = _f(False, "keep windows out of the run folder (they stay in memory)")

    @property
    def enabled(self) -> bool:
        return self.weight_average or self.exponential_moving_average


@dataclass(frozen=True)
class DataConfig:
    """Where tokens come from and how they are batched."""

    data: str | None = _f(
        None, "FILE.bin, FILE.txt or a prepared DIR; default: embedded corpus", metavar="PATH"
    )
    dataset: str | None = _f(
        None, "a prepared dataset DIR, or a NAME under --datasets-dir", metavar="NAME"
    )
    datasets_dir: str = _f("./datasets/", "where --dataset NAME is looked up", metavar="DIR")
    data_in_ram: bool = _f(False, "copy the token files into memory instead of memory-mapping")
    data_dtype: str = _f("uint16", "token dtype of a .bin file", choices=("uint16", "uint32"))
    batch_size: int = _f(50, "sequences per micro-batch per process")
    acc_steps: int = _f(4, "gradient-accumulation micro-batches per step")
    data_seed: int = _f(1337, "data order seed")
    eval_batches: int = _f(32, "validation batches per evaluation")


@dataclass(frozen=True)
class IOConfig:
    """Run directory, logging, evaluation and checkpoint cadence."""

    out: str = _f("runs/train", "run directory", metavar="DIR")
    eval_interval: int = _f(200, "steps between evaluations (and at the end)")
    log_interval: int = _f(10, "steps between log lines (the only steps that read the device)")
    no_progress: bool = _f(False, "no progress bar even on a terminal")
    permanent_ckpt_interval: int = _f(0, "keep a checkpoint every N steps in OUT/ckpts/<step>/")
    latest_ckpt_interval: int = _f(0, "overwrite OUT/latest/ every N steps (0 = off)")
    final_ckpt: bool = _f(
        True,
        "write the last step to OUT/latest/ (what `train sample OUT` and `--resume-from OUT` "
        "read); false = no final checkpoint",
    )
    overwrite: bool = _f(False, "replace an existing run directory instead of refusing")
    auto_resume: bool = _f(False, "continue from OUT/latest when it exists (else start fresh)")
    branch_ckpt: bool = _f(True, "WSD runs keep the checkpoint where the cooldown starts")
    results_base_folder: str = _f(
        "runs", "parent of the run directory when --out is not given", metavar="DIR"
    )
    experiment_name: str | None = _f(
        None, "run directory name under --results-base-folder (and the wandb run)"
    )
    wandb: bool = _f(False, "log metrics to Weights & Biases (optional extra steptime[wandb])")
    wandb_project: str = _f("steptime", "Weights & Biases project")
    wandb_run_prefix: str | None = _f(
        None, "prefix of the Weights & Biases run name", metavar="PREFIX"
    )
    tensorboard: str | None = _f(None, "also log metrics to TensorBoard in DIR", metavar="DIR")


def _arch(text: str) -> str:
    """`--model base` is the seed code's name for the GPT-2 family (a CLI alias only)."""
    return "gpt2" if text == "base" else text


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build: a preset (or the seed's default model) with any ModelConfig field
    overridden. Resolved into a `model.config.ModelConfig` by `train.session.model_config`; every
    architecture field of ModelConfig has its override here, under the same name."""

    preset: str | None = _f(None, "model preset from model.config.PRESETS (e.g. tiny, 124M)")
    arch: str = _f(
        "llama",
        "llama, or gpt2 (GPT-2 style; 'base' is the seed code's name for it)",
        choices=("llama", "gpt2"),
        flag="model",
        type=_arch,
    )
    n_layer: int | None = _f(None, "transformer blocks (default: preset, else 24)")
    n_embd: int | None = _f(None, "model width (default: preset, else 768)")
    n_head: int | None = _f(None, "attention heads (default: preset, else 12)")
    n_kv_head: int | None = _f(None, "key/value heads, GQA (default: preset, else n_head)")
    ffn_hidden: int | None = _f(
        None,
        "MLP hidden width (default: the preset's when width and rounding are the preset's, "
        "else SwiGLU's multiple_of * ceil(8 n_embd / 3 / multiple_of), gpt2's 4 n_embd)",
    )
    multiple_of: int | None = _f(None, "SwiGLU width rounding (default: preset, else 256)")
    vocab_size: int | None = _f(None, "vocabulary size (default: data's meta, preset, else 50304)")
    sequence_length: int | None = _f(None, "tokens per sequence (default: preset, else 512)")
    tie_embeddings: bool | None = _f(
        None, "tie the LM head to the token embedding (default: preset)"
    )
    norm_eps: float | None = _f(
        None, "norm epsilon (default: preset, else 1e-5)", metavar="X", aliases=("--rmsnorm-eps",)
    )
    rope_theta: float | None = _f(None, "RoPE base (default: 10000)", metavar="X")
    init_std: float | None = _f(None, "init std of the weights (default: 0.02)", metavar="X")
    dropout: float | None = _f(None, "dropout probability in training (default: 0)", metavar="P")
    bias: bool | None = _f(None, "biases on the linears (default: preset, else off)")
    attention: str | None = _f(
        None, "sdpa, or flash (flash-attn on CUDA when installed)", choices=("sdpa", "flash")
    )
    mlp_dim_exp_factor: float = _f(1.0, "gpt2 MLP width factor (x 4 n_embd)", metavar="X")


@dataclass(frozen=True)
class RuntimeConfig:
    """Device, precision, kernels and seeds."""

    device: str = _f("auto", "auto (cuda if available), cpu, cuda, cuda:N", metavar="DEVICE")
    dtype: str = _f(
        "bfloat16",
        "autocast dtype on CUDA (params stay fp32); CPU runs fp32",
        choices=("float32", "bfloat16", "float16"),
    )
    kernels: str = _f(
        "auto",
        "auto (on CUDA: per op, ours or torch's, whichever a start-up measurement at this run's "
        "shapes finds faster; ours under TRITON_INTERPRET=1; torch on CPU), torch, triton (all "
        "ours), or some of rmsnorm, swiglu, linear_ce joined by '+' (ours for those)",
        metavar="KERNELS",
    )
    compile: bool = _f(False, "torch.compile the model")
    compile_mode: str = _f(
        "default",
        "torch.compile mode (with --compile); reduce-overhead captures the step in CUDA graphs",
        choices=("default", "max-autotune-no-cudagraphs", "reduce-overhead"),
    )
    threads: int | None = _f(
        None,
        "CPU threads of torch (default: 1 on a CPU, as `bench sweep` measures, so sweep step "
        "times carry over; torch's own default on CUDA)",
    )
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
        """Load what `to_dict` wrote; UserError otherwise."""
        if not isinstance(d, dict) or not d:
            raise UserError("checkpoint has no training settings (an empty or missing 'config')")
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise UserError(
                f"training settings have schema version {version!r}; this steptime reads "
                f"{SCHEMA_VERSION}"
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
        from train.config_checks import validate

        validate(self)

    # ------------------------------------------------------------------------------ derived
    def global_batch(self, world: int) -> int:
        """Sequences per optimizer step over every process: batch x accumulation x world."""
        return self.data.batch_size * self.data.acc_steps * world


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


# ------------------------------------------------------------------------------ the model
# The seed's model when no preset is given (upstream `src/config/base.py` defaults).
SEED_DEFAULT_CFG = ModelConfig(n_layer=24, n_embd=768, n_head=12, tie_embeddings=True)
# ModelSpec fields that override the ModelConfig field of the same name.
ARCH_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(ModelSpec)
    if f.name in {g.name for g in dataclasses.fields(ModelConfig)}
)


def model_config(
    cfg: TrainConfig, data_vocab: int, kernels: str = "torch", *, from_data: bool = False
) -> ModelConfig:
    """The ModelConfig of a run: the preset (or the seed's default) with every set ModelSpec
    field on top.

    A preset's explicit MLP width belongs to its own width: when the width, its rounding or the
    family changes and --ffn-hidden is not given, the width is derived again (SwiGLU's
    multiple_of rounding of 8/3 n_embd, or 4 n_embd x --mlp-dim-exp-factor for gpt2).
    `from_data` (the data has a meta.json): without --vocab-size the model's vocabulary is the
    data's (`data_vocab`, already rounded up to a multiple of 64), whatever the preset's is.
    """
    m = cfg.model
    base = SEED_DEFAULT_CFG if m.preset is None else get_preset(m.preset)
    changes: dict[str, Any] = {
        k: getattr(m, k) for k in ARCH_FIELDS if k != "arch" and getattr(m, k) is not None
    }
    if m.arch != base.arch:
        changes["arch"] = m.arch
    reshaped = any(
        k in changes and changes[k] != getattr(base, k) for k in ("n_embd", "multiple_of", "arch")
    )
    if "ffn_hidden" not in changes and reshaped:
        changes["ffn_hidden"] = None
    if changes.get("arch", base.arch) == "gpt2" and m.mlp_dim_exp_factor != 1.0:
        changes.setdefault("ffn_hidden", None)
        if changes["ffn_hidden"] is None:
            width = changes.get("n_embd", base.n_embd)
            changes["ffn_hidden"] = int(m.mlp_dim_exp_factor * 4 * width)
    if from_data and m.vocab_size is None:
        changes["vocab_size"] = data_vocab
    model_cfg = base.replace(kernels=kernels, **changes)  # ModelConfig validates its fields
    if data_vocab > model_cfg.vocab_size:
        raise UserError(
            f"data needs vocab {data_vocab} but the model has vocab_size {model_cfg.vocab_size}"
        )
    return model_cfg


def resolve_warmup(cfg: TrainConfig, model_cfg: ModelConfig, world: int) -> TrainConfig:
    """A config whose warmup is in steps: `--warmup-tokens params` means warmup tokens = parameter
    count (Porian et al. 2024, arXiv:2406.19146, §3), a number means that many tokens."""
    w = cfg.schedule.warmup_tokens
    if w is None:
        return cfg
    tokens = num_params(model_cfg) if w == "params" else float(w)
    steps = math.ceil(tokens / (cfg.global_batch(world) * model_cfg.sequence_length))
    return cfg.with_(warmup_steps=steps, warmup_tokens=None)
