"""RMSNorm rows shared by several programs (SPLIT > 1), forward and backward, plain and with the
fused residual, against the float64 reference.

On a GPU a row is split at 16k-32k columns (kernels/_rmsnorm_kernels.py: FWD_SLICE, DX_SLICE,
DX_SLICE_NARROW, DX_SPLIT_SLICE); here the slice widths are shrunk to a few dozen columns so that
odd shapes run the split kernels: slices whose last one is almost empty (65 columns in slices of
64 or 32), many programs per row, and rows walked by several row groups.
"""

from __future__ import annotations

import pytest
import torch

import kernels._rmsnorm_kernels as krk
import kernels.rmsnorm as krms
from kernels import add_rms_norm, rms_norm
from kernels.reference import add_rms_norm_ref, rms_norm_ref
from tests.kernels.test_rmsnorm import _grads as _norm_grads

SHAPES = [(3, 37, 123), (7, 65), (41, 150)]


@pytest.fixture
def small_slices(monkeypatch):
    monkeypatch.setattr(krk, "FWD_SLICE", 64)
    monkeypatch.setattr(krk, "DX_SLICE", 64)
    monkeypatch.setattr(krk, "DX_SLICE_NARROW", 32)
    monkeypatch.setattr(krk, "DX_SPLIT_SLICE", 32)
    monkeypatch.setattr(krms, "_PLANS", {})  # plans made with the real widths are not reused


def _inputs(shape, dtype, w_dtype=torch.float32):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, dtype=torch.float64, generator=g).to(dtype)
    w = (1.0 + 0.3 * torch.randn(shape[-1], dtype=torch.float64, generator=g)).to(w_dtype)
    dy = torch.randn(shape, dtype=torch.float64, generator=g).to(dtype)
    return x, w, dy


@pytest.mark.interpreter_only
def test_plans_split_wide_rows(small_slices):
    x = torch.zeros(301, 300)
    w = torch.ones(300)
    p = krk.make_plan(301, 300, x, w)
    assert (p.block_n, p.fwd_split, p.fwd_block, p.block_m) == (512, 8, 64, 1)
    assert p.fwd_grid == (301 * 8,)
    assert (p.dx.split, p.dx.block) == (16, 32) and p.dx.grid == (p.dx.groups * 16,)
    assert p.dx.groups * p.dx.rows_per_program >= 301 > (p.dx.groups - 1) * p.dx.rows_per_program
    assert p.dx_narrow.split == 16
    p = krk.make_plan(41, 150, torch.zeros(41, 150), torch.ones(150))  # the tests' shape
    assert p.dx.split == 8 and p.dx.rows_per_program > 1  # row groups walk several rows
    p = krk.make_plan(5, 40, torch.zeros(5, 40), torch.ones(40))  # 64 columns: one program (fwd)
    assert (p.fwd_split, p.dx.split, p.dx_narrow.split) == (1, 1, 2)
    p = krk.make_plan(5, 1, torch.zeros(5, 1), torch.ones(1))  # N == 1: never split
    assert (p.fwd_split, p.dx.split, p.dx_narrow.split) == (1, 1, 1)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_split_rmsnorm_matches_fp64(shape, small_slices, close):
    x, w, dy = _inputs(shape, torch.float32)
    y, dx, dw = _norm_grads(lambda a, b: rms_norm(a, b, 1e-6), x, w, dy)
    want = _norm_grads(lambda a, b: rms_norm_ref(a, b, 1e-6), x.double(), w.double(), dy.double())
    for got, ref, name in zip((y, dx, dw), want, ("y", "dx", "dw")):
        close(got, ref, 1e-5, name)
    _, rstd = krms.rmsnorm_fwd(x.reshape(-1, shape[-1]), w, 1e-6)  # written once per row
    want_rstd = torch.rsqrt(x.double().reshape(-1, shape[-1]).pow(2).mean(-1) + 1e-6)
    close(rstd, want_rstd, 1e-6, "rstd")


def test_split_rmsnorm_bf16(small_slices, close, lowp_tol):
    x, w, dy = _inputs((3, 37, 123), torch.bfloat16, torch.bfloat16)
    y, dx, dw = _norm_grads(lambda a, b: rms_norm(a, b, 1e-6), x, w, dy)
    want = _norm_grads(lambda a, b: rms_norm_ref(a, b, 1e-6), x.double(), w.double(), dy.double())
    for got, ref, name in zip((y, dx, dw), want, ("y", "dx", "dw")):
        assert got.dtype == torch.bfloat16, name
        close(got, ref, lowp_tol(ref.to(torch.bfloat16), ref), name)


def _add_run(fn, x, r, w, dy, ds):
    x = x.detach().clone().requires_grad_(True)
    r = r.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    y, s = fn(x, r, w)
    torch.autograd.backward([y, s], [dy, ds])
    return y.detach(), s.detach(), x.grad, r.grad, w.grad


@pytest.mark.parametrize("branch", [torch.float32, torch.bfloat16], ids=["fp32", "bf16-branch"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_split_add_rmsnorm_matches_fp64(shape, branch, small_slices, close, lowp_tol):
    x, w, dy = _inputs(shape, branch)
    g = torch.Generator().manual_seed(7)
    r = torch.randn(shape, dtype=torch.float64, generator=g).float()
    ds = torch.randn(shape, dtype=torch.float64, generator=g).float()
    dy = dy.float()
    got = _add_run(lambda a, b, c: add_rms_norm(a, b, c, 1e-6), x, r, w, dy, ds)
    want = _add_run(
        lambda a, b, c: add_rms_norm_ref(a, b, c, 1e-6),
        x.double(), r.double(), w.double(), dy.double(), ds.double(),
    )  # fmt: skip
    for got_t, ref, name in zip(got, want, ("y", "s", "dx", "dresidual", "dw")):
        if name == "dx" and branch == torch.bfloat16:
            assert got_t.dtype == torch.bfloat16
            close(got_t, ref, lowp_tol(ref.to(torch.bfloat16), ref), name)
        else:
            assert got_t.dtype == torch.float32, name
            close(got_t, ref, 1e-5, name)


def test_split_grads_bitwise_reproducible(small_slices):
    x, w, dy = _inputs((41, 150), torch.float32)
    a = _norm_grads(lambda p, q: rms_norm(p, q), x, w, dy)
    b = _norm_grads(lambda p, q: rms_norm(p, q), x, w, dy)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
