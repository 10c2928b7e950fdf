"""Sweep grids: comma lists -> Cartesian product of configs, validated up front, sharded.

A grid row is one benchmark point: every `ModelConfig` field plus the run settings
(`batch_size, acc_steps, dtype, compile, device, lr`). Value types come from the dataclass fields
of `ModelConfig` and `train.config.TrainConfig`, so a field added there is a grid key here with
no second copy of its type. Rows are validated with `ModelConfig` before any process starts, so a
bad config becomes a "skipped" row with its reason instead of a crashed worker. `config_id` is a
stable hash of config + settings (the resume/shard/merge key).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os

from core import UserError
from core.files import decode_json
from model.config import ModelConfig, field_names, get_preset
from train import config as tconfig

# Run settings that are not ModelConfig fields (seed: `--seed 0,1,2` / `--seeds 3`). Their types,
# docs and defaults are TrainConfig's: a config the grid leaves unset runs as `train` would run it.
SETTINGS = ("batch_size", "acc_steps", "dtype", "compile", "device", "lr", "seed")
SETTING_DEFAULTS: dict[str, object] = {k: tconfig.field_default(k) for k in SETTINGS}
DTYPES = ("float32", "bfloat16", "float16")
# Hidden per-row key for tests: make a worker fail on purpose ("error", "hang", "oom").
INJECT_KEY = "inject"
INJECTIONS = ("error", "hang", "oom")
DEFAULT_MAX_CONFIGS = 10_000


def _types() -> dict[str, tuple[type, bool]]:
    """{key: (python type, nullable)} from the dataclass annotations (strings or types)."""
    out: dict[str, tuple[type, bool]] = {}
    fields = list(dataclasses.fields(ModelConfig))
    where = tconfig.field_index()
    for name in SETTINGS:
        cls = tconfig.SECTIONS[where[name]]
        fields += [f for f in dataclasses.fields(cls) if f.name == name]
    for f in fields:
        text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        parts = [p.strip() for p in text.split("|")]
        base = next(p for p in parts if p != "None")
        out[f.name] = ({"int": int, "float": float, "bool": bool}.get(base, str), "None" in parts)
    out[INJECT_KEY] = (str, True)
    return out


_TYPES = _types()


def known_keys() -> list[str]:
    return field_names() + list(SETTINGS) + [INJECT_KEY]


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def parse_value(name: str, text: object) -> object:
    """Convert one grid value (a string from the CLI/CSV, or a JSON value) to the field's type."""
    if name not in _TYPES:
        raise UserError(f"unknown grid key {name!r}")
    typ, nullable = _TYPES[name]
    if text is None or (isinstance(text, str) and text.strip().lower() in ("", "none", "null")):
        if nullable:
            return None
        raise UserError(f"{name}: a value is required")
    try:
        if typ is bool:
            return text if isinstance(text, bool) else _parse_bool(str(text))
        if isinstance(text, (bool, list, dict)):
            raise ValueError(text)
        if typ is int:
            if isinstance(text, float):
                if not text.is_integer():
                    raise ValueError(text)
                return int(text)
            return int(str(text).strip())
        if typ is float:
            return float(str(text).strip())
        return str(text).strip()
    except (ValueError, OverflowError):
        raise UserError(f"{name}: cannot read {text!r} as {typ.__name__}") from None


def base_row(preset: str | None = None) -> dict:
    cfg = get_preset(preset) if preset else ModelConfig()
    row = cfg.to_dict()
    row["kernels"] = "auto"
    row.update(SETTING_DEFAULTS)
    return row


def grid_size(lists: dict[str, list[str]]) -> int:
    """Number of configs the lists expand to, without expanding them."""
    return math.prod(len(v) for v in lists.values())


def check_size(n: int, max_configs: int, what: str = "the grid") -> None:
    if n > max_configs:
        raise UserError(
            f"{what} has {n} configs, more than --max-configs {max_configs}: shrink it or raise "
            "--max-configs"
        )


def expand(
    lists: dict[str, list[str]],
    preset: str | None = None,
    max_configs: int = DEFAULT_MAX_CONFIGS,
) -> list[dict]:
    """Cartesian product of comma-list values over a base (a preset or ModelConfig defaults).

    The size is checked against `max_configs` before anything is expanded.
    """
    for name, values in lists.items():
        if name not in known_keys():
            raise UserError(f"unknown grid key {name!r}")
        if not values:
            raise UserError(f"{name}: empty value list")
    check_size(grid_size(lists), max_configs)
    base = base_row(preset)
    names = list(lists)
    parsed = [[parse_value(n, v) for v in lists[n]] for n in names]
    rows = []
    for combo in itertools.product(*parsed):
        row = dict(base)
        row.update(zip(names, combo))
        rows.append(rederive_width(row, base, names))
    return rows


