"""SwiGLU Triton kernels and their launchers (imported lazily by `kernels.swiglu`: needs triton).

Elementwise, so the kernels work on the flattened tensors in 1-D blocks: every program reads a
contiguous BLOCK of each input, which gives the widest (128-bit) loads regardless of the ffn width.
The backward recomputes sigmoid/silu from gate instead of saving them: recomputation is free next
to the memory traffic, and only gate and up are kept for backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

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


def _eager(kernel):
    return kernel


def grid(n: int) -> tuple[int]:
    """Programs of both kernels for n elements."""
    return (triton.cdiv(n, _BLOCK),)


def swiglu_fwd(gate: torch.Tensor, up: torch.Tensor, launch=_eager) -> torch.Tensor:
    """silu(gate) * up for contiguous gate, up (checked), same shape and dtype."""
    out = torch.empty_like(gate)
    n = gate.numel()
    if n > 0:
        launch(_swiglu_fwd_kernel)[grid(n)](out, gate, up, n, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return out


def swiglu_bwd(
    dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, launch=_eager
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dgate, dup) in the input dtype for contiguous inputs, recomputing silu from gate. dout may
    have any float dtype: the kernel upcasts every load to fp32."""
    dg = torch.empty_like(gate)
    du = torch.empty_like(up)
    n = gate.numel()
    if n > 0:
        launch(_swiglu_bwd_kernel)[grid(n)](
            dg, du, dout, gate, up, n, BLOCK=_BLOCK, num_warps=_NUM_WARPS
        )
    return dg, du


def aot_specs(dtypes: tuple[str, ...] = ("bf16", "fp32")) -> list[dict]:
    """Compile specs for `kernels.aot`: fwd and bwd per dtype, ffn width 768/4096/16384.

    The kernels are flattened, so the width only changes n_elements at run time; the three sizes
    are listed to keep the report's rows uniform across ops. n_elements is declared divisible by
    16 (rows of a multiple-of-16 width), so masks are constant over 8 elements: 128-bit loads.
    """
    specs: list[dict] = []
    for dtype in dtypes:
        e, pt = 4 if dtype == "fp32" else 2, f"*{dtype}"
        for hidden in (768, 4096, 16384):
            specs.append({
                "kernel": "swiglu_fwd", "fn": _swiglu_fwd_kernel,
                "signature": {"OUT_ptr": pt, "G_ptr": pt, "U_ptr": pt, "n_elements": "i32",
                              "BLOCK": "constexpr"},
                "constexprs": {"BLOCK": _BLOCK}, "num_warps": _NUM_WARPS,
                "divisible": ["OUT_ptr", "G_ptr", "U_ptr", "n_elements"],
                "dtype": dtype, "hidden": hidden, "elems_per_iter": _BLOCK,
                "bytes_per_elem": 3 * e, "note": "flattened 1-D blocks; reads gate, up, writes out",
            })  # fmt: skip
            specs.append({
                "kernel": "swiglu_bwd", "fn": _swiglu_bwd_kernel,
                "signature": {"DG_ptr": pt, "DU_ptr": pt, "DOUT_ptr": pt, "G_ptr": pt,
                              "U_ptr": pt, "n_elements": "i32", "BLOCK": "constexpr"},
                "constexprs": {"BLOCK": _BLOCK}, "num_warps": _NUM_WARPS,
                "divisible": ["DG_ptr", "DU_ptr", "DOUT_ptr", "G_ptr", "U_ptr", "n_elements"],
                "dtype": dtype, "hidden": hidden, "elems_per_iter": _BLOCK,
                "bytes_per_elem": 5 * e, "note": "recomputes silu; reads 3, writes 2 tensors",
            })  # fmt: skip
    return specs
