"""Step-time tables from any trainer: one row per measured config -> step-time features.

Documented columns (one row per measurement; repeats of a config are several rows, optionally told
apart by a `repeat` column):

  n_layer, n_embd, n_head, vocab_size, sequence_length, batch_size   required
  n_kv_head            default n_head (multi-head attention)
  ffn_hidden           default: the family's rule (llama: seed SwiGLU width with `multiple_of`,
                       default 256; gpt2: 4 * n_embd)
  multiple_of          default 256 (llama SwiGLU rounding)
  tie_embeddings       0/1, default 0
  acc_steps            micro-batches per optimizer step, default 1
  dp                   data-parallel degree, default 1 (a bench sweep's `world_size` when absent)
  arch                 llama | gpt2, default llama;  bias  0/1, default 0
  dtype                activation dtype (float32, bfloat16, float16), default float32
  kernels, attention   torch | triton, sdpa | flash, default torch, sdpa
  activation_checkpointing   0/1, default 0 (adds the recompute forward)
  the step time        the column named by --time-col, in --time-unit ms or s

`batch_size` is the micro-batch per device. A `status` column, when present, keeps only `ok` rows.
Features come from `model.costs.step_features` (per device, per optimizer step): the same function
every other part of steptime uses, so a fitted model predicts what the sweep measures.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core import UserError
from model import costs
from model.config import ModelConfig
from timemodel.io import ok_rows, positive_numeric, require_columns

REQUIRED = ("n_layer", "n_embd", "n_head", "vocab_size", "sequence_length", "batch_size")
INT_OPTIONAL = ("n_kv_head", "ffn_hidden", "multiple_of", "acc_steps", "dp")
DEFAULTS = {
    "multiple_of": 256,
    "tie_embeddings": False,
    "acc_steps": 1,
    "dp": 1,
    "arch": "llama",
    "bias": False,
    "dtype": "float32",
    "kernels": "torch",
    "attention": "sdpa",
    "activation_checkpointing": False,
}
# The identity of a measured config: rows equal on all of these are repeats of one config.
IDENTITY = REQUIRED + ("n_kv_head", "ffn_hidden") + tuple(DEFAULTS)
TIME_UNITS = {"ms": 1e-3, "s": 1.0}


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v)


def _as_bool(v, name: str) -> bool:
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("1", "true", "yes"):
            return True
        if low in ("0", "false", "no", ""):
            return False
        raise UserError(f"column {name}: {v!r} is not 0/1 or true/false")
    return bool(v)


def _as_int(v, name: str) -> int | None:
    if _is_missing(v):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"column {name}: {v!r} is not an integer") from None
    if not math.isfinite(x) or x != round(x) or x <= 0:
        raise UserError(f"column {name}: {v!r} is not a positive integer")
    return int(x)


def _dtype(v) -> str:
    return str(v).replace("torch.", "") if not _is_missing(v) else DEFAULTS["dtype"]


def normalize(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """The documented columns with defaults filled in and types checked (one line per bad value)."""
    require_columns(df, list(REQUIRED), what)
    out = df.copy()
    if "dp" not in out.columns and "world_size" in out.columns:
        out["dp"] = out["world_size"]
    for c, v in DEFAULTS.items():
        if c not in out.columns:
            out[c] = v
        else:
            out[c] = out[c].where(~out[c].isna(), v)
    for c in ("n_kv_head", "ffn_hidden"):
        if c not in out.columns:
            out[c] = None
    for c in REQUIRED + INT_OPTIONAL:
        vals = [_as_int(v, c) for v in out[c]]
        if c not in ("n_kv_head", "ffn_hidden") and any(v is None for v in vals):
            raise UserError(f"{what}: column {c} has empty values; fill them in")
        out[c] = pd.Series(vals, index=out.index, dtype=object)
    for c in ("tie_embeddings", "bias", "activation_checkpointing"):
        out[c] = [_as_bool(v, c) for v in out[c]]
    out["dtype"] = [_dtype(v) for v in out["dtype"]]
    for c in ("arch", "kernels", "attention"):
        out[c] = out[c].astype(str).str.strip()
    return out


def config_of(row) -> tuple[ModelConfig, dict]:
    """ModelConfig and the step_features keyword arguments of one normalized row."""
    fields = {
        "vocab_size": row["vocab_size"],
        "n_layer": row["n_layer"],
        "n_embd": row["n_embd"],
        "n_head": row["n_head"],
        "n_kv_head": row["n_kv_head"],
        "ffn_hidden": row["ffn_hidden"],
        "multiple_of": row["multiple_of"],
        "sequence_length": row["sequence_length"],
        "tie_embeddings": bool(row["tie_embeddings"]),
        "kernels": row["kernels"],
        "attention": row["attention"],
        "arch": row["arch"],
        "bias": bool(row["bias"]),
    }
    cfg = ModelConfig(**fields)
    kw = {
        "acc_steps": int(row["acc_steps"]),
        "dp": int(row["dp"]),
        "dtype": row["dtype"],
        "kernels": row["kernels"],
        "activation_checkpointing": bool(row["activation_checkpointing"]),
    }
    return cfg, kw


def identity(row) -> tuple:
    return tuple(row[c] for c in IDENTITY)


def features_for(df: pd.DataFrame, what: str) -> pd.DataFrame:
    """One column per `costs.STEP_FEATURES` key, computed once per distinct config."""
    cache: dict[tuple, dict] = {}
    rows = []
    for i, (_, row) in enumerate(df.iterrows()):
        key = identity(row)
        if key not in cache:
            try:
                cfg, kw = config_of(row)
                cache[key] = costs.step_features(cfg, int(row["batch_size"]), **kw)
            except (UserError, ValueError) as exc:
                raise UserError(f"{what}: row {i + 1}: {str(exc).splitlines()[0]}") from None
        rows.append(cache[key])
    feats = pd.DataFrame(rows, index=df.index, columns=list(costs.STEP_FEATURES)).astype(float)
    return feats


def load_step_table(
    df: pd.DataFrame, *, time_col: str, time_unit: str, what: str
) -> tuple[pd.DataFrame, np.ndarray]:
    """(normalized rows with feature columns and a `group` id per distinct config, step seconds)."""
    if time_unit not in TIME_UNITS:
        raise UserError(f"--time-unit must be one of {', '.join(TIME_UNITS)}, got {time_unit!r}")
    df = ok_rows(df)
    if len(df) == 0:
        raise UserError(f"{what}: no rows with status ok")
    require_columns(df, [time_col], f"{what} (time column; choose it with --time-col)")
    df = positive_numeric(df, [time_col], what)
    df = normalize(df, what)
    feats = features_for(df, what)
    out = pd.concat([df.drop(columns=[c for c in feats.columns if c in df.columns]), feats], axis=1)
    keys = [identity(r) for _, r in df.iterrows()]
    uniq = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    out["group"] = [uniq[k] for k in keys]
    y = df[time_col].to_numpy(float) * TIME_UNITS[time_unit]
    return out, y


AGGREGATES = ("rows", "median", "min")


def aggregate(df: pd.DataFrame, y: np.ndarray, how: str) -> tuple[pd.DataFrame, np.ndarray]:
    """One row per config: its first row's columns and the median (or min) of its step times.

    `rows` keeps every measurement as its own sample. The median of interleaved repeats is robust
    to one slow process (a noisy neighbour, a slow core); the min is the timeit convention."""
    if how not in AGGREGATES:
        raise UserError(f"--aggregate must be one of {', '.join(AGGREGATES)}, got {how!r}")
    if how == "rows":
        return df, y
    s = pd.Series(y, index=df.index).groupby(df["group"].to_numpy())
    agg = s.median() if how == "median" else s.min()
    first = df.groupby("group", sort=True).head(1).set_index("group", drop=False)
    return first.loc[agg.index].reset_index(drop=True), agg.to_numpy(float)


def repeatability(groups: np.ndarray, y: np.ndarray) -> dict | None:
    """Leave-one-out APE of each repeat against the mean of its config's other repeats.

    This is the error of the best possible predictor that knows everything but the noise, scored
    the way held-out predictions are, so the two MAPEs are comparable. None without repeats.
    """
    apes, n_cfg = [], 0
    for g in np.unique(groups):
        t = y[groups == g]
        if len(t) < 2:
            continue
        n_cfg += 1
        others = (t.sum() - t) / (len(t) - 1)
        apes.extend(np.abs(t - others) / others * 100.0)
    if not apes:
        return None
    return {"mape": float(np.mean(apes)), "max_ape": float(np.max(apes)), "configs": n_cfg}
