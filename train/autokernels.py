"""`--kernels auto` on CUDA: decided per op by a measurement at the run's own shapes, not a rule.

At start-up `choose` times each of our Triton ops against the torch path it replaces, forward and
backward, at the shapes and dtypes this run gives it, with CUDA events around back-to-back calls
(about a second in all; a --compile run compiles both sides first, Inductor against Inductor,
which takes longer the first time):

- rmsnorm: the residual add fused into the norm (what a llama block runs with our RMSNorm), B x T
  rows of the model width, the fp32 stream plus a branch in the compute dtype, against the add
  and the torch RMSNorm;
- swiglu: B x T rows of the MLP width, in the compute dtype;
- linear_ce: the LM head's matmul and the cross-entropy over the vocabulary, against the head's
  matmul, fp32 logits and F.cross_entropy; if the torch path runs out of memory there, ours wins.

Each op runs ours where ours is at least as fast, so the model may run ours for some ops and
torch's for the others (ModelConfig.kernels "rmsnorm+linear_ce"). The per-op times, the choice and
the step-weighted speedup of the chosen mix over all-torch (each op weighted by its calls per step:
two norms per layer and the final one, one MLP per layer, one head) are recorded in config.json
and in a sweep row's `kernels_auto` column. Measurements are cached per device, shape, dtype and
library versions in $XDG_CACHE_HOME/steptime/kernels-auto.json (else ~/.cache/...), so a second
run of the same shapes does not measure again. Off CUDA nothing is measured: Triton runs on the
CPU only under TRITON_INTERPRET=1 (`train.session.effective_kernels`).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

from core import atomic_write
from model.config import ModelConfig, parse_kernels

REPS = 20  # timed calls per implementation, after WARMUP untimed ones
WARMUP = 3


def cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "steptime", "kernels-auto.json")


def op_shapes(model_cfg: ModelConfig, rows: int) -> dict[str, tuple[int, ...]]:
    """The shape each op sees in this run's step; rows = micro-batch x sequence. linear_ce:
    (rows, width, vocabulary)."""
    return {
        "rmsnorm": (rows, model_cfg.n_embd),
        "swiglu": (rows, model_cfg.hidden),
        "linear_ce": (rows, model_cfg.n_embd, model_cfg.vocab_size),
    }


def calls_per_step(model_cfg: ModelConfig) -> dict[str, int]:
    """How many times one forward calls each op (the final norm included)."""
    return {"rmsnorm": 2 * model_cfg.n_layer + 1, "swiglu": model_cfg.n_layer, "linear_ce": 1}


def _time_ms(fn, device: torch.device) -> float:
    """ms per call of `fn`, or inf when it runs out of device memory (the path cannot run)."""
    try:
        for _ in range(WARMUP):
            fn()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(REPS):
            fn()
        end.record()
        end.synchronize()
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return math.inf
    return start.elapsed_time(end) / REPS


def _impls(op: str, shape, dtype: torch.dtype, device: torch.device):
    """(ours, torch's): callables that run one forward and backward of `op` at `shape`."""
    from kernels import add_rms_norm, linear_cross_entropy, reference, swiglu

    g = torch.Generator(device="cpu").manual_seed(0)

    def leaf(*size, dt=dtype):
        return torch.randn(*size, generator=g).to(device, dt).requires_grad_()

    if op == "rmsnorm":
        rows, width = shape
        branch, stream = leaf(rows, width), leaf(rows, width, dt=torch.float32)
        w = torch.ones(width, device=device, dtype=torch.float32, requires_grad=True)
        return (
            lambda: add_rms_norm(branch, stream, w),
            lambda: reference.add_rms_norm_ref(branch, stream, w),
        )
    if op == "swiglu":
        a, b = leaf(*shape), leaf(*shape)
        return (lambda: (swiglu(a, b),), lambda: (reference.swiglu_ref(a, b),))
    rows, width, vocab = shape
    h, w = leaf(rows, width, dt=torch.float32), leaf(vocab, width, dt=torch.float32)
    t = torch.randint(0, vocab, (rows,), generator=g).to(device)
    cdt = None if dtype == torch.float32 else dtype
    return (
        lambda: (linear_cross_entropy(h, w, t, compute_dtype=cdt),),
        lambda: (reference.linear_cross_entropy_ref(h, w, t, compute_dtype=cdt),),
    )


def measure_op(
    op: str, shape, dtype: torch.dtype, device: torch.device, compile_mode: str | None = None
) -> tuple[float, float]:
    """(ours ms, torch ms): forward + backward of one call at `shape` (inf: out of memory).
    `compile_mode`: the run's torch.compile mode, None for an eager run; both sides are then
    compiled (ours is a triton_op Inductor launches; torch's becomes Inductor's fused kernels),
    with CUDA graphs left out (reduce-overhead is measured as default: graphs cut launch costs
    on both sides alike), the compilation inside the untimed calls."""
    out = []
    for impl in _impls(op, shape, dtype, device):
        if compile_mode is not None:
            mode = None if compile_mode in ("default", "reduce-overhead") else compile_mode
            impl = torch.compile(impl, mode=mode, dynamic=False)

        def step(impl=impl):
            ys = impl()
            torch.autograd.backward(ys, [torch.ones_like(y) for y in ys])

        out.append(_time_ms(step, device))
    return out[0], out[1]


def _how(compile_mode: str | None) -> str:
    return "eager" if compile_mode is None else f"torch.compile {compile_mode}"


def _key(device: torch.device, op: str, shape, dtype: torch.dtype, compile_mode=None) -> str:
    import triton

    name = torch.cuda.get_device_name(device)
    versions = f"torch {torch.__version__}|triton {triton.__version__}"
    return f"{name}|{versions}|{op}|{shape}|{dtype}|{_how(compile_mode)}"


def _load_cache(path: str) -> dict:
    from core.files import read_json

    try:
        got = read_json(path)
    except Exception:  # noqa: BLE001  (a missing or damaged cache is measured again)
        return {}
    return got if isinstance(got, dict) else {}


def _cached(got) -> tuple[float, float] | None:
    """A cache entry as (ours, torch) ms, None stored for inf; None if it is not one."""
    if not (isinstance(got, list) and len(got) == 2):
        return None
    vals = [math.inf if v is None else v for v in got]
    ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in vals)
    return (float(vals[0]), float(vals[1])) if ok and min(vals) < math.inf else None


