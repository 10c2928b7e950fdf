"""Where each config of a sweep folder stands: done, running, pending or failed (`bench status`).

A sweep folder holds three kinds of evidence, and this module is the one place that combines them:

- rows (`bench.sweep.results.load_rows`): the outcome of a finished config;
- job records, `OUT/.jobs/submit-*.jsonl`, one JSON line per submitted config (config_id, job_id,
  executor, host, log paths), written by `bench.sweep.executors` right after each submission;
- heartbeats, `OUT/.jobs/heartbeat/<config_id>.json`, written by the job itself when it starts and
  touched every HEARTBEAT_S seconds while it runs; on exit the job marks it ended.

A config is `running` while its latest job's heartbeat is fresh (younger than STALE_S by the
folder's own clock: a probe file's mtime, so clock skew between nodes does not matter), `pending`
while that job has not started and its scheduler still holds it (Slurm: listed by `squeue`;
submitit-local: its controller process is alive on this host), and otherwise what its row says:
`done` (ok), `failed` (error, timeout, oom, nan) or `skipped` (invalid config). A job that died
without a row (killed, node failure, time limit, a failing `--slurm-setup` line) is `failed` too,
and `bench sweep` submits it again. Only running and pending configs are held back from a rerun.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

from bench.sweep import results
from core import UserError, atomic_write

JOBS_DIR = ".jobs"
HEARTBEAT_S = 15.0  # how often a running job touches its heartbeat
STALE_S = 120.0  # a heartbeat older than this belongs to a dead job (NFS caches mtimes ~60 s)
STATES = ("done", "running", "pending", "failed", "skipped")
LIVE = ("running", "pending")


@dataclass
class ConfigState:
    key: str  # config_id, plus -r<repeat> for repeats (see key_of)
    state: str  # one of STATES
    label: str = ""  # short description of the config, e.g. "L2 d64 h2 b4x1 T64"
    status: str = ""  # the row's status ("" without a row)
    job_id: str = ""
    executor: str = ""
    message: str = ""
    logs: list[str] = field(default_factory=list)  # the latest job's log files
    from_row: bool = False  # the state is the row's outcome (not a live or lost job's)


def key_of(d: dict) -> str:
    """A config's key in a sweep folder (row, spec, record): config_id, `-r<repeat>` if > 0."""
    cid, rep = results.row_key(d)
    return f"{cid}-r{rep}" if rep else cid


def jobs_dir(out_dir: str) -> str:
    return os.path.join(out_dir, JOBS_DIR)


def heartbeat_path(out_dir: str, key: str) -> str:
    return os.path.join(jobs_dir(out_dir), "heartbeat", f"{key}.json")


def read_records(out_dir: str) -> dict[str, dict]:
    """The latest job record per config key (records sorted by submission time)."""
    recs: list[dict] = []
    for path in glob.glob(os.path.join(jobs_dir(out_dir), "submit-*.jsonl")):
        with contextlib.suppress(OSError), open(path) as fh:
            for line in fh:
                with contextlib.suppress(json.JSONDecodeError):
                    rec = json.loads(line)
                    if isinstance(rec, dict) and rec.get("config_id"):
                        recs.append(rec)
    recs.sort(key=lambda r: float(r.get("submitted") or 0.0))
    return {key_of(r): r for r in recs}


def fs_now(out_dir: str) -> float:
    """The folder's file-system clock: the mtime of a freshly touched probe file."""
    probe = os.path.join(jobs_dir(out_dir), "clock")
    try:
        with open(probe, "a"):
            os.utime(probe)
        return os.stat(probe).st_mtime
    except OSError:  # a read-only copy of a folder: fall back to this machine's clock
        return time.time()


def read_heartbeats(out_dir: str) -> dict[str, dict]:
    """Heartbeat content per config key, with "age_s" (by the folder's clock) added."""
    paths = glob.glob(os.path.join(jobs_dir(out_dir), "heartbeat", "*.json"))
    now = fs_now(out_dir) if paths else 0.0
    out = {}
    for path in paths:
        try:
            with open(path) as fh:
                hb = json.load(fh)
            hb["age_s"] = now - os.stat(path).st_mtime
        except (OSError, json.JSONDecodeError):
            continue  # being written or removed right now: the next poll sees it
        if isinstance(hb, dict) and hb.get("config_id"):
            out[key_of(hb)] = hb
    return out


