"""Measure one real training step at the dispatch level: kernel launches and device-memory bytes.

``measure_step`` runs forward + ``loss.backward()`` for each micro-batch, then (optionally)
``optimizer.step()``, under a TorchDispatchMode that sees every aten op after autograd and after
the composite ops have been decomposed. It is the reference that ``model.costs`` is tested against.

What counts as one launch (``launches``, ``counts``):
  * every aten op call that does device work: all ops except views, reshapes, metadata queries,
    allocations without initialisation, ``detach`` and profiler markers (``NO_KERNEL`` below).
    An aten op that runs several device kernels internally (e.g. ``slice_backward`` = zero fill +
    copy on CUDA) still counts once: the unit is the dispatched op, i.e. one trip through the
    dispatcher and one kernel-launch overhead on the host.
  * every Triton kernel launch (``JITFunction.run``, or ``InterpretedFunction.run`` under
    TRITON_INTERPRET=1), counted under ``triton::<kernel name>``. Aten ops issued while a Triton
    kernel runs (the interpreter's own host copies) are not counted. A custom op (non-aten
    namespace) that launches Triton kernels counts as those launches, not as one more.

Bytes (``total``, ``bytes``): each counted op reads its tensor inputs and writes its tensor
outputs in full (no fusion, no cache reuse: the eager-PyTorch model of memory traffic); an
in-place op's tensor is both read and written. A Triton launch moves the bytes of its tensor
arguments once each (an out-of-place kernel reads its inputs and writes its outputs once; this
undercounts in-place updates such as AdamW's, which are read and written).
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Views, reshapes, metadata and bare allocations: they alias storage or only reserve it.
NO_KERNEL = frozenset(
    {
        "view",
        "_unsafe_view",
        "reshape",
        "expand",
        "t",
        "transpose",
        "permute",
        "as_strided",
        "detach",
        "alias",
        "slice",
        "select",
        "split",
        "split_with_sizes",
        "unsqueeze",
        "squeeze",
        "_reshape_alias",
        "unbind",
        "chunk",
        "narrow",
        "view_as",
        "lift_fresh",
        "numpy_T",
        "empty",
        "empty_like",
        "empty_strided",
        "new_empty",
        "new_empty_strided",
        "is_same_size",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "sym_storage_offset",
        "set_",
        "_local_scalar_dense",  # a device-to-host read (.item()), a sync rather than a kernel
    }
)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class _StepCounter(TorchDispatchMode):
    """Counts launches and bytes per op name (aten ops and Triton kernels)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: dict[str, int] = defaultdict(int)
        self.counts: dict[str, int] = defaultdict(int)
        self.triton_depth = 0  # > 0 while a Triton kernel runs
        self.triton_launches = 0

    def record(self, name: str, nbytes: int, calls: int = 1) -> None:
        self.bytes[name] += nbytes
        self.counts[name] += calls

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        before = self.triton_launches
        out = func(*args, **kwargs)
        if self.triton_depth:
            return out  # the interpreter's host-side work inside a Triton launch
        packet = func.overloadpacket
        name = packet.__name__
        namespace = getattr(func, "namespace", "aten")
        if namespace != "aten" and self.triton_launches > before:
            return out  # a custom op: its Triton launches were counted by the launch hook
        if namespace == "profiler" or name in NO_KERNEL:
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        seen = {id(t): t for t in ins}  # each distinct tensor object read once
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        # An in-place op returns its input: that tensor is read (above) and written (here).
        self.record(f"{namespace}::{name}", _nbytes(seen.values()) + _nbytes(outs))
        return out


@contextlib.contextmanager
def _count_triton(counter: _StepCounter) -> Iterator[None]:
    """Wrap Triton's launch entry points (when Triton is installed; else nothing can launch)."""
    if "triton" not in sys.modules and importlib.util.find_spec("triton") is None:
        yield
        return
    from triton.runtime import interpreter, jit

    classes = [jit.JITFunction, interpreter.InterpretedFunction]
    originals = [cls.run for cls in classes]

    def wrap(orig):
        def run(self, *args, grid, warmup, **kwargs):
            if warmup or counter.triton_depth:
                return orig(self, *args, grid=grid, warmup=warmup, **kwargs)
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            name = getattr(getattr(self, "fn", None), "__name__", "kernel")
            counter.record(f"triton::{name}", _nbytes(tensors))
            counter.triton_launches += 1
            counter.triton_depth += 1
            try:
                return orig(self, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                counter.triton_depth -= 1

        return run

    try:
        for cls, orig in zip(classes, originals):
            cls.run = wrap(orig)
        yield
    finally:
        for cls, orig in zip(classes, originals):
            cls.run = orig


def measure_step(
    model: torch.nn.Module,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    optimizer=None,
    *,
    grads: str = "none",
    step: Callable[[], object] | None = None,
) -> dict:
    """One training step under the counter: for each (x, y), ``model(x, y)`` and
    ``loss.backward()``, then the optimizer (``step()`` if given, else ``optimizer.step()``).

    grads "none": gradients are set to None before the step (outside the count), so the first
    backward stores them and later ones add into them. "persistent": every parameter has a zero
    .grad before the step (``optimizer.prepare_grads()`` when it has one), every backward adds
    into it, and the counted step ends with ``optimizer.zero_grad(set_to_none=False)`` (the
    trainer's zero-copy accumulation). Returns {"launches": int, "total": bytes,
    "counts": {op: launches}, "bytes": {op: bytes}}, ops named ``aten::<op>`` or
    ``triton::<kernel>``.
    """
    if grads not in ("none", "persistent"):
        raise ValueError(f"grads must be 'none' or 'persistent', got {grads!r}")
    model.zero_grad(set_to_none=True)
    if grads == "persistent":
        if hasattr(optimizer, "prepare_grads"):
            optimizer.prepare_grads()
        for p in model.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
    counter = _StepCounter()
    with _count_triton(counter), counter:
        for x, y in micro_batches:
            _, loss = model(x, y)
            loss.backward()
        if step is not None:
            step()
        elif optimizer is not None:
            optimizer.step()
        if optimizer is not None and grads == "persistent":
            optimizer.zero_grad(set_to_none=False)
    return {
        "launches": int(sum(counter.counts.values())),
        "total": int(sum(counter.bytes.values())),
        "counts": dict(counter.counts),
        "bytes": dict(counter.bytes),
    }


def measure_traffic(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], optimizer=None
) -> dict:
    """``measure_step`` with the one micro-batch ``batch`` (same keys)."""
    return measure_step(model, [batch], optimizer)
