"""Run a sweep: one subprocess per config, rows upserted atomically, resumable, shardable.

The parent never imports torch for the measurement itself: each config runs in
`python -m bench.worker` with a wall-clock timeout, so a crash, OOM, NaN or hang becomes a row
with that status and the sweep goes on. After every config the whole results dir is rewritten
atomically; rerunning the same command skips configs whose config_id already has a final
status, so a SIGKILLed sweep resumes with every config exactly once.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from model.config import ModelConfig, field_names

from . import results
from .grid import INJECT_KEY, config_id, in_shard, validate


@dataclass
class SweepOptions:
    out_dir: str
    minutes: float  # timed budget per config
    timeout_factor: float = 3.0  # per-config timeout = factor * budget + grace
    timeout_grace_s: float = 120.0  # process start, build, warmup, eval
    shard: tuple[int, int] | None = None
    gpus: list[str] = field(default_factory=list)
    warmup_steps: int = 2
    data: str | None = None
    threads: int | None = None  # torch threads per worker; None = 1 on CPU, torch default on GPU
    progress: bool = True


def static_columns(row: dict) -> dict:
    """Columns known before running: params, flops_per_step (costs 'exact'), memory_traffic."""
    from model import costs

    cfg = ModelConfig.from_dict({k: row[k] for k in field_names()})
    tokens_bs = row["batch_size"] * row["acc_steps"]
    dtype = row["dtype"]
    return {
        "params": costs.num_params(cfg),
        "flops_per_step": costs.train_flops(cfg, tokens_bs)["exact"],
        "memory_traffic": costs.memory_traffic(cfg, tokens_bs, dtype=dtype)["total"],
    }


def _base_row(row: dict, cid: str, env: dict) -> dict:
    out = {k: row[k] for k in field_names()}
    out.update({k: row[k] for k in ("batch_size", "acc_steps", "dtype", "compile", "device", "lr")})
    if row.get(INJECT_KEY) is not None:
        out[INJECT_KEY] = row[INJECT_KEY]
    out["config_id"] = cid
    out.update(env)
    return out


MEASURED = (
    "step_ms_median",
    "step_ms_p10",
    "step_ms_p90",
    "step_ms_mean",
    "step_ms_std",
    "tokens_per_s",
    "mfu",
    "peak_mem_mb",
    "loss_start",
    "loss_end",
    "val_loss",
    "steps_timed",
    "timed_s",
    "timed_fraction",
    "overhead_s",
    "wall_s",
    "threads",
    "loss_curve",
)


def finish_row(base: dict, static: dict, measured: dict) -> dict:
    from .telemetry import COLUMNS

    row = dict(base)
    row.update(static)
    for c in MEASURED + COLUMNS:
        row[c] = measured.get(c, math.nan)
    row["status"] = measured.get("status", "error")
    row["message"] = measured.get("message", "")
    row["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return row


@dataclass
class _Job:
    row: dict
    cid: str
    base: dict
    static: dict
    proc: subprocess.Popen
    result_path: str
    started: float
    timeout_s: float
    gpu: str | None


def plan(
    rows: list[dict], opts: SweepOptions
) -> tuple[list[tuple[dict, str]], list[tuple[dict, str, str]]]:
    """(runnable [(row, id)], skipped [(row, id, reason)]) within this shard, deduplicated."""
    runnable, skipped, seen = [], [], set()
    for r in rows:
        cid = config_id(r)
        if cid in seen or (opts.shard and not in_shard(cid, opts.shard)):
            continue
        seen.add(cid)
        reason = validate(r)
        if reason:
            skipped.append((r, cid, reason))
        else:
            runnable.append((r, cid))
    return runnable, skipped


def run_sweep(rows: list[dict], opts: SweepOptions, env: dict, log=None) -> list[dict]:
    """Run every config of `rows` not already final in opts.out_dir; returns all rows of the dir."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    os.makedirs(opts.out_dir, exist_ok=True)
    work = os.path.join(opts.out_dir, ".work")
    os.makedirs(work, exist_ok=True)
    have = results.load_rows(opts.out_dir)
    done = results.done_ids(have)
    runnable, skipped = plan(rows, opts)
    for r, cid, reason in skipped:
        if cid not in done:
            have = results.upsert(
                have,
                finish_row(_base_row(r, cid, env), {}, {"status": "skipped", "message": reason}),
            )
        log(f"skipped {cid}: {reason}")
    if skipped:
        results.write_rows(opts.out_dir, have)
    todo = [(r, cid) for r, cid in runnable if cid not in done]
    if len(runnable) != len(todo):
        log(f"resume: {len(runnable) - len(todo)} config(s) already done in {opts.out_dir}")
    budget_s = 60.0 * opts.minutes
    slots: list[str | None] = list(opts.gpus) if opts.gpus else [None]
    bar = _progress(len(todo), opts.progress)
    pending = list(todo)
    running: list[_Job] = []
    free = list(slots)
    while pending or running:
        while pending and free:
            r, cid = pending.pop(0)
            running.append(_start(r, cid, env, opts, budget_s, work, free.pop(0)))
        time.sleep(0.05)
        for job in list(running):
            rc = job.proc.poll()
            over = time.perf_counter() - job.started > job.timeout_s
            if rc is None and not over:
                continue
            if rc is None:
                job.proc.kill()
                job.proc.wait()
                measured = {
                    "status": "timeout",
                    "message": f"no result after {job.timeout_s:.0f}s (killed)",
                }
            else:
                measured = _read_result(job, rc)
            # Whole cost of the config as the sweep saw it (spawn to exit): timed_s / wall_s is
            # the share of sweep time spent in timed steps.
            measured["wall_s"] = time.perf_counter() - job.started
            row = finish_row(job.base, job.static, measured)
            have = results.upsert(have, row)
            results.write_rows(opts.out_dir, have)
            running.remove(job)
            free.append(job.gpu)
            bar.update(1)
            bar.write(summary_line(row))
    bar.close()
    return have


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total, unit="config", disable=not enabled, file=sys.stderr, dynamic_ncols=True
    )


