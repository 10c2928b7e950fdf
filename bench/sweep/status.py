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
import math
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

from bench.sweep import results
from core import UserError, atomic_write, owner
from core.files import read_bytes, read_json, read_jsonl, refuse_symlinks, warn_line

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


@contextlib.contextmanager
def config_claim(out_dir: str, spec: dict):
    """Hold the claim on one (config, repeat) of a sweep folder while measuring it.

    An flock on OUT/.work/<key>.claim: a second sweep on the same folder (or an overlapping
    shard) waits for the claim instead of measuring the same config at the same time on the same
    core, then yields the row the first one wrote (None: measure it). Multi-node ranks > 0 claim
    nothing (node 0 does).
    """
    import fcntl

    if int(spec.get("node_rank") or 0):
        yield None
        return
    key = owner.safe_name(key_of(spec), "config key")
    work = os.path.join(os.path.abspath(out_dir), spec.get("subdir") or "", ".work")
    os.makedirs(work, exist_ok=True)
    refuse_symlinks(work, [f"{key}{x}" for x in (".claim", ".log", ".spec.json", ".result.json")])
    path = os.path.join(work, f"{key}.claim")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        waited_since = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                waited_since = waited_since or time.time()
                time.sleep(0.2)
        yield _row_since(os.path.dirname(work), spec, waited_since) if waited_since else None
    finally:
        os.close(fd)  # releases the claim


def _row_since(folder: str, spec: dict, since: float) -> dict | None:
    """The final row of `spec`'s key that the sweep we waited for (since `since`) wrote."""
    want = key_of(spec)
    rows = [r for r in results.load_rows(folder) if key_of(r) == want]
    final = [r for r in rows if r.get("status") in results.FINAL_STATUSES]
    ok = [r for r in final if r["status"] not in results.RETRY_DEFAULT]
    return ok[-1] if ok else None


def key_of(d: dict) -> str:
    """A config's key in a sweep folder (row, spec, record): config_id, `-r<repeat>` if > 0."""
    cid, rep = results.row_key(d)
    return f"{cid}-r{rep}" if rep else cid


def jobs_dir(out_dir: str) -> str:
    """OUT/.jobs; UserError when it (or its heartbeat folder) is a symlink: records and
    heartbeats from elsewhere are not this folder's."""
    refuse_symlinks(out_dir, (JOBS_DIR,))
    refuse_symlinks(os.path.join(out_dir, JOBS_DIR), ("heartbeat",))
    return os.path.join(out_dir, JOBS_DIR)


def heartbeat_path(out_dir: str, key: str) -> str:
    return os.path.join(jobs_dir(out_dir), "heartbeat", f"{key}.json")


def _record_problem(rec) -> str | None:
    """Why a line of a submit-*.jsonl file is no job record (None: it is one)."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    why = results.row_problem({"config_id": rec.get("config_id"), "repeat": rec.get("repeat")})
    if why:
        return why
    jid = rec.get("job_id")
    if isinstance(jid, bool) or not isinstance(jid, (str, int)) or str(jid) == "":
        return "no job_id"
    sub = rec.get("submitted")
    if sub is not None and (
        isinstance(sub, bool) or not isinstance(sub, (int, float)) or not math.isfinite(sub)
    ):
        return f"submitted {sub!r} is not a time"
    for k in ("executor", "host", "label", "stderr", "stdout"):
        if rec.get(k) is not None and not isinstance(rec[k], str):
            return f"{k} is not a string"
    return None


def read_records(out_dir: str) -> dict[str, dict]:
    """The latest job record per config key (records sorted by submission time); lines that are
    no record are skipped with one warning line per file."""
    recs: list[dict] = []
    for path in sorted(glob.glob(os.path.join(jobs_dir(out_dir), "submit-*.jsonl"))):
        recs += read_jsonl(path, nofollow=True, check=_record_problem)
    recs.sort(key=lambda r: float(r.get("submitted") or 0.0))
    return {key_of(r): r for r in recs}


def fs_now(out_dir: str) -> float:
    """The folder's file-system clock: the mtime of a freshly touched probe file."""
    probe = os.path.join(jobs_dir(out_dir), "clock")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            os.utime(fd)
            return os.fstat(fd).st_mtime
        finally:
            os.close(fd)
    except OSError:  # a read-only copy of a folder (or a planted link): this machine's clock
        return time.time()


def read_heartbeats(out_dir: str) -> dict[str, dict]:
    """Heartbeat content per config key, with "age_s" (by the folder's clock) added; files that
    are no heartbeat are skipped with one warning line."""
    paths = glob.glob(os.path.join(jobs_dir(out_dir), "heartbeat", "*.json"))
    now = fs_now(out_dir) if paths else 0.0
    out, bad = {}, []
    for path in sorted(paths):
        try:
            hb = read_json(path, nofollow=True)
            age = now - os.lstat(path).st_mtime
        except UserError as e:
            if os.path.lexists(path):  # else being replaced right now: the next poll sees it
                bad.append(str(e))
            continue
        except OSError:
            continue
        why = _record_problem(hb) if isinstance(hb, dict) else "not a JSON object"
        if why:
            bad.append(f"{path}: {why}")
            continue
        hb["age_s"] = age
        out[key_of(hb)] = hb
    if bad:
        warn_line(f"skipped {len(bad)} unreadable heartbeat file(s) (first: {bad[0]})")
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
        logs = [p for p in (rec.get("stderr"), rec.get("stdout")) if p and _inside(p, out_dir)]
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


def _inside(path: str, folder: str) -> bool:
    """Whether `path` (a log path a record names) resolves inside `folder`: status never shows a
    file outside the folder it was given, whatever the folder's records say."""
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return real.startswith(top + os.sep)


def tail(path: str, n: int) -> list[str]:
    """The last n non-blank lines of a text file ([] if it cannot be read or is no regular file,
    or a symlink)."""
    try:
        text = read_bytes(path, nofollow=True).decode(errors="replace")
    except UserError:
        return []
    lines = [x.rstrip() for x in text.splitlines() if x.strip()]
    return lines[-n:] if n > 0 else []


def worker_log(out_dir: str, key: str) -> str | None:
    """The worker's own log of a config, where the sweep keeps one."""
    try:
        owner.safe_name(key, "config key")
    except UserError:
        return None  # a key from a damaged row names no file
    path = os.path.join(out_dir, ".work", f"{key}.log")
    linked = os.path.islink(path) or os.path.islink(os.path.dirname(path))
    return path if os.path.isfile(path) and not linked else None


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