def write_heartbeat(out_dir: str, cid: str, repeat: int, job_id: str, **extra) -> str:
    info = {"config_id": cid, "repeat": repeat, "job_id": job_id}
    info.update(host=socket.gethostname(), pid=os.getpid())
    path = heartbeat_path(out_dir, key_of(info))
    info.update(extra)
    atomic_write(path, json.dumps(info) + "\n")
    return path


def queued_jobs(records: list[dict]) -> dict[str, bool | None]:
    """job_id -> is the scheduler still holding it (True/False), or None when it cannot tell."""
    out: dict[str, bool | None] = {}
    slurm = [r["job_id"] for r in records if r.get("executor") == "slurm"]
    active = _squeue_ids() if slurm else None
    for rec in records:
        jid = str(rec.get("job_id") or "")
        if rec.get("executor") == "slurm":
            out[jid] = None if active is None else (jid in active or jid.split("_")[0] in active)
        else:
            out[jid] = _local_alive(rec)
    return out


def _squeue_ids() -> set[str] | None:
    """Ids of this user's jobs and array tasks that Slurm still holds, or None without squeue."""
    if shutil.which("squeue") is None:
        return None
    cmd = ["squeue", "--noheader", "--array", "--user", getpass.getuser(), "--format=%i"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {line.strip() for line in out.splitlines() if line.strip()}


def _local_alive(rec: dict) -> bool | None:
    """Is the submitit-local controller of this record alive? None if it ran on another host."""
    if rec.get("host") != socket.gethostname():
        return None
    try:
        with open(f"/proc/{int(rec['job_id'])}/cmdline", "rb") as fh:
            cmd = fh.read()
    except (OSError, ValueError, KeyError):
        return False
    return b"submitit" in cmd  # a reused pid belongs to some other program


def _row_state(row: dict) -> str:
    status = row.get("status")
    return "done" if status == "ok" else "skipped" if status == "skipped" else "failed"


def _job_state(rec: dict, hb: dict | None, queued: bool | None, row: dict | None) -> tuple:
    """(state, message, from_row) of a config whose latest job is `rec`."""
    if hb is not None and hb.get("job_id") == rec.get("job_id"):
        if hb.get("ended"):
            if row is None:
                return "failed", f"job {rec['job_id']} ended without writing a row", False
            return _row_state(row), row.get("message") or "", True
        if hb["age_s"] < STALE_S:
            return "running", f"heartbeat {hb['age_s']:.0f}s ago on {hb.get('host', '?')}", False
        lost = f"job {rec['job_id']} stopped beating {hb['age_s']:.0f}s ago (killed or lost)"
    elif queued is None or queued:
        how = "submitted, scheduler state unknown" if queued is None else "waiting to start"
        return "pending", f"job {rec['job_id']} {how}", False
    else:
        lost = f"job {rec['job_id']} ended before it started the config (see its log)"
    if row is not None and row.get("status") == "ok":
        return "done", "", True  # written by this job after all (its end mark was lost)
    return "failed", lost + (f"; last row: {row.get('message')}" if row else ""), False


def config_states(out_dir: str) -> list[ConfigState]:
    """One ConfigState per config known to the folder (by a row or a job record), sorted by key."""
    rows = {key_of(r): r for r in results.load_rows(out_dir)}
    recs = read_records(out_dir)
    hbs = read_heartbeats(out_dir)
    waiting = [r for k, r in recs.items() if k not in hbs or hbs[k].get("job_id") != r["job_id"]]
    queued = queued_jobs(waiting) if waiting else {}
    out = []
    for key in sorted(set(rows) | set(recs)):
        row, rec = rows.get(key), recs.get(key)
        label = (rec or {}).get("label") or (label_of(row) if row else "")
        if rec is None:
            state = ConfigState(key, _row_state(row), label, row.get("status", ""), from_row=True)
            state.message = row.get("message") or ""
            out.append(state)
            continue
        state, msg, from_row = _job_state(rec, hbs.get(key), queued.get(str(rec["job_id"])), row)
        logs = [p for p in (rec.get("stderr"), rec.get("stdout")) if p]
        status = (row or {}).get("status", "")
        jid, ex = str(rec["job_id"]), rec.get("executor", "")
        out.append(ConfigState(key, state, label, status, jid, ex, msg, logs, from_row))
    return out


def live_keys(out_dir: str) -> set[str]:
    """Keys of configs that a job runs or that wait in a scheduler's queue (not to resubmit)."""
    if not glob.glob(os.path.join(jobs_dir(out_dir), "submit-*.jsonl")):
        return set()  # no job was ever submitted into this folder
    return {s.key for s in config_states(out_dir) if s.state in LIVE}


def label_of(row: dict) -> str:
    try:
        return (
            f"L{row['n_layer']} d{row['n_embd']} h{row['n_head']} "
            f"b{row['batch_size']}x{row['acc_steps']} T{row['sequence_length']}"
        )
    except KeyError:
        return ""


def tail(path: str, n: int) -> list[str]:
    """The last n non-blank lines of a text file ([] if it cannot be read)."""
    try:
        with open(path, errors="replace") as fh:
            lines = [x.rstrip() for x in fh.read().splitlines() if x.strip()]
    except OSError:
        return []
    return lines[-n:] if n > 0 else []


def worker_log(out_dir: str, key: str) -> str | None:
    """The worker's own log of a config, where the sweep keeps one."""
    path = os.path.join(out_dir, ".work", f"{key}.log")
    return path if os.path.isfile(path) else None


def format_status(out_dir: str, states: list[ConfigState], tail_lines: int = 5) -> str:
    counts = {s: sum(1 for x in states if x.state == s) for s in STATES}
    head = f"{out_dir}: {len(states)} configs: " + ", ".join(
        f"{n} {s}" for s, n in counts.items() if n or s != "skipped"
    )
    lines = [head, f"{'config_id':<12}  {'state':<8} {'job':<14} {'config':<26} message"]
    for s in states:
        msg = s.message.replace("\n", " ")[:160]
        lines.append(
            f"{s.key:<12}  {s.state:<8} {s.job_id or '-':<14} {s.label:<26} {msg}".rstrip()
        )
    for s in states:
        if s.state == "failed" and tail_lines > 0:
            lines += _failed_logs(out_dir, s, tail_lines)
    return "\n".join(lines)


def _failed_logs(out_dir: str, s: ConfigState, n: int) -> list[str]:
    """The last lines of the logs that tell why a config failed.

    A failed row comes from the worker, whose own log says why; a job that wrote no row failed
    in the job itself (setup lines, imports, a kill), which its submitit logs show.
    """
    wlog = worker_log(out_dir, s.key)
    err, out = (s.logs + ["", ""])[:2]
    paths = [wlog, err] if s.from_row else [err, out, wlog]
    lines = []
    for path in paths:
        last = tail(path, n) if path else []
        if last:
            lines.append(f"--- {s.key}: last lines of {path}")
            lines.extend("  " + x for x in last)
    return lines


def add_parser(sub) -> None:
    """Register `bench status DIR` on the `bench` subparsers."""
    p = sub.add_parser("status", help="done / running / pending / failed per config of a sweep")
    p.add_argument("dir", metavar="DIR", help="sweep output folder (--out of bench sweep)")
    p.add_argument(
        "--tail", type=int, default=5, metavar="N", help="log lines shown per failed config"
    )
    p.set_defaults(func=status_cmd)


def status_cmd(a) -> int:
    if not os.path.isdir(a.dir):
        raise UserError(f"no sweep folder at {a.dir}: pass the --out of a bench sweep")
    states = config_states(a.dir)
    if not states:
        raise UserError(f"{a.dir} holds no results and no submitted jobs: run bench sweep first")
    print(format_status(a.dir, states, a.tail))
    return 0
