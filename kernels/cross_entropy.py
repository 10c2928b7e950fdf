"""Linear + cross-entropy over the vocabulary in chunks: loss = mean_i CE(h_i W^T, t_i) without
the N x V logits.

The LM head and the loss of a training step in one op (kernels/_cross_entropy_kernels.py has the
kernel and the chunk loop): at a 50k vocabulary the fp32 logits, their log-softmax and their
gradient are the largest activations of a small model, and eager torch (or Inductor, which cannot
chunk a matmul into a reduction) writes and reads each of them in full. Here one chunk of logits
exists at a time and the forward leaves dh and dW ready, so the backward only scales them by the
incoming grad. Liger-Kernel's fused linear cross-entropy in structure
(linkedin/Liger-Kernel, src/liger_kernel/ops/fused_linear_cross_entropy.py); the math is
F.cross_entropy's with reduction="mean" and no ignore_index: every target must be in [0, V).

Eager calls go through `LinearCrossEntropyFunction`; under torch.compile the op
``steptime::linear_cross_entropy`` (a triton_op: Inductor sees the matmuls and the kernel). The
torch reference is `kernels.reference.linear_cross_entropy_ref`.
"""

from __future__ import annotations

import torch

from ._utils import LazyOps, lazy_import, traced_launch, use_triton
from .reference import linear_cross_entropy_ref

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ITEMSIZE = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}
# Largest chunk of logits (bytes): 2 chunks at 16384 tokens x 50304 x bf16. Fewer chunks mean
# fewer fp32 passes over dW when the matmuls run in 16 bits (see
# `kernels._cross_entropy_kernels.linear_cross_entropy_fwd`); model/_opcount.py's `flce_chunks`
# counts the same chunks.
CHUNK_BYTES = 1 << 30


def default_chunks(n: int, v: int, itemsize: int) -> int:
    """Chunks of rows so that one chunk's logits take at most CHUNK_BYTES."""
    return max(1, min(n, -(-(n * v * itemsize) // CHUNK_BYTES)))


_k = lazy_import("kernels._cross_entropy_kernels")  # the Triton kernels, imported on first use


def _check(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, compute_dtype) -> None:
    """Validate inputs with clear messages instead of failing inside Triton or cuBLAS."""
    if h.dim() != 2 or w.dim() != 2 or h.shape[1] != w.shape[1]:
        raise ValueError(
            f"linear_cross_entropy: h (N, d) and weight (V, d) expected, got {tuple(h.shape)} "
            f"and {tuple(w.shape)}"
        )
    if targets.shape != (h.shape[0],) or targets.dtype != torch.int64:
        raise ValueError(
            f"linear_cross_entropy: targets must be int64 of shape ({h.shape[0]},), got "
            f"{targets.dtype} {tuple(targets.shape)}"
        )
    for name, dt in (("h", h.dtype), ("weight", w.dtype), ("compute_dtype", compute_dtype)):
        if dt not in _DTYPES:
            raise TypeError(f"linear_cross_entropy: {name} dtype {dt} unsupported (fp32/bf16/fp16)")
    if not (h.device == w.device == targets.device):
        raise ValueError("linear_cross_entropy: h, weight and targets must share a device")


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Eager autograd glue: the forward computes the loss and both gradients (chunk by chunk);
    the backward scales the saved dh and dW by the incoming scalar grad."""

    @staticmethod
    def forward(ctx, h, w, targets, compute_dtype, n_chunks):
        # Evaluation (no grad wanted, e.g. under torch.no_grad): the loss alone, no grad matmuls.
        grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss, dh, dw = _k().linear_cross_entropy_fwd(
            h, w, targets, compute_dtype, n_chunks, grads=grads
        )
        if grads:
            ctx.save_for_backward(dh, dw)
        return loss

    @staticmethod
    def backward(ctx, dloss):
        dh, dw = ctx.saved_tensors
        return dh * dloss, dw * dloss, None, None, None


# ------------------------------------------------------- torch.compile: triton_op registration
def _fwd_impl(
    h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, compute_dtype: torch.dtype, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h, w = h.contiguous(), w.contiguous()
    return _k().linear_cross_entropy_fwd(
        h, w, targets.contiguous(), compute_dtype, n, launch=traced_launch
    )


def _fwd_fake(h, w, targets, compute_dtype, n):
    return h.new_empty((), dtype=torch.float32), torch.empty_like(h), torch.empty_like(w)


def _setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1], output[2])


def _backward(ctx, dloss, _ddh, _ddw):
    dh, dw = ctx.saved_tensors
    return dh * dloss, dw * dloss, None, None, None


def linear_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    compute_dtype: torch.dtype | None = None,
    n_chunks: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ weight.T against targets, the logits never stored
    whole (Triton on CUDA or under TRITON_INTERPRET=1, else the reference).

    Args:
        h: (N, d) final hidden states (fp32/bf16/fp16).
        weight: (V, d) LM head (fp32/bf16/fp16).
        targets: (N,) int64 class indices in [0, V) (no ignore_index).
        compute_dtype: the matmuls' dtype (autocast's); default h's.
        n_chunks: row chunks; default: chunks of at most 1 GiB of logits.

    Returns:
        The mean loss, a 0-dim fp32 tensor.
    """
    cdt = h.dtype if compute_dtype is None else compute_dtype
    _check(h, weight, targets, cdt)
    if not use_triton(h, weight):
        return linear_cross_entropy_ref(h, weight, targets, compute_dtype=cdt)
    _ops()
    N, V = h.shape[0], weight.shape[0]
    n = n_chunks or default_chunks(N, V, _ITEMSIZE[cdt])
    n = max(1, min(int(n), max(N, 1)))
    # The matmuls below run in compute_dtype by themselves: autocast must not recast them.
    with torch.autocast(h.device.type, enabled=False):
        if torch.compiler.is_compiling():
            return _ops()[0](h, weight, targets, cdt, n)[0]
        return LinearCrossEntropyFunction.apply(h, weight, targets, cdt, n)


# The op registrations, made on first use (`kernels._utils.LazyOps`).
_ops = LazyOps(("steptime::linear_cross_entropy", _fwd_impl, _fwd_fake), None, _backward, _setup)
