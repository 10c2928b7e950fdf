"""One sweep config in its own process: `python -m bench.worker SPEC.json RESULT.json`.

The run is the trainer's: the spec's base `TrainConfig` with the sweep row on top
(`base.with_(**row)`), built by `train.session.Session.build`, the one builder `train` uses too
(device, thread policy, TF32, seeds, model, optimizer, scaler, samplers, the step). Untimed steps
come first,
then timed windows until the budget is spent (`bench.worker.timing` documents the method), then one
validation pass. The JSON result is written atomically by rank 0. Running in a child process means
a crash, OOM, NaN or hang costs one row, never the sweep; the worker dies with the sweep
(`bench.proc.die_with_parent`). Under torchrun (WORLD_SIZE > 1) the ranks form a gloo (CPU) or
NCCL (CUDA) process group, gradients are all-reduced in the optimizer's flat buffers, and the
row reports the world size and the global tokens/s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
import traceback

_T0 = time.perf_counter()  # as early as possible: process start counts as overhead


def train_config(spec: dict):
    """The TrainConfig of this run: the sweep's base run with the grid row on top."""
    from bench.sweep.grid import INJECT_KEY
    from train.config import TrainConfig

    row = {k: v for k, v in spec["row"].items() if k != INJECT_KEY}
    return TrainConfig.from_dict(spec["train"]).with_(**row)


def _inject(row: dict) -> None:
    inject = row.get("inject")
    if inject == "error":
        raise RuntimeError("injected error (test hook)")
    if inject == "hang":
        time.sleep(10**6)
    if inject == "oom":
        import torch

        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")


