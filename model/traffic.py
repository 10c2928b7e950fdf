"""Measure device-memory traffic of one real training step by intercepting every aten op.

``measure_traffic`` runs forward, backward and (optionally) ``optimizer.step()`` under a
TorchDispatchMode and adds up ``nbytes`` of each op's tensor inputs and outputs: a model of an
implementation in which every op reads its operands from memory and writes its results (no fusion,
no cache reuse), which is what eager PyTorch does. Ops that only produce views or metadata move no
bytes and are excluded (see ``_NO_TRAFFIC``); ``copy_``/``clone``/``contiguous`` do move bytes and count.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Views, reshapes and metadata queries: they alias storage and launch no kernel.
_NO_TRAFFIC = {
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
    "_to_copy_noop",
    "is_same_size",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "set_",
    "_local_scalar_dense",
}


def _op_name(func) -> str:
    return (
        func.overloadpacket.__name__.rstrip("_")
        if func.overloadpacket.__name__ not in ("copy_",)
        else "copy_"
    )


class _TrafficMode(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.bytes: dict[str, int] = defaultdict(int)
        self.counts: dict[str, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name.rstrip("_") in _NO_TRAFFIC or name in _NO_TRAFFIC:
            return out
        seen: set[int] = set()
        total = 0
        # In-place ops return their input: count each distinct tensor object once per role.
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
        ins = set(seen)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                if id(t) in ins:
                    total += t.numel() * t.element_size()  # in-place: read and written
                else:
                    total += t.numel() * t.element_size()
        self.bytes[name] += total
        self.counts[name] += 1
        return out


def measure_traffic(
    model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], optimizer=None
) -> dict:
    """One training step (forward, loss.backward(), optimizer.step() if given) under the byte counter.

    Returns {"total": bytes, "bytes": {op: bytes}, "counts": {op: calls}}. Gradients are zeroed
    (set to None) before the step so that gradient accumulation does not add ``add_`` traffic.
    """
    x, y = batch
    model.zero_grad(set_to_none=True)
    mode = _TrafficMode()
    with mode:
        _, loss = model(x, y)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
    return {
        "total": int(sum(mode.bytes.values())),
        "bytes": dict(mode.bytes),
        "counts": dict(mode.counts),
    }
