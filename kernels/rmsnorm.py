"""RMSNorm  y = x * rsqrt(mean(x^2, -1) + eps) * w  (row-wise, fp32 statistics), fused in Triton.

Zhang & Sennrich 2019 (arXiv:1910.07467). The kernels live in `kernels._rmsnorm_kernels`, imported
on the first Triton call, so importing this module needs torch only. Two ways in:

* eager: `RMSNormFunction` (torch.autograd.Function), the cheapest dispatch per call. Inputs are
  validated and the launch constants (`Plan`: grids, blocks, warps) computed once per shape, then
  looked up: a call costs a dict lookup, the output allocations and the launches;
* under torch.compile: the ops ``steptime::rms_norm_fwd`` / ``steptime::rms_norm_bwd``, registered
  with ``torch.library.triton_op`` (PyTorch >= 2.6) and an autograd formula. Their bodies launch the
  kernels through ``wrap_triton``, so the traced graph holds the Triton kernels themselves: Inductor
  launches them from its generated code, fuses around them and CUDA graphs can capture them.
  Under TRITON_INTERPRET=1 (or an older torch) they are opaque ``custom_op``s instead.

The backward saves only x, w and the per-row rstd. float64 inputs are rejected (TypeError) rather
than silently downcast: use `kernels.reference.rms_norm_ref` for float64 work (the tests do).
"""

from __future__ import annotations

import math

import torch

from ._utils import LazyOps, lazy_import, traced_launch, use_triton
from .reference import rms_norm_ref

MAX_N = 65536
_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_k = lazy_import("kernels._rmsnorm_kernels")  # the Triton kernels, imported on first use