def run(spec: dict) -> dict:
    """Measure one config; returns the result columns (status ok|oom|nan|error)."""
    from bench.worker.timing import Clock, MeasureConfig, run_windows, summarize
    from train.session import Session

    _inject(spec["row"])
    m = dataclasses.asdict(MeasureConfig(**spec["measure"]))  # every field there, no default
    cfg = train_config(spec)
    pin(spec, cfg)
    ses = Session.build(cfg)
    print(f"config {spec.get('config_id')} | {ses.describe()}", file=sys.stderr, flush=True)
    if ses.cuda:
        import torch

        torch.cuda.reset_peak_memory_stats(ses.device)
    val = validation_batches(ses, int(m["val_tokens"]))
    budget_s = float(m["budget_s"])
    overhead_s = time.time() - spec["spawn_epoch"] if spec.get("spawn_epoch") else None
    with telemetry(spec, ses) as tele:
        timed = run_windows(
            lambda step, factor: ses.step(ses.cfg.schedule.lr * factor).loss,
            read_losses,
            Clock(ses.cuda),
            ses.cfg.schedule,
            budget_s=budget_s,
            untimed_steps=int(m["untimed_steps"]),
            synced=m["timing"] == "synced",
            agree=(lambda v: agree(ses, v)) if ses.world > 1 else None,
        )
    out = summarize(timed, budget_s, ses.tokens_per_step)
    out.update(status=timed.status, message=timed.message, scheduler=ses.cfg.schedule.scheduler)
    out["val_loss"] = ses.evaluate(val) if timed.status == "ok" else math.nan
    out["val_tokens"] = ses.world * sum(int(y.numel()) for _, y in val)
    out["loss_curve"] = json.dumps(timed.curve[:: max(1, len(timed.curve) // 200)])
    out["overhead_s"] = overhead_s if overhead_s is not None else time.perf_counter() - _T0
    out["steps_total"] = timed.total if timed.status == "ok" else timed.steps
    out.update(columns(ses, out["tokens_per_s"]))
    out.update(tele.summary() if ses.cuda else {})
    return out


VAL_BATCH = 16  # sequences per validation batch
VAL_SEED = 7919  # one validation sample for every config (not the training data seed)


def validation_batches(ses, val_tokens: int) -> list:
    """The val set depends on the sequence length only (a fixed batch of VAL_BATCH sequences,
    a fixed seed), so configs that differ in batch size are scored on the same held-out tokens."""
    seq = ses.model_cfg.sequence_length
    batch = max(1, min(VAL_BATCH, val_tokens // seq))
    n = max(1, math.ceil(val_tokens / (batch * seq * ses.world)))
    return ses.val_batches(batch, n, VAL_SEED, shard=True)


def read_losses(losses: list) -> list[float]:
    """The one device read of a window (after its end event): losses as floats."""
    import torch

    if not losses:
        return []
    if isinstance(losses[0], torch.Tensor):
        return [float(x) for x in torch.stack([x.float() for x in losses]).tolist()]
    return [float(x) for x in losses]


def agree(ses, values: list[float]) -> list[float]:
    """Rank 0's values on every rank (decisions that must match for the collectives)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=ses.device)
    dist.broadcast(t, src=0)
    return t.tolist()


def nvml_index(spec: dict, device) -> int:
    """The NVML (physical) index of this worker's GPU. NVML numbers GPUs physically and ignores
    CUDA_VISIBLE_DEVICES, while torch numbers the visible ones: `--gpus 2,3` runs a worker with
    CUDA_VISIBLE_DEVICES=2 on torch's cuda:0, whose telemetry is NVML's GPU 2."""
    if spec.get("nvml_index") is not None:
        return int(spec["nvml_index"])
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
    visible = [v for v in visible if v]
    index = device.index or 0
    if visible and index < len(visible) and visible[index].isdigit():
        return int(visible[index])
    return index


def telemetry(spec: dict, ses):
    from bench.worker.telemetry import Telemetry

    if not ses.cuda or ses.rank != 0:
        return Telemetry(None)
    return Telemetry(nvml_index(spec, ses.device))


def columns(ses, tokens_per_s: float) -> dict:
    """Effective settings, world, memory, MFU and environment columns of the row."""
    from bench.envinfo import env_info
    from model import costs
    from train import cpumem

    per_device = tokens_per_s / ses.world if math.isfinite(tokens_per_s) else math.nan
    mfu = None
    if ses.cuda and math.isfinite(per_device):
        mfu = costs.mfu(per_device, ses.model_cfg, ses.device_name, dtype=ses.dtype)
    return {
        "device": ses.device.type,
        "kernels": ses.kernels,
        "dtype": ses.dtype,
        "world_size": ses.world,
        "dp": ses.world,
        "global_batch": ses.cfg.global_batch(ses.world),
        "threads": ses.threads,
        "kernels_auto": (
            json.dumps(ses.kernels_auto) if ses.kernels_auto else f"not measured ({_why_not(ses)})"
        ),
        "cpu_affinity": _affinity(),
        "cpu_malloc": cpumem.mode(),
        "mfu": math.nan if mfu is None else mfu,
        "peak_mem_mb": _peak_mem_mb(ses),
        **env_info("cuda" if ses.cuda else "cpu"),
    }


def _why_not(ses) -> str:
    """Why --kernels auto did not measure: what decided the backend instead."""
    if ses.cfg.runtime.kernels != "auto":
        return f"--kernels {ses.cfg.runtime.kernels}"
    return "not on CUDA" if not ses.cuda else f"{ses.model_cfg.arch} has no Triton kernels"


def _affinity() -> str:
    if not hasattr(os, "sched_getaffinity"):
        return ""
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def _peak_mem_mb(ses) -> float:
    import torch

    if ses.cuda:
        return torch.cuda.max_memory_allocated(ses.device) / 2**20
    import resource  # peak resident set: the closest CPU analogue of peak GPU memory

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def pin(spec: dict, cfg) -> None:
    """Pin a one-process CPU worker to one core per thread (a measurement setting, before the
    run is built): --cpu-cores, else cores chosen by `pin_cores`."""
    if cfg.runtime.device not in ("auto", "cpu") or not spec["measure"].get("pin", True):
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or not hasattr(os, "sched_setaffinity"):
        return
    if cfg.runtime.device == "auto":
        import torch

        if torch.cuda.is_available():
            return
    threads = cfg.runtime.threads or 1
    cores = spec.get("cpu_cores")
    if not cores:
        cores = pin_cores(sorted(os.sched_getaffinity(0)), threads, spec.get("cpu_slot", 0))
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, set(cores))


def pin_cores(allowed: list[int], threads: int, slot: int) -> list[int]:
    """One core per thread: the last cores of the allowed set (core 0 takes most interrupts),
    shifted by `slot` (the shard index) so that shards on one machine do not share cores."""
    n = max(1, min(threads, len(allowed)))
    slot %= max(1, len(allowed) // n)
    start = len(allowed) - n * (slot + 1)
    return allowed[start : start + n]


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


def _effective_columns(spec: dict) -> dict:
    """device/kernels/dtype this config would have run with (for a failed run's row)."""
    try:
        import torch

        from train.session import effective_dtype, effective_kernels

        cfg = train_config(spec)
        dev = cfg.runtime.device
        cuda = dev.startswith("cuda") or (dev == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if cuda else "cpu")
    except Exception:  # noqa: BLE001  (a broken torch or row: the row keeps the request)
        return {}
    return {
        "device": device.type,
        "kernels": effective_kernels(cfg.runtime.kernels, device),
        "dtype": effective_dtype(cfg.runtime.dtype, device),
    }


def _write(path: str, result: dict) -> None:
    from core import atomic_write

    atomic_write(path, json.dumps(result, default=str))


def main(argv: list[str] | None = None) -> int:
    from bench.proc import die_with_parent

    die_with_parent()
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("error: usage: python -m bench.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        spec = json.load(fh)
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = run(spec)
    except BaseException as e:  # noqa: BLE001  (every failure becomes a row, not a crash)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        status = "oom" if _is_oom(e) else "error"
        result = {"status": status, "message": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
        traceback.print_exc()  # into the config's log, OUT/.work/<config>.log
        result.update(_effective_columns(spec))
    if rank == 0:
        _write(argv[1], result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
