"""Cross-entropy Triton kernel and the chunked linear + cross-entropy launcher (imported lazily by
`kernels.cross_entropy`: needs triton).

For a chunk of C rows the LM head's logits z = h W^T (C x V, cuBLAS) are the only V-wide tensor
that exists. `_ce_fwd_bwd_kernel` (one program per row) reads a row twice: first an online
max / sum of exp over the vocabulary in BLOCK_V slices (Milakov & Gimelshein 2018,
arXiv:1805.02867) giving lse and the row's share of the mean loss, (lse - z[target]) * scale;
then it overwrites the row with the loss's gradient (softmax(z) - onehot(target)) * scale,
scale = 1 / N for the mean over all N rows. The launcher then forms dh = dz W and
dW += dz^T h for the chunk, so the forward leaves the gradients ready and the B x T x V logits
never exist: Liger-Kernel's fused linear cross-entropy in its structure
(linkedin/Liger-Kernel, src/liger_kernel/ops/fused_linear_cross_entropy.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_BLOCK_V = 4096


@triton.jit
def _ce_fwd_bwd_kernel(
    Z_ptr, LOSS_ptr, T_ptr, stride_z_row, V, scale, BLOCK_V: tl.constexpr
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    z_row = Z_ptr + row * stride_z_row
    target = tl.load(T_ptr + row).to(tl.int64)
    cols = tl.arange(0, BLOCK_V)
    # Pass 1: running max m and sum d of exp(z - m), rescaled when the max grows; fp32 throughout.
    m = float("-inf")
    d = 0.0
    for v0 in range(0, V, BLOCK_V):
        z = tl.load(z_row + v0 + cols, mask=v0 + cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        d = d * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(d)
    z_t = tl.load(z_row + target).to(tl.float32)
    # The row's share of the mean: the loss is then one sum over the rows.
    tl.store(LOSS_ptr + row, (lse - z_t) * scale)
    # Pass 2: the row becomes d loss / d z = (softmax - onehot) / N, in the logits' dtype.
    for v0 in range(0, V, BLOCK_V):
        mask = v0 + cols < V
        z = tl.load(z_row + v0 + cols, mask=mask, other=0.0).to(tl.float32)
        p = tl.exp(z - lse)
        g = tl.where(v0 + cols == target, p - 1.0, p) * scale
        tl.store(z_row + v0 + cols, g.to(Z_ptr.dtype.element_ty), mask=mask)


def _eager(kernel):
    return kernel


def block_v(v: int) -> int:
    return min(_MAX_BLOCK_V, triton.next_power_of_2(v))


def linear_cross_entropy_fwd(
    h: torch.Tensor,
    w: torch.Tensor,
    targets: torch.Tensor,
    compute_dtype: torch.dtype,
    n_chunks: int,
    launch=_eager,
    grads: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Mean cross-entropy of (h W^T) against targets, and its gradients for h and W.

    h (N, d) and w (V, d) are cast to ``compute_dtype`` for the matmuls (autocast's casts); the
    per-row losses and lse are fp32. dW is accumulated over the chunks in fp32 when the matmuls
    run in 16 bits (each chunk's product added to an fp32 buffer: one rounding per chunk, not a
    16-bit running sum), else with addmm_. Returns (loss (), dh in h.dtype, dw in w.dtype);
    with ``grads`` False (evaluation) the loss only: the two gradient matmuls are skipped.
    """
    N, V = h.shape[0], w.shape[0]
    hc_all = h if h.dtype == compute_dtype else h.to(compute_dtype)
    wc = w if w.dtype == compute_dtype else w.to(compute_dtype)
    losses = torch.empty((N,), dtype=torch.float32, device=h.device)
    dh = torch.empty(h.shape, dtype=compute_dtype, device=h.device) if grads else None
    dw = None
    rows = triton.cdiv(N, n_chunks)
    bv = block_v(V)
    for i0 in range(0, N, rows):
        i1 = min(i0 + rows, N)
        hc = hc_all[i0:i1]
        z = torch.mm(hc, wc.t())  # (C, V): the only logits there are
        launch(_ce_fwd_bwd_kernel)[(i1 - i0,)](
            z, losses[i0:i1], targets[i0:i1], V, V, 1.0 / N, BLOCK_V=bv,
            num_warps=8 if bv >= 2048 else 4,
        )  # fmt: skip
        if not grads:
            continue
        torch.mm(z, wc, out=dh[i0:i1])
        if dw is None:
            dw = torch.mm(z.t(), hc)
            if dw.dtype != torch.float32 and rows < N:
                dw = dw.float()  # the fp32 accumulator of the later chunks
        elif dw.dtype == compute_dtype:
            dw.addmm_(z.t(), hc)
        else:
            dw.add_(torch.mm(z.t(), hc))
    loss = losses.sum()  # rows are stored already divided by N
    if not grads:
        return loss, None, None
    if dh.dtype != h.dtype:
        dh = dh.to(h.dtype)
    if dw.dtype != w.dtype:
        dw = dw.to(w.dtype)
    return loss, dh, dw


def aot_specs(dtypes: tuple[str, ...] = ("bf16", "fp32")) -> list[dict]:
    """Compile specs for `kernels.aot`: the cross-entropy row kernel per dtype at the GPT-2
    vocabulary (50304) and 32000; ``hidden`` is the vocabulary here. Row strides and V are
    declared divisible by 16, so the row slices load 128 bits at a time."""
    specs: list[dict] = []
    for dtype in dtypes:
        e = 4 if dtype == "fp32" else 2
        for vocab in (32000, 50304):
            bv = block_v(vocab)
            specs.append({
                "kernel": "cross_entropy", "fn": _ce_fwd_bwd_kernel,
                "signature": {"Z_ptr": f"*{dtype}", "LOSS_ptr": "*fp32", "T_ptr": "*i64",
                              "stride_z_row": "i32", "V": "i32", "scale": "fp32",
                              "BLOCK_V": "constexpr"},
                "constexprs": {"BLOCK_V": bv}, "num_warps": 8 if bv >= 2048 else 4,
                "divisible": ["Z_ptr", "LOSS_ptr", "T_ptr", "stride_z_row", "V"],
                "dtype": dtype, "hidden": vocab, "elems_per_iter": bv,
                # reads the row twice, writes it once
                "bytes_per_elem": 3 * e,
                "note": "one row per program: online lse, then the grad in place of the logits",
            })  # fmt: skip
    return specs
