"""SwiGLU  out = silu(gate) * up  computed in fp32, output in the input dtype, fused in Triton.

Refs: Shazeer 2020 (GLU variants). Anatomy (spec/style.md §2.3): jit kernels, plain launchers
(`swiglu_fwd`, `swiglu_bwd`), `SwiGLUFunction`, public `swiglu`.

Elementwise, so the kernels work on the flattened tensors in 1-D blocks: every program reads a
contiguous BLOCK of each input, which gives the widest (128-bit) loads regardless of the ffn width.
The backward recomputes sigmoid/silu from gate instead of saving them: recomputation is free next
to the memory traffic, and only gate and up are kept for backward.
float64 inputs are rejected (TypeError); use `kernels.reference.swiglu_ref` for float64 work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import use_triton
from .reference import swiglu_ref

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# 4096 elements over 8 warps = 16 per thread: two 128-bit loads per input for bf16, four for fp32.
_BLOCK = 4096
_NUM_WARPS = 8


@triton.jit
def _swiglu_fwd_kernel(OUT_ptr, G_ptr, U_ptr, n_elements, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    g = tl.load(G_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = g * tl.sigmoid(g) * u
    tl.store(OUT_ptr + offs, out.to(OUT_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(DG_ptr, DU_ptr, DOUT_ptr, G_ptr, U_ptr, n_elements, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    g = tl.load(G_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(DOUT_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    silu = g * s
    # d silu(g)/dg = s + g*s*(1-s) = s * (1 + g*(1-s)).
    dg = dout * u * s * (1.0 + g * (1.0 - s))
    du = dout * silu
    tl.store(DG_ptr + offs, dg.to(DG_ptr.dtype.element_ty), mask=mask)
    tl.store(DU_ptr + offs, du.to(DU_ptr.dtype.element_ty), mask=mask)


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


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def swiglu_fwd(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Launch the forward kernel.

    Args:
        gate: (...) fp32/bf16/fp16.
        up: same shape and dtype.

    Returns:
        silu(gate) * up, same shape and dtype.
    """
    _check(gate, up)
    gate, up = _flat(gate), _flat(up)
    out = torch.empty_like(gate, memory_format=torch.contiguous_format)
    n = gate.numel()
    if n > 0:
        _swiglu_fwd_kernel[(triton.cdiv(n, _BLOCK),)](
            out, gate, up, n, BLOCK=_BLOCK, num_warps=_NUM_WARPS
        )
    return out


def swiglu_bwd(
    dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel (recomputes silu).

    Args:
        dout: gradient of the output, same shape as gate.
        gate, up: forward inputs.

    Returns:
        (dgate, dup) in the input dtype.
    """
    _check(gate, up)
    if dout.shape != gate.shape:
        raise ValueError(f"swiglu backward: dout shape {tuple(dout.shape)} != {tuple(gate.shape)}")
    gate, up = _flat(gate), _flat(up)
    dout = _flat(dout.to(gate.dtype))
    dg = torch.empty_like(gate, memory_format=torch.contiguous_format)
    du = torch.empty_like(up, memory_format=torch.contiguous_format)
    n = gate.numel()
    if n > 0:
        _swiglu_bwd_kernel[(triton.cdiv(n, _BLOCK),)](
            dg, du, dout, gate, up, n, BLOCK=_BLOCK, num_warps=_NUM_WARPS
        )
    return dg, du


class SwiGLUFunction(torch.autograd.Function):
    """Autograd glue: saves only gate and up."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return swiglu_fwd(gate, up)

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        gate, up = ctx.saved_tensors
        return swiglu_bwd(dout, gate, up)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up: Triton on CUDA (or under TRITON_INTERPRET=1), else the reference.

    Args:
        gate: (...) fp32/bf16/fp16.
        up: same shape and dtype as gate.
    """
    _check(gate, up)
    if use_triton(gate, up):
        return SwiGLUFunction.apply(gate, up)
    return swiglu_ref(gate, up)


def aot_specs() -> list[dict]:
    """Compile specs for `kernels.aot`: fwd and bwd, bf16/fp32, ffn width 768/4096/16384.

    The kernels are flattened, so the width only changes n_elements at run time; the three sizes
    are listed to keep the report's rows uniform across ops. n_elements is declared divisible by
    16 (rows of a multiple-of-16 width), so masks are constant over 8 elements: 128-bit loads.
    """
    specs: list[dict] = []
    for dtype in ("bf16", "fp32"):
        pt = f"*{dtype}"
        for hidden in (768, 4096, 16384):
            specs.append({
                "kernel": "swiglu_fwd", "fn": _swiglu_fwd_kernel,
                "signature": {"OUT_ptr": pt, "G_ptr": pt, "U_ptr": pt, "n_elements": "i32",
                              "BLOCK": "constexpr"},
                "constexprs": {"BLOCK": _BLOCK}, "num_warps": _NUM_WARPS,
                "divisible": ["OUT_ptr", "G_ptr", "U_ptr", "n_elements"],
                "dtype": dtype, "hidden": hidden,
                "note": "flattened 1-D blocks; ideal 3*itemsize B/elem",
            })  # fmt: skip
            specs.append({
                "kernel": "swiglu_bwd", "fn": _swiglu_bwd_kernel,
                "signature": {"DG_ptr": pt, "DU_ptr": pt, "DOUT_ptr": pt, "G_ptr": pt,
                              "U_ptr": pt, "n_elements": "i32", "BLOCK": "constexpr"},
                "constexprs": {"BLOCK": _BLOCK}, "num_warps": _NUM_WARPS,
                "divisible": ["DG_ptr", "DU_ptr", "DOUT_ptr", "G_ptr", "U_ptr", "n_elements"],
                "dtype": dtype, "hidden": hidden,
                "note": "recomputes silu; ideal 5*itemsize B/elem",
            })  # fmt: skip
    return specs
