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
from core import UserError, atomic_write, owner
from core.files import jsonl_records, open_append, read_json, refuse_symlinks, warn_line

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
    ok = isinstance(rep, (int, float)) and not isinstance(rep, bool) and math.isfinite(rep)
    return str(row["config_id"]), int(rep) if ok else 0


def row_problem(r) -> str | None:
    """Why a record read from a rows file is no row (None: it is one)."""
    if not isinstance(r, dict):
        return "not a JSON object"
    cid = r.get("config_id")
    if cid is None:
        return "has no config_id"
    if not isinstance(cid, str) or not cid:
        return "config_id is not a name"
    rep = r.get("repeat")
    if rep is not None and (
        isinstance(rep, bool) or not isinstance(rep, (int, float)) or not math.isfinite(rep)
        or rep != int(rep) or rep < 0
    ):  # fmt: skip
        return f"repeat {rep!r} is not a count"
    for k in ("written_at", "measured_at"):
        w = r.get(k)
        if w is not None and (
            isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w)
        ):
            return f"{k} {w!r} is not a time"
    for k in ("kind", "ref_group", "message"):
        if r.get(k) is not None and not isinstance(r[k], str):
            return f"{k} is not a string"
    if r.get("status") is not None and not isinstance(r.get("status"), str):
        return "status is not a string"
    return None


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
        refuse_symlinks(out_dir, (ROWS_DIR,))
        with _LOCK:
            fd = open_append(path)  # O_NOFOLLOW: a planted link is refused, never written through
            try:
                if not _ends_with_newline(fd):
                    line = b"\n" + line  # a torn line of a killed write stays on its own line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    refresh_views(out_dir)
    return row


def _ends_with_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return not size or os.pread(fd, 1, size - 1) == b"\n"


def _read_jsonl(path: str, *, view: bool = False) -> list[dict]:
    """The rows of a rows file or of the results.jsonl `view`: records that are no row (a line
    torn by a kill, garbage) are skipped with one warning line; a view with records but no row
    at all is not a results file (UserError)."""
    rows, skipped, first = jsonl_records(path, nofollow=True, check=row_problem)
    if view and skipped and not rows:
        raise UserError(f"{path} {first.replace(': ', ' ', 1)}: not a bench results file")
    if skipped:
        warn_line(f"{path}: skipped {skipped} unreadable record(s) (first: {first})")
    return rows


def load_rows(out_dir: str) -> list[dict]:
    """Every row of DIR (views and per-writer files), one per (config_id, repeat), latest wins.

    Rows are in order of first appearance; empty if DIR holds no results.
    """
    found: list[dict] = []
    refuse_symlinks(out_dir, (ROWS_DIR,))  # rows from elsewhere are no rows of this folder
    view = os.path.join(out_dir, "results.jsonl")
    if os.path.lexists(view):
        found += _read_jsonl(view, view=True)
    for path in sorted(glob.glob(os.path.join(out_dir, ROWS_DIR, "*.jsonl"))):
        found += _read_jsonl(path)
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
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
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


# The most a count flag of `bench sweep` may ask for: beyond these the plan alone (specs held in
# memory, processes started) fails or hangs, and no measurement needs them.
COUNT_CAPS = {
    "--repeat": ("repeat", 1000),
    "--max-repeat": ("max_repeat", 1000),
    "--nproc-per-config": ("nproc_per_config", 1024),
    "--reference-every": ("reference_every", 1_000_000),
    "--untimed-steps": ("untimed_steps", 1_000_000),
    "--val-tokens": ("val_tokens", 10**10),
}


def check_count_caps(opts) -> None:
    """UserError when a count flag of a sweep (SweepOptions `opts`) is over its cap."""
    for flag, (name, cap) in COUNT_CAPS.items():
        v = getattr(opts, name, None)
        if isinstance(v, int) and v > cap:
            raise UserError(f"{flag} must be <= {cap:,}, got {v:,}")


