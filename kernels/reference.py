"""Pure-torch references for the fused kernels: the single source of truth for their math.

Tests compare the Triton kernels against these (RMSNorm and SwiGLU evaluated in float64 as the
oracle), benchmarks use them as the "torch" baseline, the model's ``kernels="torch"`` backend calls
them, and each op runs them on CPU when the Triton interpreter is off. This module imports torch
only: nothing of ours and never triton, so a torch-backend model stays Triton-free.
"""

from __future__ import annotations

import math

import torch


def rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm y = x * rsqrt(mean(x^2, -1) + eps) * w, statistics in fp32 (or fp64), y in x.dtype.

    Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (arXiv:1910.07467), eq. 4.

    Args:
        x: (..., N) float tensor.
        w: (N,) weight, fp32 or x.dtype.
        eps: added to the mean square before the rsqrt.
    """
    # Compute in at least fp32 so low-precision inputs get fp32 statistics, exactly like the kernel;
    # float64 inputs stay float64 so the same function serves as the test oracle.
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(cdt)
    rstd = torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (xf * rstd * w.to(cdt)).to(x.dtype)


def add_rms_norm_ref(
    x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm: (rms_norm_ref(s, w, eps), s) with s = residual + x.

    The pre-norm block's ``h = h + branch; norm(h)`` (kernels/add_rmsnorm.py fuses it). s takes
    the promoted dtype, the residual stream's.

    Args:
        x: (..., N) the branch output.
        residual: (..., N) the residual stream.
        w: (N,) weight.
        eps: added to the mean square before the rsqrt.
    """
    s = residual + x
    return rms_norm_ref(s, w, eps), s


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SwiGLU silu(gate) * up computed in fp32 (fp64 for fp64 inputs), output in the input dtype.

    Shazeer 2020, "GLU Variants Improve Transformer" (arXiv:2002.05202), eq. 6 without the matmuls.

    Args:
        gate: (...) float tensor.
        up: same shape and dtype as gate.
    """
    cdt = torch.float64 if gate.dtype == torch.float64 else torch.float32
    return (torch.nn.functional.silu(gate.to(cdt)) * up.to(cdt)).to(gate.dtype)


def linear_cross_entropy_ref(
    h: torch.Tensor,
    w: torch.Tensor,
    targets: torch.Tensor,
    *,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ w.T (matmul in ``compute_dtype``, default h's; the
    softmax in fp32, or fp64 for fp64 inputs) against int64 targets: the model's LM head + loss.

    Args:
        h: (N, d) hidden states.
        w: (V, d) head weight.
        targets: (N,) class indices in [0, V).
        compute_dtype: dtype of the matmul (autocast's), as the model casts h and w for it.
    """
    cdt = h.dtype if compute_dtype is None else compute_dtype
    logits = torch.mm(h.to(cdt), w.to(cdt).t())
    acc = torch.float64 if cdt == torch.float64 else torch.float32
    return torch.nn.functional.cross_entropy(logits.to(acc), targets)


def adamw_scalars(
    lr: float, beta1: float, beta2: float, wd: float, step: int | torch.Tensor
) -> dict:
    """Per-step fp64 scalars of the AdamW update (rounded to fp32 at the kernel boundary).

    ``step`` is the 1-based number of the update being applied, as in torch.optim.AdamW's
    single-tensor path (torch/optim/adamw.py, ``_single_tensor_adamw``); a float64 device tensor
    when the count lives on the device (loss scaling), which gives 0-dim tensor scalars.
    """
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    return {
        "wd_factor": 1.0 - lr * wd,
        "one_minus_beta1": 1.0 - beta1,
        "one_minus_beta2": 1.0 - beta2,
        "step_size": lr / bc1,
        "bc2_sqrt": bc2.sqrt() if isinstance(bc2, torch.Tensor) else math.sqrt(bc2),
    }


def adamw_ref(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int | torch.Tensor,
    grad_scale: torch.Tensor | float | None = None,
    swa: torch.Tensor | None = None,
    swa_weights: tuple[float, float] = (0.0, 1.0),
    ema: torch.Tensor | None = None,
    ema_weights: tuple[float, float] = (0.0, 1.0),
    skip: torch.Tensor | None = None,
) -> None:
    """In-place AdamW step on fp32 tensors, the kernel's math in the kernel's order.

    Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization" (arXiv:1711.05101), Alg. 2,
    in torch.optim.AdamW's operation order: decay, lerp m, update v, addcdiv. ``step`` is the
    1-based number of this update (bias correction). ``grad`` may be fp32 or bf16 (upcast first);
    ``grad_scale`` multiplies it (the clip coefficient times the inverse loss scale). The averages
    are then updated from the new param as ``avg * keep + param * take`` with
    ``swa_weights``/``ema_weights`` = (keep, take): both in one pass, as the kernel does. A nonzero
    ``skip`` (1-element device flag, the loss scaler's found_inf) leaves every tensor unchanged,
    decided on the device (no host read).
    """
    tensors = [t for t in (param, exp_avg, exp_avg_sq, swa, ema) if t is not None]
    before = [t.clone() for t in tensors] if skip is not None else []
    s = adamw_scalars(lr, beta1, beta2, weight_decay, step)
    g = grad.float()
    if grad_scale is not None:
        g = g * grad_scale
    param.mul_(s["wd_factor"])
    exp_avg.add_(s["one_minus_beta1"] * (g - exp_avg))
    exp_avg_sq.copy_(exp_avg_sq * beta2 + s["one_minus_beta2"] * g * g)
    denom = exp_avg_sq.sqrt() / s["bc2_sqrt"] + eps
    param.sub_((s["step_size"] * exp_avg) / denom)
    for avg, (keep, take) in ((swa, swa_weights), (ema, ema_weights)):
        if avg is not None:
            avg.copy_(avg * keep + param * take)
    if skip is not None:
        bad = skip.reshape(()) != 0
        for t, old in zip(tensors, before):
            t.copy_(torch.where(bad, old, t))


def grad_norm_ref(
    grads: list[torch.Tensor], max_norm: float, scaler=None, skipped: torch.Tensor | None = None
) -> torch.Tensor:
    """Global grad norm, clip coefficient and inf/NaN flag of flat grad buffers, on the device.

    Returns [norm, coef, found_inf] (fp32, 3 elements): the L2 norm of all grads divided by the loss
    scale, ``coef = min(1, max_norm / (norm + 1e-6)) / scale`` (torch.nn.utils.clip_grad_norm_'s
    coefficient, torch/nn/utils/clip_grad.py, times the inverse loss scale) and whether the norm
    is inf/NaN. With a `kernels.scaler.DynamicLossScaler` its scale and growth tracker are updated
    in place like ``torch._amp_update_scale_`` (torch.amp.GradScaler) and ``skipped`` counts the
    skipped steps: the Triton path's ``_sumsq_kernel`` + ``_finalize_kernel`` in torch ops.
    """
    inv = None if scaler is None else 1.0 / scaler._scale
    sq = [(g.float() if inv is None else g.float() * inv).pow(2).sum() for g in grads]
    norm = torch.stack(sq).sum().sqrt().reshape(1)
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    found_inf = (~torch.isfinite(norm)).float()
    if scaler is not None:
        coef = coef / scaler._scale  # the scale before this step's update
        scaler.update_ref(found_inf)
        skipped.add_(found_inf.to(skipped.dtype))
    return torch.cat([norm, coef, found_inf])
