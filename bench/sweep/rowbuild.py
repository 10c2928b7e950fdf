"""One results row: the config, the settings it was measured with, static features, measurements.

`device`, `kernels` and `dtype` are what the worker actually ran (a CPU row says float32/torch even
when the grid asked for bfloat16/auto); `*_requested` keep what the grid asked. The static
columns (params, FLOPs, memory traffic, launches, ...) come from `model.costs.step_features`, the
one definition of the step-time features shared with `timemodel`.
"""

from __future__ import annotations

import math
import time

from bench.sweep.grid import INJECT_KEY, SETTINGS, model_config
from model.config import field_names

MEASURED = (
    "step_ms_median",
    "step_ms_p10",
    "step_ms_p90",
    "step_ms_mean",
    "step_ms_std",
    "step_spread",
    "windows",
    "window_steps",
    "host_ms",
    "tokens_per_s",
    "mfu",
    "peak_mem_mb",
    "loss_start",
    "loss_end",
    "val_loss",
    "val_tokens",
    "steps_timed",
    "steps_total",
    "tokens_seen",
    "cooldown_start_step",
    "cooldown_start_s",
    "timed_s",
    "timed_fraction",
    "overhead_s",
    "wall_s",
    "threads",
    "cpu_affinity",
    "cpu_malloc",
    "world_size",
    "dp",
    "global_batch",
    "loss_curve",
)
ENV = ("gpu_name", "driver", "cuda", "torch", "triton", "git_sha", "host", "device_name")
# Text columns of what ran: --kernels auto's measurement on CUDA (JSON; empty elsewhere).
TEXT = ("kernels_auto",)
EFFECTIVE = ("device", "kernels", "dtype")


def static_columns(row: dict, kernels: str, dtype: str, dp: int = 1) -> dict:
    """Per-device, per-step features of the config as it ran (params, FLOPs, bytes, ...).

    `kernels` and `dtype` are the effective ones (a CPU step runs float32, see finish_row).
    """
    from model import costs

    cfg = model_config(row, kernels=None if kernels == "auto" else kernels)
    bs, acc = int(row["batch_size"]), int(row["acc_steps"])
    feats = costs.step_features(cfg, bs, acc_steps=acc, dp=dp, dtype=dtype, kernels=cfg.kernels)
    out = {k: float(v) for k, v in feats.items()}
    out["flops_per_step"] = out.get("flops", math.nan)
    out["memory_traffic"] = out.get("bytes", math.nan)
    return out


def base_columns(row: dict, cid: str) -> dict:
    out = {k: row.get(k) for k in field_names()}
    out.update({k: row.get(k) for k in SETTINGS})
    for k in EFFECTIVE:
        out[k + "_requested"] = row.get(k)
    if row.get(INJECT_KEY) is not None:
        out[INJECT_KEY] = row[INJECT_KEY]
    out["config_id"] = cid
    return out


def failure_row(row: dict, cid: str, status: str, message: str, repeat: int = 0) -> dict:
    """A row for a config that never ran (skipped) or produced no measurement."""
    out = base_columns(row, cid)
    out["repeat"] = repeat
    out["kind"] = "config"
    for c in MEASURED:
        out[c] = math.nan
    out.update(status=status, message=message, timestamp=_now())
    return out


def finish_row(spec: dict, measured: dict) -> dict:
    """The row of one run: base + settings + static features + measurements + env."""
    from bench.worker.telemetry import COLUMNS

    row = spec["row"]
    out = base_columns(row, spec["config_id"])
    out["repeat"] = int(spec.get("repeat") or 0)
    out["kind"] = spec.get("kind", "config")
    out["ref_group"] = spec.get("ref_group")
    for k in EFFECTIVE:  # what ran; the request when the worker never said
        out[k] = measured.get(k) or row.get(k)
    if out["device"] == "cpu":
        out["dtype"] = "float32"  # the trainer autocasts on CUDA only
    out.update(spec_settings(spec))
    dp = int(measured.get("world_size") or spec.get("nproc_per_config") or 1)
    try:
        out.update(static_columns(row, out["kernels"], out["dtype"], dp))
    except Exception as e:  # noqa: BLE001  (a costs gap must not cost the measured row)
        out["static_error"] = f"{type(e).__name__}: {e}"[:200]
    for c in MEASURED + COLUMNS:
        out[c] = measured.get(c, math.nan)
    for c in ENV + TEXT:
        out[c] = measured.get(c, "")
    out["status"] = measured.get("status", "error")
    out["message"] = measured.get("message", "")
    out["timestamp"] = _now()
    out["measured_at"] = time.time()
    return out


def spec_settings(spec: dict) -> dict:
    """The settings columns of a row: the measurement's and the base run's training flags."""
    from bench.sweep.options import TRAIN_FLAGS
    from train.config import TrainConfig

    out = dict(spec.get("measure") or {})
    if spec.get("train"):
        flat = TrainConfig.from_dict(spec["train"]).to_flat()
        out.update({k: flat[k] for k in TRAIN_FLAGS})
    out["threads_requested"] = out.pop("threads", None)
    out["nproc_per_config"] = int(spec.get("nproc_per_config") or 1)
    return out


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def summary_line(row: dict) -> str:
    def f(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    rep = f" r{row['repeat']}" if row.get("repeat") else ""
    kind = "reference " if row.get("kind") == "reference" else ""
    return (
        f"[{row.get('status', '?'):>7}] {kind}{row['config_id']}{rep} L{row.get('n_layer')} "
        f"d{row.get('n_embd')} h{row.get('n_head')} b{row.get('batch_size')}x"
        f"{row.get('acc_steps')} T{row.get('sequence_length')} "
        f"step {f(row.get('step_ms_median'), '.2f')} ms, "
        f"{f(row.get('tokens_per_s'), '.0f')} tok/s, loss {f(row.get('loss_end'), '.3f')}"
        + (f"  ({row['message']})" if row.get("message") else "")
    )
