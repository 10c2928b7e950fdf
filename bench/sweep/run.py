"""Run a sweep: one worker process per config, rows appended safely, resumable, shardable.

The parent never imports torch for the measurement itself: each config runs in
`python -m bench.worker.run SPEC RESULT` (or under torchrun for multi-process configs) in its own
process group with a wall-clock timeout, so a crash, OOM, NaN or hang becomes a row with that
status and the sweep goes on; workers die with the sweep (see `bench.proc`). Rows go through
`results.append_row`, so shards and Slurm array tasks can share one folder. Rerunning the
same command runs only the configs without a final row: `error`/`timeout` rows (failures of the
harness) are retried, `oom`/`nan` rows only with `--retry oom,nan`.

Public API (also used by `bench.sweep.executors`): `plan(rows, opts) -> specs`, `run_config(spec,
out_dir) -> row`, `run_sweep(rows, opts) -> rows`.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time

from bench import proc
from bench.sweep import adaptive, drift, results, status
from bench.sweep.grid import config_id, in_shard, validate
from bench.sweep.options import SweepOptions, measure_config, start_folder
from bench.sweep.progress import Progress
from bench.sweep.rowbuild import failure_row, finish_row, summary_line
from core import atomic_write, read_json

# ---------------------------------------------------------------------------------- planning


def prepare(rows: list[dict], opts: SweepOptions) -> tuple[list[tuple[dict, str]], list]:
    """(valid [(row, id)], invalid [(row, id, reason)]) within this shard, deduplicated."""
    valid, invalid, seen = [], [], set()
    for r in rows:
        cid = config_id(r)
        if cid in seen or (opts.shard and not in_shard(cid, opts.shard)):
            continue
        seen.add(cid)
        reason = validate(r, opts.base)
        if reason:
            invalid.append((r, cid, reason))
        else:
            valid.append((r, cid))
    return valid, invalid


def make_spec(row: dict, cid: str, repeat: int, opts: SweepOptions, kind: str = "config") -> dict:
    """Everything a worker needs to measure one (config, repeat): plain JSON, absolute paths."""
    return {
        "config_id": cid,
        "repeat": repeat,
        "kind": kind,
        "row": dict(row),
        "train": opts.base.to_dict(),
        "measure": measure_config(opts),
        "timeout_s": opts.timeout_s,
        "nproc_per_config": opts.nproc_per_config,
        "cpu_slot": opts.shard[0] if opts.shard else 0,  # shards on one machine pin apart
        "cpu_cores": list(opts.cpu_cores) or None,  # --cpu-cores (None: the worker picks)
        "gpu": None,
        "ref_group": drift.ref_group(opts.shard) if opts.reference_every else None,
    }


def plan(
    rows: list[dict], opts: SweepOptions, have: list[dict] | None = None, prepared=None
) -> list[dict]:
    """Specs of the (config, repeat) pairs still pending in opts.out_dir: missing or retryable.

    Repeats are interleaved (every config once, then every config again), not back to back.
    `prepared`: `prepare(rows, opts)` when the caller has it (each config is validated once).
    """
    valid, _ = prepared or prepare(rows, opts)
    have = results.load_rows(opts.out_dir) if have is None else have
    final = results.final_keys(have, opts.retry)
    return [
        make_spec(row, cid, rep, opts)
        for rep in range(opts.repeat)
        for row, cid in valid
        if (cid, rep) not in final
    ]


# ---------------------------------------------------------------------------------- one config


def worker_command(spec: dict, spec_path: str, result_path: str) -> list[str]:
    n = int(spec.get("nproc_per_config") or 1)
    nnodes = int(spec.get("nnodes") or 1)
    worker = ["-m", "bench.worker.run", spec_path, result_path]
    if n <= 1 and nnodes <= 1:
        return [sys.executable, *worker]
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n}"]
    if nnodes > 1:  # multi-node (bench.sweep.executors fills these in per Slurm node)
        run += [f"--nnodes={nnodes}", f"--node-rank={int(spec.get('node_rank') or 0)}"]
        run += [f"--master-addr={spec['master_addr']}", f"--master-port={spec['master_port']}"]
    else:
        run += ["--standalone", "--nnodes=1"]
    return run + worker


def run_config(spec: dict, out_dir: str) -> dict:
    """`_measure` under the config's claim: a sweep that had to wait for another one measuring
    the same config gets that one's row instead of measuring it again."""
    with status.config_claim(out_dir, spec) as row:
        return row if row is not None else _measure(spec, out_dir)


