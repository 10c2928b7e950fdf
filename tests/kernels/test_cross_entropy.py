"""Chunked linear + cross-entropy (under TRITON_INTERPRET=1) against the float64 reference.

Loss and the grads of h and W at odd sizes (vocabulary not a power of two, wider than one BLOCK_V
slice, rows not a multiple of the chunk), one chunk and several; bf16 matmuls on fp32 inputs
(autocast training) by the low-precision oracle; the logits kernel alone; input checks.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

import kernels._cross_entropy_kernels as kce
from kernels.cross_entropy import default_chunks, linear_cross_entropy
from kernels.reference import linear_cross_entropy_ref


def _grads(fn, h, w, t):
    h = h.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    loss = fn(h, w, t)
    loss.backward(torch.tensor(0.75, dtype=loss.dtype))  # a non-unit incoming grad
    return loss.detach(), h.grad, w.grad


def _inputs(n, d, v):
    h = torch.randn(n, d, dtype=torch.float64)
    w = 0.3 * torch.randn(v, d, dtype=torch.float64)
    t = torch.randint(0, v, (n,))
    return h, w, t


@pytest.mark.parametrize("n,d,v,chunks", [(37, 24, 101, 1), (37, 24, 101, 4), (9, 16, 4133, 2)])
def test_fp32_matches_fp64(n, d, v, chunks, close):
    h, w, t = _inputs(n, d, v)
    got = _grads(lambda a, b, c: linear_cross_entropy(a, b, c, n_chunks=chunks), h.float(),
                 w.float(), t)  # fmt: skip
    want = _grads(linear_cross_entropy_ref, h, w, t)
    for g, e, name in zip(got, want, ("loss", "dh", "dw")):
        assert g.dtype == torch.float32, name
        close(g, e, 2e-5, name)


@pytest.mark.parametrize("chunks", [1, 3])
def test_bf16_matmuls_on_fp32_inputs(chunks, close, lowp_tol):
    # The autocast step: fp32 hidden states and head weight, matmuls in bf16, grads back in fp32.
    h, w, t = _inputs(29, 32, 203)
    fn = lambda a, b, c: linear_cross_entropy(  # noqa: E731
        a, b, c, compute_dtype=torch.bfloat16, n_chunks=chunks
    )
    loss, dh, dw = _grads(fn, h.float(), w.float(), t)
    assert (loss.dtype, dh.dtype, dw.dtype) == (torch.float32,) * 3
    ref = _grads(linear_cross_entropy_ref, h, w, t)
    torch_bf16 = _grads(
        lambda a, b, c: linear_cross_entropy_ref(a, b, c, compute_dtype=torch.bfloat16),
        h.float(), w.float(), t,
    )  # fmt: skip
    for g, e, lp, name in zip((loss, dh, dw), ref, torch_bf16, ("loss", "dh", "dw")):
        close(g, e, lowp_tol(lp, e), name)


def test_kernel_writes_loss_and_softmax_grad_in_place(close):
    # The row kernel alone: loss_i = (lse_i - z_i[t_i]) * s, z <- (softmax(z) - onehot(t)) * s.
    z = torch.randn(5, 300, dtype=torch.float64)
    t = torch.tensor([0, 299, 7, 150, 42])
    zk = z.float().clone()
    loss = torch.empty(5)
    kce._ce_fwd_bwd_kernel[(5,)](zk, loss, t, 300, 300, 0.5, BLOCK_V=128)
    close(loss, 0.5 * F.cross_entropy(z, t, reduction="none"), 1e-6, "loss")
    want = (torch.softmax(z, -1) - F.one_hot(t, 300)) * 0.5
    close(zk, want, 1e-6, "grad")


def test_no_grad_computes_the_loss_only(monkeypatch, close):
    h, w, t = _inputs(21, 8, 50)
    mms = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a, **k: mms.append(1) or real_mm(*a, **k))
    with torch.no_grad():
        loss = linear_cross_entropy(h.float(), w.float(), t, n_chunks=3)
    assert len(mms) == 3  # the logits of each chunk, no gradient matmuls
    close(loss, linear_cross_entropy_ref(h, w, t), 2e-6, "loss")


def test_chunks_cover_every_row_once_and_are_reproducible():
    h, w, t = _inputs(23, 8, 50)
    a = _grads(lambda x, y, c: linear_cross_entropy(x, y, c, n_chunks=5), h.float(), w.float(), t)
    b = _grads(lambda x, y, c: linear_cross_entropy(x, y, c, n_chunks=5), h.float(), w.float(), t)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert default_chunks(16384, 50304, 2) == 2  # 1.65 GB of bf16 logits in 1 GiB chunks
    assert default_chunks(3, 10, 4) == 1


@pytest.mark.parametrize(
    "h,w,t,exc,msg",
    [
        (torch.randn(4, 8), torch.randn(10, 7), torch.zeros(4, dtype=torch.long), ValueError,
         "expected"),
        (torch.randn(4, 8), torch.randn(10, 8), torch.zeros(3, dtype=torch.long), ValueError,
         "targets"),
        (torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4, dtype=torch.int32), ValueError,
         "int64"),
        (torch.randn(4, 8).double(), torch.randn(10, 8), torch.zeros(4, dtype=torch.long),
         TypeError, "unsupported"),
    ],
    ids=["width", "n-targets", "int32", "float64"],
)  # fmt: skip
def test_bad_input(h, w, t, exc, msg):
    with pytest.raises(exc, match=msg):
        linear_cross_entropy(h, w, t)


def test_op_registration_is_consistent():
    kce_op = importlib.import_module("kernels.cross_entropy")._ops()[0]
    assert torch.ops.steptime.linear_cross_entropy.default is kce_op._opoverload
    h = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    t = torch.randint(0, 11, (6,))
    torch.library.opcheck(
        torch.ops.steptime.linear_cross_entropy, (h, w, t, torch.float32, 2),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )  # fmt: skip