def _start(row, cid, env, opts, budget_s, work, gpu) -> _Job:
    base = _base_row(row, cid, env)
    static = static_columns(row)
    spec = {
        "row": row,
        "budget_s": budget_s,
        "warmup_steps": opts.warmup_steps,
        "data": opts.data,
        "threads": opts.threads,
        "spawn_epoch": time.time(),
        "device_name": env.get("device_name", ""),
        # NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES, so pass the id.
        "nvml_index": int(gpu) if gpu is not None and gpu.isdigit() else None,
    }
    spec_path = os.path.join(work, f"{cid}.spec.json")
    result_path = os.path.join(work, f"{cid}.result.json")
    with open(spec_path, "w") as fh:
        json.dump(spec, fh)
    if os.path.exists(result_path):
        os.remove(result_path)  # a stale result from a killed earlier sweep must not be reused
    child_env = dict(os.environ)
    if gpu is not None:
        child_env["CUDA_VISIBLE_DEVICES"] = gpu
    log_path = os.path.join(work, f"{cid}.log")
    with open(log_path, "w") as log_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", spec_path, result_path],
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            env=child_env,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
    timeout = opts.timeout_factor * budget_s + opts.timeout_grace_s
    return _Job(row, cid, base, static, proc, result_path, time.perf_counter(), timeout, gpu)


def _read_result(job: _Job, rc: int) -> dict:
    try:
        with open(job.result_path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        tail = ""
        log = job.result_path.replace(".result.json", ".log")
        try:
            with open(log) as fh:
                lines = [x.strip() for x in fh.read().splitlines() if x.strip()]
            tail = lines[-1] if lines else ""
        except OSError:
            pass
        status = "oom" if rc == -9 or "out of memory" in tail.lower() else "error"
        return {"status": status, "message": f"worker exited {rc} without a result: {tail}"[:500]}


def summary_line(row: dict) -> str:
    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    return (
        f"[{row['status']:>7}] {row['config_id']} L{row['n_layer']} d{row['n_embd']} "
        f"h{row['n_head']} b{row['batch_size']}x{row['acc_steps']} T{row['sequence_length']} "
        f"step {f(row.get('step_ms_median'), '.1f')} ms, "
        f"{f(row.get('tokens_per_s'), '.0f')} tok/s, loss {f(row.get('loss_end'), '.3f')}"
        + (f"  ({row['message']})" if row.get("message") else "")
    )