def choose(
    model_cfg: ModelConfig,
    rows: int,
    dtype: torch.dtype | None,
    device: torch.device,
    compile_mode: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """(kernels, record) for a run on CUDA whose ops see `rows` rows per call: kernels is the
    canonical ModelConfig.kernels of the ops where ours measured at least as fast (compiled
    against compiled when the run compiles: `compile_mode`, see `measure_op`)."""
    dtype = dtype or torch.float32
    path = cache_path()
    cache = _load_cache(path)
    record: dict[str, Any] = {"method": f"measured, {_how(compile_mode)}", "ops": {}}
    calls = calls_per_step(model_cfg)
    chosen_total = torch_total = 0.0
    ours_ops, new = [], False
    for op, shape in op_shapes(model_cfg, rows).items():
        key = _key(device, op, shape, dtype, compile_mode)
        got = _cached(cache.get(key))
        if got is None:
            got = measure_op(op, shape, dtype, device, compile_mode)
            cache[key], new = [None if math.isinf(v) else v for v in got], True
        ours, ref = got
        use_ours = ours <= ref
        if use_ours:
            ours_ops.append(op)
        n = calls[op]
        chosen_total += n * min(ours, ref)
        torch_total += n * ref
        record["ops"][op] = {
            "shape": list(shape),
            "calls_per_step": n,
            "ours_ms": None if math.isinf(ours) else ours,
            "torch_ms": None if math.isinf(ref) else ref,  # None: out of memory
            "speedup": None if math.isinf(ref) or math.isinf(ours) else ref / ours,
            "chosen": "ours" if use_ours else "torch",
        }
    if new:
        try:
            atomic_write(path, json.dumps(cache, indent=1, sort_keys=True))
        except Exception:  # noqa: BLE001  (an unwritable cache only costs a second next time)
            pass
    # The chosen mix against all-torch over these ops, each weighted by its calls per step.
    finite = math.isfinite(torch_total) and chosen_total > 0
    record["speedup"] = torch_total / chosen_total if finite else None
    record["cached"] = not new
    kernels = parse_kernels("+".join(ours_ops)) if ours_ops else "torch"
    record["kernels"] = kernels
    return kernels, record
