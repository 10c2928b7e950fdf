"""SwiGLU  out = silu(gate) * up  computed in fp32, output in the input dtype, fused in Triton.

Shazeer 2020, "GLU Variants Improve Transformer" (arXiv:2002.05202). The kernels live in
`kernels._swiglu_kernels`, imported on the first Triton call, so importing this module needs torch
only. Eager calls go through `SwiGLUFunction` (the cheapest dispatch; inputs validated once per
shape and dtype); under torch.compile the ops ``steptime::swiglu_fwd`` / ``steptime::swiglu_bwd``,
registered with ``torch.library.triton_op`` and an autograd formula, put the Triton kernels
themselves in the traced graph (opaque ``custom_op``s under TRITON_INTERPRET=1 or an older torch).
float64 inputs are rejected (TypeError); use `kernels.reference.swiglu_ref` for float64 work.
"""

from __future__ import annotations

import torch

from ._utils import LazyOps, lazy_import, traced_launch, use_triton
from .reference import swiglu_ref

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


_k = lazy_import("kernels._swiglu_kernels")  # the Triton kernels, imported on first use


def _check(gate: torch.Tensor, up: torch.Tensor) -> None:
    """Validate inputs with clear messages instead of failing inside Triton."""
    if not isinstance(gate, torch.Tensor) or not isinstance(up, torch.Tensor):
        raise TypeError("swiglu: gate and up must be torch.Tensor")
    if gate.dtype not in _DTYPES:
        raise TypeError(
            f"swiglu: dtype {gate.dtype} unsupported (float32, bfloat16, float16; "
            "use kernels.reference.swiglu_ref for float64)"
        )
    if up.dtype != gate.dtype:
        raise TypeError(f"swiglu: gate dtype {gate.dtype} != up dtype {up.dtype}")
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate shape {tuple(gate.shape)} != up {tuple(up.shape)}")
    if gate.device != up.device:
        raise ValueError(f"swiglu: gate on {gate.device} but up on {up.device}")


def _contig(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def swiglu_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Launch the forward kernel: silu(gate) * up, same shape and dtype (fp32/bf16/fp16)."""
    _check(gate, up)
    return _k().swiglu_fwd(_contig(gate), _contig(up))


def swiglu_bwd(
    dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel (recomputes silu): (dgate, dup) in the input dtype."""
    _check(gate, up)
    if dout.shape != gate.shape:
        raise ValueError(f"swiglu backward: dout shape {tuple(dout.shape)} != {tuple(gate.shape)}")
    return _k().swiglu_bwd(_contig(dout), _contig(gate), _contig(up))


class SwiGLUFunction(torch.autograd.Function):
    """Autograd glue for eager mode: saves only gate and up."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return _k().swiglu_fwd(gate, up)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        gate, up = ctx.saved_tensors
        return _k().swiglu_bwd(_contig(dout), gate, up)


# ------------------------------------------------------- torch.compile: triton_op registrations
def _fwd_impl(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _k().swiglu_fwd(gate.contiguous(), up.contiguous(), launch=traced_launch)


def _fwd_fake(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(gate, memory_format=torch.contiguous_format)


def _bwd_impl(
    dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    g, u = gate.contiguous(), up.contiguous()
    return _k().swiglu_bwd(dout.contiguous(), g, u, launch=traced_launch)


def _bwd_fake(dout, gate, up):
    fmt = torch.contiguous_format
    return torch.empty_like(gate, memory_format=fmt), torch.empty_like(up, memory_format=fmt)


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx, dout: torch.Tensor):
    gate, up = ctx.saved_tensors
    return _ops()[1](dout, gate, up)


_CHECKED: dict = {}  # (shape, dtypes, devices) -> whether Triton runs (validated once per key)


def _triton_path(gate: torch.Tensor, up: torch.Tensor) -> bool:
    key = (gate.shape, up.shape, gate.dtype, up.dtype, gate.device, up.device)
    try:
        return _CHECKED[key]
    except KeyError:
        pass
    _check(gate, up)
    if len(_CHECKED) >= 512:
        _CHECKED.clear()
    _CHECKED[key] = ok = use_triton(gate, up)
    if ok:
        _ops()
    return ok


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up: Triton on CUDA (or under TRITON_INTERPRET=1), else the reference.

    Args:
        gate: (...) fp32/bf16/fp16.
        up: same shape and dtype as gate.
    """
    if torch.compiler.is_compiling():
        _check(gate, up)
        return _ops()[0](gate, up) if use_triton(gate, up) else swiglu_ref(gate, up)
    if not _triton_path(gate, up):
        return swiglu_ref(gate, up)
    return SwiGLUFunction.apply(_contig(gate), _contig(up))


# The op registrations, made on first use (`kernels._utils.LazyOps`).
_ops = LazyOps(
    ("steptime::swiglu_fwd", _fwd_impl, _fwd_fake),
    ("steptime::swiglu_bwd", _bwd_impl, _bwd_fake),
    _backward,
    _setup,
)
