"""torch.compile sees our kernels as custom ops: zero graph breaks, right shapes, right gradients.

Runs under TRITON_INTERPRET=1 (conftest), so kernels="triton" dispatches to the Triton kernels on
CPU tensors and dynamo must trace through the ``steptime::`` custom ops instead of the launchers.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import kernels as kernels_pkg
from kernels import rms_norm, swiglu
from model.config import ModelConfig
from model.transformer import Transformer

CFG = dict(vocab_size=64, sequence_length=16, n_layer=2, n_embd=32, n_head=2, ffn_hidden=48)


def _model_and_batch(kernels: str, **changes):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**(CFG | changes), kernels=kernels))
    idx = torch.randint(0, 64, (2, 16))
    return model, idx, torch.randint(0, 64, (2, 16))


@pytest.mark.parametrize("kernels", ["triton", "torch"])
def test_forward_and_loss_have_no_graph_breaks(kernels):
    torch._dynamo.reset()
    model, idx, tgt = _model_and_batch(kernels)
    ex = torch._dynamo.explain(lambda i, t: model(i, t)[1])(idx, tgt)
    assert ex.graph_break_count == 0, [b.reason for b in ex.break_reasons]
    assert ex.graph_count == 1
    ops = {str(n.target) for g in ex.graphs for n in g.graph.nodes if n.op == "call_function"}
    fused = {"steptime.rms_norm_fwd.default", "steptime.swiglu_fwd.default"}
    # the triton backend is traced as our custom ops; the torch backend never touches them
    assert (fused <= ops) if kernels == "triton" else not (fused & ops), sorted(ops)


def test_compiled_training_step_matches_eager():
    # aot_eager traces the backward through the registered autograd formulas (no C++ compiler).
    torch._dynamo.reset()
    model, idx, tgt = _model_and_batch("triton", n_layer=1)
    model(idx, tgt)[1].backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss_eager = model(idx, tgt)[1].detach()
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss = compiled(idx, tgt)[1]
    loss.backward()
    torch.testing.assert_close(loss.detach(), loss_eager, rtol=1e-6, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize(
    "op,args",
    [
        ("rms_norm_fwd", lambda: (torch.randn(3, 5, 24), torch.randn(24), 1e-6)),
        ("swiglu_fwd", lambda: (torch.randn(3, 40), torch.randn(3, 40))),
    ],
)
def test_custom_op_registrations_are_consistent(op, args):
    # schema, fake (meta) implementation, autograd registration and AOT dispatch all agree
    kernels_pkg.register_ops()
    inputs = [a.requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args()]
    torch.library.opcheck(getattr(torch.ops.steptime, op), tuple(inputs))


def test_eager_calls_stay_on_the_autograd_functions(monkeypatch):
    # the custom-op dispatch costs ~4x an autograd.Function call, so eager mode must not use it
    krms = importlib.import_module("kernels.rmsnorm")
    kswi = importlib.import_module("kernels.swiglu")  # `kernels.swiglu` is the function

    def boom(*a, **k):
        raise AssertionError("custom op used in eager mode")

    monkeypatch.setattr(krms, "_ops", lambda: (boom, boom))
    monkeypatch.setattr(kswi, "_ops", lambda: (boom, boom))
    x = torch.randn(4, 8, requires_grad=True)
    rms_norm(x, torch.ones(8)).sum().backward()
    swiglu(x, x.detach() * 2).sum().backward()
    assert x.grad is not None


def test_short_training_run_triton_matches_torch():
    # The same 4 optimizer steps with our kernels and with the torch references agree.
    from kernels import FusedAdamW

    losses = {}
    for kernels in ("triton", "torch"):
        model, idx, tgt = _model_and_batch(kernels, n_layer=1)
        opt = FusedAdamW(model.parameters(), lr=1e-2, max_grad_norm=1.0, swa=True, swa_interval=1)
        out = []
        for _ in range(4):
            loss = model(idx, tgt)[1]  # one batch, learnt by heart
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=False)
            out.append(loss.detach())
        losses[kernels] = torch.stack(out)
    assert losses["triton"][-1] < losses["triton"][0]  # it trains
    torch.testing.assert_close(losses["triton"], losses["torch"], rtol=1e-4, atol=1e-5)
