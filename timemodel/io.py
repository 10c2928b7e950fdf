"""Reading results tables (bench sweep dirs, CSV/JSONL/Parquet) and hashing the rows a fit used.

Errors are raised as `InputError` with a one-line message; the CLI turns them into `error: ...` and exit 2.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd


class InputError(ValueError):
    """Bad user input (unreadable file, missing columns, too few rows); one line for the user."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Load a bench sweep directory (results.csv / results.jsonl) or a CSV/JSONL/JSON/Parquet file."""
    p = Path(path)
    if p.is_dir():
        for name in ("results.csv", "results.jsonl", "results.parquet"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise InputError(f"{path}: directory has no results.csv/results.jsonl/results.parquet")
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(p)
        elif suffix in (".jsonl", ".ndjson"):
            df = pd.read_json(p, lines=True)
        elif suffix == ".json":
            df = pd.read_json(p)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        else:
            raise InputError(
                f"{path}: unsupported file type {suffix!r} (use .csv, .jsonl, .parquet)"
            )
    except InputError:
        raise
    except Exception as exc:  # pandas raises many types; the user needs one line, not a traceback
        raise InputError(
            f"{path}: cannot read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if len(df) == 0:
        raise InputError(f"{path}: no rows")
    return df


def require_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise InputError(f"{what}: missing column(s) {', '.join(missing)}")


def positive_numeric(df: pd.DataFrame, cols: list[str], what: str) -> pd.DataFrame:
    """Coerce columns to float and reject non-finite or non-positive values (they break log/ratio metrics)."""
    out = df.copy()
    for c in cols:
        v = pd.to_numeric(out[c], errors="coerce")
        bad = ~(v > 0) | ~pd.Series(v).apply(lambda z: z == z and abs(z) != float("inf"))
        if bad.any():
            raise InputError(
                f"{what}: column {c} has {int(bad.sum())} non-positive or non-numeric value(s)"
            )
        out[c] = v.astype(float)
    return out


def data_hash(df: pd.DataFrame, cols: list[str]) -> str:
    """sha256 of the canonical rows (chosen columns, sorted, repr-exact floats) so a fit names its data."""
    rows = sorted(tuple(repr(float(v)) for v in r) for r in df[cols].itertuples(index=False))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def write_json(obj: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object")
    return obj