def _measure(spec: dict, out_dir: str) -> dict:
    """Measure one config in a child process (torchrun when spec["nproc_per_config"] > 1).

    The child runs in its own process group, in the caller's cwd, with this checkout on its
    PYTHONPATH; it is killed at spec["timeout_s"] and dies if this process dies. The row is
    written with `results.append_row` and returned ({} on a non-zero node of a multi-node job).
    """
    target = os.path.join(os.path.abspath(out_dir), spec.get("subdir") or "")
    work = os.path.join(target, ".work")
    os.makedirs(work, exist_ok=True)
    key = status.key_of(spec)
    spec_path = os.path.join(work, f"{key}.spec.json")
    result_path = os.path.join(work, f"{key}.result.json")
    node_rank = int(spec.get("node_rank") or 0)
    if node_rank:  # every node needs its own files; only node 0 reports
        spec_path = spec_path.replace(".spec.json", f".node{node_rank}.spec.json")
        result_path = result_path.replace(".result.json", f".node{node_rank}.result.json")
    spec = dict(spec, spawn_epoch=time.time())
    atomic_write(spec_path, json.dumps(spec))
    if os.path.exists(result_path):
        os.remove(result_path)  # a stale result of a killed earlier run must not be reused
    extra = {"CUDA_VISIBLE_DEVICES": str(spec["gpu"])} if spec.get("gpu") is not None else {}
    cmd = worker_command(spec, spec_path, result_path)
    log_path = os.path.join(work, f"{key}.node{node_rank}.log" if node_rank else f"{key}.log")
    started = time.perf_counter()
    child = proc.spawn(cmd, log_path, proc.child_env(extra))
    timeout_s = float(spec.get("timeout_s") or math.inf)
    rc = proc.wait_or_kill(child, timeout_s if math.isfinite(timeout_s) else None)
    results.remove_stale_temps(work)
    if node_rank:
        return {}
    if rc is None:
        measured = {"status": "timeout", "message": f"no result after {timeout_s:.0f}s (killed)"}
    else:
        measured = _read_result(result_path, log_path, rc)
    measured["wall_s"] = time.perf_counter() - started  # spawn to exit, as the sweep saw it
    row = finish_row(spec, measured)
    return results.append_row(target, row)


def _read_result(result_path: str, log_path: str, rc: int) -> dict:
    try:
        return read_json(result_path, nofollow=True)  # UserError (a ValueError) if bad
    except (OSError, ValueError):
        tail = ""
        try:
            with open(log_path, errors="replace") as fh:
                lines = [x.strip() for x in fh.read().splitlines() if x.strip()]
            tail = lines[-1] if lines else ""
        except OSError:
            pass
        status = "oom" if rc == -9 or "out of memory" in tail.lower() else "error"
        return {"status": status, "message": f"worker exited {rc} without a result: {tail}"[:500]}


# ---------------------------------------------------------------------------------- the sweep


def _queue_with_references(specs: list[dict], rows, opts: SweepOptions) -> list[dict]:
    """The specs with the reference config re-timed first, every N configs and last."""
    if not opts.reference_every or not specs:
        return specs
    ref_row = drift.reference_row(rows)
    seq = drift.next_seq(opts.out_dir, opts.shard)

    def ref() -> dict:
        nonlocal seq
        spec = make_spec(ref_row, config_id(ref_row), seq, opts, kind="reference")
        spec["subdir"] = spec["ref_group"]
        seq += 1
        return spec

    out = []
    for i, s in enumerate(specs):
        if i % opts.reference_every == 0:
            out.append(ref())
        out.append(s)
    out.append(ref())
    return out


