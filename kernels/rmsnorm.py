"""RMSNorm  y = x * rsqrt(mean(x^2, -1) + eps) * w  (row-wise, fp32 statistics), fused in Triton.

Zhang & Sennrich 2019 (arXiv:1910.07467). The kernels live in `kernels._rmsnorm_kernels`, imported
on the first Triton call, so importing this module needs torch only. Two ways in:

* eager: `RMSNormFunction` (torch.autograd.Function), the cheapest dispatch per call;
* under torch.compile: the custom ops ``steptime::rms_norm_fwd`` / ``steptime::rms_norm_bwd``
  (torch.library.custom_op with fake implementations and a registered autograd formula), which
  dynamo traces as single opaque nodes: no graph break.

The backward saves only x, w and the per-row rstd. float64 inputs are rejected (TypeError) rather
than silently downcast: use `kernels.reference.rms_norm_ref` for float64 work (the tests do).
"""

from __future__ import annotations

import math

import torch

from ._utils import use_triton
from .reference import rms_norm_ref

MAX_N = 65536
_X_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _k():
    from . import _rmsnorm_kernels

    return _rmsnorm_kernels


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
    return _k().rmsnorm_fwd(x, w, eps)


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
    return _k().rmsnorm_bwd(dy, x, w, rstd, eps)


class RMSNormFunction(torch.autograd.Function):
    """Autograd glue for eager mode: saves only x, w and per-row rstd."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        y, rstd = _k().rmsnorm_fwd(x, w, eps)
        ctx.save_for_backward(x, w, rstd)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, w, rstd = ctx.saved_tensors
        dx, dw = _k().rmsnorm_bwd(dy, x, w, rstd, ctx.eps)
        return dx, dw, None


# ------------------------------------------------------------------ custom ops for torch.compile
@torch.library.custom_op("steptime::rms_norm_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _k().rmsnorm_fwd(x, w, eps)


@_fwd_op.register_fake
def _fwd_fake(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows = math.prod(x.shape[:-1])
    return x.new_empty(x.shape), x.new_empty((rows,), dtype=torch.float32)


@torch.library.custom_op("steptime::rms_norm_bwd", mutates_args=())
def _bwd_op(
    dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, rstd: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _k().rmsnorm_bwd(dy, x, w, rstd, eps)


@_bwd_op.register_fake
def _bwd_fake(dy, x, w, rstd, eps):
    return x.new_empty(x.shape), w.new_empty(w.shape)


def _setup(ctx, inputs, output) -> None:
    x, w, eps = inputs
    ctx.save_for_backward(x, w, output[1])
    ctx.eps = eps


def _backward(ctx, dy: torch.Tensor, _drstd):
    x, w, rstd = ctx.saved_tensors
    dx, dw = _bwd_op(dy, x, w, rstd, ctx.eps)
    return dx, dw, None


_fwd_op.register_autograd(_backward, setup_context=_setup)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim: Triton on CUDA (or under TRITON_INTERPRET=1), else the reference.

    Args:
        x: (..., N) fp32/bf16/fp16, N <= 65536.
        weight: (N,) fp32 or x.dtype.
        eps: added to mean(x^2) before the rsqrt; a finite number >= 0.

    Returns:
        (..., N) tensor in x.dtype.
    """
    _check(x, weight, eps)
    if not use_triton(x, weight):
        return rms_norm_ref(x, weight, eps)
    if torch.compiler.is_compiling():
        return _fwd_op(x, weight, float(eps))[0]
    return RMSNormFunction.apply(x, weight, float(eps))
