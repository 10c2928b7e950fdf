"""Fused residual add + RMSNorm (under TRITON_INTERPRET=1) against the float64 reference.

Forward (y and s), and the grads of x, the residual and the weight, with and without a grad on s
from its next use; the fp32 stream with a bf16 branch (autocast training); deterministic dw.
"""

from __future__ import annotations

import pytest
import torch

import kernels.add_rmsnorm as kadd
from kernels import add_rms_norm
from kernels.reference import add_rms_norm_ref


def _run(fn, x, r, w, dy, ds):
    x = x.detach().clone().requires_grad_(True)
    r = r.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    y, s = fn(x, r, w)
    grads = [dy] if ds is None else [dy, ds]
    torch.autograd.backward([y] if ds is None else [y, s], grads)
    return y.detach(), s.detach(), x.grad, r.grad, w.grad


def _inputs(shape, x_dtype, with_ds):
    x = torch.randn(shape, dtype=torch.float64).to(x_dtype)
    r = torch.randn(shape, dtype=torch.float64).float()
    w = (1.0 + 0.3 * torch.randn(shape[-1], dtype=torch.float64)).float()
    dy = torch.randn(shape, dtype=torch.float64).float()
    ds = torch.randn(shape, dtype=torch.float64).float() if with_ds else None
    return x, r, w, dy, ds


# (3, 37, 123): odd dims; (301, 300): 8 rows per program in the interpreter; (5, 1): last dim 1.
@pytest.mark.parametrize("shape", [(3, 37, 123), (301, 300), (5, 1)], ids=str)
@pytest.mark.parametrize("with_ds", [True, False], ids=["ds", "no-ds"])
def test_fp32_matches_fp64(shape, with_ds, close):
    x, r, w, dy, ds = _inputs(shape, torch.float32, with_ds)
    got = _run(lambda a, b, c: add_rms_norm(a, b, c, 1e-6), x, r, w, dy, ds)
    want = _run(
        lambda a, b, c: add_rms_norm_ref(a, b, c, 1e-6),
        x.double(), r.double(), w.double(), dy.double(), None if ds is None else ds.double(),
    )  # fmt: skip
    for g, e, name in zip(got, want, ("y", "s", "dx", "dresidual", "dw")):
        assert g.dtype == torch.float32, name
        close(g, e, 1e-5, name)


def test_bf16_branch_on_fp32_stream(close, lowp_tol):
    # Autocast training: the branch (attention / MLP output) is bf16, the stream fp32; the branch
    # grad comes back in bf16, the stream's in fp32.
    x, r, w, dy, ds = _inputs((3, 37, 123), torch.bfloat16, True)
    y, s, dx, dr, dw = _run(lambda a, b, c: add_rms_norm(a, b, c, 1e-6), x, r, w, dy, ds)
    assert (y.dtype, s.dtype, dx.dtype, dr.dtype) == (torch.float32,) * 2 + (torch.bfloat16,) + (
        torch.float32,
    )
    ref = _run(
        lambda a, b, c: add_rms_norm_ref(a, b, c, 1e-6),
        x.double(), r.double(), w.double(), dy.double(), ds.double(),
    )  # fmt: skip
    close(s, ref[1], 1e-6, "s")  # fp32 add of a bf16 value: exact to fp32 rounding
    close(y, ref[0], 1e-5, "y")
    close(dr, ref[3], 1e-5, "dresidual")
    close(dw, ref[4], 1e-5, "dw")
    close(dx, ref[2], lowp_tol(ref[2].to(torch.bfloat16), ref[2]), "dx (bf16)")


def test_same_dtype_grads_share_one_tensor():
    # one write of the grad: x and the residual get the same tensor, as aten's add backward does
    x, r, w, dy, ds = _inputs((4, 16), torch.float32, True)
    y, s, dx, dr, dw = _run(lambda a, b, c: add_rms_norm(a, b, c), x, r, w, dy, ds)
    assert torch.equal(dx, dr)


def test_dw_and_grads_bitwise_reproducible():
    x, r, w, dy, ds = _inputs((300, 16), torch.float32, True)
    a = _run(lambda p, q, c: add_rms_norm(p, q, c), x, r, w, dy, ds)
    b = _run(lambda p, q, c: add_rms_norm(p, q, c), x, r, w, dy, ds)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize(
    "x,r,exc,msg",
    [
        (torch.randn(4, 8), torch.randn(4, 9), ValueError, "weight shape"),
        (torch.randn(4, 8), torch.randn(3, 8), ValueError, "x shape"),
        (torch.randn(4, 8), torch.randn(4, 8).bfloat16(), TypeError, "must hold"),
        (torch.randn(4, 8).double(), torch.randn(4, 8), TypeError, "float32/bfloat16"),
    ],
    ids=["w-len", "shape", "narrow-stream", "float64"],
)
def test_bad_input(x, r, exc, msg):
    w = torch.ones(8, dtype=r.dtype)
    with pytest.raises(exc, match=msg):
        add_rms_norm(x, r, w)


def test_op_registration_is_consistent():
    # schema, fake, autograd formula: torch.library's own checker (the custom_op path here)
    fwd, _ = kadd._ops()
    x = torch.randn(3, 5, 24, requires_grad=True)
    r = torch.randn(3, 5, 24, requires_grad=True)
    w = torch.randn(24, requires_grad=True)
    torch.library.opcheck(torch.ops.steptime.add_rms_norm_fwd, (x, r, w, 1e-6))
    assert torch.ops.steptime.add_rms_norm_fwd.default is fwd._opoverload
