"""`--kernels auto` on CUDA: decided by a measurement at the run's own shapes, not by a rule.

At start-up `choose` times our Triton ops against the torch path they replace, forward and
backward, at the shapes this run will give them (B x T rows of the model width for RMSNorm, of the
MLP width for SwiGLU), with CUDA events around back-to-back calls (about a second in all). Each
op's ratio is weighted by how often a step calls it (two norms and one MLP per layer), and the
backend with the smaller weighted time runs. The model takes one backend for all its ops, so the
per-op ratios are recorded (config.json, a sweep row's `kernels_auto` column) but the choice is
per run. Measurements are cached per device, shape, dtype and library versions in
$XDG_CACHE_HOME/steptime/kernels-auto.json (else ~/.cache/...), so a second run of the same
shapes does not measure again. Off CUDA nothing is measured: Triton runs on the CPU only under
TRITON_INTERPRET=1 (`train.session.effective_kernels`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from core import atomic_write
from model.config import ModelConfig

REPS = 20  # timed calls per implementation, after WARMUP untimed ones
WARMUP = 3


def cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "steptime", "kernels-auto.json")


def op_shapes(model_cfg: ModelConfig, rows: int) -> dict[str, tuple[int, int]]:
    """The (rows, width) each op sees in this run's forward; rows = micro-batch x sequence."""
    return {"rmsnorm": (rows, model_cfg.n_embd), "swiglu": (rows, model_cfg.hidden)}


def calls_per_step(model_cfg: ModelConfig) -> dict[str, int]:
    """How many times one forward calls each op (the final norm included)."""
    return {"rmsnorm": 2 * model_cfg.n_layer + 1, "swiglu": model_cfg.n_layer}


def _time_ms(fn, device: torch.device) -> float:
    for _ in range(WARMUP):
        fn()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPS):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / REPS


def measure_op(op: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device):
    """(ours ms, torch ms): forward + backward of one call at `shape`."""
    from kernels import reference, rms_norm, swiglu

    rows, width = shape
    g = torch.Generator(device="cpu").manual_seed(0)
    if op == "rmsnorm":
        x = torch.randn(rows, width, generator=g).to(device, dtype).requires_grad_()
        w = torch.ones(width, device=device, dtype=torch.float32, requires_grad=True)
        impls = (lambda: rms_norm(x, w), lambda: reference.rms_norm_ref(x, w))
    else:
        a = torch.randn(rows, width, generator=g).to(device, dtype).requires_grad_()
        b = torch.randn(rows, width, generator=g).to(device, dtype).requires_grad_()
        impls = (lambda: swiglu(a, b), lambda: reference.swiglu_ref(a, b))
    out = []
    for impl in impls:

        def step(impl=impl):
            y = impl()
            y.backward(torch.ones_like(y))

        out.append(_time_ms(step, device))
    return out[0], out[1]


def _key(device: torch.device, op: str, shape, dtype: torch.dtype) -> str:
    import triton

    name = torch.cuda.get_device_name(device)
    return f"{name}|torch {torch.__version__}|triton {triton.__version__}|{op}|{shape}|{dtype}"


def _load_cache(path: str) -> dict:
    from core.files import read_json

    try:
        got = read_json(path)
    except Exception:  # noqa: BLE001  (a missing or damaged cache is measured again)
        return {}
    return got if isinstance(got, dict) else {}


def choose(
    model_cfg: ModelConfig, rows: int, dtype: torch.dtype | None, device: torch.device
) -> tuple[str, dict[str, Any]]:
    """("triton" | "torch", record) for a run on CUDA whose ops see `rows` rows per call."""
    dtype = dtype or torch.float32
    path = cache_path()
    cache = _load_cache(path)
    record: dict[str, Any] = {"method": "measured", "ops": {}}
    ours_total = torch_total = 0.0
    new = False
    for op, shape in op_shapes(model_cfg, rows).items():
        key = _key(device, op, shape, dtype)
        got = cache.get(key)
        if not (isinstance(got, list) and len(got) == 2 and all(v > 0 for v in got)):
            got = list(measure_op(op, shape, dtype, device))
            cache[key], new = got, True
        ours, ref = got
        n = calls_per_step(model_cfg)[op]
        ours_total, torch_total = ours_total + n * ours, torch_total + n * ref
        record["ops"][op] = {"shape": list(shape), "ours_ms": ours, "torch_ms": ref,
                             "speedup": ref / ours}  # fmt: skip
    if new:
        try:
            atomic_write(path, json.dumps(cache, indent=1, sort_keys=True))
        except Exception:  # noqa: BLE001  (an unwritable cache only costs a second next time)
            pass
    record["speedup"] = torch_total / ours_total if ours_total > 0 else None
    record["cached"] = not new
    kernels = "triton" if ours_total <= torch_total else "torch"
    record["kernels"] = kernels
    return kernels, record
