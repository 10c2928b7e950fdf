"""SwiGLU Triton kernels (under TRITON_INTERPRET=1) against the float64 reference.

Forward, dgate and dup on odd shapes; fp32 to 1e-5 relative, bf16/fp16 by the
low-precision oracle of conftest.oracle_tol;
input validation; dispatch to the reference without the interpreter.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kernels import swiglu
from kernels.reference import swiglu_ref

# kernels/__init__ re-exports the function `swiglu`, which shadows the submodule attribute.
kswi = importlib.import_module("kernels.swiglu")

SHAPES = [(3, 37, 123), (1151, 300), (5, 1), (1, 64)]


def _grads(fn, g, u, dout):
    g = g.detach().clone().requires_grad_(True)
    u = u.detach().clone().requires_grad_(True)
    out = fn(g, u)
    out.backward(dout)
    return out.detach(), g.grad, u.grad


def _inputs(shape, dtype):
    # Scale 3 so gate reaches the saturated tails of the sigmoid as well as the middle.
    g = (3.0 * torch.randn(shape, dtype=torch.float64)).to(dtype)
    u = torch.randn(shape, dtype=torch.float64).to(dtype)
    dout = torch.randn(shape, dtype=torch.float64).to(dtype)
    return g, u, dout


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fp32_matches_fp64(shape, close):
    g, u, dout = _inputs(shape, torch.float32)
    out, dg, du = _grads(swiglu, g, u, dout)
    o64, dg64, du64 = _grads(swiglu_ref, g.double(), u.double(), dout.double())
    assert out.dtype == dg.dtype == du.dtype == torch.float32
    close(out, o64, 1e-5, "out")
    close(dg, dg64, 1e-5, "dgate")
    close(du, du64, 1e-5, "dup")


@pytest.mark.parametrize(
    "dtype,shape",
    [(torch.bfloat16, (3, 37, 123)), (torch.bfloat16, (5, 1)), (torch.float16, (1, 64))],
    ids=["bf16-3x37x123", "bf16-5x1", "fp16-1x64"],
)
def test_low_precision_oracle(dtype, shape, close, lowp_tol):
    g, u, dout = _inputs(shape, dtype)
    out, dg, du = _grads(swiglu, g, u, dout)
    assert out.dtype == dg.dtype == du.dtype == dtype
    o64, dg64, du64 = _grads(swiglu_ref, g.double(), u.double(), dout.double())
    # torch's own same-dtype computation (no fp32 upcast).
    ol, dgl, dul = _grads(lambda a, b: F.silu(a) * b, g, u, dout)
    close(out, o64, lowp_tol(ol, o64), "out")
    close(dg, dg64, lowp_tol(dgl, dg64), "dgate")
    close(du, du64, lowp_tol(dul, du64), "dup")


def test_noncontiguous_inputs(close):
    base = torch.randn(6, 20)
    g, u = base[:, :10], base[:, 10:]  # strided views
    close(swiglu(g, u), swiglu_ref(g.double(), u.double()), 1e-5, "out")


def test_saves_only_gate_and_up():
    g, u, _ = _inputs((4, 8), torch.float32)
    g.requires_grad_(True)
    u.requires_grad_(True)
    out = swiglu(g, u)
    saved = out.grad_fn.saved_tensors
    assert len(saved) == 2
    assert torch.equal(saved[0], g) and torch.equal(saved[1], u)


@pytest.mark.parametrize(
    "g,u,exc,msg",
    [
        (torch.randn(4, 8), torch.randn(4, 7), ValueError, "shape"),
        (torch.randn(4, 8).double(), torch.randn(4, 8).double(), TypeError, "unsupported"),
        (
            torch.ones(4, 8, dtype=torch.int64),
            torch.ones(4, 8, dtype=torch.int64),
            TypeError,
            "unsupported",
        ),
        (torch.randn(4, 8), torch.randn(4, 8, dtype=torch.bfloat16), TypeError, "dtype"),
    ],
    ids=["shape", "float64", "int", "mixed-dtype"],
)
def test_bad_input(g, u, exc, msg):
    with pytest.raises(exc, match=msg):
        swiglu(g, u)


def test_bad_dout_shape():
    g, u, _ = _inputs((4, 8), torch.float32)
    with pytest.raises(ValueError, match="dout shape"):
        kswi.swiglu_bwd(torch.randn(4, 9), g, u)


def test_dispatch_uses_reference_without_interpreter():
    code = (
        "import sys, torch, kernels.swiglu\n"
        "k = sys.modules['kernels.swiglu']\n"
        "called = []\n"
        "k.SwiGLUFunction.apply = staticmethod(lambda *a: called.append(1))\n"
        "g = torch.randn(3, 5); u = torch.randn(3, 5)\n"
        "y = k.swiglu(g, u)\n"
        "assert not called, 'triton path taken'\n"
        "assert torch.equal(y, k.swiglu_ref(g, u)), 'not the reference'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
