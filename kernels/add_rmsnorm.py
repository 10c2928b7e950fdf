"""Residual add + RMSNorm  s = x + residual,  y = s * rsqrt(mean(s^2, -1) + eps) * w, in one pass.

The pre-norm block's ``h = h + branch(...); norm(h)`` as one kernel each way (the residual add
fused into the norm, as flash-attn's ``layer_norm_fn(..., residual=...)`` does:
Dao-AILab/flash-attention, flash_attn/ops/triton/layer_norm.py). Inductor cannot make this fusion
around our opaque norm, and eager torch runs the add as its own pass:

* forward: reads x and the residual once, writes s and y once (and rstd, one fp32 per row);
* backward: reads dy, the incoming ds (the grad of s from its next use; none for the last norm),
  s and rstd, writes the grad of s once (and once more in x's dtype when that differs: the fp32
  stream plus a bf16 branch of autocast training).

s has the residual's dtype (the stream's), y too; x (the branch) may be narrower. The kernels are
the RMSNorm ones (`kernels._rmsnorm_kernels`, flag ``HAS_RES``/``HAS_DS``), imported on the first
Triton call; the torch reference is `kernels.reference.add_rms_norm_ref`.
"""

from __future__ import annotations

import math

import torch

from ._utils import LazyOps, traced_launch, use_triton
from .reference import add_rms_norm_ref
from .rmsnorm import _check, _contig, _k, plan_for


def _check_add(x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float) -> None:
    """RMSNorm's checks on the residual (the normalised stream), plus x against it."""
    _check(residual, w, eps)
    if not isinstance(x, torch.Tensor) or x.dtype not in (
        torch.float32,
        torch.bfloat16,
        torch.float16,
    ):
        raise TypeError("add_rms_norm: x must be a float32/bfloat16/float16 tensor")
    if x.shape != residual.shape:
        raise ValueError(
            f"add_rms_norm: x shape {tuple(x.shape)} != residual {tuple(residual.shape)}"
        )
    # (not torch.promote_types: a dispatcher call, which the op counter would see)
    if residual.dtype not in (x.dtype, torch.float32):
        raise TypeError(
            f"add_rms_norm: residual dtype {residual.dtype} must hold x's {x.dtype} (x + residual "
            "is stored in the residual's dtype)"
        )
    if x.device != residual.device:
        raise ValueError(f"add_rms_norm: x on {x.device} but residual on {residual.device}")


_CHECKED: set = set()  # keys (shapes, dtypes, devices, eps) already validated


def _plan(x, residual, w, eps):
    key = (x.shape, x.dtype, x.device, residual.shape, residual.dtype, residual.device)
    if key not in _CHECKED:
        _check_add(x, residual, w, eps)
        if len(_CHECKED) >= 512:
            _CHECKED.clear()
        _CHECKED.add(key)
    # residual's shape/dtype/device and w, eps are validated (and planned) by plan_for's cache
    return plan_for(residual, w, eps)


class AddRMSNormFunction(torch.autograd.Function):
    """Autograd glue for eager mode: saves s, w and rstd; grads for x and the residual."""

    @staticmethod
    def forward(ctx, x, residual, w, eps: float, plan):
        y, rstd, s = _k().rmsnorm_fwd(x, w, eps, plan, residual=residual)
        ctx.save_for_backward(s, w, rstd)
        ctx.eps, ctx.plan, ctx.x_dtype = eps, plan, x.dtype
        # The last norm's s is not used again: its grad stays None (no zeros tensor to read).
        ctx.set_materialize_grads(False)
        return y, s

    @staticmethod
    def backward(ctx, dy, ds):
        s, w, rstd = ctx.saved_tensors
        dy = torch.zeros_like(s) if dy is None else _contig(dy)
        ds = None if ds is None else _contig(ds)
        d, dw, db = _k().rmsnorm_bwd(dy, s, w, rstd, ctx.eps, ctx.plan, ds=ds, db_dtype=ctx.x_dtype)
        # Same dtype: both inputs get the one grad tensor, as aten's add backward passes it on.
        return (d if db is None else db), d, dw, None, None


# ------------------------------------------------------- torch.compile: triton_op registrations
def _fwd_impl(
    x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, residual, w = x.contiguous(), residual.contiguous(), w.contiguous()
    n = x.shape[-1]
    plan = _k().make_plan(x.numel() // n, n, residual, w)
    y, rstd, s = _k().rmsnorm_fwd(x, w, eps, plan, residual=residual, launch=traced_launch)
    return y, s, rstd


def _fwd_fake(x, residual, w, eps):
    fmt = torch.contiguous_format
    rows = math.prod(x.shape[:-1])
    out = torch.empty_like(residual, memory_format=fmt)
    return out, torch.empty_like(out), x.new_empty((rows,), dtype=torch.float32)


def _bwd_impl(
    dy: torch.Tensor,
    ds: torch.Tensor | None,
    s: torch.Tensor,
    w: torch.Tensor,
    rstd: torch.Tensor,
    eps: float,
    x_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    s, w, dy = s.contiguous(), w.contiguous(), dy.contiguous()
    ds = None if ds is None else ds.contiguous()
    n = s.shape[-1]
    plan = _k().make_plan(s.numel() // n, n, s, w)
    d, dw, db = _k().rmsnorm_bwd(
        dy, s, w, rstd, eps, plan, ds=ds, db_dtype=x_dtype, launch=traced_launch
    )
    # Op outputs may not alias each other, so a same-dtype branch grad is a copy here.
    return d, dw, d.clone() if db is None else db


def _bwd_fake(dy, ds, s, w, rstd, eps, x_dtype):
    fmt = torch.contiguous_format
    return (
        torch.empty_like(s, memory_format=fmt),
        torch.empty_like(w),
        torch.empty(s.shape, dtype=x_dtype, device=s.device),
    )


def _setup(ctx, inputs, output) -> None:
    x, _, w, eps = inputs
    ctx.save_for_backward(output[1], w, output[2])
    ctx.eps, ctx.x_dtype = eps, x.dtype


def _backward(ctx, dy, ds, _drstd):
    s, w, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(s)
    d, dw, db = _ops()[1](dy, ds, s, w, rstd, ctx.eps, ctx.x_dtype)
    return db, d, dw, None


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, s): s = x + residual and y = RMSNorm(s) * weight, fused (Triton on CUDA or under
    TRITON_INTERPRET=1, else the reference).

    Args:
        x: (..., N) the branch output, fp32/bf16/fp16.
        residual: (..., N) the residual stream, a dtype that holds x's (s is stored in it).
        weight: (N,) fp32 or the residual's dtype.
        eps: added to mean(s^2) before the rsqrt.

    Returns:
        y (..., N) and s (..., N), both in the residual's dtype.
    """
    if torch.compiler.is_compiling():
        _check_add(x, residual, weight, eps)
        if not use_triton(x, residual, weight):
            return add_rms_norm_ref(x, residual, weight, eps)
        y, s, _ = _ops()[0](x, residual, weight, float(eps))
        return y, s
    plan = _plan(x, residual, weight, eps)
    if plan is None:
        return add_rms_norm_ref(x, residual, weight, eps)
    x, residual, weight = _contig(x), _contig(residual), _contig(weight)
    return AddRMSNormFunction.apply(x, residual, weight, float(eps), plan)


# The op registrations, made on first use (`kernels._utils.LazyOps`).
_ops = LazyOps(
    ("steptime::add_rms_norm_fwd", _fwd_impl, _fwd_fake),
    ("steptime::add_rms_norm_bwd", _bwd_impl, _bwd_fake),
    _backward,
    _setup,
)
