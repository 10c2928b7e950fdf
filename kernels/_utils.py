"""Shared helpers for the kernel files: backend dispatch, op registration, occupancy."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

import torch


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1 before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(*tensors: torch.Tensor) -> bool:
    """Dispatch rule: CUDA tensors run Triton; CPU tensors run Triton only under the interpreter.

    Otherwise the torch references in `kernels.reference` run (the CPU fast path).
    """
    devs = {t.device.type for t in tensors}
    if devs == {"cuda"}:
        return True
    if devs == {"cpu"}:
        return interpreting()
    return False


def triton_ops_available() -> bool:
    """Whether ops are registered with ``torch.library.triton_op`` (PyTorch >= 2.6) rather than
    as opaque ``custom_op``s.

    A triton_op's body is traced by torch.compile: its kernels appear in the graph as
    ``triton_kernel_wrapper_functional`` nodes that Inductor launches from its generated code
    (and CUDA graphs capture). Under TRITON_INTERPRET=1 the kernels are interpreter objects that
    ``wrap_triton`` cannot trace, so there the ops stay opaque custom ops.
    """
    return hasattr(torch.library, "triton_op") and not interpreting()


def register_op(name: str, fn: Callable, fake: Callable):
    """Register ``fn`` as the op ``name``: a triton_op when available (its body launches the
    kernels through ``traced_launch``, and its fake is the body itself), else a custom_op whose
    ``fake`` gives the output shapes."""
    if triton_ops_available():
        return torch.library.triton_op(name, fn, mutates_args=())
    op = torch.library.custom_op(name, fn, mutates_args=())
    op.register_fake(fake)
    return op


def lazy_import(module: str) -> Callable[[], Any]:
    """A getter of `module`, imported on its first call (then a closure read: an import statement
    per call costs microseconds of host time). Keeps triton out of a torch-backend process."""
    mod = None

    def get():
        nonlocal mod
        if mod is None:
            mod = importlib.import_module(module)
        return mod

    return get


class LazyOps:
    """An op's torch.library registrations (forward, and backward when it has one), made on first
    call: registering a triton_op imports triton, which a torch-backend model must never load.
    The first call is the first Triton launch, or `kernels.register_ops` (which building a
    kernels="triton" model calls). Returns the ops as a tuple, forward first."""

    def __init__(self, fwd: tuple, bwd: tuple | None, backward: Callable, setup: Callable):
        self.specs = (fwd,) if bwd is None else (fwd, bwd)  # (name, fn, fake) each
        self.backward, self.setup = backward, setup
        self.ops: tuple | None = None

    def __call__(self) -> tuple:
        if self.ops is None:
            ops = tuple(register_op(*spec) for spec in self.specs)
            ops[0].register_autograd(self.backward, setup_context=self.setup)
            self.ops = ops
        return self.ops


def traced_launch(kernel):
    """The launcher of op bodies: ``wrap_triton(kernel)`` makes the launch a graph node while
    torch.compile traces, and launches as usual otherwise."""
    if not triton_ops_available():
        return kernel
    return torch.library.wrap_triton(kernel)


def no_fake():
    """A context in which tensors are real again (no fake, functional or proxy mode): for host-side
    set-up, such as compiling a probe kernel, done while torch.compile traces an op body."""
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


# sm_90 (H100 SXM) per-SM limits: CUDA C Programming Guide, "Compute Capabilities", Table 21.
H100_SMS = 132
SM90_LIMITS = {
    "regs": 65536,  # 32-bit registers per SM
    "threads": 2048,  # resident threads per SM
    "ctas": 32,  # resident blocks per SM
    "shared": 228 * 1024,  # shared memory per SM (bytes)
}
_REG_UNIT = 256  # registers are allocated per warp in units of 256
_SHARED_RESERVED = 1024  # bytes the driver reserves per resident block (sm_80+)


def ctas_per_sm(regs: int, shared: int, num_warps: int, limits: dict | None = None) -> int:
    """Blocks of one kernel that fit on an SM at once, given its registers per thread, static
    shared memory per block and warps per block (the CUDA occupancy calculator's rules)."""
    lim = SM90_LIMITS if limits is None else limits
    regs_per_warp = -(-max(regs, 1) * 32 // _REG_UNIT) * _REG_UNIT
    by_regs = (lim["regs"] // regs_per_warp) // num_warps
    by_threads = lim["threads"] // (32 * num_warps)
    by_shared = lim["shared"] // (shared + _SHARED_RESERVED)
    return max(1, min(by_regs, by_threads, by_shared, lim["ctas"]))
