"""One sweep config in its own process: `python -m bench.worker SPEC.json RESULT.json`.

Builds the model, optimizer and data exactly as training does, runs untimed warmup steps, then
timed real `train_step`s (device synchronised around each) until the budget is spent, and writes
one JSON result atomically. Running in a child process means a crash, OOM, NaN or hang costs one
row, never the sweep. Process start + build + warmup are reported as `overhead_s`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

_T0 = time.perf_counter()  # as early as possible: process start counts as overhead


def _atomic_json(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, default=str)
    os.replace(tmp, path)


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return math.nan
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run(spec: dict) -> dict:
    """Measure one config; returns the measurement columns (status ok|oom|nan|error)."""
    import torch

    from model import costs
    from model.config import ModelConfig, field_names
    from model.transformer import Transformer
    from train.data import Sampler, get_data
    from train.optim import build_optimizer
    from train.step import evaluate, train_step

    from .telemetry import Telemetry, empty

    row = spec["row"]
    budget_s = float(spec["budget_s"])
    warmup_steps = int(spec.get("warmup_steps", 2))
    inject = row.get("inject")
    if inject == "error":
        raise RuntimeError("injected error (test hook)")
    if inject == "hang":
        time.sleep(10**6)
    if inject == "oom":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    torch.manual_seed(int(spec.get("seed", 0)))
    # On CPU default to one thread: with several, BLAS threads spin-wait whenever the machine is
    # shared, and a small matmul measured 50x slower on a loaded 2-core box (timings become noise).
    threads = spec.get("threads") or (1 if row["device"] == "cpu" else None)
    if threads:
        torch.set_num_threads(int(threads))
    cfg = ModelConfig.from_dict({k: row[k] for k in field_names()})
    device = torch.device(row["device"])
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    autocast = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[row["dtype"]]
    model = Transformer(cfg).to(device)
    opt = build_optimizer(model, lr=row["lr"], weight_decay=0.1, beta1=0.9, beta2=0.95)
    step_model = torch.compile(model) if row["compile"] else model
    train_tok, val_tok, vocab = get_data(spec.get("data"))
    if vocab > cfg.vocab_size:
        raise ValueError(f"data vocab {vocab} > vocab_size {cfg.vocab_size}")
    sampler = Sampler(train_tok, row["batch_size"], cfg.sequence_length, seed=1337)
    val_sampler = Sampler(val_tok, row["batch_size"], cfg.sequence_length, seed=4242)
    val_batches = [val_sampler.next_batch(device) for _ in range(int(spec.get("val_batches", 2)))]

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def one_step() -> float:
        mbs = [sampler.next_batch(device) for _ in range(row["acc_steps"])]
        st = train_step(step_model, opt, mbs, lr=row["lr"], grad_clip=1.0, autocast_dtype=autocast)
        return st.loss

    losses: list[float] = []
    for _ in range(warmup_steps):
        losses.append(one_step())
    sync()
    loss_start = losses[0] if losses else math.nan
    # Process spawn (parent's clock) + imports + build + warmup; falls back to this process only.
    spawn = spec.get("spawn_epoch")
    overhead_s = time.time() - spawn if spawn else time.perf_counter() - _T0

    times: list[float] = []
    curve: list[tuple[float, float]] = []  # (timed seconds so far, loss) for loss-vs-wall plots
    status, message = "ok", ""
    timed = 0.0
    nvml_index = spec.get("nvml_index")
    if nvml_index is None and cuda:
        nvml_index = torch.cuda.current_device()
    with Telemetry(nvml_index if cuda else None) as tele:
        # Stop when the *next* step would likely overrun, so timed time stays within the budget.
        while timed < budget_s:
            sync()
            t = time.perf_counter()
            loss = one_step()  # float(loss) inside syncs the device too
            sync()
            dt = time.perf_counter() - t
            times.append(dt)
            timed += dt
            losses.append(loss)
            curve.append((round(timed, 4), loss))
            if not math.isfinite(loss):
                status, message = "nan", f"non-finite loss {loss} at timed step {len(times)}"
                break
            # Running mean, not a median: re-sorting every step made untimed work grow as n^2.
            if timed + timed / len(times) > budget_s and len(times) >= 3:
                break
    tel = tele.summary() if cuda else empty()

    val_loss = evaluate(step_model, val_batches, autocast) if status == "ok" else math.nan
    tokens_per_step = row["batch_size"] * row["acc_steps"] * cfg.sequence_length
    med_s = _percentile(times, 0.5)
    tps = tokens_per_step / med_s if med_s > 0 else math.nan
    n = len(times)
    mean = sum(times) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in times) / (n - 1)) if n > 1 else 0.0
    out = {
        "status": status,
        "message": message,
        "step_ms_median": 1e3 * med_s,
        "step_ms_p10": 1e3 * _percentile(times, 0.1),
        "step_ms_p90": 1e3 * _percentile(times, 0.9),
        "step_ms_mean": 1e3 * mean,
        "step_ms_std": 1e3 * std,
        "tokens_per_s": tps,
        "peak_mem_mb": (torch.cuda.max_memory_allocated() / 2**20) if cuda else _rss_peak_mb(),
        "loss_start": loss_start,
        "loss_end": losses[-1],
        "val_loss": val_loss,
        "steps_timed": n,
        "timed_s": timed,
        "timed_fraction": timed / budget_s if budget_s > 0 else math.nan,
        "overhead_s": overhead_s,
        "threads": torch.get_num_threads(),
        "loss_curve": json.dumps(curve[:: max(1, len(curve) // 200)]),  # <= ~200 points
    }
    out.update(tel)
    # costs.mfu knows peak FLOPs of GPUs only; on CPU it gives None, written as NaN.
    mfu = costs.mfu(tps, cfg, torch.cuda.get_device_name() if cuda else spec.get("device_name", ""))
    out["mfu"] = math.nan if mfu is None else mfu
    return out


def _rss_peak_mb() -> float:
    # On CPU the peak resident set of this process is the closest analogue of peak GPU memory.
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("error: usage: python -m bench.worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        spec = json.load(fh)
    try:
        result = run(spec)
    except BaseException as e:  # noqa: BLE001  (every failure becomes a row, not a crash)
        if isinstance(e, KeyboardInterrupt):
            raise
        status = "oom" if _is_oom(e) else "error"
        result = {"status": status, "message": f"{type(e).__name__}: {e}".splitlines()[0][:500]}
    _atomic_json(argv[1], result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