def run_sweep(rows: list[dict], opts: SweepOptions, log=None, prepared=None) -> dict:
    """Run every pending config of `rows` into opts.out_dir, except those a live job holds.

    Returns {"rows": all rows of the folder, "ran": rows written by this call, "drift": report,
    "held": keys of the pending configs left to the submitit/Slurm jobs running them}.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    start_folder(opts)
    have = results.load_rows(opts.out_dir)
    prepared = prepared or prepare(rows, opts)
    _write_skipped(rows, opts, have, log, prepared)
    specs = plan(rows, opts, have, prepared)
    valid, _ = prepared
    n_done = len(valid) * opts.repeat - len(specs)
    if n_done:
        log(f"resume: {n_done} config(s) already done in {opts.out_dir}")
    live = status.live_keys(opts.out_dir)  # configs a submitit/Slurm job runs or will run
    held = [s for s in specs if status.key_of(s) in live]
    if held:
        log(
            f"{len(held)} config(s) are running or queued as jobs in {opts.out_dir}: not run "
            f"again here (`bench status {opts.out_dir}` follows them)"
        )
        specs = [s for s in specs if status.key_of(s) not in live]
    todo = _queue_with_references(specs, rows, opts)
    ran = _run_local(todo, opts, log)
    if opts.repeat_until:
        ran += _adaptive_rounds(rows, valid, opts, live, log)
    report = drift.report(opts, log) if opts.reference_every else None
    rows_now = results.load_rows(opts.out_dir)
    return {"rows": rows_now, "ran": ran, "drift": report, "held": [status.key_of(s) for s in held]}


def _adaptive_rounds(rows, valid, opts: SweepOptions, live: set, log) -> list[dict]:
    """--repeat-until: rounds of one more measurement of every still-uncertain config.

    Each round is decided from the rows in the folder (so a rerun resumes it) and ends when no
    config is above the target or every such config has --max-repeat measurements; a config
    whose new measurement keeps failing is retried at most once per round, so the rounds end.
    """
    ran: list[dict] = []
    for rnd in range(1, opts.repeat_cap - opts.repeat + 1):
        have = results.load_rows(opts.out_dir)
        todo = adaptive.next_repeats(
            valid, have, opts.repeat, opts.repeat_until, opts.repeat_cap, opts.retry
        )
        todo = [t for t in todo if status.key_of({"config_id": t[1], "repeat": t[2]}) not in live]
        if not todo:
            break
        log(
            f"--repeat-until {opts.repeat_until:g}%: round {rnd}, {len(todo)} config(s) still "
            "above it, measuring each once more"
        )
        specs = [make_spec(row, cid, rep, opts) for row, cid, rep in todo]
        before = adaptive.config_times(have)
        got = _run_local(_queue_with_references(specs, rows, opts), opts, log)
        ran += got
        ratio = adaptive.round_ratio(before, got)
        if ratio is not None:  # a machine that drifted between rounds biases the re-measured
            log(
                f"round {rnd}: its configs took {ratio:.3f}x their median so far (a machine "
                "that drifts between rounds shows here; 1 is steady)"
            )
    log(adaptive.summary(valid, results.load_rows(opts.out_dir), opts.repeat_until))
    return ran


def _write_skipped(rows, opts: SweepOptions, have: list[dict], log, prepared=None) -> None:
    _, invalid = prepared or prepare(rows, opts)
    known = {(r["config_id"], r.get("status")) for r in have}
    for r, cid, reason in invalid:
        if (cid, "skipped") not in known:
            results.append_row(opts.out_dir, failure_row(r, cid, "skipped", reason))
        log(f"skipped {cid}: {reason}")


def _run_local(todo: list[dict], opts: SweepOptions, log) -> list[dict]:
    """Run specs on the local slots (one per --gpus id, else one), in queue order."""
    slots: list[str | None] = list(opts.gpus) if opts.gpus else [None]
    jobs: queue.Queue = queue.Queue()
    for s in todo:
        jobs.put(s)
    done: list[dict] = []
    bar = Progress(sum(1 for s in todo if s["kind"] == "config"), opts.progress)
    errors: list[BaseException] = []

    def slot_loop(gpu: str | None) -> None:
        while not errors:
            try:
                spec = jobs.get_nowait()
            except queue.Empty:
                return
            try:
                row = run_config(dict(spec, gpu=gpu), opts.out_dir)
            except BaseException as e:  # noqa: BLE001  (re-raised in the main thread)
                errors.append(e)
                return
            if spec["kind"] == "config":
                done.append(row)
            bar.done(summary_line(row), count=spec["kind"] == "config")

    try:
        if len(slots) == 1:
            slot_loop(slots[0])
        else:
            threads = [threading.Thread(target=slot_loop, args=(g,), daemon=True) for g in slots]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # short joins keep Ctrl-C responsive
    except BaseException:
        errors.append(RuntimeError("stopped"))  # the other slots take no new config
        proc.kill_all()
        raise
    finally:
        bar.close()
    if errors:
        raise errors[0]
    return done
