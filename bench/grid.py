"""Sweep grids: comma lists -> Cartesian product of configs, validated up front, sharded.

A grid row is one benchmark point: every `ModelConfig` field plus the run settings
(`batch_size, acc_steps, dtype, compile, device, lr`). Rows are validated with `ModelConfig`
before any process starts, so a bad config becomes a "skipped" row with its reason instead of
a crashed worker. `config_id` is a stable hash of config + settings (resume/shard/merge key).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os

from model.config import PRESETS, ConfigError, ModelConfig, field_names


class GridError(ValueError):
    """A grid that cannot be run at all; the message is one line for the user."""


# Settings that are not ModelConfig fields, with their type and default.
SETTINGS: dict[str, tuple[type, object]] = {
    "batch_size": (int, 16),
    "acc_steps": (int, 1),
    "dtype": (str, "float32"),
    "compile": (bool, False),
    "device": (str, "cpu"),
    "lr": (float, 1e-3),
}
DTYPES = ("float32", "bfloat16", "float16")
# Hidden per-row key for tests: make a worker fail on purpose ("error", "hang", "oom").
INJECT_KEY = "inject"
INJECTIONS = ("error", "hang", "oom")

_FIELD_TYPES: dict[str, type] = {
    "vocab_size": int,
    "n_layer": int,
    "n_embd": int,
    "n_head": int,
    "n_kv_head": int,
    "ffn_hidden": int,
    "multiple_of": int,
    "sequence_length": int,
    "tie_embeddings": bool,
    "norm_eps": float,
    "rope_theta": float,
    "init_std": float,
    "kernels": str,
    "attention": str,
}


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def parse_value(name: str, text: object) -> object:
    """Convert one grid value (a string from the CLI/CSV, or a JSON value) to the field's type."""
    typ = _FIELD_TYPES.get(name) or SETTINGS.get(name, (str, None))[0]
    if name == INJECT_KEY:
        typ = str
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none", "null")):
        if name in ("n_kv_head", "ffn_hidden", INJECT_KEY):
            return None
        raise GridError(f"{name}: a value is required")
    try:
        if typ is bool:
            return text if isinstance(text, bool) else _parse_bool(str(text))
        if typ is int:
            if isinstance(text, bool):
                raise ValueError(text)
            if isinstance(text, float):
                if not text.is_integer():
                    raise ValueError(text)
                return int(text)
            return int(str(text).strip())
        if typ is float:
            return float(str(text).strip())
        return str(text).strip()
    except ValueError:
        raise GridError(f"{name}: cannot read {text!r} as {typ.__name__}") from None


def known_keys() -> list[str]:
    return field_names() + list(SETTINGS) + [INJECT_KEY]


def expand(lists: dict[str, list[str]], preset: str | None = None) -> list[dict]:
    """Cartesian product of comma-list values over a base (a preset or ModelConfig defaults)."""
    for name, values in lists.items():
        if name not in known_keys():
            raise GridError(f"unknown grid key {name!r}")
        if not values:
            raise GridError(f"{name}: empty value list")
    base = base_row(preset)
    names = list(lists)
    parsed = [[parse_value(n, v) for v in lists[n]] for n in names]
    rows = []
    for combo in itertools.product(*parsed):
        row = dict(base)
        row.update(zip(names, combo))
        rows.append(row)
    return rows


def base_row(preset: str | None = None) -> dict:
    if preset is not None and preset not in PRESETS:
        raise GridError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    cfg = PRESETS[preset] if preset else ModelConfig()
    row = cfg.to_dict()
    row.update({k: d for k, (_, d) in SETTINGS.items()})
    return row


def read_grid_file(path: str, preset: str | None = None) -> list[dict]:
    """Rows from a JSON list of objects or a CSV with a header; missing keys use the base."""
    if not os.path.isfile(path):
        raise GridError(f"grid file not found: {path}")
    try:
        if path.endswith(".json"):
            with open(path) as fh:
                raw = json.load(fh)
            if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
                raise GridError(f"{path}: expected a JSON list of objects")
        else:
            with open(path, newline="") as fh:
                raw = list(csv.DictReader(fh))
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as e:
        raise GridError(f"{path}: cannot parse grid file ({e})") from None
    base = base_row(preset)
    rows = []
    for r in raw:
        unknown = sorted(set(r) - set(known_keys()))
        if unknown:
            raise GridError(f"{path}: unknown grid key(s) {', '.join(unknown)}")
        row = dict(base)
        row.update({k: parse_value(k, v) for k, v in r.items()})
        rows.append(row)
    return rows


def config_id(row: dict) -> str:
    """Stable 12-hex hash of the config and settings (the injection key is part of it)."""
    keys = field_names() + list(SETTINGS) + [INJECT_KEY]
    payload = json.dumps({k: row.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def validate(row: dict) -> str | None:
    """None if the row can run, else a one-line reason."""
    try:
        ModelConfig.from_dict({k: row[k] for k in field_names()})
    except ConfigError as e:
        return str(e)
    for name in ("batch_size", "acc_steps"):
        if row[name] <= 0:
            return f"{name} must be a positive integer, got {row[name]}"
    if not row["lr"] > 0:
        return f"lr must be > 0, got {row['lr']}"
    if row["dtype"] not in DTYPES:
        return f"dtype must be one of {DTYPES}, got {row['dtype']!r}"
    if row["device"] not in ("cpu", "cuda"):
        return f"device must be cpu or cuda, got {row['device']!r}"
    if row.get(INJECT_KEY) not in (None,) + INJECTIONS:
        return f"inject must be one of {INJECTIONS}, got {row[INJECT_KEY]!r}"
    return None


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 0 <= i < n."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise GridError(f"--shard must look like i/n, got {text!r}") from None
    if n <= 0 or not 0 <= i < n:
        raise GridError(f"--shard needs 0 <= i < n, got {text!r}")
    return i, n


def in_shard(cid: str, shard: tuple[int, int]) -> bool:
    # By config_id hash, not index: stable when the grid is reordered or extended.
    i, n = shard
    return int(cid, 16) % n == i
