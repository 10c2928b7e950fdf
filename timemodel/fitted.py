"""What the time model and the loss law were fitted on: every setting a search does not vary.

A search varies the axes of its --space (n_layer, n_embd, heads, MLP width, batch). Everything
else, the vocabulary, the sequence length, tied embeddings, the family, the gradient accumulation,
the dtype and kernels, and the training settings behind every measured loss (learning rate,
schedule, data), comes from the runs the models were fitted on, never from a default:

1. the sweep tables the models name in `sources` (`timemodel fit` / `fit-loss` record them), read
   when they are still there;
2. the time model's `reference_configs` (a spread of its fitted configs, every identity column);
3. the time model's own `dtype` / `kernels` / `attention` / `device_name`.

A value the user gives (`--vocab-size`, `--sequence-length`, `--tie-embeddings`) wins, with a
warning when it is not one the models saw. A model setting nobody records, or one the data holds
several values of, is refused: the user names it. A training setting that varies (a sweep over
the learning rate) goes into the printed commands at its most common value, and a note says so.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from core import UserError
from model.config import parse_kernels
from timemodel.io import dataset_path, ok_rows, read_tables

# Model settings the search holds fixed: the flag that sets each one (None: no flag, the data's
# value or a refusal), and the value used when neither the data nor the user says (None: refuse).
MODEL_FIELDS = {
    "vocab_size": ("--vocab-size", None),
    "sequence_length": ("--sequence-length", None),
    "tie_embeddings": ("--tie-embeddings", None),
    "arch": (None, "llama"),
    "bias": (None, False),
    "n_kv_head": (None, None),  # None: multi-head attention, what the search scores
    "acc_steps": (None, 1),
    "dp": (None, 1),
    "activation_checkpointing": (None, False),
}
# ModelConfig fields that change neither the features nor the law's N: the fitted runs' values go
# into the scored ModelConfig and the commands (ModelConfig's defaults when nothing records them).
MODEL_EXTRAS = ("multiple_of", "norm_eps", "rope_theta", "init_std", "dropout")
# Training settings behind each measured loss: they go into the printed commands.
TRAIN_FIELDS = (
    "lr",
    "scheduler",
    "warmup_steps",
    "wsd_fract_decay",
    "decay_type",
    "wsd_final_lr_scale",
    "data",
    "device",
    "dtype",
    "kernels",
)


def _clean(v):
    if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        return v.strip()
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _bool_like(field: str, v):
    if field in ("tie_embeddings", "bias", "activation_checkpointing") and v is not None:
        return bool(v)
    return v


def values_of(rows: list[dict] | pd.DataFrame, fields) -> dict[str, Counter]:
    """{field: Counter of its values over the rows} (missing and empty cells left out; a column
    that is absent or empty everywhere gives no entry). A sweep's `kernels`, `dtype` and `device`
    columns hold what ran, the values the commands pass."""
    if isinstance(rows, pd.DataFrame):
        rows = rows.to_dict("records")
    out: dict[str, Counter] = {}
    for f in fields:
        vals = [_bool_like(f, v) for v in (_clean(r.get(f)) for r in rows) if v is not None]
        if vals:
            out[f] = Counter(vals)
    return out


def _source_rows(model: dict, notes: list[str], what: str) -> list[dict]:
    """The ok rows of the tables a model names in `sources` ([] when none can be read)."""
    srcs = [s for s in model.get("sources") or [] if isinstance(s, str)]
    if not srcs:
        return []
    missing = [s for s in srcs if not dataset_path(s).exists()]
    if missing:
        notes.append(f"{what}'s source {missing[0]} is gone: the training settings of the runs it "
                     "was fitted on are unknown")  # fmt: skip
        return []
    try:
        return ok_rows(read_tables(srcs)).to_dict("records")
    except UserError as exc:
        notes.append(f"{what}'s sources cannot be read ({exc}); using the model file")
        return []


class Context:
    """The resolved settings: `model` (MODEL_FIELDS), `train` (MODEL_EXTRAS and TRAIN_FIELDS),
    `impl` (the time model's dtype/kernels/attention for the features), `notes` (warnings about
    the scored configs) and `command_notes` (about the printed commands only)."""

    def __init__(self, model: dict, train: dict, impl: dict, notes: list[str], seen: dict):
        self.model, self.train, self.impl, self.notes, self.seen = model, train, impl, notes, seen
        self.command_notes: list[str] = []


def resolve(
    tm: dict, law: dict | None, given: dict | None = None, *, config: dict | None = None
) -> Context:
    """The Context of a search with time model `tm` and loss law `law`.

    given: {field: value} the user set (None values ignored). Raises UserError for a model
    setting that is neither given nor recorded once by the fitted data. config: every model
    field of one config (predict's), None values included: nothing is refused, the notes say
    where it leaves what the models saw."""
    if config is not None:
        given = dict(config)
    else:
        given = {k: v for k, v in (given or {}).items() if v is not None}
    notes: list[str] = []
    command_notes: list[str] = []  # unreadable sources only cost the commands their settings
    rows = _source_rows(tm, command_notes, "time model")
    if law is not None:
        rows += _source_rows(law, command_notes, "loss law")
    rows += [dict(r) for r in tm.get("reference_configs") or [] if isinstance(r, dict)]
    seen = values_of(rows, list(MODEL_FIELDS) + list(MODEL_EXTRAS) + list(TRAIN_FIELDS))
    model = {}
    for f, (flag, default) in MODEL_FIELDS.items():
        vals = seen.get(f)
        if f in given:
            model[f] = given[f]
            if vals and given[f] not in vals:
                shown = ", ".join(map(str, sorted(vals, key=str)))
                notes.append(
                    f"{flag or f} {given[f]} is not what the models were fitted on ({shown}): "
                    "the predictions are extrapolations"
                )
            continue
        if vals and len(vals) == 1:
            model[f] = next(iter(vals))
        elif vals:
            shown = ", ".join(map(str, sorted(vals, key=str)))
            how = f"choose one with {flag}" if flag else "fit the models on one value"
            raise UserError(f"the models were fitted on several {f} values ({shown}); {how}")
        elif default is not None or f == "n_kv_head":
            model[f] = default
        else:
            raise UserError(
                f"neither the time model nor the loss law records the {f} they were fitted on "
                f"(no sources or reference configs); give {flag}"
            )
    train: dict = {}
    for f in MODEL_EXTRAS + TRAIN_FIELDS:
        vals = seen.get(f)
        if not vals:
            continue
        value, _ = vals.most_common(1)[0]
        train[f] = value
        if len(vals) > 1 and f not in ("dtype", "kernels", "device"):
            command_notes.append(
                f"the fitted runs used several {f} values ({', '.join(map(str, vals))}); the "
                f"commands use the most common, {value}"
            )
    if "scheduler" not in train:  # train's own default (cosine) cannot take --minutes
        train |= {"scheduler": "constant", "warmup_steps": train.get("warmup_steps", 0)}
        command_notes.append(
            "the fitted runs' schedule is not recorded (no source sweep): the commands use a "
            "bench sweep's default, a constant LR without warmup"
        )
    impl = {"dtype": str(tm.get("dtype") or train.get("dtype") or "float32").replace("torch.", "")}
    for k in ("kernels", "attention"):
        v = tm.get(k) or (train.get(k) if k != "kernels" else None)
        if v in ("sdpa", "flash") or (k == "kernels" and _kernels_choice(v)):
            impl[k] = v
    ctx = Context(model, train, impl, notes, seen)
    ctx.command_notes = command_notes
    return ctx


def _kernels_choice(v) -> bool:
    """Whether `v` is one kernels choice ("torch", "triton", or ops joined by "+")."""
    try:
        return isinstance(v, str) and parse_kernels(v) == v
    except UserError:
        return False


def describe(ctx: Context) -> str:
    """One line: the settings every candidate shares."""
    m = ctx.model
    parts = [f"vocab {m['vocab_size']}", f"T {m['sequence_length']}"]
    parts.append("tied embeddings" if m["tie_embeddings"] else "untied embeddings")
    if m["arch"] != "llama":
        parts.append(m["arch"])
    if m["acc_steps"] != 1:
        parts.append(f"acc_steps {m['acc_steps']}")
    parts.append(
        f"{ctx.impl['dtype']}" + (f", {ctx.impl['kernels']}" if "kernels" in ctx.impl else "")
    )
    return ", ".join(parts)
