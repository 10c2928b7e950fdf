"""Results directory: `results.jsonl` (source of truth), `results.csv`, optional `results.parquet`.

Every write rewrites the whole file to a temp name then `os.replace`s it, so a SIGKILL at any
moment leaves either the old or the new complete file, never a torn one. Rows are keyed by
`config_id`; a later row for the same id replaces the earlier one (upsert), which is what makes
resume and `merge` exactly-once.
"""

from __future__ import annotations

import csv
import json
import math
import os

FINAL_STATUSES = ("ok", "oom", "nan", "error", "timeout", "skipped")
FILES = ("results.jsonl", "results.csv", "results.parquet")


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _clean(v):
    # JSON has no NaN: missing/undefined numbers are written as null, read back as NaN by pandas.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def load_rows(out_dir: str) -> list[dict]:
    """Rows of DIR/results.jsonl in file order (empty if absent)."""
    path = os.path.join(out_dir, "results.jsonl")
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def columns_of(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    seen = set()
    for r in rows:
        for k in r:
            if k not in seen:
                seen.add(k)
                cols.append(k)
    return cols


def write_rows(out_dir: str, rows: list[dict]) -> None:
    """Atomically (re)write JSONL, CSV and, when pyarrow imports, Parquet."""
    os.makedirs(out_dir, exist_ok=True)
    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    cols = columns_of(rows)
    _atomic_write_text(
        os.path.join(out_dir, "results.jsonl"),
        "".join(json.dumps(r, sort_keys=False) + "\n" for r in rows),
    )
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    _atomic_write_text(os.path.join(out_dir, "results.csv"), buf.getvalue())
    _write_parquet(out_dir, rows, cols)


def _write_parquet(out_dir: str, rows: list[dict], cols: list[str]) -> None:
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  (only checking that it is importable)
    except ImportError:
        return
    path = os.path.join(out_dir, "results.parquet")
    tmp = f"{path}.tmp.{os.getpid()}"
    df = pd.DataFrame(rows, columns=cols)
    # Mixed-type object columns (e.g. n_kv_head None/int, message str/None) -> strings for Arrow.
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: None if v is None else str(v))
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def upsert(rows: list[dict], new: dict) -> list[dict]:
    """Rows with `new` replacing any row of the same config_id (position kept), else appended."""
    out, replaced = [], False
    for r in rows:
        if r.get("config_id") == new.get("config_id"):
            if not replaced:
                out.append(new)
                replaced = True
        else:
            out.append(r)
    if not replaced:
        out.append(new)
    return out


def done_ids(rows: list[dict]) -> set[str]:
    return {r["config_id"] for r in rows if r.get("status") in FINAL_STATUSES}


def merge(dirs: list[str]) -> list[dict]:
    """All rows of several result dirs, deduplicated by config_id (later dirs win)."""
    rows: list[dict] = []
    for d in dirs:
        if not os.path.isfile(os.path.join(d, "results.jsonl")):
            raise FileNotFoundError(f"no results.jsonl in {d}")
        for r in load_rows(d):
            rows = upsert(rows, r)
    return rows
