"""One sweep config in its own process: `python -m bench.worker SPEC.json RESULT.json`.

The run is the trainer's: a `train.config.TrainConfig` built from the sweep row (the optimizer
settings, clipping and seeds are TrainConfig's defaults), the trainer's optimizer
(`train.optim.optimizer_for`), data sampler and `train.step.train_step`. Untimed steps come first,
then timed windows until the budget is spent (`bench.worker.timing` documents the method), then one
validation pass. The JSON result is written atomically by rank 0. Running in a child process means
a crash, OOM, NaN or hang costs one row, never the sweep; the worker dies with the sweep
(`bench.proc.die_with_parent`). Under torchrun (WORLD_SIZE > 1) the ranks form a gloo (CPU) or
NCCL (CUDA) process group, gradients are all-reduced in the optimizer's flat buffers, and the
row reports the world size and the global tokens/s.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

_T0 = time.perf_counter()  # as early as possible: process start counts as overhead


def effective(row: dict, cuda_available: bool) -> tuple[str, str, str]:
    """(device, kernels, dtype) that actually run for a row on this machine.

    device auto -> cuda when available. Triton kernels run on CUDA (or where TRITON_INTERPRET=1);
    elsewhere `kernels.rms_norm`/`swiglu` fall back to the torch references, so kernels auto or
    triton is torch there. The trainer autocasts on CUDA only, so a CPU step is float32.
    """
    device = row["device"]
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    on_cuda = device.startswith("cuda")
    kernels = row["kernels"]
    if kernels in ("auto", "triton"):
        kernels = "triton" if on_cuda or os.environ.get("TRITON_INTERPRET") == "1" else "torch"
    dtype = row["dtype"] if on_cuda else "float32"
    return device, kernels, dtype


def train_config(spec: dict, row: dict):
    """The TrainConfig of this run: the row's settings over TrainConfig's own defaults."""
    from train.config import TrainConfig

    s = spec.get("settings") or {}
    flat = {
        "lr": row["lr"],
        "batch_size": row["batch_size"],
        "acc_steps": row["acc_steps"],
        "dtype": row["dtype"],
        "compile": bool(row["compile"]),
        "data": s.get("data"),
        "scheduler": s.get("scheduler") or "constant",
        "warmup_steps": int(s.get("warmup_steps") or 0),
        "iterations": 1,  # set by the time budget as the run goes
    }
    if flat["scheduler"] == "wsd":
        flat.update(wsd_fract_decay=s["wsd_fract_decay"], decay_type=s["decay_type"])
        flat["wsd_final_lr_scale"] = s.get("wsd_final_lr_scale") or 0.0
    return TrainConfig.from_flat(flat)


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
    from bench.worker.runsetup import setup
    from bench.worker.timing import Clock, Schedule, run_windows, summarize

    _inject(spec["row"])
    r = setup(spec, train_config(spec, spec["row"]))
    s = spec.get("settings") or {}
    sched = Schedule(
        scheduler=r.tcfg.schedule.scheduler,
        warmup_steps=r.tcfg.schedule.warmup_steps,
        wsd_fract_decay=r.tcfg.schedule.wsd_fract_decay,
        decay_type=r.tcfg.schedule.decay_type,
        wsd_final_lr_scale=r.tcfg.schedule.wsd_final_lr_scale,
    )
    budget_s = float(s.get("budget_s") or spec.get("budget_s"))
    overhead_s = time.time() - spec["spawn_epoch"] if spec.get("spawn_epoch") else None
    with r.telemetry() as tele:
        timed = run_windows(
            r.launch,
            r.read,
            Clock(r.cuda),
            sched,
            budget_s=budget_s,
            untimed_steps=int(s.get("untimed_steps", 2)),
            synced=s.get("timing") == "synced",
            agree=r.agree if r.world > 1 else None,
        )
    out = summarize(timed, budget_s, r.tokens_per_step)
    out.update(status=timed.status, message=timed.message, scheduler=sched.scheduler)
    out["val_loss"] = r.evaluate() if timed.status == "ok" else math.nan
    out["val_tokens"] = r.world * sum(int(y.numel()) for _, y in r.val_batches)
    out["loss_curve"] = json.dumps(timed.curve[:: max(1, len(timed.curve) // 200)])
    out["overhead_s"] = overhead_s if overhead_s is not None else time.perf_counter() - _T0
    out["steps_total"] = timed.total if timed.status == "ok" else timed.steps
    out.update(r.columns(out["tokens_per_s"]))
    out.update(tele.summary() if r.cuda else {})
    return out


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


def _effective_columns(row: dict) -> dict:
    """device/kernels/dtype this config would have run with (for a failed run's row)."""
    try:
        import torch

        device, kernels, dtype = effective(row, torch.cuda.is_available())
    except Exception:  # noqa: BLE001  (a broken torch or row: the row keeps the request)
        return {}
    return {"device": device.split(":")[0], "kernels": kernels, "dtype": dtype}


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
        result.update(_effective_columns(spec["row"]))
    if rank == 0:
        _write(argv[1], result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