SWEEP_ENTRIES = (ROWS_DIR, ".work", ".jobs", "sweep.json", ".lock", *FILES)


def check_sweep_folder(out_dir: str) -> None:
    """UserError when sweep folder OUT lies inside another steptime folder, is a train run or a
    dataset, or has a symlink where the sweep writes (rows/, .work/, .jobs/, its views)."""
    kind = owner.kind_of(out_dir)
    if kind in ("train run", "dataset"):
        raise UserError(f"--out {out_dir} holds a {kind}: a sweep there would mix into it")
    if kind is None:
        owner.check_not_nested(out_dir, "--out")
    if not os.path.isdir(out_dir):
        return
    refs = [n for n in os.listdir(out_dir) if n.startswith("reference")]  # drift references
    refuse_symlinks(out_dir, (*SWEEP_ENTRIES, *refs))
    for folder in [out_dir, *(os.path.join(out_dir, n) for n in refs)]:
        if folder != out_dir and os.path.isdir(folder):
            refuse_symlinks(folder, SWEEP_ENTRIES + ("drift.json",))
        for sub in (ROWS_DIR, ".work", ".jobs", os.path.join(".jobs", "heartbeat")):
            d = os.path.join(folder, sub)
            if os.path.isdir(d):
                refuse_symlinks(d, os.listdir(d))


def folder_settings(out_dir: str) -> dict | None:
    """The measurement settings a sweep folder's sweep.json records (None: it has none)."""
    path = os.path.join(out_dir, "sweep.json")
    if not os.path.lexists(path):
        return None
    rec = read_json(path, nofollow=True, what="sweep settings")
    if not isinstance(rec, dict) or not isinstance(rec.get("settings"), dict):
        raise UserError(f"{path} holds no settings: remove it or use another folder")
    return rec["settings"]


def merged_settings(dirs: list[str]) -> dict:
    """The settings all of `dirs` were measured with; UserError naming the first that differs."""
    have: dict = {}
    first: dict = {}
    for d in dirs:
        got = folder_settings(d)
        if got is None:
            warn_line(f"{d} has no sweep.json: its measurement settings cannot be checked")
            continue
        for k, v in got.items():
            if k in have and have[k] != v:
                raise UserError(
                    f"{first[k]} was measured with {k} {have[k]!r}, {d} with {v!r}: merge only "
                    "sweeps measured with the same settings"
                )
            have.setdefault(k, v)
            first.setdefault(k, d)
    return have


def merge_into(dirs: list[str], out: str) -> list[dict]:
    """`bench merge`: the rows of `dirs` (later dirs win) and their common settings into a new
    folder OUT, which this process owns while it writes."""
    if not out:
        raise UserError("--out must name a folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"cannot write --out {out}: it is a file")
    kind = owner.kind_of(out)
    if kind is not None or has_results(out):
        raise UserError(
            f"--out {out} already holds a {kind or 'sweep'}: merge into a new folder (its rows "
            "would count as merged)"
        )
    owner.check_not_nested(out, "--out")
    settings = merged_settings(dirs)
    rows = merge(dirs)
    with owner.owned(out, "bench merge"):
        if has_results(out) or os.path.lexists(os.path.join(out, "sweep.json")):
            raise UserError(f"--out {out} got results while merging: merge into a new folder")
        if settings:
            text = json.dumps({"settings": settings}, indent=1, sort_keys=True) + "\n"
            atomic_write(os.path.join(out, "sweep.json"), text, inside=out)
        write_rows(out, rows)
    return rows


def merge(dirs: list[str]) -> list[dict]:
    """All rows of several result dirs, deduplicated by key (later dirs win)."""
    rows: list[dict] = []
    for d in dirs:
        if not has_results(d):
            raise UserError(f"no bench results in {d} (expected results.jsonl or rows/*.jsonl)")
        for r in load_rows(d):
            rows = upsert(rows, r)
    return rows