def rederive_width(row: dict, base: dict, given) -> dict:
    """A preset's explicit MLP width belongs to its own width: a row that changes the width, its
    rounding or the family without giving ffn_hidden gets the derived width (None), as
    `train --preset P --n-embd W` does (`train.session.model_config`)."""
    reshaped = any(row.get(k) != base.get(k) for k in ("n_embd", "multiple_of", "arch"))
    if base.get("ffn_hidden") is not None and "ffn_hidden" not in given and reshaped:
        row["ffn_hidden"] = None
    return row


def read_grid_file(
    path: str, preset: str | None = None, max_configs: int = DEFAULT_MAX_CONFIGS
) -> list[dict]:
    """Rows from a JSON list of objects or a CSV with a header; missing keys use the base."""
    if not os.path.isfile(path):
        raise UserError(f"grid file not found: {path}")
    try:
        raw = _read_json_grid(path) if path.endswith(".json") else _read_csv_grid(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: cannot parse grid file ({e})") from None
    check_size(len(raw), max_configs, f"grid file {path}")
    base = base_row(preset)
    rows = []
    for n, r in enumerate(raw, 1):
        unknown = sorted(set(r) - set(known_keys()))
        if unknown:
            raise UserError(f"{path}: unknown grid key(s) {', '.join(unknown)} (row {n})")
        row = dict(base)
        row.update({k: parse_value(k, v) for k, v in r.items()})
        rows.append(rederive_width(row, base, r))
    return rows


def _read_json_grid(path: str) -> list[dict]:
    try:
        with open(path) as fh:
            raw = decode_json(fh.read())  # a nesting bomb is a JSONDecodeError too
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: cannot parse grid file ({e})") from None
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise UserError(f"{path}: expected a JSON list of objects")
    return raw


def _read_csv_grid(path: str) -> list[dict]:
    rows = []
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            for r in reader:
                if None in r:  # csv puts extra values under the key None
                    raise UserError(
                        f"{path} line {reader.line_num}: more values than header columns "
                        f"({', '.join(reader.fieldnames or [])}); add a header name for each column"
                    )
                rows.append(r)
    except csv.Error as e:
        raise UserError(f"{path}: cannot parse grid file ({e})") from None
    return rows


def config_id(row: dict) -> str:
    """Stable 12-hex hash of the config and settings (the injection key is part of it). The
    default seed is left out of the hash, so configs measured before seeds were a grid key keep
    their ids (and their folders resume)."""
    keys = [k for k in known_keys() if not (k == "seed" and row.get(k) == SETTING_DEFAULTS[k])]
    payload = json.dumps({k: row.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def model_config(row: dict, kernels: str | None = None) -> ModelConfig:
    """The row's ModelConfig; `kernels` replaces the row's value (e.g. "auto" once resolved)."""
    d = {k: row[k] for k in field_names()}
    if kernels is not None or d["kernels"] == "auto":
        d["kernels"] = kernels or "torch"
    return ModelConfig.from_dict(d)


def validate(row: dict, base=None) -> str | None:
    """None if the row can run, else a one-line reason. The row is a change of the sweep's base
    run (`base`, a TrainConfig; TrainConfig's defaults when None), so TrainConfig and ModelConfig
    check every value: one set of checks for train and bench."""
    from train.config import TrainConfig, model_config

    if row.get(INJECT_KEY) not in (None,) + INJECTIONS:
        return f"inject must be one of {INJECTIONS}, got {row[INJECT_KEY]!r}"
    try:
        cfg = (base or TrainConfig()).with_(**{k: v for k, v in row.items() if k != INJECT_KEY})
        model_config(cfg, 0)
    except (UserError, TypeError) as e:
        return str(e).splitlines()[0]
    return None


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 0 <= i < n."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/n, got {text!r}") from None
    if n <= 0 or not 0 <= i < n:
        raise UserError(f"--shard needs 0 <= i < n, got {text!r}")
    return i, n


def in_shard(cid: str, shard: tuple[int, int]) -> bool:
    # By config_id hash, not index: stable when the grid is reordered or extended.
    i, n = shard
    return int(cid, 16) % n == i
