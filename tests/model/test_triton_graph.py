"""torch.compile sees our Triton kernels themselves: the triton_op registrations trace to
``triton_kernel_wrapper_functional`` nodes, in one graph with no break, forward and backward.

Runs on the CPU without TRITON_INTERPRET (the interpreter's kernels cannot be traced): the kernel
modules' dispatch is switched to "Triton" and the compiled graphs are recorded by an AOT backend
that never runs them (there is no GPU to launch on), while Triton's driver is a stub that names an
sm_90 target, so that torch can read each kernel's TTIR to find which arguments it writes.
"""

from __future__ import annotations

import importlib
from collections import Counter

import pytest
import torch

triton = pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:TRITON_DEFAULT_FP_FUSION")

from model.config import ModelConfig  # noqa: E402
from model.transformer import Transformer  # noqa: E402

_OP_MODULES = ("kernels.rmsnorm", "kernels.swiglu", "kernels.add_rmsnorm", "kernels.cross_entropy")


class _Sm90Driver:
    """Just enough of a Triton driver for torch's kernel-mutation analysis (TTIR only)."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


@pytest.fixture
def graphs(monkeypatch):
    """Dispatch to Triton on CPU tensors; returns the list the recording backend fills."""
    from kernels import _utils

    if not _utils.triton_ops_available():
        pytest.skip("torch.library.triton_op needs PyTorch >= 2.6")
    import kernels

    kernels.register_ops()  # a CPU-only model does not: here the ops must exist before tracing
    for name in _OP_MODULES:
        monkeypatch.setattr(importlib.import_module(name), "use_triton", lambda *t: True)
    monkeypatch.setattr(triton.runtime.driver, "_active", _Sm90Driver())
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield []
    torch._dynamo.reset()


def _recording_backend(out: list):
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    def record(gm, example_inputs):
        out.append(gm)
        outs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        metas = [o.meta.get("val") if isinstance(o, torch.fx.Node) else None for o in outs]

        def run(*args):  # zeros of the graph's output shapes: nothing is launched
            return [torch.zeros(m.shape, dtype=m.dtype) if torch.is_tensor(m) else None
                    for m in metas]  # fmt: skip

        return make_boxed_func(run)

    return aot_autograd(fw_compiler=record, bw_compiler=record)


def _kernels(gm) -> tuple[Counter, list]:
    """Triton kernel names launched by a graph, and the leftover opaque steptime ops."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    names, opaque = Counter(), []
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        if "triton_kernel_wrapper" in str(n.target):
            k = kernel_side_table.get_kernel(n.kwargs["kernel_idx"])
            names[k.fn.__name__] += 1
            # the mutation analysis read the TTIR: only the kernel's outputs are written
            assert set(n.kwargs["tensors_to_clone"]) <= {"Y_ptr", "S_ptr", "RSTD_ptr", "DX_ptr",
                "DB_ptr", "DWP_ptr", "DW_ptr", "OUT_ptr", "DG_ptr", "DU_ptr", "Z_ptr",
                "LOSS_ptr"}, n.kwargs["tensors_to_clone"]  # fmt: skip
        elif str(n.target).startswith("steptime."):
            opaque.append(str(n.target))
    return names, opaque


def test_model_step_traces_to_our_kernels_without_graph_breaks(graphs):
    L = 2
    cfg = ModelConfig(vocab_size=64, n_layer=L, n_embd=32, n_head=4, ffn_hidden=48,
                      sequence_length=8, kernels="triton")  # fmt: skip
    model = Transformer(cfg)
    idx = torch.randint(0, 64, (2, 8))
    compiled = torch.compile(model, backend=_recording_backend(graphs), fullgraph=True)
    logits, loss = compiled(idx, idx)
    assert logits is None  # the fused head never forms the logits
    loss.backward()
    assert not torch._dynamo.utils.counters["graph_break"]
    assert len(graphs) == 2  # one forward graph, one backward graph
    (fwd, fwd_opaque), (bwd, bwd_opaque) = _kernels(graphs[0]), _kernels(graphs[1])
    assert not fwd_opaque and not bwd_opaque  # every op decomposed into its kernels
    # 2L + 1 norms (the first plain, 2L with the residual add), L SwiGLUs, one CE chunk
    assert fwd == {"_rmsnorm_fwd_kernel": 2 * L + 1, "_swiglu_fwd_kernel": L,
                   "_ce_fwd_bwd_kernel": 1}  # fmt: skip
    assert bwd == {"_rmsnorm_bwd_dx_kernel": 2 * L + 1, "_rmsnorm_bwd_dw_kernel": 2 * L + 1,
                   "_swiglu_bwd_kernel": L}  # fmt: skip


def test_each_op_alone_is_its_kernels(graphs):
    from kernels import add_rms_norm, rms_norm, swiglu

    def f(x, r, w, u):
        y, s = add_rms_norm(x, r, w)
        return swiglu(rms_norm(s, w), y * u).sum()

    args = [torch.randn(8, 16, requires_grad=True) for _ in range(2)]
    args += [torch.ones(16, requires_grad=True), torch.randn(8, 16)]
    torch.compile(f, backend=_recording_backend(graphs), fullgraph=True)(*args).backward()
    fwd, bwd = _kernels(graphs[0])[0], _kernels(graphs[1])[0]
    assert fwd == {"_rmsnorm_fwd_kernel": 2, "_swiglu_fwd_kernel": 1}
    assert bwd == {"_rmsnorm_bwd_dx_kernel": 2, "_rmsnorm_bwd_dw_kernel": 2,
                   "_swiglu_bwd_kernel": 1}  # fmt: skip
