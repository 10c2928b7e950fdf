"""The `train` and `bench sweep` commands that train a scored config exactly as it was scored.

A search row is (n_layer, n_embd, n_head, ffn_hidden, batch_size); everything else is the search's
`fitted.Context` (what the models were fitted on). `model_config` is the ModelConfig the search
scored; the commands give every ModelConfig field explicitly (`train`'s flag of the same name),
so neither a preset nor a default can change it on the way (tests/timemodel/test_commands.py
parses both commands with train's and bench's own parsers and compares the ModelConfig they
build). Strings only: timemodel imports neither train nor bench.

The training settings (learning rate, schedule, data, device, dtype, kernels) are those of the
runs the loss law was fitted on, so the trained run is the kind of run the law predicts. A `train`
run evaluates on `eval_sequences` held-out sequences (`--eval-batches` x `--batch-size`); the
batches are the first of one fixed-seed order, so runs of any batch that divides that count see
the same sequences, and their losses compare.
"""

from __future__ import annotations

import math
import shlex

from core import UserError
from model.config import VAL_TOKENS, ModelConfig
from timemodel.fitted import Context

# Training flags of the commands, in order: (field, train flag, bench sweep flag).
TRAIN_FLAGS = (
    ("lr", "--lr", "--lr"),
    ("scheduler", "--scheduler", "--scheduler"),
    ("warmup_steps", "--warmup-steps", "--warmup-steps"),
    ("wsd_fract_decay", "--wsd-fract-decay", "--wsd-fract-decay"),
    ("decay_type", "--decay-type", "--decay-type"),
    ("wsd_final_lr_scale", "--wsd-final-lr-scale", "--wsd-final-lr-scale"),
    ("data", "--data", "--data"),
    ("device", "--device", "--device"),
    ("dtype", "--dtype", "--dtype"),
    ("kernels", "--kernels", "--kernels"),
)
ROW_KEYS = ("n_layer", "n_embd", "n_head", "ffn_hidden", "batch_size")  # what a search row varies
WSD_ONLY = ("wsd_fract_decay", "decay_type", "wsd_final_lr_scale")
EXTRAS = ("multiple_of", "norm_eps", "rope_theta", "init_std", "dropout")
FLAGGED_EXTRAS = tuple((f, "--" + f.replace("_", "-")) for f in EXTRAS)


def model_config(row: dict, ctx: Context) -> ModelConfig:
    """The ModelConfig a search scored for `row` (n_layer, n_embd, n_head, ffn_hidden)."""
    m = ctx.model
    if m.get("activation_checkpointing"):
        raise UserError(
            "the models were fitted with activation checkpointing, which train cannot run; "
            "fit them on runs without it"
        )
    extras = {k: ctx.train[k] for k in EXTRAS if k in ctx.train}
    return ModelConfig(
        vocab_size=int(m["vocab_size"]),
        n_layer=int(row["n_layer"]),
        n_embd=int(row["n_embd"]),
        n_head=int(row["n_head"]),
        n_kv_head=None if m["n_kv_head"] is None else int(m["n_kv_head"]),
        ffn_hidden=int(row["ffn_hidden"]),
        sequence_length=int(m["sequence_length"]),
        tie_embeddings=bool(m["tie_embeddings"]),
        arch=str(m["arch"]),
        bias=bool(m["bias"]),
        kernels=str(ctx.impl.get("kernels", "torch")),
        **extras,
    )


def _model_flags(cfg: ModelConfig, arch_flag: str) -> list[str]:
    """Every field of cfg that the base of both commands (ModelConfig's defaults; train's base
    without --preset differs only in its size and tie_embeddings, which are always given) does
    not already hold."""
    out = [f"--n-layer {cfg.n_layer}", f"--n-embd {cfg.n_embd}", f"--n-head {cfg.n_head}"]
    if cfg.n_kv_head is not None:
        out.append(f"--n-kv-head {cfg.n_kv_head}")
    out += [
        f"--ffn-hidden {cfg.hidden}",
        f"--vocab-size {cfg.vocab_size}",
        f"--sequence-length {cfg.sequence_length}",
        f"--tie-embeddings {str(cfg.tie_embeddings).lower()}",
    ]
    base = ModelConfig()
    for field, flag in (("arch", arch_flag), ("bias", "--bias"), *FLAGGED_EXTRAS):
        v = getattr(cfg, field)
        if v != getattr(base, field):
            out.append(f"{flag} {str(v).lower() if isinstance(v, bool) else v}")
    return out


def _train_settings(ctx: Context, which: int) -> list[str]:
    """The fitted runs' training flags (which: 1 for train's spelling, 2 for bench sweep's)."""
    t = ctx.train
    out = []
    for entry in TRAIN_FLAGS:
        field = entry[0]
        if field not in t:
            continue
        if field in WSD_ONLY and t.get("scheduler") != "wsd":
            continue  # a flag the scheduler ignores would only draw a warning
        v = t[field]
        if field == "kernels" and "kernels" in ctx.impl:
            v = ctx.impl["kernels"]
        out.append(f"{entry[which]} {shlex.quote(str(v))}")
    return out


def eval_batches(batch_size: int, sequence_length: int) -> int:
    """--eval-batches for `train`: the sequences of VAL_TOKENS (at least one batch)."""
    sequences = math.ceil(VAL_TOKENS / sequence_length)
    return max(1, math.ceil(sequences / batch_size))


def train_command(row: dict, ctx: Context, minutes: float, *, seed: int = 0, out: str) -> str:
    """`train ...` for one scored row: budget `minutes`, model seed `seed`, run folder `out`."""
    cfg = model_config(row, ctx)
    b = int(row["batch_size"])
    parts = ["train", *_model_flags(cfg, "--model")]
    parts += [f"--batch-size {b}", f"--acc-steps {int(ctx.model['acc_steps'])}"]
    parts += _train_settings(ctx, 1)
    parts += [f"--minutes {minutes:.6g}", f"--seed {seed}"]
    parts += [f"--eval-batches {eval_batches(b, cfg.sequence_length)}", f"--out {shlex.quote(out)}"]
    return " ".join(parts)


def sweep_command(row: dict, ctx: Context, minutes: float, *, seeds: int = 1, out: str) -> str:
    """`bench sweep ...` measuring the same config for `minutes`, `seeds` model seeds."""
    cfg = model_config(row, ctx)
    parts = ["bench sweep", *_model_flags(cfg, "--arch")]
    parts += [
        f"--batch-size {int(row['batch_size'])}",
        f"--acc-steps {int(ctx.model['acc_steps'])}",
    ]
    parts += _train_settings(ctx, 2)
    parts += [f"--minutes {minutes:.6g}", f"--seeds {seeds}", f"--out {shlex.quote(out)}"]
    return " ".join(parts)


def run_name(row: dict) -> str:
    """A run folder name for a row: runs/search/L2_d64_h4_f192_b8."""
    return (
        f"runs/search/L{int(row['n_layer'])}_d{int(row['n_embd'])}_h{int(row['n_head'])}_"
        f"f{int(row['ffn_hidden'])}_b{int(row['batch_size'])}"
    )
