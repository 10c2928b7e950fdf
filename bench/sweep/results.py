"""Results directory: append-only per-writer row files, merged on read into one table.

Layout of a sweep folder OUT:
- `OUT/rows/<host>-<pid>.jsonl`: the source of truth. Each process that writes rows (a local sweep,
  a shard, a Slurm array task) appends whole lines to its own file and fsyncs them, so several
  writers never lose each other's rows and a SIGKILL costs at most the line being written.
- `OUT/results.jsonl`, `OUT/results.csv`, `OUT/results.parquet` (when pyarrow imports): views of the
  merged table, rewritten atomically (temp + fsync + rename) under an flock after every append.

A row is keyed by (`config_id`, `repeat`); the latest write of a key wins (`written_at`), which is
what makes resume, retries and `merge` exactly-once.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import math
import os
import socket
import threading
import time

from bench.proc import pid_alive
from core import UserError, atomic_write

FINAL_STATUSES = ("ok", "oom", "nan", "error", "timeout", "skipped")
# Failures of the harness itself: retried by a rerun unless the user says otherwise.
RETRY_DEFAULT = ("error", "timeout")
FILES = ("results.jsonl", "results.csv", "results.parquet")
ROWS_DIR = "rows"
_LOCK = threading.Lock()  # threads of one process share its row file


def _clean(v):
    # JSON has no NaN: missing/undefined numbers are written as null, read back as NaN by pandas.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def row_key(row: dict) -> tuple[str, int]:
    """(config_id, repeat): one row per key survives a merge."""
    rep = row.get("repeat")
    return str(row["config_id"]), int(rep) if isinstance(rep, (int, float)) and rep == rep else 0


def _writer_file(out_dir: str) -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())
    return os.path.join(out_dir, ROWS_DIR, f"{host or 'host'}-{os.getpid()}.jsonl")


def append_row(out_dir: str, row: dict) -> dict:
    """Append `row` to this process's row file (fsynced) and refresh the table views.

    Safe with any number of concurrent writers (processes or threads) in one `out_dir`. Returns
    the row as written (with `written_at`). An unwritable folder raises UserError naming the path.
    """
    if "config_id" not in row:
        raise ValueError("append_row needs a row with a config_id")
    row = {k: _clean(v) for k, v in row.items()}
    row["written_at"] = time.time()
    line = (json.dumps(row) + "\n").encode()
    path = _writer_file(out_dir)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with _LOCK:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size and not _ends_with_newline(path):
                    line = b"\n" + line  # a torn line of a killed write stays on its own line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    refresh_views(out_dir)
    return row


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _read_jsonl(path: str, *, tolerate_torn: bool) -> list[dict]:
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            raw = raw.strip()
            if not raw:
                continue
            try:
                r = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if tolerate_torn:  # only a killed writer leaves a partial line in a row file
                    continue
                raise UserError(f"{path} line {n} is not JSON: not a bench results file?") from None
            if not isinstance(r, dict) or "config_id" not in r:
                raise UserError(
                    f"{path} line {n} has no config_id: not a bench results file (rows need one)"
                )
            rows.append(r)
    return rows


def load_rows(out_dir: str) -> list[dict]:
    """Every row of DIR (views and per-writer files), one per (config_id, repeat), latest wins.

    Rows are in order of first appearance; empty if DIR holds no results.
    """
    found: list[dict] = []
    view = os.path.join(out_dir, "results.jsonl")
    if os.path.isfile(view):
        found += _read_jsonl(view, tolerate_torn=False)
    for path in sorted(glob.glob(os.path.join(out_dir, ROWS_DIR, "*.jsonl"))):
        found += _read_jsonl(path, tolerate_torn=True)
    found.sort(key=lambda r: r.get("written_at") or 0.0)  # stable: file order among equals
    merged: dict[tuple[str, int], dict] = {}
    first: dict[tuple[str, int], float] = {}
    for r in found:
        k = row_key(r)
        first.setdefault(k, len(first))
        merged[k] = r
    return [merged[k] for k in sorted(merged, key=first.__getitem__)]


def has_results(out_dir: str) -> bool:
    return os.path.isfile(os.path.join(out_dir, "results.jsonl")) or bool(
        glob.glob(os.path.join(out_dir, ROWS_DIR, "*.jsonl"))
    )


def columns_of(rows: list[dict]) -> list[str]:
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


@contextlib.contextmanager
def _folder_lock(out_dir: str):
    import fcntl

    path = os.path.join(out_dir, ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def refresh_views(out_dir: str) -> None:
    """Rewrite results.jsonl/csv/parquet from every writer's rows, under the folder's lock."""
    with _folder_lock(out_dir):
        # Only lock holders write views: any temp of a view left now is a killed writer's.
        remove_stale_temps(out_dir, any_pid=True, pattern="results.*.tmp.*")
        write_rows(out_dir, load_rows(out_dir))


def remove_stale_temps(folder: str, *, any_pid: bool = False, pattern: str = "*.tmp.*") -> None:
    """Delete `*.tmp.<pid>` files left by killed writers (only dead pids unless `any_pid`)."""
    for path in glob.glob(os.path.join(folder, pattern)):
        pid = path.rsplit(".", 1)[-1]
        if not any_pid and pid.isdigit() and pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.remove(path)


def write_rows(out_dir: str, rows: list[dict]) -> None:
    """Atomically (re)write the JSONL, CSV and, when pyarrow imports, Parquet views."""
    rows = [{k: _clean(v) for k, v in r.items()} for r in rows]
    cols = columns_of(rows)
    atomic_write(
        os.path.join(out_dir, "results.jsonl"), "".join(json.dumps(r) + "\n" for r in rows)
    )
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    atomic_write(os.path.join(out_dir, "results.csv"), buf.getvalue())
    _write_parquet(out_dir, rows, cols)


def _write_parquet(out_dir: str, rows: list[dict], cols: list[str]) -> None:
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  (only checking that it is importable)
    except ImportError:
        return
    df = pd.DataFrame(rows, columns=cols)
    # Mixed-type object columns (e.g. n_kv_head None/int, message str/None) -> strings for Arrow.
    for c in df.columns:
        if df[c].dtype == object:
            df[c] = df[c].map(lambda v: None if v is None else str(v))
    atomic_write(
        os.path.join(out_dir, "results.parquet"), lambda fh: df.to_parquet(fh, index=False)
    )


def upsert(rows: list[dict], new: dict) -> list[dict]:
    """Rows with `new` replacing any row of the same key (position kept), else appended."""
    out, replaced = [], False
    for r in rows:
        if row_key(r) == row_key(new):
            if not replaced:
                out.append(new)
                replaced = True
        else:
            out.append(r)
    if not replaced:
        out.append(new)
    return out


def final_keys(rows: list[dict], retry: tuple[str, ...] = RETRY_DEFAULT) -> set[tuple[str, int]]:
    """Keys whose row needs no rerun: a final status that is not in `retry`."""
    return {
        row_key(r) for r in rows if r.get("status") in FINAL_STATUSES and r["status"] not in retry
    }


def done_ids(rows: list[dict]) -> set[str]:
    """config_ids with any row of a final status (merge/compat helper)."""
    return {r["config_id"] for r in rows if r.get("status") in FINAL_STATUSES}


def merge(dirs: list[str]) -> list[dict]:
    """All rows of several result dirs, deduplicated by key (later dirs win)."""
    rows: list[dict] = []
    for d in dirs:
        if not has_results(d):
            raise UserError(f"no bench results in {d} (expected results.jsonl or rows/*.jsonl)")
        for r in load_rows(d):
            rows = upsert(rows, r)
    return rows