def _check(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> None:
    """Validate inputs with clear messages instead of failing inside Triton."""
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor):
        raise TypeError("rms_norm: x and weight must be torch.Tensor")
    if x.dtype not in _X_DTYPES:
        raise TypeError(
            f"rms_norm: x dtype {x.dtype} unsupported (float32, bfloat16, float16; "
            "use kernels.reference.rms_norm_ref for float64)"
        )
    if w.dtype not in (torch.float32, x.dtype):
        raise TypeError(f"rms_norm: weight dtype {w.dtype} must be float32 or x's dtype {x.dtype}")
    if x.dim() < 1:
        raise ValueError("rms_norm: x must have at least one dimension")
    if w.dim() != 1 or w.shape[0] != x.shape[-1]:
        raise ValueError(
            f"rms_norm: weight shape {tuple(w.shape)} must be ({x.shape[-1]},) = x's last dim"
        )
    if x.shape[-1] < 1 or x.shape[-1] > MAX_N:
        raise ValueError(f"rms_norm: last dim {x.shape[-1]} must be in [1, {MAX_N}]")
    if x.device != w.device:
        raise ValueError(f"rms_norm: x on {x.device} but weight on {w.device}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"rms_norm: eps must be a finite number >= 0 (e.g. 1e-6), got {eps!r}")


_PLANS: dict = {}  # (shapes, dtypes, devices, eps) -> Plan, or None for the reference path


def plan_for(x: torch.Tensor, w: torch.Tensor, eps: float):
    """The cached launch plan of (x, w, eps): validated and computed on the first call of a shape,
    a dict lookup after. None when the torch reference runs instead (`use_triton`)."""
    key = (x.shape, w.shape, x.dtype, w.dtype, x.device, w.device, eps)
    try:
        return _PLANS[key]
    except KeyError:
        pass
    _check(x, w, eps)
    plan = None
    if use_triton(x, w):
        _ops()
        n = x.shape[-1]
        plan = _k().make_plan(x.numel() // n, n, x, w)
    if len(_PLANS) >= 512:  # many shapes (a sweep): start over rather than grow without bound
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def rmsnorm_fwd(
    x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        x: (..., N) fp32/bf16/fp16.
        w: (N,) fp32 or x.dtype.
        eps: added to mean(x^2).

    Returns:
        y: (..., N) in x.dtype; rstd: (M,) fp32, M = numel / N.
    """
    _check(x, w, eps)
    x, w = _contig(x), _contig(w)
    n = x.shape[-1]
    y, rstd, _ = _k().rmsnorm_fwd(x, w, eps, _k().make_plan(x.numel() // n, n, x, w))
    return y, rstd


def rmsnorm_bwd(
    dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, rstd: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernels: dx (x.dtype) and dw (w.dtype), dw reduced deterministically.

    Args:
        dy: (..., N) gradient of y, same shape as x.
        x: (..., N) forward input.
        w: (N,) weight.
        rstd: (M,) fp32 from `rmsnorm_fwd`.
        eps: the forward's eps (only used for the exact last-dim-1 case).
    """
    _check(x, w, eps)
    if dy.shape != x.shape:
        raise ValueError(f"rms_norm backward: dy shape {tuple(dy.shape)} != x {tuple(x.shape)}")
    x, w, dy = _contig(x), _contig(w), _contig(dy)
    n = x.shape[-1]
    plan = _k().make_plan(x.numel() // n, n, x, w)
    dx, dw, _ = _k().rmsnorm_bwd(dy, x, w, rstd, eps, plan)
    return dx, dw


class RMSNormFunction(torch.autograd.Function):
    """Autograd glue for eager mode: saves only x, w and per-row rstd; `plan` from `plan_for`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float, plan) -> torch.Tensor:
        y, rstd, _ = _k().rmsnorm_fwd(x, w, eps, plan)
        ctx.save_for_backward(x, w, rstd)
        ctx.eps, ctx.plan = eps, plan
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, w, rstd = ctx.saved_tensors
        dx, dw, _ = _k().rmsnorm_bwd(_contig(dy), x, w, rstd, ctx.eps, ctx.plan)
        return dx, dw, None, None


# ------------------------------------------------------- torch.compile: triton_op registrations
def _fwd_impl(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = x.contiguous(), w.contiguous()
    n = x.shape[-1]
    plan = _k().make_plan(x.numel() // n, n, x, w)
    y, rstd, _ = _k().rmsnorm_fwd(x, w, eps, plan, launch=traced_launch)
    return y, rstd


def _fwd_fake(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows = math.prod(x.shape[:-1])
    return torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty(
        (rows,), dtype=torch.float32
    )


def _bwd_impl(
    dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, rstd: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    x, w, dy = x.contiguous(), w.contiguous(), dy.contiguous()
    n = x.shape[-1]
    plan = _k().make_plan(x.numel() // n, n, x, w)
    dx, dw, _ = _k().rmsnorm_bwd(dy, x, w, rstd, eps, plan, launch=traced_launch)
    return dx, dw


def _bwd_fake(dy, x, w, rstd, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(w)


def _setup(ctx, inputs, output) -> None:
    x, w, eps = inputs
    ctx.save_for_backward(x, w, output[1])
    ctx.eps = eps


def _backward(ctx, dy: torch.Tensor, _drstd):
    x, w, rstd = ctx.saved_tensors
    dx, dw = _ops()[1](dy, x, w, rstd, ctx.eps)
    return dx, dw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: Triton on CUDA (or under TRITON_INTERPRET=1), else the reference.

    Args:
        x: (..., N) fp32/bf16/fp16, N <= 65536.
        weight: (N,) fp32 or x.dtype.
        eps: added to mean(x^2) before the rsqrt; a finite number >= 0.

    Returns:
        (..., N) tensor in x.dtype.
    """
    if torch.compiler.is_compiling():
        _check(x, weight, eps)
        if not use_triton(x, weight):
            return rms_norm_ref(x, weight, eps)
        return _ops()[0](x, weight, float(eps))[0]
    plan = plan_for(x, weight, eps)
    if plan is None:
        return rms_norm_ref(x, weight, eps)
    return RMSNormFunction.apply(_contig(x), _contig(weight), float(eps), plan)


# The op registrations, made on first use (`kernels._utils.LazyOps`).
_ops = LazyOps(
    ("steptime::rms_norm_fwd", _fwd_impl, _fwd_fake),
    ("steptime::rms_norm_bwd", _bwd_impl, _bwd_fake),
    _backward,
    _setup,
)
