"""Reading tables (sweep dirs, CSV/JSONL/Parquet), checking numbers, writing JSON results.

Everything the user points at that is wrong raises `core.UserError` with one line that says
what to do; the CLI prints it as `error: ...` and exits 2.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd

from core import UserError, atomic_write
from core.files import decode_json

RESULT_FILES = ("results.csv", "results.jsonl", "results.parquet")
DATA_DIR = Path(__file__).resolve().parent / "data"
# Tables that ship with steptime, usable by name from any folder (a local file of that name wins).
# cpu_sweep lives in the source repository's examples/ (see its PROVENANCE.md).
DATASETS = {
    "cpu_sweep": Path(__file__).resolve().parents[1] / "examples" / "cpu_sweep",
    "porian": DATA_DIR / "porian" / "isoflop_points.csv",
    "chinchilla": DATA_DIR / "chinchilla" / "epoch_svg_extracted_data.csv",
}


def dataset_path(path: str | Path) -> Path:
    """`path` itself, or the shipped table it names (see DATASETS) when no such path exists;
    `name/sub/path` names a file or folder inside a shipped folder (`cpu_sweep/reference`)."""
    p = Path(path)
    name, *rest = p.parts or ("",)
    if p.exists() or name not in DATASETS:
        return p
    if not DATASETS[name].exists():
        raise UserError(
            f"{path}: the shipped example is not in this install ({DATASETS[name]}); "
            "run from a clone of the steptime repository or pass a table's path"
        )
    return DATASETS[name].joinpath(*rest)


def unread_reference(paths: list[str]) -> list[str]:
    """The reference tables (`<sweep>/reference/results.*`, written by `bench sweep
    --reference-every`) of the sweep folders in `paths` that `paths` does not also name."""
    named = {dataset_path(p).resolve() for p in paths}
    out = []
    for p in paths:
        ref = dataset_path(p) / "reference"
        if dataset_path(p).is_dir() and ref.is_dir() and ref.resolve() not in named:
            if any((ref / n).is_file() for n in RESULT_FILES):
                out.append(str(Path(p) / "reference"))
    return out


def _resolve(path: str | Path) -> Path:
    p = dataset_path(path)
    if p.is_dir():
        for name in RESULT_FILES:
            if (p / name).is_file():
                return p / name
        raise UserError(f"{path}: folder has no {'/'.join(RESULT_FILES)} (is it a sweep folder?)")
    if not p.is_file():
        raise UserError(f"{path}: no such file or folder")
    return p


def _read_one(p: Path, shown: str) -> pd.DataFrame:
    suffix = p.suffix.lower()
    readers = {
        ".csv": pd.read_csv,
        ".jsonl": lambda f: pd.read_json(f, lines=True),
        ".ndjson": lambda f: pd.read_json(f, lines=True),
        ".json": pd.read_json,
        ".parquet": pd.read_parquet,
        ".pq": pd.read_parquet,
    }
    if suffix not in readers:
        raise UserError(f"{shown}: unsupported file type {suffix!r} (use .csv, .jsonl or .parquet)")
    try:
        return readers[suffix](p)
    except Exception as exc:  # pandas raises many types; the user needs one line, not a traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{shown}: cannot read ({type(exc).__name__}: {first})") from None


def read_table(path: str | Path) -> pd.DataFrame:
    """A sweep folder (its results.csv/.jsonl/.parquet) or a CSV/JSONL/JSON/Parquet file."""
    df = _read_one(_resolve(path), str(path))
    if len(df) == 0:
        raise UserError(f"{path}: no rows")
    return df


def read_tables(paths: list[str]) -> pd.DataFrame:
    """Several tables stacked; a `source` column names the file or folder each row came from."""
    frames = []
    for p in paths:
        df = read_table(p)
        frames.append(df.assign(source=str(p)) if "source" not in df.columns else df)
    return pd.concat(frames, ignore_index=True, sort=False)


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of a finished measurement: `status == ok` when the table has a status column."""
    if "status" in df.columns:
        df = df[df["status"].astype(str) == "ok"]
    return df.reset_index(drop=True)


def require_columns(df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise UserError(f"{what}: missing column(s) {', '.join(missing)}")


def positive_numeric(df: pd.DataFrame, cols: list[str], what: str) -> pd.DataFrame:
    """Columns coerced to float; any non-numeric, non-finite or non-positive value is refused."""
    out = df.copy()
    for c in cols:
        v = pd.to_numeric(out[c], errors="coerce").astype(float)
        bad = ~((v > 0) & (v < math.inf))
        if bad.any():
            raise UserError(
                f"{what}: column {c} has {int(bad.sum())} non-positive, infinite or non-numeric "
                "value(s); fix or drop those rows"
            )
        out[c] = v
    return out


def finite(name: str, v: float, *, lo: float = 0.0, hi: float = math.inf, lo_open=True) -> float:
    """`v` as a float in (lo, hi] (or [lo, hi] with lo_open=False); UserError otherwise."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, got {v!r}") from None
    ok = math.isfinite(x) and (x > lo if lo_open else x >= lo) and x <= hi
    if not ok:
        bound = f"{'>' if lo_open else '>='} {lo:g}" + (f" and <= {hi:g}" if hi < math.inf else "")
        raise UserError(f"{name} must be a finite number {bound}, got {v!r}")
    return x


MAX_HOURS = 1e6  # ~114 years: anything above is a typo, and 1e308 h overflows to infinity in s


def hours_arg(v) -> float:
    """A wall-clock budget in hours: finite, > 0, at most MAX_HOURS."""
    return finite("--hours", v, hi=MAX_HOURS)


def parse_floats(name: str, text: str, *, hi: float = math.inf) -> list[float]:
    """A comma list of finite positive numbers (e.g. --budgets 1e21,5.88e23)."""
    parts = [t.strip() for t in str(text).split(",") if t.strip()]
    return [finite(name, t, hi=hi) for t in parts]


def data_hash(df: pd.DataFrame, cols: list[str]) -> str:
    """sha256 of the canonical rows (chosen columns, sorted, repr-exact) so a fit names its data."""
    rows = sorted(
        tuple(repr(v.item() if hasattr(v, "item") else v) for v in r)
        for r in df[cols].itertuples(index=False)
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def write_json(obj: dict, path: str | Path) -> None:
    """Atomic JSON write; NaN or Infinity anywhere in `obj` is a bug upstream, so it is refused."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError:
        raise UserError(f"{path}: result holds NaN or infinity; not written") from None
    atomic_write(str(path), text)


def read_json(path: str | Path) -> dict:
    try:
        obj = decode_json(Path(path).read_bytes())  # a nesting bomb is a ValueError too
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a JSON object")
    return obj
